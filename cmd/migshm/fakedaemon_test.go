package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/events"
	"github.com/migshm/migshm/internal/httpapi"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/shmowner/record"
)

// newFakeDaemon serves the daemon's real local API (httpapi.Local) on a unix socket, with
// canned data and behaviours behind it (fakeDaemon, an httpapi.Service). The CLI talks
// to it as to migshmd, so the routes, the request decoding and the error encoding the
// CLI's tests see are the daemon's own.

// apiCall is one request the fake daemon received.
type apiCall struct {
	Method, Path string
	Query        url.Values
	Body         string
}

// fakeDaemon is the Service behind the real router.
type fakeDaemon struct {
	sock       string
	nodes      []api.Node
	workloads  []api.Workload
	migrations []api.Migration // as the daemon lists them: sorted by id
	status     api.Status      // the router adds the balancer, from LastBalance
	balance    api.BalanceReport
	// last is the leader's newest balancer pass (GET /v1/balance/last, and the balancer
	// section of GET /v1/status); nil: the leader does not answer.
	last *api.BalanceReport
	// events are the table's events the router serves (GET /v1/events): fakeEvents.
	events *events.Log
	// revoked is the denylist Revoke adds to.
	revoked []api.Revocation

	mu    sync.Mutex
	calls []apiCall
	// listWorkloads, if set, answers Workloads (GET /v1/workloads) instead of workloads;
	// n counts those requests, from 1.
	listWorkloads func(n int) []api.Workload
	workloadLists int
}

var _ httpapi.Service = (*fakeDaemon)(nil)

func newFakeDaemon(t *testing.T) *fakeDaemon {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "the local API (httpapi.Local) serves root only; run the tests as root")
	}
	f := &fakeDaemon{sock: filepath.Join(t.TempDir(), "migshmd.sock")}
	f.nodes, f.workloads = fakeTable()
	f.migrations = fakeMigrations()
	f.status = fakeStatus
	f.balance = fakeBalance(time.Now())
	f.events = events.NewLog(100)
	f.events.Append(fakeEvents()...)
	router := httpapi.Local(httpapi.Config{Service: f, Cluster: fakeCluster{}, Log: slog.New(slog.DiscardHandler),
		Events: f.events})

	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(f.recording(t, router))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Config.ConnContext = httpapi.PeerCredContext // as the daemon serves it: root only
	srv.Start()
	t.Cleanup(srv.Close)
	return f
}

// recording records each request as the CLI sent it, then lets the router answer it. A
// request the router has no route for fails the test.
func (f *fakeDaemon) recording(t *testing.T, router http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(b))
		f.mu.Lock()
		f.calls = append(f.calls, apiCall{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Body: string(b)})
		f.mu.Unlock()
		rw := &routeCheck{ResponseWriter: w}
		router.ServeHTTP(rw, r)
		if rw.unrouted {
			t.Errorf("unexpected request %s %s: httpapi.Local has no such route", r.Method, r.URL)
			return
		}
		coverage.request(r.Method + " " + r.URL.Path)
	})
}

// routeCheck notes whether the router answered with its mux's own 404 or 405, in text:
// an API error (an unknown workload is a 404 too) is JSON.
type routeCheck struct {
	http.ResponseWriter
	unrouted bool
}

func (w *routeCheck) WriteHeader(code int) {
	if (code == http.StatusNotFound || code == http.StatusMethodNotAllowed) && w.Header().Get("Content-Type") != "application/json" {
		w.unrouted = true
	}
	w.ResponseWriter.WriteHeader(code)
}

// Flush lets the router stream (logs, a move's events) through the check.
func (w *routeCheck) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

// takeCalls returns the requests received since the last call.
func (f *fakeDaemon) takeCalls() []apiCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// fakeCluster is a cluster of one for the router: n1 leads and serves every request.
type fakeCluster struct{}

