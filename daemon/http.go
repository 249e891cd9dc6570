package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/migshm/migshm/internal/pki"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// maxBody bounds every request body; API requests are small.
const maxBody = 1 << 20

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// readJSON decodes a request body strictly: unknown fields and trailing data are errors.
func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed request body: %v: %w", err, ErrBadRequest)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("malformed request body: trailing data: %w", ErrBadRequest)
	}
	return nil
}

// handler adapts a func returning (value, error) to HTTP: the value as JSON with 200,
// or the error with its code.
func (d *Daemon) handler(fn func(r *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := fn(r)
		if err != nil {
			writeError(w, d.log, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// routes are served on both APIs: the local socket (CLI) and the peer API (other
// daemons forwarding a user's request to the node that must serve it).
func (d *Daemon) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/status", d.handler(func(r *http.Request) (any, error) {
		st := d.status()
		if r.URL.Query().Get("stale") != "true" { // catchUp's cheap form skips the balancer
			ctx, cancel := context.WithTimeout(r.Context(), time.Second)
			defer cancel()
			if rep, err := d.onLeader(ctx, r, http.MethodGet, "/v1/balance/last", d.lastBalance); err == nil {
				st.Balancer = rep
			}
		}
		return st, nil
	}))
	mux.HandleFunc("GET /v1/nodes", d.handler(func(r *http.Request) (any, error) { return d.readTable(r).Nodes(), nil }))
	mux.HandleFunc("GET /v1/workloads", d.handler(func(r *http.Request) (any, error) { return d.readTable(r).Workloads(), nil }))
	mux.HandleFunc("GET /v1/segments", d.handler(func(r *http.Request) (any, error) { return d.readTable(r).Segments(), nil }))
	mux.HandleFunc("GET /v1/migrations", d.handler(func(r *http.Request) (any, error) { return d.readTable(r).Migrations(), nil }))
	mux.HandleFunc("POST /v1/migrations", d.handleMove)
	mux.HandleFunc("POST /v1/migrations/check", d.handler(d.handleCheck))
	mux.HandleFunc("POST /v1/workloads/{ref}/stop", d.handler(d.handleStop))
	mux.HandleFunc("DELETE /v1/workloads/{ref}", d.handler(d.handleRemove))
	mux.HandleFunc("GET /v1/workloads/{ref}/logs", d.handleLogs)
	mux.HandleFunc("POST /v1/leave", d.handler(d.handleLeave))
	mux.HandleFunc("POST /v1/nodes/{id}/drain", d.handler(d.handleDrain(true)))
	mux.HandleFunc("POST /v1/nodes/{id}/undrain", d.handler(d.handleDrain(false)))
	mux.HandleFunc("POST /v1/workloads/{ref}/pin", d.handler(d.handlePin(true)))
	mux.HandleFunc("POST /v1/workloads/{ref}/unpin", d.handler(d.handlePin(false)))
	mux.HandleFunc("GET /v1/balance", d.handler(d.handleBalance(func(ctx context.Context) (*BalanceReport, error) {
		return d.balancePass(ctx, true, false)
	})))
	mux.HandleFunc("POST /v1/balance", d.handler(d.handleBalance(func(ctx context.Context) (*BalanceReport, error) {
		return d.balancePass(ctx, false, false)
	})))
	mux.HandleFunc("GET /v1/balance/last", d.handler(d.handleBalance(d.lastBalance)))
	mux.HandleFunc("POST /v1/probe", d.handler(func(r *http.Request) (any, error) {
		return struct{}{}, d.apply(r.Context(), shmowner.ProbeType, shmowner.ProbeRequest{Seq: uint64(time.Now().UnixNano())})
	}))
}

// localHandler serves the CLI on the unix socket. Only root may call it.
func (d *Daemon) localHandler() http.Handler {
	mux := http.NewServeMux()
	d.routes(mux)
	// Starting a command is local only: no peer may make another node run a program.
	mux.HandleFunc("POST /v1/workloads", d.handler(d.handleRun))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if uid := callerUID(r.Context()); uid != 0 {
			writeError(w, d.log, fmt.Errorf("the local API is root only (caller uid %d): %w", uid, ErrForbidden))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		mux.ServeHTTP(w, r)
	})
}

