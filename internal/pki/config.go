package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"slices"
	"sync/atomic"
	"time"
)

// Config is a node's TLS identity: its certificate and key, and the cluster CA it trusts.
// Reload replaces them while the node runs (certificate rotation): the TLS
// configurations it hands out read the current ones at every handshake. SetRevoked
// installs the cluster's denylist, checked at every handshake too.
type Config struct {
	cur     atomic.Pointer[identity]
	revoked atomic.Pointer[func(serial *big.Int) bool]
}

// identity is one loaded set of files.
type identity struct {
	cert tls.Certificate // Leaf is set
	pool *x509.CertPool
	name string
}

// Load reads and checks a node's files: the cluster CA certificate, the node certificate
// and its key. It refuses a key that group or others can access, a certificate the CA
// did not issue or not for both TLS server and client use, and one that has expired or
// is not valid yet. Every error names the file and says what to do.
func Load(caFile, certFile, keyFile string) (*Config, error) {
	const issueHint = "create it on the admin machine with `migshm tls node NAME` and copy it here"
	caPEM, err := readFile("cluster CA certificate", caFile,
		"copy ca.crt from the node's directory that `migshm tls node NAME` wrote")
	if err != nil {
		return nil, err
	}
	cas, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("cluster CA certificate %s: %w", caFile, err)
	}
	certPEM, err := readFile("node certificate", certFile, issueHint)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		return nil, fileError("read", "node key", keyFile, issueHint, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("node key %s: %w (mode %04o); run `chmod 600 %s`", keyFile, ErrKeyPermissions, perm, keyFile)
	}
	keyPEM, err := readFile("node key", keyFile, issueHint)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("node certificate %s and key %s: %w (they must be issued together by `migshm tls node NAME`)",
			certFile, keyFile, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("node certificate %s: %w", certFile, err)
		}
		cert.Leaf = leaf
	}
	now := time.Now()
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("node certificate %s: %w (valid from %s to %s); issue a new one with `migshm tls node %s`",
			certFile, ErrExpired, leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339), leaf.Subject.CommonName)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	if _, err := leaf.Verify(opts); err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return nil, fmt.Errorf("cluster CA certificate %s: %w: %v; create a new CA with `migshm tls init --force` and re-issue every node",
				caFile, ErrExpired, err)
		}
		return nil, fmt.Errorf("node certificate %s: %w in %s (%v): it belongs to another cluster or to a CA since replaced; "+
			"issue a new one with `migshm tls node %s` on the admin machine", certFile, ErrUntrusted, caFile, err, leaf.Subject.CommonName)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if !slices.Contains(leaf.ExtKeyUsage, u) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
			return nil, fmt.Errorf("node certificate %s: %w: it is not for TLS server and client use; issue one with `migshm tls node %s`",
				certFile, ErrUntrusted, leaf.Subject.CommonName)
		}
	}
	c := &Config{}
	c.cur.Store(&identity{cert: cert, pool: pool, name: leaf.Subject.CommonName})
	return c, nil
}

// Reload reads the files again, checked as Load checks them, and makes them this
// node's identity for every later handshake (connections already open keep theirs).
// It refuses a certificate for another node name: a node's name is fixed.
func (c *Config) Reload(caFile, certFile, keyFile string) error {
	n, err := Load(caFile, certFile, keyFile)
	if err != nil {
		return err
	}
	if got, want := n.NodeName(), c.NodeName(); got != want {
		return fmt.Errorf("node certificate %s is for %q, but this node is %q: %w (issue one with `migshm tls node %s`)",
			certFile, got, want, ErrUntrusted, want)
	}
	c.cur.Store(n.cur.Load())
	return nil
}

// SetRevoked installs the denylist: a peer whose certificate's serial it reports is
// refused at the handshake, as server and as client.
func (c *Config) SetRevoked(revoked func(serial *big.Int) bool) { c.revoked.Store(&revoked) }

// Revoked reports whether cert is on the denylist.
func (c *Config) Revoked(cert *x509.Certificate) bool {
	f := c.revoked.Load()
	return f != nil && cert != nil && (*f)(cert.SerialNumber)
}