func (fakeCluster) Self() string          { return "n1" }
func (fakeCluster) IsLeader() bool        { return true }
func (fakeCluster) LeaderAPI() string     { return "" }
func (fakeCluster) NodeAPI(string) string { return "" }

// daemonError is an error of the fake daemon: the sentinel the router encodes as its
// wire code, and the message the tests expect to the letter.
type daemonError struct {
	sentinel error
	msg      string
}

func daemonErr(sentinel error, format string, args ...any) error {
	return &daemonError{sentinel, fmt.Sprintf(format, args...)}
}

func (e *daemonError) Error() string { return e.msg }
func (e *daemonError) Unwrap() error { return e.sentinel }

// The Service: what the daemon does once the router has decoded a request.

func (f *fakeDaemon) Status(context.Context) api.Status {
	coverage.method("Status")
	return f.status
}

func (f *fakeDaemon) Nodes(context.Context, bool) []api.Node {
	coverage.method("Nodes")
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.nodes)
}

func (f *fakeDaemon) Workloads(context.Context, bool) []api.Workload {
	coverage.method("Workloads")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.workloadLists++
	if f.listWorkloads != nil {
		return f.listWorkloads(f.workloadLists)
	}
	return f.workloads
}

func (f *fakeDaemon) Segments(context.Context, bool) []api.Segment {
	coverage.method("Segments")
	return fakeSegments
}

func (f *fakeDaemon) Migrations(context.Context, bool) []api.Migration {
	coverage.method("Migrations")
	return f.migrations
}

// db1Streams name db1 too, to move it with the event stream of that name (moveScripts).
var db1Streams = map[string]bool{"cut": true, "stale": true}

// Workload finds a workload by id, name or the pid of one of its processes while it
// runs, as the daemon does.
func (f *fakeDaemon) Workload(_ context.Context, ref string) (api.Workload, error) {
	coverage.method("Workload")
	if db1Streams[ref] {
		ref = "db1"
	}
	pid, _ := strconv.Atoi(ref) // 0 if ref is no pid: no process has pid 0
	for _, w := range f.workloads {
		if w.ID == ref || w.Name == ref || w.State != record.WorkloadExited && slices.Contains(w.Pids, pid) {
			return w, nil
		}
	}
	return api.Workload{}, daemonErr(record.ErrUnknownWorkload, "no workload %q (see `migshm ps`)", ref)
}

func (f *fakeDaemon) Run(_ context.Context, req api.RunRequest) (api.Workload, error) {
	coverage.method("Run")
	if req.Name == "taken" {
		return api.Workload{}, daemonErr(record.ErrExists, "run: a workload named %q exists", req.Name)
	}
	wl := api.Workload{ID: "w0000000a", Name: req.Name, Node: "n1", InitPid: 777, Pids: []int{777},
		Group: req.Group, State: record.WorkloadRunning, Args: req.Args}
	if wl.Name == "" {
		wl.Name = filepath.Base(req.Args[0]) + "-0000"
	}
	if wl.Group == "" {
		wl.Group = wl.ID
	}
	return wl, nil
}

func (f *fakeDaemon) Stop(_ context.Context, w api.Workload, _ api.StopRequest) (api.Workload, error) {
	coverage.method("Stop")
	if w.State == record.WorkloadExited {
		return api.Workload{}, daemonErr(api.ErrNotRunning, "stop %s: it already exited with status %d", w.Name, w.ExitStatus)
	}
	w.State, w.ExitStatus = record.WorkloadExited, 143
	return w, nil
}

func (f *fakeDaemon) Remove(context.Context, api.Workload) error {
	coverage.method("Remove")
	return nil
}

func (f *fakeDaemon) OpenLog(context.Context, api.Workload, string, int) (httpapi.Log, error) {
	coverage.method("OpenLog")
	return fakeLog("line one\nline two\n"), nil
}

// fakeLog is a workload's whole output; following it ends at once, as if it exited.
type fakeLog string

func (l fakeLog) Copy(_ context.Context, w io.Writer, _ bool) { _, _ = io.WriteString(w, string(l)) }

