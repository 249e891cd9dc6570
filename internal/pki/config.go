package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"time"
)

// Config is a node's TLS identity: its certificate and key, and the cluster CA it trusts.
// It is immutable; new certificates take effect on the next Load.
type Config struct {
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
	return &Config{cert: cert, pool: pool, name: leaf.Subject.CommonName}, nil
}

// NodeName returns the name of this node: the common name of its certificate.
func (c *Config) NodeName() string { return c.name }

// NotAfter returns when this node's certificate expires.
func (c *Config) NotAfter() time.Time { return c.cert.Leaf.NotAfter }

// ServerTLS is the configuration of every peer listener: TLS 1.3 only, and the client
// must present a certificate of the cluster CA for client use.
func (c *Config) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    c.pool,
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
func (c *Config) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{c.cert},
		InsecureSkipVerify: true, // see above: VerifyConnection verifies the chain
		VerifyConnection:   c.verifyServer,
	}
}

// verifyServer checks the server's certificate chain against the cluster CA.
func (c *Config) verifyServer(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	opts := x509.VerifyOptions{
		Roots:         c.pool,
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
