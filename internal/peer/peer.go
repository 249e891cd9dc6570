// Package peer reaches other daemons' peer APIs: one mutual-TLS transport for all of
// them, an api.Client per address, and the mark that a request was relayed for someone
// else (a user's request, or another daemon's), which its receiver never relays again.
package peer

import (
	"crypto/tls"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/migshm/migshm/api"
)

// ForwardedHeader marks a request one daemon relays to another; its value is the
// relaying node's id.
const ForwardedHeader = "X-Migshm-Forwarded-By"

// Peers dials the other daemons of the cluster.
type Peers struct {
	cfg     *tls.Config
	tr      atomic.Pointer[http.Transport]
	forward http.Header
}

// New returns the dialer of node self, whose TLS client configuration is cfg.
func New(cfg *tls.Config, self string) *Peers {
	p := &Peers{cfg: cfg, forward: http.Header{ForwardedHeader: {self}}}
	p.tr.Store(newTransport(cfg))
	return p
}

func newTransport(cfg *tls.Config) *http.Transport {
	return &http.Transport{
		TLSClientConfig:     cfg,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 64, // forwarded writes come in bursts; a new TLS handshake per write is slow
		IdleConnTimeout:     time.Minute,
	}
}

// Renew makes later calls use new connections, and so this node's current certificate
// (after a reload), while calls in flight finish on theirs. Without it, pooled
// connections would present a certificate revoked since.
func (p *Peers) Renew() {
	old := p.tr.Swap(newTransport(p.cfg))
	old.CloseIdleConnections()
}

// Client returns a client of the peer API at addr for this daemon's own calls.
func (p *Peers) Client(addr string) *api.Client { return api.NewPeerClient(addr, p.tr.Load(), nil) }

// Forward returns a client of the peer API at addr for requests this daemon relays:
// each is marked, so the receiver serves it or refuses it but never relays it again
// (two nodes whose tables disagree must not bounce a request between them).
func (p *Peers) Forward(addr string) *api.Client {
	return api.NewPeerClient(addr, p.tr.Load(), p.forward)
}

// ForwardedBy returns the id of the node that relayed r, "" if r was not relayed.
func ForwardedBy(r *http.Request) string { return r.Header.Get(ForwardedHeader) }