func (f *fakeDaemon) Check(_ context.Context, w api.Workload, target string) (api.CheckReport, error) {
	coverage.method("Check")
	rep, ok := checkReports[[2]string{w.Name, target}]
	if !ok {
		return api.CheckReport{}, daemonErr(record.ErrUnknownNode, "no node %q (see `migshm nodes`)", target)
	}
	return rep, nil
}

func (f *fakeDaemon) ValidateMove(_ context.Context, w api.Workload, _ api.MoveRequest) error {
	coverage.method("ValidateMove")
	if w.State == record.WorkloadExited {
		return daemonErr(api.ErrNotRunning, "move: workload %s exited (status %d); there is nothing to move", w.Name, w.ExitStatus)
	}
	return nil
}

// Move sends the event stream scripted for the workload asked for (moveScripts).
func (f *fakeDaemon) Move(_ api.Workload, req api.MoveRequest, emit func(api.MoveEvent)) (<-chan error, error) {
	coverage.method("Move")
	done := make(chan error, 1)
	go func() {
		for _, ev := range moveScripts[req.Workload] {
			emit(ev)
		}
		done <- nil
	}()
	return done, nil
}

func (f *fakeDaemon) SetDrain(_ context.Context, id string, drain bool) (api.Node, error) {
	coverage.method("SetDrain")
	state := record.NodeActive
	if drain {
		state = record.NodeDraining
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, n := range f.nodes {
		if n.ID == id {
			f.nodes[i].State = state
			return f.nodes[i], nil
		}
	}
	return api.Node{}, daemonErr(record.ErrUnknownNode, "no node %q (see `migshm nodes`)", id)
}

func (f *fakeDaemon) SetPinned(_ context.Context, w api.Workload, pinned bool) (api.Workload, error) {
	coverage.method("SetPinned")
	w.Pinned = pinned
	return w, nil
}

func (f *fakeDaemon) Revoke(_ context.Context, req api.RevokeRequest) (api.Revocation, error) {
	coverage.method("Revoke")
	if req.Node == "" {
		return api.Revocation{}, daemonErr(api.ErrBadRequest, "revoke: node %q", req.Node)
	}
	r := api.Revocation{Serial: req.Serial, Node: req.Node, Reason: req.Reason, At: 1_700_000_000_000_000_000}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, r)
	return r, nil
}

func (f *fakeDaemon) Revocations(context.Context) []api.Revocation {
	coverage.method("Revocations")
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.revoked)
}

func (f *fakeDaemon) Probe(context.Context) error {
	coverage.method("Probe")
	return nil
}

// Balance answers the dry run, or starts its moves (the second cannot start).
func (f *fakeDaemon) Balance(_ context.Context, dryRun bool) (*api.BalanceReport, error) {
	coverage.method("Balance")
	rep := f.balance
	if dryRun {
		return &rep, nil
	}
	rep.DryRun = false
	rep.Moves = slices.Clone(rep.Moves)
	for i := range rep.Moves {
		rep.Moves[i].Started = i == 0
		if i > 0 {
			rep.Moves[i].Error = "w00000005 is moving already (m7)"
		}
	}
	return &rep, nil
}

func (f *fakeDaemon) LastBalance(context.Context) (*api.BalanceReport, error) {
	coverage.method("LastBalance")
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last == nil {
		return nil, daemonErr(api.ErrUnreachable, "the leader did not answer")
	}
	rep := *f.last
	return &rep, nil
}

func (f *fakeDaemon) Leave(_ context.Context, req api.LeaveRequest) (api.LeaveResult, error) {
	coverage.method("Leave")
	if req.Node == "n1" && !req.Force {
		return api.LeaveResult{}, daemonErr(api.ErrStillRunning,
			"node n1 still runs 2 workload(s) [api db1]: stop or move them first, or use --force")
	}
	return api.LeaveResult{Node: req.Node}, nil
}

