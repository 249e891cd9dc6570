package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

type handshakeResult struct {
	server, client       tls.ConnectionState
	serverErr, clientErr error
}

// handshake runs one TLS connection over 127.0.0.1 between server and client. The server
// writes a byte once its handshake succeeds and the client reads it: in TLS 1.3 a client
// whose certificate the server refuses only learns it on its first read.
func handshake(t *testing.T, server, client *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		cs  tls.ConnectionState
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- res{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(c, server)
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Write([]byte{1})
		}
		done <- res{tc.ConnectionState(), err}
	}()
	var r handshakeResult
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), client)
	if err == nil {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadFull(conn, make([]byte, 1))
		r.client = conn.ConnectionState()
		conn.Close()
	}
	r.clientErr = err
	s := <-done
	r.server, r.serverErr = s.cs, s.err
	return r
}

func TestHandshakeBetweenNodes(t *testing.T) {
	caDir := newCA(t)
	n1 := mustLoad(t, newNode(t, caDir, "n1", NodeOptions{}))
	n2 := mustLoad(t, newNode(t, caDir, "n2", NodeOptions{}))
	r := handshake(t, n1.ServerTLS(), n2.ClientTLS())
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("server: %v, client: %v", r.serverErr, r.clientErr)
	}
	if r.server.Version != tls.VersionTLS13 {
		t.Errorf("version %x, want TLS 1.3", r.server.Version)
	}
	if got := PeerName(r.server); got != "n2" {
		t.Errorf("server's PeerName = %q, want n2", got)
	}
	if got := r.client.PeerCertificates[0].Subject.CommonName; got != "n1" {
		t.Errorf("client sees server %q, want n1", got)
	}
	if got := PeerName(r.client); got != "" {
		t.Errorf("client's PeerName = %q, want \"\" (ClientTLS verifies the chain itself)", got)
	}
	if got := PeerName(tls.ConnectionState{}); got != "" {
		t.Errorf("PeerName of no connection = %q", got)
	}
}

func TestServerRefusesClient(t *testing.T) {
	caDir := newCA(t)
	server := mustLoad(t, newNode(t, caDir, "n1", NodeOptions{}))
	noCert := mustLoad(t, newNode(t, caDir, "n2", NodeOptions{})).ClientTLS()
	noCert.GetClientCertificate = nil
	for _, tt := range []struct {
		name   string
		client *tls.Config
		check  func(error) bool
	}{
		{"no certificate", noCert, func(err error) bool { return err != nil }},
		// The client of a foreign CA does not check the server, or it would hang up first.
		{"foreign CA", &tls.Config{
			MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
			GetClientCertificate: mustLoad(t, newNode(t, newCA(t), "n2", NodeOptions{})).ClientTLS().GetClientCertificate,
		}, func(err error) bool {
			var ua x509.UnknownAuthorityError
			return errors.As(err, &ua)
		}},
		{"expired", uncheckedConfig(t, expiredNode(t, caDir, "n2")).ClientTLS(), func(err error) bool {
			var inv x509.CertificateInvalidError
			return errors.As(err, &inv) && inv.Reason == x509.Expired
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := handshake(t, server.ServerTLS(), tt.client)
			if !tt.check(r.serverErr) {
				t.Errorf("server: %v", r.serverErr)
			}
			if r.clientErr == nil {
				t.Error("client: connection succeeded")
			}
			if PeerName(r.server) != "" {
				t.Errorf("server's PeerName = %q", PeerName(r.server))
			}
		})
	}
}

func TestClientRefusesServer(t *testing.T) {
	caDir := newCA(t)
	client := mustLoad(t, newNode(t, caDir, "n1", NodeOptions{}))
	for _, tt := range []struct {
		name   string
		server *tls.Config
		check  func(error) bool
	}{
		{"foreign CA", mustLoad(t, newNode(t, newCA(t), "n2", NodeOptions{})).ServerTLS(), func(err error) bool {
			var ua x509.UnknownAuthorityError
			return errors.As(err, &ua)
		}},
		{"expired", uncheckedConfig(t, expiredNode(t, caDir, "n2")).ServerTLS(), func(err error) bool {
			var inv x509.CertificateInvalidError
			return errors.As(err, &inv) && inv.Reason == x509.Expired
		}},
		{"client-only certificate", clientOnly(t, caDir, "n2").ServerTLS(), func(err error) bool {
			var inv x509.CertificateInvalidError
			return errors.As(err, &inv) && inv.Reason == x509.IncompatibleUsage
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := handshake(t, tt.server, client.ClientTLS())
			if !tt.check(r.clientErr) {
				t.Errorf("client: %v", r.clientErr)
			}
			var cve *tls.CertificateVerificationError
			if !errors.As(r.clientErr, &cve) {
				t.Errorf("client error %v is not a *tls.CertificateVerificationError", r.clientErr)
			}
			if r.serverErr == nil {
				t.Error("server: connection succeeded")
			}
		})
	}
}

