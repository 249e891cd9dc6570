package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner/record"
)

// Local returns the handler of the local API: the CLI's, root only.
func Local(cfg Config) http.Handler {
	s := &server{cfg}
	mux := http.NewServeMux()
	s.userRoutes(mux)
	// Starting a command is local only: no peer may make another node run a program.
	mux.HandleFunc("POST /v1/workloads", s.handle(withBody(func(r *http.Request, req api.RunRequest) (any, error) {
		return s.Service.Run(r.Context(), req)
	})))
	return s.rootOnly(limitBody(mux))
}

// limitBody bounds the request bodies of h.
func limitBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		h.ServeHTTP(w, r)
	})
}

// fresh reports whether a read must catch up with the leader first (everything but
// ?stale=true).
func fresh(r *http.Request) bool { return r.URL.Query().Get("stale") != "true" }

// userRoutes are the routes of a user's requests, served on both APIs: the local
// socket (the CLI) and the peer API (another daemon relaying a user's request to the
// node that must serve it).
func (s *server) userRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/status", s.handle(func(r *http.Request) (any, error) {
		st := s.Service.Status(r.Context())
		if fresh(r) { // a peer catching up asks for ?stale=true: no balancer
			ctx, cancel := context.WithTimeout(r.Context(), time.Second)
			defer cancel()
			if rep, err := s.onLeader(r.WithContext(ctx), http.MethodGet, "/v1/balance/last", nil, &api.BalanceReport{},
				func() (any, error) { return s.Service.LastBalance(ctx) }); err == nil {
				st.Balancer = rep.(*api.BalanceReport)
			}
		}
		return st, nil
	}))
	mux.HandleFunc("GET /v1/nodes", s.handle(func(r *http.Request) (any, error) { return s.Service.Nodes(r.Context(), fresh(r)), nil }))
	mux.HandleFunc("GET /v1/workloads", s.handle(func(r *http.Request) (any, error) { return s.Service.Workloads(r.Context(), fresh(r)), nil }))
	mux.HandleFunc("GET /v1/segments", s.handle(func(r *http.Request) (any, error) { return s.Service.Segments(r.Context(), fresh(r)), nil }))
	mux.HandleFunc("GET /v1/migrations", s.handle(func(r *http.Request) (any, error) { return s.Service.Migrations(r.Context(), fresh(r)), nil }))
	mux.HandleFunc("POST /v1/migrations", s.move)
	mux.HandleFunc("POST /v1/migrations/check", s.handle(withBody(s.check)))
	mux.HandleFunc("POST /v1/workloads/{ref}/stop", s.handle(withBody(s.stop)))
	mux.HandleFunc("DELETE /v1/workloads/{ref}", s.handle(s.remove))
	mux.HandleFunc("GET /v1/workloads/{ref}/logs", s.logs)
	mux.HandleFunc("POST /v1/workloads/{ref}/pin", s.handle(s.pin(true)))
	mux.HandleFunc("POST /v1/workloads/{ref}/unpin", s.handle(s.pin(false)))
	mux.HandleFunc("POST /v1/nodes/{id}/drain", s.handle(s.drain(true)))
	mux.HandleFunc("POST /v1/nodes/{id}/undrain", s.handle(s.drain(false)))
	mux.HandleFunc("POST /v1/leave", s.handle(withBody(s.leave)))
	mux.HandleFunc("GET /v1/revocations", s.handle(func(r *http.Request) (any, error) { return s.Service.Revocations(r.Context()), nil }))
	mux.HandleFunc("POST /v1/revocations", s.handle(withBody(func(r *http.Request, req api.RevokeRequest) (any, error) {
		return s.Service.Revoke(r.Context(), req)
	})))
	mux.HandleFunc("GET /v1/balance", s.handle(func(r *http.Request) (any, error) {
		return s.onLeader(r, r.Method, r.URL.Path, nil, &api.BalanceReport{},
			func() (any, error) { return s.Service.Balance(r.Context(), true) })
	}))
	mux.HandleFunc("POST /v1/balance", s.handle(func(r *http.Request) (any, error) {
		return s.onLeader(r, r.Method, r.URL.Path, struct{}{}, &api.BalanceReport{},
			func() (any, error) { return s.Service.Balance(r.Context(), false) })
	}))
	mux.HandleFunc("GET /v1/balance/last", s.handle(func(r *http.Request) (any, error) {
		return s.onLeader(r, r.Method, r.URL.Path, nil, &api.BalanceReport{},
			func() (any, error) { return s.Service.LastBalance(r.Context()) })
	}))
	mux.HandleFunc("GET /v1/events", s.events)
	mux.HandleFunc("POST /v1/probe", s.handle(func(r *http.Request) (any, error) {
		return struct{}{}, s.Service.Probe(r.Context())
	}))
}