// peerHandler serves other daemons over mutual TLS (the TLS layer already refused
// anyone without a certificate of the cluster's CA).
func (d *Daemon) peerHandler() http.Handler {
	mux := http.NewServeMux()
	d.routes(mux)
	mux.HandleFunc("POST /peer/v1/apply", d.handler(d.handlePeerApply))
	mux.HandleFunc("POST /peer/v1/join", d.handler(d.handlePeerJoin))
	mux.HandleFunc("POST /peer/v1/remove", d.handler(d.handlePeerRemove))
	mux.HandleFunc("POST /peer/v1/migrations/target-check", d.handler(d.handlePeerTargetCheck))
	mux.HandleFunc("POST /peer/v1/migrations/{id}/prepare", d.handler(d.handlePeerPrepare))
	mux.HandleFunc("POST /peer/v1/migrations/{id}/pages", d.handler(d.handlePeerPages))
	mux.HandleFunc("POST /peer/v1/migrations/{id}/files", d.handler(d.handlePeerFiles))
	mux.HandleFunc("POST /peer/v1/migrations/{id}/images", d.handler(d.handlePeerImages))
	mux.HandleFunc("POST /peer/v1/migrations/{id}/restore", d.handler(d.handlePeerRestore))
	mux.HandleFunc("POST /peer/v1/migrations/{id}/resume", d.handler(d.handlePeerResume))
	mux.HandleFunc("POST /peer/v1/migrations/{id}/abort", d.handler(d.handlePeerAbort))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || pki.PeerName(*r.TLS) == "" {
			writeError(w, d.log, fmt.Errorf("peer API needs a client certificate: %w", ErrForbidden))
			return
		}
		// Page, image and file streams are big; their readers bound them (MaxBytes).
		if !isStreamPath(r.URL.Path) {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		mux.ServeHTTP(w, r)
	})
}

// isStreamPath names the peer endpoints whose bodies are data streams.
func isStreamPath(p string) bool {
	if !strings.HasPrefix(p, "/peer/v1/migrations/") {
		return false
	}
	return strings.HasSuffix(p, "/pages") || strings.HasSuffix(p, "/images") || strings.HasSuffix(p, "/files")
}

// handlePeerApply applies a command a follower forwarded. It never forwards again: if
// this node is not the leader any more the caller gets not_leader and retries.
func (d *Daemon) handlePeerApply(r *http.Request) (any, error) {
	var req applyRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	t := shmowner.MessageType(req.Type)
	if t == 0 || len(req.Body) == 0 {
		return nil, fmt.Errorf("apply: empty command: %w", ErrBadRequest)
	}
	// The body must decode as JSON before it goes into the log: an entry the FSM cannot
	// decode would stop every node.
	if !json.Valid(req.Body) {
		return nil, fmt.Errorf("apply %s: body is not JSON: %w", t, ErrBadRequest)
	}
	if err := checkDecodes(t, req.Body); err != nil {
		return nil, err
	}
	_, err := d.store.Apply(r.Context(), t, req.Body)
	return struct{}{}, err
}

// checkDecodes makes sure t is a known command and body decodes into its request type,
// as the FSM will decode it.
func checkDecodes(t shmowner.MessageType, body []byte) error {
	if err := shmowner.CheckCommand(t, body); err != nil {
		return fmt.Errorf("apply: %v: %w", err, ErrBadRequest)
	}
	return nil
}

// handlePeerJoin adds a node to the cluster. The first daemon to receive the request
// checks that the joiner's certificate names the node it joins as; a follower forwards
// to the leader.
func (d *Daemon) handlePeerJoin(r *http.Request) (any, error) {
	var req joinRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	if !nodeIDPattern.MatchString(req.ID) || req.RaftAddr == "" || req.APIAddr == "" {
		return nil, fmt.Errorf("join: need a valid id, raft_addr and api_addr: %w", ErrBadRequest)
	}
	if r.Header.Get(forwardedHeader) == "" {
		if cn := pki.PeerName(*r.TLS); cn != req.ID {
			return nil, fmt.Errorf("join as %q refused: the caller's certificate is for %q: %w", req.ID, cn, ErrForbidden)
		}
	}
	if !d.store.IsLeader() {
		addr := d.leaderAPI()
		if addr == "" {
			return nil, fmt.Errorf("join %s: %w", req.ID, ErrNoLeader)
		}
		return struct{}{}, d.forward(r.Context(), addr, "/peer/v1/join", req)
	}
	if err := d.store.Join(req.ID, req.RaftAddr); err != nil {
		return nil, err
	}
	d.log.Info("node joined", "peer", req.ID, "raft", req.RaftAddr, "api", req.APIAddr)
	return struct{}{}, d.apply(r.Context(), shmowner.RegisterNodeType,
		shmowner.RegisterNodeRequest{ID: req.ID, RaftAddr: req.RaftAddr, APIAddr: req.APIAddr})
}

