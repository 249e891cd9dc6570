package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// newCA creates a CA in a fresh directory and returns the directory.
func newCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := InitCA(dir, CAOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// newNode issues a certificate for name with the CA in caDir and returns the node's dir.
func newNode(t *testing.T, caDir, name string, opts NodeOptions) string {
	t.Helper()
	dir, err := IssueNode(caDir, name, opts)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// files returns the three files Load takes in a node directory.
func files(dir string) (ca, cert, key string) {
	return filepath.Join(dir, CACertFile), filepath.Join(dir, NodeCertFile), filepath.Join(dir, NodeKeyFile)
}

func mustLoad(t *testing.T, dir string) *Config {
	t.Helper()
	c, err := Load(files(dir))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// nodeWithValidity writes a node directory whose certificate, signed by the CA in caDir,
// is valid from notBefore to notAfter: IssueNode cannot make an expired one.
func nodeWithValidity(t *testing.T, caDir, name string, notBefore, notAfter time.Time) string {
	t.Helper()
	return nodeFromTemplate(t, caDir, nodeTemplate(name, nil, nil, notBefore.Add(backdate), notAfter))
}

// nodeFromTemplate writes a node directory whose certificate is tmpl signed by the CA in caDir.
func nodeFromTemplate(t *testing.T, caDir string, tmpl *x509.Certificate) string {
	t.Helper()
	ca, err := loadAuthority(caDir)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.issue(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca1, cert, key := files(dir)
	for _, f := range []struct {
		path string
		data []byte
	}{{ca1, ca.certPEM}, {cert, certPEM}, {key, keyPEM}} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// expiredNode is a node directory with a certificate of the CA in caDir that expired.
func expiredNode(t *testing.T, caDir, name string) string {
	t.Helper()
	now := time.Now()
	return nodeWithValidity(t, caDir, name, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
}

// uncheckedConfig is a Config of the files in dir without Load's checks, for a node that
// Load would refuse (an expired certificate) talking to one that must refuse it too.
func uncheckedConfig(t *testing.T, dir string) *Config {
	t.Helper()
	caFile, certFile, keyFile := files(dir)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("no CA certificate")
	}
	c := &Config{}
	c.cur.Store(&identity{cert: cert, pool: pool, name: cert.Leaf.Subject.CommonName})
	return c
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := ReadCertificate(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func checkMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %04o, want %04o", path, got, want)
	}
}

func TestInitCAAndIssueNode(t *testing.T) {
	caDir := newCA(t)
	checkMode(t, caDir, 0o700)
	checkMode(t, filepath.Join(caDir, CACertFile), 0o644)
	checkMode(t, filepath.Join(caDir, CAKeyFile), 0o600)
	ca := readCert(t, filepath.Join(caDir, CACertFile))
	if !ca.IsCA || !ca.BasicConstraintsValid || ca.KeyUsage&x509.KeyUsageCertSign == 0 ||
		ca.Subject.CommonName != DefaultCACommonName {
		t.Errorf("CA certificate: IsCA %v, key usage %v, CN %q", ca.IsCA, ca.KeyUsage, ca.Subject.CommonName)
	}
	if pub, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", ca.PublicKey)
	}
	if d := time.Until(ca.NotAfter); d < DefaultCAValidity-time.Hour || d > DefaultCAValidity {
		t.Errorf("CA valid for %v, want %v", d, DefaultCAValidity)
	}

	for _, tt := range []struct {
		name    string
		opts    NodeOptions
		wantDir string // relative to caDir unless absolute
		dns     []string
		ips     []string
		days    int
	}{
		{name: "n1", wantDir: "n1", dns: []string{"n1"}, days: 730},
		{name: "node-2.lab_b", opts: NodeOptions{
			IPs: []net.IP{net.ParseIP("10.0.0.2"), net.ParseIP("fd00::2")}, DNS: []string{"n2.example", "node-2.lab_b"},
			Validity: 30 * 24 * time.Hour, OutDir: filepath.Join(caDir, "out", "two"),
		}, wantDir: filepath.Join(caDir, "out", "two"), dns: []string{"node-2.lab_b", "n2.example"}, ips: []string{"10.0.0.2", "fd00::2"}, days: 30},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := newNode(t, caDir, tt.name, tt.opts)
			want := tt.wantDir
			if !filepath.IsAbs(want) {
				want = filepath.Join(caDir, want)
			}
			if dir != want {
				t.Fatalf("out dir %s, want %s", dir, want)
			}
			caFile, certFile, keyFile := files(dir)
			checkMode(t, dir, 0o700)
			checkMode(t, certFile, 0o644)
			checkMode(t, keyFile, 0o600)
			checkMode(t, caFile, 0o644)
			a, _ := os.ReadFile(caFile)
			b, _ := os.ReadFile(filepath.Join(caDir, CACertFile))
			if !bytes.Equal(a, b) {
				t.Error("node's ca.crt is not a copy of the CA certificate")
			}
			c := readCert(t, certFile)
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if c.Subject.CommonName != tt.name || !slices.Equal(c.DNSNames, tt.dns) || !slices.Equal(ips, tt.ips) {
				t.Errorf("CN %q DNS %q IPs %q", c.Subject.CommonName, c.DNSNames, ips)
			}
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) || c.IsCA {
				t.Errorf("ext key usage %v, IsCA %v", c.ExtKeyUsage, c.IsCA)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %v", c.SerialNumber)
			}
			if err := c.CheckSignatureFrom(ca); err != nil {
				t.Errorf("not signed by the CA: %v", err)
			}
			if d := time.Until(c.NotAfter); d < time.Duration(tt.days)*24*time.Hour-time.Hour || d > time.Duration(tt.days)*24*time.Hour {
				t.Errorf("valid for %v, want %d days", d, tt.days)
			}
			cfg := mustLoad(t, dir)
			if cfg.NodeName() != tt.name || !cfg.NotAfter().Equal(c.NotAfter) {
				t.Errorf("NodeName %q NotAfter %v", cfg.NodeName(), cfg.NotAfter())
			}
		})
	}

	// A re-issue (renewal) replaces the files with a new key.
	dir := filepath.Join(caDir, "n1")
	old, _ := os.ReadFile(filepath.Join(dir, NodeKeyFile))
	newNode(t, caDir, "n1", NodeOptions{})
	if cur, _ := os.ReadFile(filepath.Join(dir, NodeKeyFile)); bytes.Equal(old, cur) {
		t.Error("re-issue kept the old key")
	}
	mustLoad(t, dir)
}

func TestIssueNodeCappedAtCAExpiry(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := InitCA(caDir, CAOptions{CommonName: "short", Validity: 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	c := readCert(t, filepath.Join(newNode(t, caDir, "n1", NodeOptions{}), NodeCertFile))
	if ca := readCert(t, filepath.Join(caDir, CACertFile)); !c.NotAfter.Equal(ca.NotAfter) || ca.Subject.CommonName != "short" {
		t.Errorf("node expires %v, CA %q expires %v", c.NotAfter, ca.Subject.CommonName, ca.NotAfter)
	}
}

func TestInitCARefusesOverwrite(t *testing.T) {
	caDir := newCA(t)
	keyFile := filepath.Join(caDir, CAKeyFile)
	before, _ := os.ReadFile(keyFile)
	err := InitCA(caDir, CAOptions{})
	if !errors.Is(err, ErrCAExists) || !strings.Contains(err.Error(), keyFile) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second InitCA: %v, want ErrCAExists naming %s and --force", err, keyFile)
	}
	if after, _ := os.ReadFile(keyFile); !bytes.Equal(before, after) {
		t.Fatal("refused InitCA changed ca.key")
	}
	// A node of the old CA is not trusted by the new one.
	old := newNode(t, caDir, "n1", NodeOptions{OutDir: filepath.Join(t.TempDir(), "n1")})
	if err := InitCA(caDir, CAOptions{Force: true}); err != nil {
		t.Fatalf("InitCA with Force: %v", err)
	}
	if after, _ := os.ReadFile(keyFile); bytes.Equal(before, after) {
		t.Fatal("InitCA with Force kept the old key")
	}
	checkMode(t, keyFile, 0o600)
	caFile, _, _ := files(caDir)
	_, certFile, nodeKey := files(old)
	if _, err := Load(caFile, certFile, nodeKey); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("old node with the new CA: %v, want ErrUntrusted", err)
	}
}

func TestIssueNodeBadInput(t *testing.T) {
	caDir := newCA(t)
	for _, tt := range []struct {
		label, name string
		opts        NodeOptions
		want        string
	}{
		{"empty", "", NodeOptions{}, "the name is empty"},
		{"slash", "a/b", NodeOptions{}, `'/' is not allowed`},
		{"dotdot", "..", NodeOptions{}, "must start with a letter or digit"},
		{"dot first", ".n1", NodeOptions{}, "must start with a letter or digit"},
		{"dash first", "-n1", NodeOptions{}, "must start with a letter or digit"},
		{"space", "n 1", NodeOptions{}, `' ' is not allowed`},
		{"unicode", "nœud", NodeOptions{}, `'œ' is not allowed`},
		{"too long", strings.Repeat("a", 64), NodeOptions{}, "longer than 63 characters"},
		{"nil ip", "n1", NodeOptions{IPs: []net.IP{nil}}, "IP address is empty"},
		{"empty dns", "n1", NodeOptions{DNS: []string{""}}, "DNS name is empty"},
		{"negative validity", "n1", NodeOptions{Validity: -time.Hour}, "negative"},
	} {
		t.Run(tt.label, func(t *testing.T) {
			_, err := IssueNode(caDir, tt.name, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	for _, ok := range []string{"n1", "N-1.lab_2", "1", strings.Repeat("a", 63)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q): %v", ok, err)
		}
	}
	if err := ValidateName("a/b"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("ValidateName: %v, want ErrInvalidName", err)
	}
	empty := t.TempDir()
	if _, err := IssueNode(empty, "n1", NodeOptions{}); !errors.Is(err, fs.ErrNotExist) ||
		!strings.Contains(err.Error(), "migshm tls init --dir "+empty) {
		t.Fatalf("IssueNode without a CA: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	caDir := newCA(t)
	good := newNode(t, caDir, "n1", NodeOptions{})
	other := newNode(t, caDir, "n2", NodeOptions{})
	foreign := newNode(t, newCA(t), "n1", NodeOptions{})
	expired := expiredNode(t, caDir, "old")
	future := nodeWithValidity(t, caDir, "soon", time.Now().Add(time.Hour), time.Now().Add(48*time.Hour))
	garbage := filepath.Join(t.TempDir(), "garbage.crt")
	if err := os.WriteFile(garbage, []byte("not PEM\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// loose is a copy of the good key with mode perm.
	loose := func(perm fs.FileMode) string {
		b, err := os.ReadFile(filepath.Join(good, NodeKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), NodeKeyFile)
		if err := os.WriteFile(p, b, perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil { // WriteFile is subject to the umask
			t.Fatal(err)
		}
		return p
	}
	missing := filepath.Join(t.TempDir(), "nope")
	ca, cert, key := files(good)
	for _, tt := range []struct {
		name            string
		ca, cert, key   string
		is              error
		wantIn          []string
		wantNodeName    string
		wantLoadSuccess bool
	}{
		{name: "good", ca: ca, cert: cert, key: key, wantLoadSuccess: true, wantNodeName: "n1"},
		{name: "key 0400", ca: ca, cert: cert, key: loose(0o400), wantLoadSuccess: true, wantNodeName: "n1"},
		{name: "missing CA", ca: missing, cert: cert, key: key, is: fs.ErrNotExist,
			wantIn: []string{"read cluster CA certificate " + missing + ": no such file or directory", "migshm tls node NAME"}},
		{name: "missing cert", ca: ca, cert: missing, key: key, is: fs.ErrNotExist,
			wantIn: []string{"read node certificate " + missing + ": no such file or directory (create it", "migshm tls node NAME"}},
		{name: "missing key", ca: ca, cert: cert, key: missing, is: fs.ErrNotExist,
			wantIn: []string{"read node key " + missing + ": no such file or directory", "migshm tls node NAME"}},
		{name: "world-readable key", ca: ca, cert: cert, key: loose(0o644), is: ErrKeyPermissions,
			wantIn: []string{"mode 0644", "chmod 600"}},
		{name: "group-readable key", ca: ca, cert: cert, key: loose(0o640), is: ErrKeyPermissions, wantIn: []string{"chmod 600"}},
		{name: "world-writable key", ca: ca, cert: cert, key: loose(0o602), is: ErrKeyPermissions, wantIn: []string{"chmod 600"}},
		{name: "foreign CA", ca: ca, cert: filepath.Join(foreign, NodeCertFile), key: filepath.Join(foreign, NodeKeyFile),
			is: ErrUntrusted, wantIn: []string{filepath.Join(foreign, NodeCertFile), "unknown authority", "migshm tls node n1"}},
		{name: "expired", ca: ca, cert: filepath.Join(expired, NodeCertFile), key: filepath.Join(expired, NodeKeyFile),
			is: ErrExpired, wantIn: []string{filepath.Join(expired, NodeCertFile), "migshm tls node old"}},
		{name: "not yet valid", ca: ca, cert: filepath.Join(future, NodeCertFile), key: filepath.Join(future, NodeKeyFile),
			is: ErrExpired, wantIn: []string{"migshm tls node soon"}},
		{name: "key of another node", ca: ca, cert: cert, key: filepath.Join(other, NodeKeyFile),
			wantIn: []string{"private key does not match public key", "issued together"}},
		{name: "garbage CA", ca: garbage, cert: cert, key: key, wantIn: []string{garbage, "no PEM CERTIFICATE block"}},
		{name: "garbage cert", ca: ca, cert: garbage, key: key, wantIn: []string{garbage}},
		{name: "CA as cert", ca: ca, cert: filepath.Join(caDir, CACertFile), key: filepath.Join(caDir, CAKeyFile),
			is: ErrUntrusted, wantIn: []string{"not for TLS server and client use"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(tt.ca, tt.cert, tt.key)
			if tt.wantLoadSuccess {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.NodeName() != tt.wantNodeName {
					t.Fatalf("NodeName %q", cfg.NodeName())
				}
				return
			}
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			for _, w := range tt.wantIn {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
