package httpapi

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"syscall"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/peer"
	"github.com/migshm/migshm/internal/pki"
	"golang.org/x/sys/unix"
)

type credKey struct{}

// PeerCredContext records the uid of the process at the other end of a local API
// connection (SO_PEERCRED), so the local API can refuse anyone but root even if the
// socket's mode were loosened. Use it as the local server's ConnContext.
func PeerCredContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return ctx
	}
	return context.WithValue(ctx, credKey{}, cred)
}

// callerUID returns the uid of the local API caller, -1 if unknown.
func callerUID(ctx context.Context) int {
	if c, ok := ctx.Value(credKey{}).(*unix.Ucred); ok {
		return int(c.Uid)
	}
	return -1
}

// rootOnly refuses every caller of h but root.
func (s *server) rootOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if uid := callerUID(r.Context()); uid != 0 {
			writeError(w, s.Log, fmt.Errorf("the local API is root only (caller uid %d): %w", uid, api.ErrForbidden))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// caller returns the node name of a peer API request's client certificate ("" if none).
func caller(r *http.Request) string {
	if r.TLS == nil {
		return ""
	}
	return pki.PeerName(*r.TLS)
}

// peersOnly refuses every caller of h without a client certificate (the TLS layer
// already refused certificates of any other CA), and requests whose relay mark names
// another node than the caller.
func (s *server) peersOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cn := caller(r)
		if cn == "" {
			writeError(w, s.Log, fmt.Errorf("peer API needs a client certificate: %w", api.ErrForbidden))
			return
		}
		if s.Revoked != nil && len(r.TLS.PeerCertificates) > 0 && s.Revoked(r.TLS.PeerCertificates[0]) {
			writeError(w, s.Log, fmt.Errorf("the caller's certificate (%s) is revoked in this cluster: %w", cn, api.ErrForbidden))
			return
		}
		// A relayed request names its relayer, which must be the caller: no member
		// can pass its request off as another's.
		if by := peer.ForwardedBy(r); by != "" && by != cn {
			writeError(w, s.Log, fmt.Errorf("request marked as relayed by %q, but the caller's certificate is for %q: %w",
				by, cn, api.ErrForbidden))
			return
		}
		h.ServeHTTP(w, r)
	})
}