// forwardedHeader marks a request one daemon forwards to another for a user or peer.
const forwardedHeader = "X-Migshm-Forwarded-By"

func (d *Daemon) forward(ctx context.Context, addr, path string, body any) error {
	return d.forwardTo(ctx, addr, http.MethodPost, path, body, nil)
}

func (d *Daemon) forwardTo(ctx context.Context, addr, method, path string, in, out any) error {
	c := newPeerClient(addr, d.peerTr)
	c.header = http.Header{forwardedHeader: {d.cfg.NodeID}}
	return c.do(ctx, method, path, in, out)
}

// handleLeave removes a node from Raft and the table (on the leader; forwarded there).
func (d *Daemon) handleLeave(r *http.Request) (any, error) {
	var req LeaveRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Node == "" {
		req.Node = d.cfg.NodeID
	}
	t := d.readTable(r)
	if _, ok := t.Node(req.Node); !ok && !d.inRaftConfig(req.Node) {
		return nil, fmt.Errorf("leave: node %q is not in the cluster: %w", req.Node, record.ErrUnknownNode)
	}
	if !req.Force {
		var running []string
		for _, w := range t.Workloads() {
			if w.Node == req.Node && w.State != record.WorkloadExited {
				running = append(running, w.Name)
			}
		}
		if len(running) > 0 {
			return nil, fmt.Errorf("node %s still runs %d workload(s) %v: stop or move them first, or use --force "+
				"(they keep running but the cluster forgets them): %w", req.Node, len(running), running, ErrStillRunning)
		}
	}
	if err := d.removeNode(r.Context(), req.Node); err != nil {
		return nil, err
	}
	d.log.Info("node left the cluster", "peer", req.Node)
	return LeaveResult{Node: req.Node}, nil
}

func (d *Daemon) inRaftConfig(id string) bool {
	f := d.store.Raft().GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			return true
		}
	}
	return false
}

// removeNode removes id from Raft and the table, on the leader or through it.
func (d *Daemon) removeNode(ctx context.Context, id string) error {
	if !d.store.IsLeader() {
		addr := d.leaderAPI()
		if addr == "" {
			return fmt.Errorf("remove node %s: %w", id, ErrNoLeader)
		}
		return d.forward(ctx, addr, "/peer/v1/remove", LeaveRequest{Node: id, Force: true})
	}
	// The table first: once the leader removes itself from Raft it steps down and its
	// Raft shuts down, so nothing can be committed through it after that.
	if _, ok := d.store.Table().Node(id); ok {
		if _, err := d.store.Apply(ctx, shmowner.RemoveNodeType, shmowner.RemoveNodeRequest{ID: id}); err != nil {
			return err
		}
	}
	if d.inRaftConfig(id) {
		if err := d.store.Remove(id); err != nil {
			return err
		}
	}
	return nil
}

func (d *Daemon) handlePeerRemove(r *http.Request) (any, error) {
	var req LeaveRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Node == "" {
		return nil, fmt.Errorf("remove: no node named: %w", ErrBadRequest)
	}
	return struct{}{}, d.removeNode(r.Context(), req.Node)
}

// resolve finds a workload by id, name, unique id prefix, or host pid of a process on
// the node that runs it.
func resolve(t *shmowner.Table, ref string) (record.Workload, error) {
	if ref == "" {
		return record.Workload{}, fmt.Errorf("no workload named: %w", ErrBadRequest)
	}
	ws := t.Workloads()
	for _, w := range ws {
		if w.ID == ref || w.Name == ref {
			return w, nil
		}
	}
	if pid, err := strconv.Atoi(ref); err == nil && pid > 0 {
		// Only running workloads: exited ones keep their pids, which the kernel reuses.
		for _, w := range ws {
			if w.State == record.WorkloadExited {
				continue
			}
			if w.InitPid == pid {
				return w, nil
			}
			for _, p := range w.Pids {
				if p == pid {
					return w, nil
				}
			}
		}
	}
	var match []record.Workload
	for _, w := range ws {
		if len(ref) >= 3 && len(w.ID) > len(ref) && w.ID[:len(ref)] == ref {
			match = append(match, w)
		}
	}
	if len(match) == 1 {
		return match[0], nil
	}
	if len(match) > 1 {
		return record.Workload{}, fmt.Errorf("%q matches %d workloads; give more of the id: %w", ref, len(match), ErrBadRequest)
	}
	return record.Workload{}, fmt.Errorf("no workload %q (see `migshm ps`): %w", ref, record.ErrUnknownWorkload)
}

