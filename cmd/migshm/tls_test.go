package main

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/migshm/migshm/internal/pki"
	"github.com/urfave/cli/v2"
)

// runTLS runs `migshm ARGS` with only the tls command, as newApp wires it.
func runTLS(t *testing.T, args ...string) (string, error) {
	t.Helper()
	app := &cli.App{Name: "migshm", HideHelpCommand: true, Commands: []*cli.Command{tlsCommand()}}
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run(append([]string{"migshm"}, args...))
	return out.String(), err
}

func checkFileMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %04o, want %04o", path, got, want)
	}
}

func TestTLSInitAndNode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	out, err := runTLS(t, "tls", "init", "--dir", dir)
	if err != nil {
		t.Fatalf("tls init: %v\n%s", err, out)
	}
	for _, w := range []string{"wrote " + filepath.Join(dir, "ca.crt"), "wrote " + filepath.Join(dir, "ca.key"),
		"next: for each node, `migshm tls node --dir " + dir + " NAME --ip NODE_IP`"} {
		if !strings.Contains(out, w) {
			t.Errorf("tls init output does not contain %q:\n%s", w, out)
		}
	}
	checkFileMode(t, dir, 0o700)
	checkFileMode(t, filepath.Join(dir, "ca.crt"), 0o644)
	checkFileMode(t, filepath.Join(dir, "ca.key"), 0o600)

	// A second init refuses; --force replaces.
	if _, err := runTLS(t, "tls", "init", "--dir", dir); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second tls init: %v, want a refusal mentioning --force", err)
	}
	if out, err := runTLS(t, "tls", "init", "--dir", dir, "--force"); err != nil || !strings.Contains(out, "no longer trusted") {
		t.Fatalf("tls init --force: %v\n%s", err, out)
	}

	for _, tt := range []struct {
		name    string
		args    []string
		outDir  string
		dns     []string
		ips     []string
		outputs []string
	}{
		{name: "flags after NAME", args: []string{"tls", "node", "n1", "--dir", dir, "--ip", "10.0.0.11", "--ip=fd00::11", "--dns", "n1.lab"},
			outDir: filepath.Join(dir, "n1"), dns: []string{"n1", "n1.lab"}, ips: []string{"10.0.0.11", "fd00::11"},
			outputs: []string{"node n1: n1, n1.lab, 10.0.0.11, fd00::11",
				"next: copy " + filepath.Join(dir, "n1") + "/{ca.crt,node.crt,node.key} to /var/lib/migshmd/tls/ on node n1 (keep node.key mode 0600)"}},
		{name: "flags before NAME", args: []string{"tls", "node", "--dir", dir, "--out", filepath.Join(dir, "elsewhere"), "--days", "10", "n2"},
			outDir: filepath.Join(dir, "elsewhere"), dns: []string{"n2"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runTLS(t, tt.args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, f := range []struct {
				name string
				mode fs.FileMode
			}{{"node.crt", 0o644}, {"node.key", 0o600}, {"ca.crt", 0o644}} {
				p := filepath.Join(tt.outDir, f.name)
				checkFileMode(t, p, f.mode)
				if !strings.Contains(out, "wrote "+p) {
					t.Errorf("output does not mention %s:\n%s", p, out)
				}
			}
			for _, w := range tt.outputs {
				if !strings.Contains(out, w) {
					t.Errorf("output does not contain %q:\n%s", w, out)
				}
			}
			cfg, err := pki.Load(filepath.Join(tt.outDir, "ca.crt"), filepath.Join(tt.outDir, "node.crt"), filepath.Join(tt.outDir, "node.key"))
			if err != nil {
				t.Fatalf("the files do not load: %v", err)
			}
			cert, err := pki.ReadCertificate(filepath.Join(tt.outDir, "node.crt"))
			if err != nil {
				t.Fatal(err)
			}
			var ips []string
			for _, ip := range cert.IPAddresses {
				ips = append(ips, ip.String())
			}
			if cfg.NodeName() != tt.dns[0] || !slices.Equal(cert.DNSNames, tt.dns) || !slices.Equal(ips, tt.ips) {
				t.Errorf("node %q, DNS %q, IPs %q", cfg.NodeName(), cert.DNSNames, ips)
			}
		})
	}
}