// clientOnly is a node of the CA in caDir whose certificate is for TLS clients only.
func clientOnly(t *testing.T, caDir, name string) *Config {
	t.Helper()
	now := time.Now()
	tmpl := nodeTemplate(name, nil, nil, now, now.Add(time.Hour))
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return uncheckedConfig(t, nodeFromTemplate(t, caDir, tmpl))
}

// TestReloadRotatesTheCertificate: after Reload, new handshakes present the renewed
// certificate on both sides, without new tls.Configs; a certificate for another name
// is refused and the old identity stays.
func TestReloadRotatesTheCertificate(t *testing.T) {
	caDir := newCA(t)
	n1dir := newNode(t, caDir, "n1", NodeOptions{})
	n1 := mustLoad(t, n1dir)
	n2 := mustLoad(t, newNode(t, caDir, "n2", NodeOptions{}))
	server, client := n1.ServerTLS(), n1.ClientTLS() // handed out once, as the daemon does
	old := n1.Serial()
	if r := handshake(t, server, n2.ClientTLS()); r.serverErr != nil || r.client.PeerCertificates[0].SerialNumber.Cmp(old) != 0 {
		t.Fatalf("before the renewal: %+v", r.serverErr)
	}
	newNode(t, caDir, "n1", NodeOptions{}) // renews caDir/n1 in place
	if err := n1.Reload(files(n1dir)); err != nil {
		t.Fatal(err)
	}
	if n1.Serial().Cmp(old) == 0 {
		t.Fatal("Reload kept the old certificate")
	}
	r := handshake(t, server, n2.ClientTLS())
	if r.serverErr != nil || r.client.PeerCertificates[0].SerialNumber.Cmp(n1.Serial()) != 0 {
		t.Errorf("as server after the renewal: %v, serial %v", r.serverErr, r.client.PeerCertificates)
	}
	r = handshake(t, n2.ServerTLS(), client)
	if r.serverErr != nil || r.server.PeerCertificates[0].SerialNumber.Cmp(n1.Serial()) != 0 {
		t.Errorf("as client after the renewal: %v", r.serverErr)
	}
	other := newNode(t, caDir, "n3", NodeOptions{})
	if err := n1.Reload(files(other)); !errors.Is(err, ErrUntrusted) || n1.NodeName() != "n1" {
		t.Errorf("Reload with n3's certificate: %v, name %s", err, n1.NodeName())
	}
}

// TestRevokedPeerIsRefused: a certificate on the denylist fails the handshake as client
// and as server; its renewal (a new serial) passes.
func TestRevokedPeerIsRefused(t *testing.T) {
	caDir := newCA(t)
	n1 := mustLoad(t, newNode(t, caDir, "n1", NodeOptions{}))
	n2dir := newNode(t, caDir, "n2", NodeOptions{})
	n2 := mustLoad(t, n2dir)
	bad := n2.Serial()
	n1.SetRevoked(func(s *big.Int) bool { return s.Cmp(bad) == 0 })
	if r := handshake(t, n1.ServerTLS(), n2.ClientTLS()); r.serverErr == nil || r.clientErr == nil {
		t.Errorf("revoked client accepted: server %v client %v", r.serverErr, r.clientErr)
	} else if !strings.Contains(r.serverErr.Error(), "revoked") {
		t.Errorf("server error %q does not say revoked", r.serverErr)
	}
	if r := handshake(t, n2.ServerTLS(), n1.ClientTLS()); r.clientErr == nil || !strings.Contains(r.clientErr.Error(), "revoked") {
		t.Errorf("revoked server accepted: %v", r.clientErr)
	}
	newNode(t, caDir, "n2", NodeOptions{})
	if err := n2.Reload(files(n2dir)); err != nil {
		t.Fatal(err)
	}
	if r := handshake(t, n1.ServerTLS(), n2.ClientTLS()); r.serverErr != nil || r.clientErr != nil {
		t.Errorf("renewed certificate refused: %v %v", r.serverErr, r.clientErr)
	}
}
