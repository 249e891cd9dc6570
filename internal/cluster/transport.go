package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/internal/pki"
)

// HandshakeTimeout bounds the TLS handshake of a connection the stream layer accepts (a
// peer that connects and sends nothing must not hold a goroutine forever), and of a Dial
// raft makes without a timeout.
const HandshakeTimeout = 10 * time.Second

// StreamLayer is raft's stream layer over mutual TLS: it accepts ServerTLS connections
// and dials ClientTLS ones, so raft only ever talks to nodes of the cluster CA.
type StreamLayer struct {
	ln               net.Listener
	addr             *net.TCPAddr
	server, client   *tls.Config
	handshakeTimeout time.Duration
}

var _ raft.StreamLayer = (*StreamLayer)(nil)

// ListenRaft listens for raft peers on bind ("0.0.0.0:7420", "127.0.0.1:0"). advertise is
// the address other nodes dial (Addr, and so the node's raft address); "" means the bound
// address, which must then not be unspecified (0.0.0.0 or ::).
func ListenRaft(bind, advertise string, cfg *pki.Config) (*StreamLayer, error) {
	if cfg == nil {
		return nil, errors.New("raft TLS listener: no TLS configuration")
	}
	var adv *net.TCPAddr
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			return nil, fmt.Errorf("raft advertise address %q: %w", advertise, err)
		}
		if a.IP == nil || a.IP.IsUnspecified() || a.Port == 0 {
			return nil, fmt.Errorf("raft advertise address %q: need the IP and port other nodes reach this node at", advertise)
		}
		adv = a
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raft listen on %s: %w", bind, err)
	}
	if adv == nil {
		a, ok := ln.Addr().(*net.TCPAddr)
		if !ok || a.IP == nil || a.IP.IsUnspecified() {
			ln.Close()
			return nil, fmt.Errorf("raft bind address %s is unspecified, so other nodes cannot dial it: "+
				"set an advertise address (the IP:port other nodes reach this node at)", ln.Addr())
		}
		adv = a
	}
	return &StreamLayer{
		ln: ln, addr: adv,
		server: cfg.ServerTLS(), client: cfg.ClientTLS(),
		handshakeTimeout: HandshakeTimeout,
	}, nil
}

// Accept waits for the next peer connection: a TLS server connection whose handshake
// runs, within HandshakeTimeout, on its first Read or Write (so a slow peer does not hold
// up the accept loop). A peer without a certificate of the cluster CA fails there.
func (s *StreamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	return &serverConn{Conn: tls.Server(c, s.server), timeout: s.handshakeTimeout}, nil
}

// Close stops listening; connections already made stay open.
func (s *StreamLayer) Close() error { return s.ln.Close() }

// Addr returns the advertise address, a *net.TCPAddr.
func (s *StreamLayer) Addr() net.Addr { return s.addr }

// Dial connects to a peer and completes the TLS handshake before returning, so a peer
// that is not a node of the cluster CA fails here (with a *tls.CertificateVerificationError
// in the chain when its certificate is not trusted). timeout bounds the connect and the
// handshake; 0 means HandshakeTimeout.
func (s *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 {
		timeout = HandshakeTimeout
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(address), s.client)
	if err != nil {
		return nil, fmt.Errorf("dial raft peer %s: %w", address, err)
	}
	return c, nil
}

// serverConn is an accepted *tls.Conn whose handshake is bounded by a timeout.
type serverConn struct {
	*tls.Conn
	timeout time.Duration
	once    sync.Once
	err     error
}

func (c *serverConn) handshake() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		if err := c.Conn.HandshakeContext(ctx); err != nil {
			c.err = fmt.Errorf("TLS handshake with %s: %w", c.RemoteAddr(), err)
		}
	})
	return c.err
}

func (c *serverConn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *serverConn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// NewTransport returns raft's network transport over sl (pool of 3 connections per
// peer, 10 s I/O timeout). Closing the transport closes sl.
func NewTransport(sl *StreamLayer, logger hclog.Logger) *raft.NetworkTransport {
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  sl,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  logger,
	})
}