func TestTLSBadInput(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := runTLS(t, "tls", "init", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	noCA := t.TempDir()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"tls", "node", "--dir", dir}, "tls node needs exactly one NAME (got 0 arguments)"},
		{[]string{"tls", "node", "--dir", dir, "n1", "n2"}, "exactly one NAME (got 2 arguments)"},
		{[]string{"tls", "node", "--dir", dir, "n1", "--ip", "10.0.0.300"}, `--ip "10.0.0.300" is not an IP address`},
		{[]string{"tls", "node", "--dir", dir, "--ip", "node1.lab", "n1"}, `--ip "node1.lab" is not an IP address`},
		{[]string{"tls", "node", "--dir", dir, "n1", "--days", "0"}, "--days 0: the validity must be at least one day"},
		{[]string{"tls", "node", "--dir", dir, "n1", "--days", "many"}, `invalid value "many" for flag --days`},
		{[]string{"tls", "node", "--dir", dir, "n1", "--ip"}, "flag needs an argument: --ip"},
		{[]string{"tls", "node", "--dir", dir, "n1", "--bogus"}, "flag provided but not defined: --bogus"},
		{[]string{"tls", "node", "--dir", dir, "../n1"}, `invalid node name "../n1"`},
		{[]string{"tls", "node", "--dir", noCA, "n1"}, "create the CA with `migshm tls init --dir " + noCA + "`"},
		{[]string{"tls", "init", "--dir", dir, "extra"}, `tls init takes no arguments (got ["extra"])`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := runTLS(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "n1")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("bad input left %s behind: %v", filepath.Join(dir, "n1"), err)
	}
}

func TestTLSNodeHelpAfterName(t *testing.T) {
	dir := t.TempDir()
	out, err := runTLS(t, "tls", "node", "n1", "--dir", dir, "--help")
	if err != nil || !strings.Contains(out, "migshm tls node [command options] NAME") {
		t.Fatalf("help: %v\n%s", err, out)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("--help wrote files: %v", entries)
	}
}

// TestCLIRevoke: revoke reads the serial and name from the certificate file (or takes
// them as flags) and lists the denylist; bad combinations are refused before any call.
func TestCLIRevoke(t *testing.T) {
	f := newFakeDaemon(t)
	ca := filepath.Join(t.TempDir(), "ca")
	if _, err := runTLS(t, "tls", "init", "--dir", ca); err != nil {
		t.Fatal(err)
	}
	if _, err := runTLS(t, "tls", "node", "n3", "--dir", ca); err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(ca, "n3", "node.crt")
	cert, err := pki.ReadCertificate(certFile)
	if err != nil {
		t.Fatal(err)
	}
	serial := cert.SerialNumber.Text(16)
	out := f.mustCLI(t, "tls", "revoke", certFile, "--reason", "renewed")
	if want := "revoked certificate " + serial + " of n3: no node accepts it any more\n"; out != want {
		t.Errorf("revoke prints %q, want %q", out, want)
	}
	calls := f.takeCalls()
	if len(calls) != 1 || calls[0].Path != "/v1/revocations" || !strings.Contains(calls[0].Body, `"serial":"`+serial+`"`) ||
		!strings.Contains(calls[0].Body, `"node":"n3"`) || !strings.Contains(calls[0].Body, `"reason":"renewed"`) {
		t.Fatalf("calls %+v", calls)
	}
	f.mustCLI(t, "tls", "revoke", "--serial", "abc", "--node", "n9")
	out = f.mustCLI(t, "tls", "revoked")
	for _, want := range []string{"SERIAL", serial + "  n3", "renewed", "abc", "n9"} {
		if !strings.Contains(out, want) {
			t.Errorf("revoked lists\n%s\nwithout %q", out, want)
		}
	}
	f.takeCalls()
	for _, args := range [][]string{
		{"tls", "revoke"},
		{"tls", "revoke", certFile, "--serial", "abc"},
		{"tls", "revoke", "--serial", "abc"},
		{"tls", "revoke", filepath.Join(ca, "nope.crt")},
	} {
		if _, err := f.cli(t, args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	if calls := f.takeCalls(); len(calls) != 0 {
		t.Errorf("refused revokes called the daemon: %+v", calls)
	}
}