// workloadNodeAddr returns "" if the workload runs on this node, otherwise the peer API
// address of its node, where the request is to be forwarded. A request that was already
// forwarded is never forwarded again (two tables that disagree must not bounce it).
func (d *Daemon) workloadNodeAddr(r *http.Request, w record.Workload) (string, error) {
	if w.Node == d.cfg.NodeID {
		return "", nil
	}
	if by := r.Header.Get(forwardedHeader); by != "" {
		return "", fmt.Errorf("workload %s: %s sent the request here but the table says it runs on %s; retry: %w",
			w.Name, by, w.Node, ErrUnreachable)
	}
	n, ok := d.store.Table().Node(w.Node)
	if !ok || n.APIAddr == "" {
		return "", fmt.Errorf("workload %s runs on node %s, which has no address in the table: %w", w.Name, w.Node, ErrUnreachable)
	}
	return n.APIAddr, nil
}

func (d *Daemon) handleRun(r *http.Request) (any, error) {
	var req RunRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	return d.sup.start(r.Context(), req)
}

func (d *Daemon) handleStop(r *http.Request) (any, error) {
	var req StopRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	w, err := resolve(d.readTable(r), r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	addr, err := d.workloadNodeAddr(r, w)
	if err != nil {
		return nil, err
	}
	if addr != "" {
		var out Workload
		return out, d.forwardTo(r.Context(), addr, http.MethodPost, "/v1/workloads/"+w.ID+"/stop", req, &out)
	}
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = d.cfg.StopTimeout
	}
	return d.sup.stop(r.Context(), w.ID, timeout)
}

func (d *Daemon) handleRemove(r *http.Request) (any, error) {
	w, err := resolve(d.readTable(r), r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	if w.State != record.WorkloadExited {
		return nil, fmt.Errorf("workload %s is %s; stop it first (`migshm stop %s`): %w", w.Name, w.State, w.Name, ErrStillRunning)
	}
	addr, err := d.workloadNodeAddr(r, w)
	if err != nil {
		return nil, err
	}
	if addr != "" {
		return struct{}{}, d.forwardTo(r.Context(), addr, http.MethodDelete, "/v1/workloads/"+w.ID, nil, nil)
	}
	return struct{}{}, d.sup.remove(r.Context(), w.ID)
}

func (d *Daemon) handleLogs(w http.ResponseWriter, r *http.Request) {
	wl, err := resolve(d.readTable(r), r.PathValue("ref"))
	if err != nil {
		writeError(w, d.log, err)
		return
	}
	q := r.URL.Query()
	stream := q.Get("stream")
	if stream == "" {
		stream = "stdout"
	}
	if stream != "stdout" && stream != "stderr" {
		writeError(w, d.log, fmt.Errorf("stream %q: want stdout or stderr: %w", stream, ErrBadRequest))
		return
	}
	follow := q.Get("follow") == "true"
	tail, _ := strconv.Atoi(q.Get("tail"))
	addr, err := d.workloadNodeAddr(r, wl)
	if err != nil {
		writeError(w, d.log, err)
		return
	}
	if addr != "" {
		c := newPeerClient(addr, d.peerTr)
		c.header = http.Header{forwardedHeader: {d.cfg.NodeID}}
		resp, err := c.send(r.Context(), http.MethodGet, "/v1/workloads/"+wl.ID+"/logs?"+q.Encode(), nil)
		if err != nil {
			writeError(w, d.log, err)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		copyFlush(w, resp.Body)
		return
	}
	if err := d.sup.logs(r.Context(), w, wl.ID, stream, follow, tail); err != nil {
		writeError(w, d.log, err)
	}
}

// copyFlush copies r to w, flushing after every read so followers see lines at once.
func copyFlush(w http.ResponseWriter, r io.Reader) {
	f, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if f != nil {
				f.Flush()
			}
		}
		if err != nil { // io.EOF or the peer went away: either way the copy is over
			return
		}
	}
}
