// Package deploy holds what operators install (systemd/, grafana/, prometheus/); this
// test runs scripts/install and scripts/uninstall into a staging root.
package deploy

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// installed are the files scripts/install writes with the default PREFIX, and what each
// must hold.
var installed = map[string]string{
	"/usr/local/bin/migshm":                         "", // checked by running it
	"/usr/local/bin/migshmd":                        "",
	"/etc/systemd/system/migshmd.service":           "\nExecStart=/usr/local/bin/migshmd --config /etc/migshm/migshmd.toml\n",
	"/etc/migshm/migshmd.toml":                      "", // the example, byte for byte
	"/etc/sysctl.d/90-migshm.conf":                  "\nfs.pipe-max-size = 4194304\n",
	"/usr/local/share/man/man8/migshm.8":            "\n.TH migshm 8\n",
	"/usr/share/bash-completion/completions/migshm": "complete ",
	"/usr/share/zsh/vendor-completions/_migshm":     "#compdef migshm",
	"/var/lib/migshm/install-manifest":              "",
}

const manifest = "/var/lib/migshm/install-manifest"

// inputs are the files the scripts read. The test opens them itself so that go test's
// cache, which knows only the files the test process opens, reruns it when one changes.
// (The CLI's man page and completion are cmd/migshm's to test.)
var inputs = []string{"../scripts/install", "../scripts/uninstall", "systemd/migshmd.service", "systemd/migshmd.toml"}