// checkRevoked refuses a handshake with a peer whose certificate is revoked.
func (c *Config) checkRevoked(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) > 0 && c.Revoked(cs.PeerCertificates[0]) {
		leaf := cs.PeerCertificates[0]
		return fmt.Errorf("tls: certificate of %q (serial %s) is revoked in this cluster", leaf.Subject.CommonName, leaf.SerialNumber.Text(16))
	}
	return nil
}

// NodeName returns the name of this node: the common name of its certificate.
func (c *Config) NodeName() string { return c.cur.Load().name }

// NotAfter returns when this node's certificate expires.
func (c *Config) NotAfter() time.Time { return c.cur.Load().cert.Leaf.NotAfter }

// Serial returns the serial number of this node's current certificate.
func (c *Config) Serial() *big.Int { return c.cur.Load().cert.Leaf.SerialNumber }

// ServerTLS is the configuration of every peer listener: TLS 1.3 only, and the client
// must present a certificate of the cluster CA for client use that is not revoked. Each
// handshake takes the node's current identity (Reload).
func (c *Config) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			id := c.cur.Load()
			return &tls.Config{
				MinVersion:       tls.VersionTLS13,
				Certificates:     []tls.Certificate{id.cert},
				ClientAuth:       tls.RequireAndVerifyClientCert,
				ClientCAs:        id.pool,
				VerifyConnection: c.checkRevoked,
			}, nil
		},
	}
}

// ClientTLS is the configuration of every peer connection a node makes: TLS 1.3 only,
// with this node's certificate, and the server must present a certificate of the cluster
// CA for server use.
//
// The host name is deliberately not checked: peers are dialled at raft addresses, IPs
// that may be NATed and are not in the certificates, and a peer's identity is holding a
// certificate from the cluster's own CA (consul's verify_outgoing without
// verify_server_hostname). crypto/tls cannot verify the chain without the host name, so
// InsecureSkipVerify turns its verification off and VerifyConnection does it instead:
// chain to the cluster CA pool only (never the system roots), ExtKeyUsageServerAuth,
// validity period. It is not insecure: a server of any other CA fails the handshake
// (TestClientRefusesServer). VerifyConnection rather than VerifyPeerCertificate because
// it also runs on resumed sessions.
//
// With InsecureSkipVerify, ConnectionState.VerifiedChains stays empty on the client
// side, so PeerName returns "" there: the caller knows whom it dialled.
//
// Each handshake presents the node's current certificate (Reload) and checks the server
// against the current CA and the denylist.
func (c *Config) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert := c.cur.Load().cert
			return &cert, nil
		},
		InsecureSkipVerify: true, // see above: VerifyConnection verifies the chain
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := c.verifyServer(cs); err != nil {
				return err
			}
			return c.checkRevoked(cs)
		},
	}
}

// verifyServer checks the server's certificate chain against the cluster CA.
func (c *Config) verifyServer(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	opts := x509.VerifyOptions{
		Roots:         c.cur.Load().pool,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, ic := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(ic)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return &tls.CertificateVerificationError{
			UnverifiedCertificates: cs.PeerCertificates,
			Err:                    fmt.Errorf("server %q: %w", leaf.Subject.CommonName, err),
		}
	}
	return nil
}

// PeerName returns the node name (common name) of the verified certificate the peer
// presented, "" if none was verified. On the server side of ServerTLS that is the
// client node; on the client side of ClientTLS it is always "" (see ClientTLS).
func PeerName(cs tls.ConnectionState) string {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.CommonName
}

// Listener listens on bind for the peer API: every connection is a ServerTLS one (the
// handshake runs on first use; net/http bounds it with the server's timeouts).
func Listener(bind string, cfg *Config) (net.Listener, error) {
	if cfg == nil {
		return nil, errors.New("TLS listener: no TLS configuration")
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", bind, err)
	}
	return tls.NewListener(ln, cfg.ServerTLS()), nil
}