// localRoutes are the routes of httpapi.Local. After a run of all the tests, TestMain
// checks that the CLI's requests reached each one through the real router and, through
// them, every method of httpapi.Service.
var localRoutes = []string{
	"GET /v1/status",
	"GET /v1/nodes",
	"GET /v1/workloads",
	"GET /v1/segments",
	"GET /v1/migrations",
	"POST /v1/workloads",
	"POST /v1/workloads/{ref}/stop",
	"DELETE /v1/workloads/{ref}",
	"GET /v1/workloads/{ref}/logs",
	"POST /v1/workloads/{ref}/pin",
	"POST /v1/workloads/{ref}/unpin",
	"POST /v1/migrations",
	"POST /v1/migrations/check",
	"POST /v1/nodes/{id}/drain",
	"POST /v1/nodes/{id}/undrain",
	"POST /v1/leave",
	"GET /v1/revocations",
	"POST /v1/revocations",
	"GET /v1/balance",
	"POST /v1/balance",
	"GET /v1/balance/last",
	"POST /v1/probe",
	"GET /v1/events",
}

// notFromCLI are the routes, and the Service methods behind them, that no migshm
// command calls: migshm-lab's raft bench probes, and internal/httpapi's client tests
// cover it.
var notFromCLI = map[string]string{"POST /v1/probe": "Probe"}

// coverage is what the CLI tests reached of the local API over the whole run.
var coverage = apiCoverage{requests: map[string]bool{}, methods: map[string]bool{}}

type apiCoverage struct {
	mu       sync.Mutex
	requests map[string]bool // "METHOD path" the router served
	methods  map[string]bool // of the Service
}

func (c *apiCoverage) request(r string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requests[r] = true
}

func (c *apiCoverage) method(m string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.methods[m] = true
}

// missing lists the routes of localRoutes and the methods of httpapi.Service the CLI
// tests did not reach, and the requests the router served that no route of localRoutes
// matches (the list lacks a route).
func (c *apiCoverage) missing() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	mux := http.NewServeMux()
	for _, route := range localRoutes {
		mux.HandleFunc(route, func(http.ResponseWriter, *http.Request) {})
	}
	var out []string
	reached := map[string]bool{}
	for req := range c.requests {
		method, path, _ := strings.Cut(req, " ")
		_, route := mux.Handler(&http.Request{Method: method, URL: &url.URL{Path: path}})
		if route == "" {
			out = append(out, fmt.Sprintf("%s: not in localRoutes", req))
		}
		reached[route] = true
	}
	for _, route := range localRoutes {
		if _, skip := notFromCLI[route]; !skip && !reached[route] {
			out = append(out, fmt.Sprintf("route %s: no CLI test calls it", route))
		}
	}
	skip := map[string]bool{}
	for _, m := range notFromCLI {
		skip[m] = true
	}
	svc := reflect.TypeFor[httpapi.Service]()
	for i := range svc.NumMethod() {
		if m := svc.Method(i).Name; !skip[m] && !c.methods[m] {
			out = append(out, fmt.Sprintf("httpapi.Service.%s: no CLI test reaches it", m))
		}
	}
	slices.Sort(out)
	return out
}

// TestMain checks, after a run of every test, that the CLI tests reached every route of
// the local API and every method of the Service behind it.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 && ranEveryTest() {
		if missing := coverage.missing(); len(missing) > 0 {
			fmt.Fprintf(os.Stderr, "--- FAIL: the CLI tests leave parts of the local API untested:\n\t%s\nFAIL\n",
				strings.Join(missing, "\n\t"))
			code = 1
		}
	}
	os.Exit(code)
}

// ranEveryTest reports whether m.Run ran every test of the package, against the fake
// daemon too (as root): no -run, -skip or -list.
func ranEveryTest() bool {
	for _, f := range []string{"test.run", "test.skip", "test.list"} {
		if flag.Lookup(f).Value.String() != "" {
			return false
		}
	}
	return os.Geteuid() == 0
}
