package httpapi

import (
	"fmt"
	"io"
	"net/http"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/peer"
	"github.com/migshm/migshm/shmowner/record"
)

// Where a request is served. The rule for relayed requests is the same everywhere: a
// request another daemon relayed here is served here or refused, never relayed again,
// so two nodes whose tables disagree cannot bounce it between them; the caller that
// relayed it retries.

// onLeader serves a call on the leader: local() if this node leads, otherwise the
// leader's answer to the same call (method, path and body in), decoded into out.
func (s *server) onLeader(r *http.Request, method, path string, in, out any, local func() (any, error)) (any, error) {
	if s.Peers == nil || s.Cluster.IsLeader() {
		return local()
	}
	if by := peer.ForwardedBy(r); by != "" {
		return nil, fmt.Errorf("%s: %s sent this here as to the leader, but this node does not lead (any more); try again: %w",
			path, by, record.ErrNotLeader)
	}
	addr := s.Cluster.LeaderAPI()
	if addr == "" {
		return nil, fmt.Errorf("%s: no leader known (see `migshm status`): %w", path, api.ErrNoLeader)
	}
	if err := s.Peers.Forward(addr).Call(r.Context(), method, path, in, out); err != nil {
		return nil, err
	}
	if out == nil {
		return struct{}{}, nil
	}
	return out, nil
}

// nodeOf returns "" if workload w runs on this node, otherwise the peer API address of
// its node, where the request is to be relayed.
func (s *server) nodeOf(r *http.Request, w api.Workload) (string, error) {
	if s.Peers == nil || w.Node == s.Cluster.Self() {
		return "", nil
	}
	if by := peer.ForwardedBy(r); by != "" {
		return "", fmt.Errorf("workload %s: %s sent the request here but the table says it runs on %s; retry: %w",
			w.Name, by, w.Node, api.ErrUnreachable)
	}
	addr := s.Cluster.NodeAPI(w.Node)
	if addr == "" {
		return "", fmt.Errorf("workload %s runs on node %s, which has no address in the table: %w", w.Name, w.Node, api.ErrUnreachable)
	}
	return addr, nil
}

// relay sends the call (method, path, body in) to the peer API at addr and copies its
// answer to w as it comes: a stream (a move's events, a log) or an error.
func (s *server) relay(w http.ResponseWriter, r *http.Request, addr, method, path string, in any) {
	resp, err := s.Peers.Forward(addr).Open(r.Context(), method, path, in)
	if err != nil {
		writeError(w, s.Log, err)
		return
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(resp.StatusCode)
	copyFlush(newFlushWriter(w), resp.Body)
}

// copyFlush copies r to w as it arrives; it ends when r ends or w fails.
func copyFlush(w io.Writer, r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // io.EOF or the peer went away: either way the copy is over
			return
		}
	}
}
