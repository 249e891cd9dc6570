// Package pki owns the mutual TLS of migshm's peer traffic: the cluster's own CA and the
// node certificates it issues (`migshm tls init`, `migshm tls node`), loading and checking
// a node's files (Load), the server and client tls.Configs every peer connection uses,
// and the peer API's listener. Raft's stream layer over TLS is internal/cluster's.
//
// Trust model (consul's verify_incoming + verify_outgoing without verify_server_hostname):
// a peer is a cluster node if and only if it holds a certificate issued by the cluster's
// dedicated CA. Host names are not checked, since raft addresses are IPs that may be
// NATed. The CA key never leaves the operator's admin machine; nodes get ca.crt, node.crt
// and node.key only. Keys are ECDSA P-256, files are PEM.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/migshm/migshm/internal/atomicfile"
)

// File names in a CA directory (CACertFile, CAKeyFile) and in a node directory
// (CACertFile, NodeCertFile, NodeKeyFile).
const (
	CACertFile   = "ca.crt"
	CAKeyFile    = "ca.key"
	NodeCertFile = "node.crt"
	NodeKeyFile  = "node.key"
)

// Defaults of CAOptions and NodeOptions.
const (
	DefaultCACommonName = "migshm cluster CA"
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultNodeValidity = 2 * 365 * 24 * time.Hour
)

// backdate is how far before now a certificate starts to be valid, so that a node whose
// clock is a little behind the admin machine's accepts it at once.
const backdate = 5 * time.Minute

// CAOptions configures InitCA.
type CAOptions struct {
	CommonName string        // "": DefaultCACommonName
	Validity   time.Duration // 0: DefaultCAValidity
	Force      bool          // replace an existing CA (every certificate it issued stops working)
}

// InitCA creates the cluster CA: dir/ca.crt (0644) and dir/ca.key (0600), dir made 0700
// if missing. It refuses to replace an existing dir/ca.key unless opts.Force.
func InitCA(dir string, opts CAOptions) error {
	if opts.CommonName == "" {
		opts.CommonName = DefaultCACommonName
	}
	if opts.Validity == 0 {
		opts.Validity = DefaultCAValidity
	}
	if opts.Validity < 0 {
		return fmt.Errorf("init CA: validity %v is negative", opts.Validity)
	}
	keyPath := filepath.Join(dir, CAKeyFile)
	if _, err := os.Lstat(keyPath); err == nil && !opts.Force {
		return fmt.Errorf("init CA: %s: %w; refusing to replace it, since every node certificate it "+
			"issued would stop working (use --force to replace it anyway)", keyPath, ErrCAExists)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("init CA: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("init CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("init CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return fmt.Errorf("init CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: opts.CommonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(opts.Validity),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // signs node certificates only, no intermediates
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("init CA: sign: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return fmt.Errorf("init CA: %w", err)
	}
	// The certificate first: if writing the key fails, a rerun does not need --force.
	if err := atomicfile.Write(filepath.Join(dir, CACertFile), encodeCert(der), 0o644); err != nil {
		return fmt.Errorf("init CA: %w", err)
	}
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("init CA: %w", err)
	}
	return nil
}

// NodeOptions configures IssueNode.
type NodeOptions struct {
	IPs      []net.IP      // IP SANs
	DNS      []string      // DNS SANs besides the node name
	Validity time.Duration // 0: DefaultNodeValidity (never beyond the CA's own expiry)
	OutDir   string        // "": caDir/name
}

// IssueNode signs a certificate for node name with the CA in caDir and writes
// outDir/node.crt (0644), outDir/node.key (0600) and a copy of the CA certificate,
// outDir/ca.crt: the three files the node needs. outDir is made 0700 if missing. Files
// already there are replaced (a renewal gets a new key).
func IssueNode(caDir, name string, opts NodeOptions) (outDir string, err error) {
	if err := ValidateName(name); err != nil {
		return "", fmt.Errorf("issue node certificate: %w", err)
	}
	if opts.Validity == 0 {
		opts.Validity = DefaultNodeValidity
	}
	if opts.Validity < 0 {
		return "", fmt.Errorf("issue node certificate: validity %v is negative", opts.Validity)
	}
	for _, ip := range opts.IPs {
		if ip == nil {
			return "", errors.New("issue node certificate: an IP address is empty")
		}
	}
	for _, d := range opts.DNS {
		if d == "" {
			return "", errors.New("issue node certificate: a DNS name is empty")
		}
	}
	outDir = opts.OutDir
	if outDir == "" {
		outDir = filepath.Join(caDir, name)
	}
	ca, err := loadAuthority(caDir)
	if err != nil {
		return "", fmt.Errorf("issue node certificate: %w", err)
	}
	now := time.Now()
	if now.After(ca.cert.NotAfter) {
		return "", fmt.Errorf("issue node certificate: CA %s: %w (it expired on %s; create a new CA with "+
			"`migshm tls init --force` and re-issue every node)", filepath.Join(caDir, CACertFile), ErrExpired,
			ca.cert.NotAfter.Format(time.DateOnly))
	}
	certPEM, keyPEM, err := ca.issue(nodeTemplate(name, opts.IPs, opts.DNS, now, now.Add(opts.Validity)))
	if err != nil {
		return "", fmt.Errorf("issue node certificate: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return "", fmt.Errorf("issue node certificate: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{NodeKeyFile, keyPEM, 0o600},
		{NodeCertFile, certPEM, 0o644},
		{CACertFile, ca.certPEM, 0o644},
	} {
		if err := atomicfile.Write(filepath.Join(outDir, f.name), f.data, f.mode); err != nil {
			return "", fmt.Errorf("issue node certificate: %w", err)
		}
	}
	return outDir, nil
}

// ValidateName checks a node name: 1 to 63 characters of [A-Za-z0-9._-], starting with a
// letter or digit (it is a certificate name and a directory name).
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: the name is empty", ErrInvalidName)
	}
	if len(name) > 63 {
		return fmt.Errorf("%w %q: longer than 63 characters", ErrInvalidName, name)
	}
	for i, r := range name {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("%w %q: must start with a letter or digit", ErrInvalidName, name)
		}
		if !alnum && r != '.' && r != '_' && r != '-' {
			return fmt.Errorf("%w %q: %q is not allowed (use letters, digits, '.', '_' and '-')", ErrInvalidName, name, r)
		}
	}
	return nil
}