// run runs a script of scripts/ with DESTDIR=dest and extra environment, and returns its
// output; a failure fails the test.
func run(t *testing.T, script, dest string, env ...string) string {
	t.Helper()
	for _, f := range inputs {
		readFile(t, f)
	}
	cmd := exec.Command("bash", filepath.Join("..", "scripts", script))
	cmd.Env = append(os.Environ(), append([]string{"DESTDIR=" + dest, "MIGSHM_INSTALL_SKIP_CRIU=1"}, env...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("scripts/%s: %v\n%s", script, err, out.String())
	}
	return out.String()
}

// tree lists every path under root, as on the installed system ("/etc", "/etc/migshm", ...),
// directories with a trailing slash.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel := strings.TrimPrefix(p, root)
		if d.IsDir() {
			rel += "/"
		}
		paths = append(paths, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// manifestPaths returns what the manifest lists, directories with a trailing slash.
func manifestPaths(t *testing.T, dest string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dest, manifest))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "d":
			paths = append(paths, f[1]+"/")
		case len(f) == 3 && f[0] == "f" && len(f[1]) == 64:
			paths = append(paths, f[2])
		default:
			t.Errorf("manifest line %q", line)
		}
	}
	return paths
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestInstallUninstall: into an empty root, install writes every file where it belongs
// and lists everything it made (and nothing else) in its manifest; installing again
// changes nothing; uninstall leaves the root empty.
func TestInstallUninstall(t *testing.T) {
	dest := t.TempDir()
	out := run(t, "install", dest)
	for _, step := range []string{"migshm tls init", "migshm tls node NODE --ip ADDR", "/var/lib/migshmd/tls/",
		"systemctl enable --now migshmd", "not running scripts/setup (CRIU) or systemctl"} {
		if !strings.Contains(out, step) {
			t.Errorf("install's output lacks %q:\n%s", step, out)
		}
	}
	example := readFile(t, filepath.Join("systemd", "migshmd.toml"))
	for path, want := range installed {
		got := readFile(t, filepath.Join(dest, path))
		if !strings.Contains(got, want) {
			t.Errorf("%s lacks %q:\n%.400s", path, want, got)
		}
		if path == "/etc/migshm/migshmd.toml" && got != example {
			t.Errorf("%s is not deploy/systemd/migshmd.toml", path)
		}
	}
	for _, bin := range []string{"migshm", "migshmd"} {
		if b, err := exec.Command(filepath.Join(dest, "/usr/local/bin", bin), "--help").CombinedOutput(); err != nil {
			t.Errorf("%s --help: %v\n%s", bin, err, b)
		}
	}
	comp := filepath.Join(dest, "/usr/share/bash-completion/completions/migshm")
	if b, err := exec.Command("bash", "-c", `source "$1" && complete -p migshm`, "bash", comp).CombinedOutput(); err != nil {
		t.Errorf("bash completion does not load: %v\n%s", err, b)
	}

	// The manifest lists exactly what is in the root: every file and directory install made.
	want := tree(t, dest)
	got := manifestPaths(t, dest)
	got = append(got, manifest) // the manifest does not list itself
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("manifest lists\n  %s\nthe root holds\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	before := readFile(t, filepath.Join(dest, manifest))
	run(t, "install", dest)
	if after := readFile(t, filepath.Join(dest, manifest)); !sameLines(before, after) {
		t.Errorf("installing again changed the manifest:\n%s\nto\n%s", before, after)
	}

	out = run(t, "uninstall", dest)
	if left := tree(t, dest); len(left) > 0 {
		t.Errorf("uninstall left %q:\n%s", left, out)
	}
	if strings.Contains(out, "left in place") {
		t.Errorf("uninstall says it left something in an empty root:\n%s", out)
	}
}

// sameLines reports whether a and b hold the same lines, in any order.
func sameLines(a, b string) bool {
	x, y := strings.Split(a, "\n"), strings.Split(b, "\n")
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// TestInstallKeepsConfig: a config already there survives install and uninstall
// untouched, and is not in the manifest; with PREFIX=/usr the unit runs /usr/bin/migshmd.
func TestInstallKeepsConfig(t *testing.T) {
	dest := t.TempDir()
	config := filepath.Join(dest, "/etc/migshm/migshmd.toml")
	if err := os.MkdirAll(filepath.Dir(config), 0o755); err != nil {
		t.Fatal(err)
	}
	const mine = "node-id = \"mine\"\n"
	if err := os.WriteFile(config, []byte(mine), 0o600); err != nil {
		t.Fatal(err)
	}

	out := run(t, "install", dest, "PREFIX=/usr")
	if !strings.Contains(out, "kept /etc/migshm/migshmd.toml (not installed by scripts/install") {
		t.Errorf("install does not say it kept the config:\n%s", out)
	}
	if slices.ContainsFunc(manifestPaths(t, dest), func(p string) bool { return strings.HasPrefix(p, "/etc/migshm/") }) {
		t.Errorf("the manifest lists /etc/migshm or its config, which install did not make:\n%s",
			readFile(t, filepath.Join(dest, manifest)))
	}
	unit := readFile(t, filepath.Join(dest, "/etc/systemd/system/migshmd.service"))
	if !strings.Contains(unit, "\nExecStart=/usr/bin/migshmd --config /etc/migshm/migshmd.toml\n") {
		t.Errorf("PREFIX=/usr: the unit does not run /usr/bin/migshmd:\n%s", unit)
	}
	if _, err := os.Stat(filepath.Join(dest, "/usr/bin/migshmd")); err != nil {
		t.Error(err)
	}

	out = run(t, "uninstall", dest)
	if got := readFile(t, config); got != mine {
		t.Errorf("the config changed: %q", got)
	}
	if left := tree(t, dest); !slices.Equal(left, []string{"/etc/", "/etc/migshm/", "/etc/migshm/migshmd.toml"}) {
		t.Errorf("uninstall left %q, want only the config:\n%s", left, out)
	}
	if !strings.Contains(out, "/etc/migshm/migshmd.toml (not written by scripts/install)") {
		t.Errorf("uninstall does not say it left the config:\n%s", out)
	}
}

// TestUninstallKeepsEdits: a file install wrote and the operator then changed (here the
// config) is left, and said so; so is a file the operator added to a directory install made.
func TestUninstallKeepsEdits(t *testing.T) {
	dest := t.TempDir()
	run(t, "install", dest)
	config := filepath.Join(dest, "/etc/migshm/migshmd.toml")
	f, err := os.OpenFile(config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("log-level = \"debug\"\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dropIn := filepath.Join(dest, "/etc/systemd/system/migshmd.service.d/override.conf")
	if err := os.MkdirAll(filepath.Dir(dropIn), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dropIn, []byte("[Service]\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	out := run(t, "uninstall", dest)
	want := []string{"/etc/", "/etc/migshm/", "/etc/migshm/migshmd.toml", "/etc/systemd/", "/etc/systemd/system/",
		"/etc/systemd/system/migshmd.service.d/", "/etc/systemd/system/migshmd.service.d/override.conf"}
	if left := tree(t, dest); !slices.Equal(left, want) {
		t.Errorf("uninstall left\n  %s\nwant\n  %s\n%s", strings.Join(left, "\n  "), strings.Join(want, "\n  "), out)
	}
	for _, say := range []string{"/etc/migshm/migshmd.toml (changed since scripts/install wrote it)",
		"/etc/systemd/system/ (holds files scripts/install did not write)"} {
		if !strings.Contains(out, say) {
			t.Errorf("uninstall's output lacks %q:\n%s", say, out)
		}
	}
}
