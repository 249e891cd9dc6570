package httpapi

import (
	"fmt"
	"net/http"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/migration"
	"github.com/migshm/migshm/internal/pki"
	"github.com/migshm/migshm/shmowner/record"
)

// Peer returns the handler of the peer API: other daemons', over mutual TLS. It serves
// the users' routes too (another daemon relays a user's request to the node that must
// serve it), and the cluster's and migrations' own.
func Peer(cfg Config) http.Handler {
	s := &server{cfg}
	mux := http.NewServeMux()
	s.userRoutes(mux)
	mux.Handle("POST /peer/v1/apply", s.handle(withBody(s.apply)))
	mux.Handle("POST /peer/v1/join", s.handle(withBody(s.join)))

	// The target side of migrations.
	mux.Handle("POST "+migration.PathCheck, s.handle(withBody(func(r *http.Request, req migration.TargetCheckRequest) (any, error) {
		return s.Target.CheckTarget(r.Context(), req)
	})))
	mux.Handle("POST "+migration.PathPrepare, s.handle(withBody(func(r *http.Request, req migration.PrepareRequest) (any, error) {
		return s.Target.Prepare(r.Context(), caller(r), r.PathValue("id"), req)
	})))
	mux.Handle("POST "+migration.PathPages, s.handle(func(r *http.Request) (any, error) {
		return s.Target.Pages(r.Context(), caller(r), r.PathValue("id"), r.Body)
	}))
	mux.Handle("POST "+migration.PathFiles, s.handle(func(r *http.Request) (any, error) {
		q := r.URL.Query()
		return struct{}{}, s.Target.File(r.Context(), caller(r), r.PathValue("id"), q.Get("workload"), q.Get("name"), r.Body)
	}))
	mux.Handle("POST "+migration.PathCarry, s.handle(func(r *http.Request) (any, error) {
		return struct{}{}, s.Target.Carry(r.Context(), caller(r), r.PathValue("id"), r.URL.Query().Get("path"), r.Body)
	}))
	mux.Handle("POST "+migration.PathImages, s.handle(func(r *http.Request) (any, error) {
		return s.Target.Images(r.Context(), caller(r), r.PathValue("id"), r.Body)
	}))
	mux.Handle("POST "+migration.PathRestore, s.handle(withBody(func(r *http.Request, req migration.RestoreRequest) (any, error) {
		return s.Target.Restore(r.Context(), caller(r), r.PathValue("id"), req)
	})))
	mux.Handle("POST "+migration.PathResume, s.handle(func(r *http.Request) (any, error) {
		return struct{}{}, s.Target.Resume(r.Context(), caller(r), r.PathValue("id"))
	}))
	mux.Handle("GET "+migration.PathPing, s.handle(func(r *http.Request) (any, error) {
		return struct{}{}, s.Target.Ping(caller(r), r.PathValue("id"))
	}))
	mux.Handle("POST "+migration.PathAbort, s.handle(func(r *http.Request) (any, error) {
		return struct{}{}, s.Target.Abort(r.Context(), caller(r), r.PathValue("id"))
	}))
	// Pages, files and images are data streams: their readers bound them.
	streams := map[string]bool{"POST " + migration.PathPages: true, "POST " + migration.PathFiles: true,
		"POST " + migration.PathCarry: true, "POST " + migration.PathImages: true}
	return s.peersOnly(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); !streams[pattern] {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		mux.ServeHTTP(w, r)
	}))
}

// apply commits a command another node sent to the leader. Its senders mark it as
// relayed, so a node that does not lead any more refuses it and the sender retries.
func (s *server) apply(r *http.Request, req api.ApplyRequest) (any, error) {
	return s.onLeader(r, http.MethodPost, "/peer/v1/apply", req, nil,
		func() (any, error) { return struct{}{}, s.Members.ApplyForwarded(r.Context(), caller(r), req) })
}

// join adds a node to the cluster. It is served only on the leader and only over the
// joiner's own connection: the caller's certificate must name the node it joins as, and
// a member that is not the leader refuses (the joiner asks it who leads and joins
// there), so no member can join a node under a name other than its own.
func (s *server) join(r *http.Request, req api.JoinRequest) (any, error) {
	if pki.ValidateName(req.ID) != nil || req.RaftAddr == "" || req.APIAddr == "" {
		return nil, fmt.Errorf("join: need a valid id, raft_addr and api_addr: %w", api.ErrBadRequest)
	}
	if cn := caller(r); cn != req.ID {
		return nil, fmt.Errorf("join as %q refused: the caller's certificate is for %q (a node joins only itself, "+
			"over its own connection): %w", req.ID, cn, api.ErrForbidden)
	}
	if s.Peers != nil && !s.Cluster.IsLeader() {
		leader := s.Cluster.LeaderAPI()
		if leader == "" {
			return nil, fmt.Errorf("join: this node does not lead and knows no leader yet; try again: %w", record.ErrNotLeader)
		}
		return nil, fmt.Errorf("join: this node does not lead; join through the leader at %s: %w", leader, record.ErrNotLeader)
	}
	return struct{}{}, s.Members.Join(r.Context(), req)
}