// ReadCertificate reads the first certificate of a PEM file, to show what it is.
func ReadCertificate(path string) (*x509.Certificate, error) {
	b, err := readFile("certificate", path, "is the path right?")
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", path, err)
	}
	return certs[0], nil
}

// nodeTemplate is the certificate of node name, valid from now (backdated) to notAfter.
func nodeTemplate(name string, ips []net.IP, dns []string, now, notAfter time.Time) *x509.Certificate {
	names := []string{name}
	for _, d := range dns {
		if d != name {
			names = append(names, d)
		}
	}
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		DNSNames:    names,
		IPAddresses: ips,
		NotBefore:   now.Add(-backdate),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
}

// authority is a loaded CA: certificate and key.
type authority struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
}

func loadAuthority(dir string) (*authority, error) {
	hint := fmt.Sprintf("create the CA with `migshm tls init --dir %s`", dir)
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := readFile("CA certificate", certPath, hint)
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certPath, err)
	}
	keyPEM, err := readFile("CA key", keyPath, hint)
	if err != nil {
		return nil, err
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyPath, err)
	}
	pub, ok := certs[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("CA key %s does not belong to CA certificate %s (%s)", keyPath, certPath, hint)
	}
	return &authority{cert: certs[0], certPEM: certPEM, key: key}, nil
}

// issue gives tmpl a new P-256 key and a serial, signs it and returns both PEM encoded.
// NotAfter is capped at the CA's own expiry: the chain would not verify beyond it.
func (a *authority) issue(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return nil, nil, err
	}
	if tmpl.NotAfter.After(a.cert.NotAfter) {
		tmpl.NotAfter = a.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &key.PublicKey, a.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseCerts returns every CERTIFICATE block of a PEM file, at least one.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block in the file")
	}
	return certs, nil
}

// parseKey reads a PKCS#8 or SEC 1 (EC) private key from the first PEM block holding one.
func parseKey(b []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, errors.New("no PEM private key block in the file")
		}
		switch block.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse private key: %w", err)
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("private key of type %T cannot sign", k)
			}
			return s, nil
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse private key: %w", err)
			}
			return k, nil
		}
	}
}

// readFile reads path, naming what it is and what to do when that fails:
// "read node certificate /x/node.crt: no such file or directory (create it with ...)".
func readFile(what, path, hint string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fileError("read", what, path, hint, err)
	}
	return b, nil
}

func fileError(op, what, path, hint string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err // the path is in our message already
	}
	return fmt.Errorf("%s %s %s: %w (%s)", op, what, path, err, hint)
}