func (s *server) stop(r *http.Request, req api.StopRequest) (any, error) {
	w, err := s.Service.Workload(r.Context(), r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	addr, err := s.nodeOf(r, w)
	if err != nil {
		return nil, err
	}
	if addr != "" {
		var out api.Workload
		return out, s.Peers.Forward(addr).Call(r.Context(), http.MethodPost, "/v1/workloads/"+w.ID+"/stop", req, &out)
	}
	return s.Service.Stop(r.Context(), w, req)
}

func (s *server) remove(r *http.Request) (any, error) {
	w, err := s.Service.Workload(r.Context(), r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	if w.State != record.WorkloadExited {
		return nil, fmt.Errorf("workload %s is %s; stop it first (`migshm stop %s`): %w", w.Name, w.State, w.Name, api.ErrStillRunning)
	}
	addr, err := s.nodeOf(r, w)
	if err != nil {
		return nil, err
	}
	if addr != "" {
		return struct{}{}, s.Peers.Forward(addr).Call(r.Context(), http.MethodDelete, "/v1/workloads/"+w.ID, nil, nil)
	}
	return struct{}{}, s.Service.Remove(r.Context(), w)
}

func (s *server) logs(w http.ResponseWriter, r *http.Request) {
	wl, err := s.Service.Workload(r.Context(), r.PathValue("ref"))
	if err != nil {
		writeError(w, s.Log, err)
		return
	}
	q := r.URL.Query()
	stream := q.Get("stream")
	if stream == "" {
		stream = "stdout"
	}
	if stream != "stdout" && stream != "stderr" {
		writeError(w, s.Log, fmt.Errorf("stream %q: want stdout or stderr: %w", stream, api.ErrBadRequest))
		return
	}
	tail, _ := strconv.Atoi(q.Get("tail"))
	addr, err := s.nodeOf(r, wl)
	if err != nil {
		writeError(w, s.Log, err)
		return
	}
	if addr != "" {
		s.relay(w, r, addr, http.MethodGet, "/v1/workloads/"+wl.ID+"/logs?"+q.Encode(), nil)
		return
	}
	lg, err := s.Service.OpenLog(r.Context(), wl, stream, tail)
	if err != nil {
		writeError(w, s.Log, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	lg.Copy(r.Context(), newFlushWriter(w), q.Get("follow") == "true")
}

func (s *server) check(r *http.Request, req api.CheckRequest) (any, error) {
	w, err := s.Service.Workload(r.Context(), req.Workload)
	if err != nil {
		return nil, err
	}
	if w.State == record.WorkloadExited {
		return nil, fmt.Errorf("workload %s exited; there is nothing to move: %w", w.Name, api.ErrNotRunning)
	}
	addr, err := s.nodeOf(r, w)
	if err != nil {
		return nil, err
	}
	if addr != "" {
		req.Workload = w.ID
		var out api.CheckReport
		return out, s.Peers.Forward(addr).Call(r.Context(), http.MethodPost, "/v1/migrations/check", req, &out)
	}
	return s.Service.Check(r.Context(), w, req.Target)
}

// move serves POST /v1/migrations: the workload's node runs the migration and streams
// its progress as MoveEvents (NDJSON); another node relays the request there and the
// stream back. A request refused before the migration starts gets a plain JSON error.
// The migration does not depend on the caller: if the client goes away it goes on (see
// `migshm migrations`).
func (s *server) move(w http.ResponseWriter, r *http.Request) {
	var req api.MoveRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, s.Log, err)
		return
	}
	wl, err := s.Service.Workload(r.Context(), req.Workload)
	if err == nil {
		err = s.Service.ValidateMove(r.Context(), wl, req)
	}
	if err != nil {
		writeError(w, s.Log, err)
		return
	}
	addr, err := s.nodeOf(r, wl)
	if err != nil {
		writeError(w, s.Log, err)
		return
	}
	if addr != "" {
		req.Workload = wl.ID
		s.relay(w, r, addr, http.MethodPost, "/v1/migrations", req)
		return
	}

	events := make(chan api.MoveEvent, 256)
	gone := make(chan struct{}) // the handler returned: nobody reads events any more
	defer close(gone)
	done, err := s.Service.Move(wl, req, func(ev api.MoveEvent) {
		if ev.Event == api.EventDone || ev.Event == api.EventError {
			// The outcome must reach a client that is still there.
			select {
			case events <- ev:
			case <-gone:
			}
			return
		}
		select {
		case events <- ev:
		default: // a slow client misses a progress line, never the outcome
		}
	})
	if err != nil {
		writeError(w, s.Log, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	out := newFlushWriter(w)
	enc := json.NewEncoder(out)
	for {
		select {
		case ev := <-events:
			if enc.Encode(ev) != nil {
				return
			}
		case <-done:
			// The migration ended: every event it emitted is in the channel.
			for {
				select {
				case ev := <-events:
					if enc.Encode(ev) != nil {
						return
					}
				default:
					return
				}
			}
		}
	}
}

func (s *server) pin(pinned bool) func(r *http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		w, err := s.Service.Workload(r.Context(), r.PathValue("ref"))
		if err != nil {
			return nil, err
		}
		return s.Service.SetPinned(r.Context(), w, pinned)
	}
}

func (s *server) drain(drain bool) func(r *http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		return s.Service.SetDrain(r.Context(), r.PathValue("id"), drain)
	}
}

// leave removes a node from the cluster, on the leader; Node "" names the node that
// took the request.
func (s *server) leave(r *http.Request, req api.LeaveRequest) (any, error) {
	if req.Node == "" {
		req.Node = s.Cluster.Self()
	}
	return s.onLeader(r, http.MethodPost, "/v1/leave", req, &api.LeaveResult{},
		func() (any, error) { return s.Service.Leave(r.Context(), req) })
}

// events serves GET /v1/events?since=SEQ: the table changes this node saw after SEQ
// that it still keeps, as a JSON array; with follow=true (or 1) an NDJSON stream of
// them, then of each new one as it comes, until the client goes away or the Log is
// closed (the daemon stops). The events are
// this node's own, never relayed: each node numbers its own.
func (s *server) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since uint64
	if v := q.Get("since"); v != "" {
		var err error
		if since, err = strconv.ParseUint(v, 10, 64); err != nil {
			writeError(w, s.Log, fmt.Errorf("since %q: want an event number: %w", v, api.ErrBadRequest))
			return
		}
	}
	if s.Events == nil {
		writeError(w, s.Log, fmt.Errorf("this node keeps no events: %w", api.ErrNotReady))
		return
	}
	if f := q.Get("follow"); f != "true" && f != "1" {
		evs := s.Events.Since(since)
		if evs == nil {
			evs = []api.Event{}
		}
		writeJSON(w, http.StatusOK, evs)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	out := newFlushWriter(w)
	out.Flush() // the client sees the answer before the first event
	enc := json.NewEncoder(out)
	for {
		evs, changed := s.Events.Follow(since)
		for _, ev := range evs {
			if enc.Encode(ev) != nil {
				return
			}
			since = ev.Seq
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		case <-s.Events.Done():
			return
		}
	}
}
