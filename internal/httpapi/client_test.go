package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/shmowner/record"
	"golang.org/x/sys/unix"
)

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// serveUnix serves h on a unix socket in a temporary directory until the test ends and
// returns the socket's path.
func serveUnix(t *testing.T, h http.Handler, connContext func(context.Context, net.Conn) context.Context) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ConnContext: connContext, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return sock
}

var sentinelByRef = map[string]error{}

func init() {
	for _, c := range append(append([]sentinelCase{}, daemonSentinels...), shmownerSentinels...) {
		sentinelByRef[c.code] = c.err
	}
}

// fakeService is the daemon behind the real Local handler in the client tests: each test
// sets the funcs of the calls it expects. A call it did not expect reaches the nil
// Service and panics; the server turns that into a broken connection, the test into a
// failure.
type fakeService struct {
	Service
	status       func() api.Status
	lastBalance  func() (*api.BalanceReport, error)
	workload     func(ref string) (api.Workload, error)
	stop         func(w api.Workload, req api.StopRequest) (api.Workload, error)
	openLog      func(w api.Workload, stream string, tail int) (Log, error)
	check        func(w api.Workload, target string) (api.CheckReport, error)
	validateMove func(w api.Workload, req api.MoveRequest) error
	move         func(w api.Workload, req api.MoveRequest, emit func(api.MoveEvent)) (<-chan error, error)
	migrations   func() []api.Migration
	setDrain     func(node string, drain bool) (api.Node, error)
	setPinned    func(w api.Workload, pinned bool) (api.Workload, error)
	balance      func(dryRun bool) (*api.BalanceReport, error)
	leave        func(req api.LeaveRequest) (api.LeaveResult, error)
	probe        func() error
}

func (f *fakeService) Status(context.Context) api.Status { return f.status() }
func (f *fakeService) LastBalance(context.Context) (*api.BalanceReport, error) {
	return f.lastBalance()
}
func (f *fakeService) Workload(_ context.Context, ref string) (api.Workload, error) {
	return f.workload(ref)
}
func (f *fakeService) Stop(_ context.Context, w api.Workload, req api.StopRequest) (api.Workload, error) {
	return f.stop(w, req)
}
func (f *fakeService) OpenLog(_ context.Context, w api.Workload, stream string, tail int) (Log, error) {
	return f.openLog(w, stream, tail)
}
func (f *fakeService) Check(_ context.Context, w api.Workload, target string) (api.CheckReport, error) {
	return f.check(w, target)
}
func (f *fakeService) ValidateMove(_ context.Context, w api.Workload, req api.MoveRequest) error {
	return f.validateMove(w, req)
}
func (f *fakeService) Move(w api.Workload, req api.MoveRequest, emit func(api.MoveEvent)) (<-chan error, error) {
	return f.move(w, req, emit)
}
func (f *fakeService) Migrations(context.Context, bool) []api.Migration { return f.migrations() }
func (f *fakeService) SetDrain(_ context.Context, node string, drain bool) (api.Node, error) {
	return f.setDrain(node, drain)
}
func (f *fakeService) SetPinned(_ context.Context, w api.Workload, pinned bool) (api.Workload, error) {
	return f.setPinned(w, pinned)
}
func (f *fakeService) Balance(_ context.Context, dryRun bool) (*api.BalanceReport, error) {
	return f.balance(dryRun)
}
func (f *fakeService) Leave(_ context.Context, req api.LeaveRequest) (api.LeaveResult, error) {
	return f.leave(req)
}
func (f *fakeService) Probe(context.Context) error { return f.probe() }

// oneNode is a cluster of one: n1 leads and serves every request itself.
type oneNode struct{}

func (oneNode) Self() string          { return "n1" }
func (oneNode) IsLeader() bool        { return true }
func (oneNode) LeaderAPI() string     { return "" }
func (oneNode) NodeAPI(string) string { return "" }

// serveLocal serves the real local API with svc behind it as the daemon does (root only,
// by the caller's SO_PEERCRED) and returns a client of it. front, if not nil, stands
// before the router: a test's raw answers, which the router never gives (a proxy's
// error page, a stream cut in the middle of a line), or its records of the requests.
func serveLocal(t *testing.T, svc Service, front func(local http.Handler) http.Handler) *api.Client {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "the local API serves root only; run the tests as root")
	}
	h := Local(Config{Service: svc, Cluster: oneNode{}, Log: discardLog()})
	if front != nil {
		h = front(h)
	}
	return api.NewClient(serveUnix(t, h, PeerCredContext))
}

// running is a running workload on n1 named ref.
func running(ref string) (api.Workload, error) {
	return api.Workload{ID: "w1", Name: ref, Node: "n1", State: record.WorkloadRunning}, nil
}

// logFunc is a workload's log: it writes it all at once.
type logFunc func(w io.Writer, follow bool)

func (l logFunc) Copy(_ context.Context, w io.Writer, follow bool) { l(w, follow) }

// TestClientErrors runs the client against the daemon's router, and against what a
// broken proxy in front of it could answer.
func TestClientErrors(t *testing.T) {
	svc := &fakeService{
		status: func() api.Status {
			return api.Status{Node: "n1", RaftState: "Leader", Leader: "n1", Term: 3,
				Peers: []api.Peer{{ID: "n1", Address: "10.0.0.1:7420", Suffrage: "Voter", Leader: true}}}
		},
		lastBalance: func() (*api.BalanceReport, error) { return nil, fmt.Errorf("no pass yet: %w", api.ErrNoLeader) },
		workload: func(ref string) (api.Workload, error) {
			if ref == "nope" {
				return api.Workload{}, fmt.Errorf("no workload %q (see `migshm ps`): %w", ref, record.ErrUnknownWorkload)
			}
			return running(ref)
		},
		stop: func(w api.Workload, req api.StopRequest) (api.Workload, error) {
			if s, ok := sentinelByRef[w.Name]; ok {
				return api.Workload{}, fmt.Errorf("stop %s: %w", w.Name, s)
			}
			w.State, w.ExitStatus = record.WorkloadExited, int(req.TimeoutMS)
			return w, nil
		},
		openLog: func(w api.Workload, stream string, tail int) (Log, error) {
			return logFunc(func(out io.Writer, follow bool) {
				fmt.Fprintf(out, "stream=%s follow=%t tail=%d\n", stream, follow, tail)
			}), nil
		},
		leave: func(req api.LeaveRequest) (api.LeaveResult, error) { return api.LeaveResult{Node: req.Node}, nil },
		probe: func() error { return nil },
	}
	// Answers the router never gives.
	raw := func(local http.Handler) http.Handler {
		mux := http.NewServeMux()
		mux.Handle("/", local)
		mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "upstream connect error or disconnect/reset before headers", http.StatusBadGateway)
		})
		mux.HandleFunc("GET /v1/segments", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "<html>not json</html>")
		})
		mux.HandleFunc("GET /v1/workloads", func(w http.ResponseWriter, r *http.Request) {
			// JSON, but not the error format.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, `{"message":"oops"}`)
		})
		return mux
	}
	c := serveLocal(t, svc, raw)
	ctx := context.Background()

	s, err := c.Status(ctx)
	if err != nil || s.Node != "n1" || len(s.Peers) != 1 || !s.Peers[0].Leader {
		t.Fatalf("Status: %+v, %v", s, err)
	}
	w, err := c.Stop(ctx, "db1", api.StopRequest{TimeoutMS: 1500})
	if err != nil || w.Name != "db1" || w.ExitStatus != 1500 {
		t.Fatalf("Stop: %+v, %v (the server decodes the request strictly)", w, err)
	}
	res, err := c.Leave(ctx, api.LeaveRequest{Node: "n3", Force: true})
	if err != nil || res.Node != "n3" {
		t.Fatalf("Leave: %+v, %v", res, err)
	}
	if err := c.Probe(ctx); err != nil {
		t.Fatalf("Probe: %v", err)
	}

	for code, sentinel := range sentinelByRef {
		t.Run(code, func(t *testing.T) {
			_, err := c.Stop(ctx, code, api.StopRequest{})
			if !errors.Is(err, sentinel) {
				t.Fatalf("Stop: %v (%T), want %v", err, err, sentinel)
			}
			if want := "stop " + code + ": " + sentinel.Error(); err.Error() != want {
				t.Errorf("message %q, want %q", err, want)
			}
		})
	}

	t.Run("non-JSON 502", func(t *testing.T) {
		_, err := c.Nodes(ctx)
		if err == nil {
			t.Fatal("no error")
		}
		for _, want := range []string{"GET /v1/nodes", "HTTP 502", "upstream connect error"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
		}
		if strings.HasSuffix(err.Error(), "\n") {
			t.Errorf("error %q ends in a newline", err)
		}
	})
	t.Run("JSON without an error code", func(t *testing.T) {
		_, err := c.Workloads(ctx)
		if err == nil || !strings.Contains(err.Error(), "HTTP 500") || !strings.Contains(err.Error(), "oops") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("2xx that is not JSON", func(t *testing.T) {
		_, err := c.Segments(ctx)
		if err == nil || !strings.Contains(err.Error(), "decode answer") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("logs", func(t *testing.T) {
		var out bytes.Buffer
		if err := c.Logs(ctx, "db1", "stderr", false, 7, &out); err != nil {
			t.Fatal(err)
		}
		if out.String() != "stream=stderr follow=false tail=7\n" {
			t.Errorf("logs: %q", out.String())
		}
		out.Reset()
		err := c.Logs(ctx, "nope", "stdout", false, 0, &out)
		if !errors.Is(err, record.ErrUnknownWorkload) || !strings.Contains(err.Error(), `no workload "nope"`) {
			t.Errorf("logs of an unknown workload: %v", err)
		}
		if out.Len() != 0 {
			t.Errorf("an error body was copied to the output: %q", out.String())
		}
	})
}

// TestClientDialError: the CLI's errors when no daemon answers on the socket.
func TestClientDialError(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody listens: a killed daemon's socket

	for _, tt := range []struct{ name, sock string }{
		{"missing socket", filepath.Join(dir, "missing.sock")},
		{"missing directory", filepath.Join(dir, "nodir", "migshmd.sock")},
		{"stale socket", stale},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := api.NewClient(tt.sock).Status(context.Background())
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), "no migshmd listening on "+tt.sock) {
				t.Errorf("error %q does not say no migshmd listens on %s", err, tt.sock)
			}
			if !errors.Is(err, api.ErrUnreachable) {
				t.Errorf("error %q is not api.ErrUnreachable", err)
			}
		})
	}

	t.Run("peer", func(t *testing.T) {
		// Port 1 on loopback: connection refused. A peer client never suggests --socket.
		c := api.NewPeerClient("127.0.0.1:1", &http.Transport{}, nil)
		_, err := c.Status(context.Background())
		if !errors.Is(err, api.ErrUnreachable) || strings.Contains(err.Error(), "no migshmd listening") ||
			!strings.Contains(err.Error(), "127.0.0.1:1") {
			t.Errorf("peer dial error: %v", err)
		}
	})
}

// TestClientDeadline: a daemon that answers too slowly is not "unreachable", and the
// caller must be able to tell a timeout (errors.Is context.DeadlineExceeded).
func TestClientDeadline(t *testing.T) {
	release := make(chan struct{})
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), nil)
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := api.NewClient(sock).Status(ctx)
	if err == nil {
		t.Fatal("no error")
	}
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, api.ErrUnreachable) {
		t.Errorf("a request that timed out gives %q: errors.Is(DeadlineExceeded) = %v, errors.Is(api.ErrUnreachable) = %v "+
			"(dialError wraps every transport error with %%v as api.ErrUnreachable)",
			err, errors.Is(err, context.DeadlineExceeded), errors.Is(err, api.ErrUnreachable))
	}
}

// TestLocalHandlerAuth: only root may use the local API, whatever the socket's mode.
func TestLocalHandlerAuth(t *testing.T) {
	h := Local(Config{Log: discardLog()})
	withUID := func(uid int) context.Context {
		return context.WithValue(context.Background(), credKey{}, &unix.Ucred{Pid: 1, Uid: uint32(uid), Gid: uint32(uid)})
	}
	for _, tt := range []struct {
		name   string
		ctx    context.Context
		method string
		path   string
		body   string
		status int
		code   string
		msg    string
	}{
		{"no peer cred", context.Background(), "GET", "/v1/status", "", http.StatusForbidden, "forbidden", "caller uid -1"},
		{"uid 1000", withUID(1000), "GET", "/v1/workloads", "", http.StatusForbidden, "forbidden", "caller uid 1000"},
		{"uid 1000 run", withUID(1000), "POST", "/v1/workloads", `{"args":["/bin/true"]}`, http.StatusForbidden, "forbidden", "root only"},
		// Root gets through to the routes; a malformed body stops before any state is used.
		{"root", withUID(0), "POST", "/v1/workloads", `{"bogus":1}`, http.StatusBadRequest, "bad_request", "unknown field"},
		{"root unknown route", withUID(0), "GET", "/v2/nothing", "", http.StatusNotFound, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequestWithContext(tt.ctx, tt.method, "http://migshmd"+tt.path, strings.NewReader(tt.body))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			if tt.code == "" {
				return
			}
			err := checkWireBody(t, rec, tt.code)
			if !strings.Contains(err.Message, tt.msg) {
				t.Errorf("message %q does not contain %q", err.Message, tt.msg)
			}
		})
	}
}

func checkWireBody(t *testing.T, rec *httptest.ResponseRecorder, code string) api.Error {
	t.Helper()
	var body struct {
		Error api.Error `json:"error"`
	}
	if err := readJSON(httptest.NewRequest("POST", "/", rec.Body), &body); err != nil {
		t.Fatalf("error body: %v", err)
	}
	if body.Error.Code != code {
		t.Fatalf("code %q, want %q (message %q)", body.Error.Code, code, body.Error.Message)
	}
	return body.Error
}

func TestPeerHandlerNeedsCertificate(t *testing.T) {
	rec := httptest.NewRecorder()
	Peer(Config{Log: discardLog()}).ServeHTTP(rec, httptest.NewRequest("GET", "http://n1/v1/status", nil))
	if rec.Code != http.StatusForbidden {
		t.Fatalf("status %d", rec.Code)
	}
	checkWireBody(t, rec, "forbidden")
}

// TestPeerCredContext reads the uid at the other end of a real unix socket.
func TestPeerCredContext(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer server.Close()

	for name, c := range map[string]net.Conn{"server side": server, "client side": client} {
		if uid := callerUID(PeerCredContext(context.Background(), c)); uid != os.Getuid() {
			t.Errorf("%s: uid %d, want %d", name, uid, os.Getuid())
		}
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if uid := callerUID(PeerCredContext(context.Background(), p1)); uid != -1 {
		t.Errorf("not a unix socket: uid %d, want -1", uid)
	}
	if uid := callerUID(context.Background()); uid != -1 {
		t.Errorf("no cred: uid %d, want -1", uid)
	}
}

// TestLocalAPIOverSocket serves the real local handler with the real peer credentials,
// as the daemon does, and calls it with the client.
func TestLocalAPIOverSocket(t *testing.T) {
	c := api.NewClient(serveUnix(t, Local(Config{Log: discardLog()}), PeerCredContext))
	err := c.Call(context.Background(), http.MethodPost, "/v1/workloads", map[string]any{"args": []string{"/bin/true"}, "bogus": 1}, nil)
	if os.Getuid() == 0 {
		if !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), `unknown field "bogus"`) {
			t.Fatalf("as root: %v, want the body refused as a bad request", err)
		}
		return
	}
	if !errors.Is(err, api.ErrForbidden) || !strings.Contains(err.Error(), fmt.Sprintf("caller uid %d", os.Getuid())) {
		t.Fatalf("as uid %d: %v, want forbidden", os.Getuid(), err)
	}
}

// moveStream answers a move as the daemon does: a 200 with one JSON event per line,
// flushed as it goes. cut, if not empty, is written last, unterminated.
func moveStream(t *testing.T, events []api.MoveEvent, cut string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req api.MoveRequest
		if err := readJSON(r, &req); err != nil {
			writeError(w, discardLog(), err)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		enc := json.NewEncoder(w)
		for _, ev := range events {
			if err := enc.Encode(ev); err != nil {
				t.Errorf("write event: %v", err)
				return
			}
			w.(http.Flusher).Flush()
		}
		io.WriteString(w, cut)
	}
}

func TestClientMove(t *testing.T) {
	planned := api.MoveEvent{Event: api.EventPhase, At: 1, Migration: "m1", Phase: string(record.PhasePlanned),
		Record: &api.Migration{ID: "m1", Workload: "w1", Source: "n1", Target: "n2", Phase: record.PhasePlanned}}
	round := api.MoveEvent{Event: api.EventRound, At: 2, Migration: "m1", Round: &api.RoundInfo{Round: 1, Pages: 10, ChangedPages: 10, SentBytes: 40960}}
	frozen := api.MoveEvent{Event: api.EventPhase, At: 3, Migration: "m1", Phase: string(record.PhaseFrozen)}
	done := api.MoveEvent{Event: api.EventDone, At: 4, Migration: "m1", Phase: string(record.PhaseDone),
		Record:  &api.Migration{ID: "m1", Workload: "w1", Source: "n1", Target: "n2", Phase: record.PhaseDone, Bytes: 40960},
		Summary: &api.MigrationStats{Rounds: 1, PrecopyBytes: 40960, FrozenNS: 5e6}}
	aborted := api.MoveEvent{Event: api.EventError, At: 4, Migration: "m1", Error: "dump w1: criu failed", Code: "unreachable",
		Record: &api.Migration{ID: "m1", Workload: "w1", Source: "n1", Target: "n2", Phase: record.PhaseAborted}}
	failed := api.MoveEvent{Event: api.EventError, At: 4, Migration: "m1", Error: "migration m1 aborted: criu died", Code: "migration_failed",
		Record: &api.Migration{ID: "m1", Workload: "w1", Source: "n1", Target: "n2", Phase: record.PhaseAborted}}
	// The source read the record before its copy of the table had the abort.
	stale := api.MoveEvent{Event: api.EventError, At: 4, Migration: "m1", Phase: string(record.PhaseAborted), Error: "target gone", Code: "unreachable",
		Record: &api.Migration{ID: "m1", Workload: "w1", Source: "n1", Target: "n2", Phase: record.PhaseFrozen}}
	unsettled := api.MoveEvent{Event: api.EventError, At: 4, Migration: "m1", Error: "outcome could not be recorded", Code: "no_leader"}
	inFlight := api.MoveEvent{Event: api.EventError, At: 1, Error: "w1 is moving already (m0)", Code: "migration_in_flight"}
	noCode := api.MoveEvent{Event: api.EventError, At: 1, Error: "something odd"}

	scripts := map[string][]api.MoveEvent{
		"done":      {planned, round, frozen, done},
		"aborted":   {planned, round, aborted},
		"failed":    {planned, failed},
		"unsettled": {planned, frozen, unsettled},
		"stale":     {planned, frozen, stale},
		"in-flight": {inFlight},
		"no-code":   {noCode},
		"cut":       {planned, round}, // the migration ends without its outcome
		"empty":     nil,
	}
	// Streams the router never sends: broken in the middle of a line, or not JSON.
	broken := map[string]http.HandlerFunc{
		"cut-line": moveStream(t, []api.MoveEvent{planned, frozen}, `{"event":"pha`),
		"garbage":  moveStream(t, []api.MoveEvent{planned}, "<html>\n"),
	}
	svc := &fakeService{
		workload: func(ref string) (api.Workload, error) {
			if ref == "refused" {
				return api.Workload{}, fmt.Errorf("no workload %q: %w", ref, record.ErrUnknownWorkload)
			}
			return running(ref)
		},
		validateMove: func(api.Workload, api.MoveRequest) error { return nil },
		// Each migration is over before Move returns: the router sends all its events
		// all the same.
		move: func(_ api.Workload, req api.MoveRequest, emit func(api.MoveEvent)) (<-chan error, error) {
			for _, ev := range scripts[req.Workload] {
				emit(ev)
			}
			done := make(chan error)
			close(done)
			return done, nil
		},
	}
	var (
		mu     sync.Mutex
		gotReq api.MoveRequest // the last request the daemon received
	)
	front := func(local http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var req api.MoveRequest
			b, _ := io.ReadAll(r.Body)
			if err := readJSON(httptest.NewRequest("POST", "/", bytes.NewReader(b)), &req); err != nil {
				writeError(w, discardLog(), err)
				return
			}
			mu.Lock()
			gotReq = req
			mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(b))
			if h, ok := broken[req.Workload]; ok {
				h(w, r)
				return
			}
			local.ServeHTTP(w, r)
		})
	}
	c := serveLocal(t, svc, front)

	for _, tt := range []struct {
		workload  string
		events    []api.MoveEvent // what onEvent sees
		sentinel  error           // nil: success
		msg       string          // the whole message, or with "..." a part of it
		notFailed bool            // the error must not be api.ErrMigrationFailed
	}{
		{workload: "done", events: []api.MoveEvent{planned, round, frozen, done}},
		// An aborted migration is both the cause's code and api.ErrMigrationFailed.
		{"aborted", []api.MoveEvent{planned, round, aborted}, api.ErrUnreachable, "dump w1: criu failed", false},
		{"failed", []api.MoveEvent{planned, failed}, api.ErrMigrationFailed, "migration m1 aborted: criu died", false},
		{"unsettled", []api.MoveEvent{planned, frozen, unsettled}, api.ErrNoLeader, "outcome could not be recorded", true},
		{"stale", []api.MoveEvent{planned, frozen, stale}, api.ErrUnreachable, "target gone", false},
		{"in-flight", []api.MoveEvent{inFlight}, record.ErrMigrationInFlight, "w1 is moving already (m0)", true},
		{"no-code", []api.MoveEvent{noCode}, nil, "something odd", true},
		{"cut", []api.MoveEvent{planned, round}, api.ErrOutcomeUnknown,
			"...lost track of migration m1 (last seen in phase planned): ...ended the stream early: outcome of the move unknown; see `migshm migrations`", true},
		{"cut-line", []api.MoveEvent{planned, frozen}, api.ErrOutcomeUnknown, "lost track of migration m1 (last seen in phase frozen): ...in the middle of an event: outcome of the move unknown; see `migshm migrations`", true},
		{"empty", nil, api.ErrOutcomeUnknown, "lost track of the move of empty to n2: ...ended the stream early: outcome of the move unknown...", true},
		{"garbage", []api.MoveEvent{planned}, api.ErrOutcomeUnknown, "lost track of migration m1 (last seen in phase planned): reading the stream from ...invalid character '<'...", true},
		{"refused", nil, record.ErrUnknownWorkload, `no workload "refused": unknown workload`, true},
	} {
		t.Run(tt.workload, func(t *testing.T) {
			req := api.MoveRequest{Workload: tt.workload, Target: "n2", MaxDowntimeMS: 250, MaxRounds: 3, NoPrecopy: true}
			var seen []api.MoveEvent
			last, err := c.Move(context.Background(), req, func(ev api.MoveEvent) { seen = append(seen, ev) })
			mu.Lock()
			defer mu.Unlock()
			if gotReq != req {
				t.Errorf("daemon got %+v, want %+v", gotReq, req)
			}
			if !reflectEqualJSON(t, seen, tt.events) {
				t.Errorf("onEvent saw %+v\nwant %+v", seen, tt.events)
			}
			var wantLast api.MoveEvent
			if len(tt.events) > 0 {
				wantLast = tt.events[len(tt.events)-1]
			}
			if !reflectEqualJSON(t, last, wantLast) {
				t.Errorf("returned %+v, want %+v", last, wantLast)
			}
			switch {
			case tt.msg == "":
				if err != nil {
					t.Fatalf("error %v", err)
				}
				return
			case err == nil:
				t.Fatal("no error")
			case tt.sentinel != nil && !errors.Is(err, tt.sentinel):
				t.Errorf("error %q (%T) is not %v", err, err, tt.sentinel)
			}
			if failed := errors.Is(err, api.ErrMigrationFailed); failed == tt.notFailed {
				t.Errorf("errors.Is(%q, api.ErrMigrationFailed) = %v", err, failed)
			}
			if !matchMsg(err.Error(), tt.msg) {
				t.Errorf("error %q, want %q", err, tt.msg)
			}
		})
	}

	t.Run("nil onEvent", func(t *testing.T) {
		last, err := c.Move(context.Background(), api.MoveRequest{Workload: "done", Target: "n2"}, nil)
		if err != nil || last.Event != api.EventDone || last.Summary == nil || last.Summary.FrozenNS != 5e6 {
			t.Fatalf("%+v, %v", last, err)
		}
	})
}

// matchMsg matches a message against a pattern whose "..." stand for anything.
func matchMsg(msg, pattern string) bool {
	parts := strings.Split(pattern, "...")
	if !strings.HasPrefix(msg, parts[0]) || !strings.HasSuffix(msg, parts[len(parts)-1]) {
		return false
	}
	for _, p := range parts {
		i := strings.Index(msg, p)
		if i < 0 {
			return false
		}
		msg = msg[i+len(p):]
	}
	return true
}

// reflectEqualJSON compares two values by their JSON forms.
func reflectEqualJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}

// TestClientMoveStreams: Move hands each event over as it arrives, not when the answer
// ends, and a caller that gives up mid-stream gets api.ErrOutcomeUnknown and its ctx error.
func TestClientMoveStreams(t *testing.T) {
	seen := make(chan struct{})     // closed by onEvent when it got the first event
	finished := make(chan struct{}) // the migration goes on after the client gave up, until the test ends
	svc := &fakeService{
		workload:     running,
		validateMove: func(api.Workload, api.MoveRequest) error { return nil },
		move: func(_ api.Workload, _ api.MoveRequest, emit func(api.MoveEvent)) (<-chan error, error) {
			done := make(chan error, 1)
			go func() {
				defer func() { done <- nil }()
				emit(api.MoveEvent{Event: api.EventPhase, Migration: "m7", Phase: "precopy"})
				select {
				case <-seen:
				case <-time.After(10 * time.Second):
					emit(api.MoveEvent{Event: api.EventError, Error: "the client did not see the first event before the answer ended"})
					return
				}
				<-finished
			}()
			return done, nil
		},
	}
	c := serveLocal(t, svc, nil)
	t.Cleanup(func() { close(finished) }) // the migration ends, and with it the router's handler
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	_, err := c.Move(ctx, api.MoveRequest{Workload: "w7", Target: "n2"}, func(ev api.MoveEvent) {
		n++
		if ev.Error != "" {
			t.Error(ev.Error)
			return
		}
		close(seen)
		cancel() // the user pressed ^C
	})
	if n != 1 {
		t.Errorf("onEvent called %d times, want 1", n)
	}
	if !errors.Is(err, api.ErrOutcomeUnknown) || !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v: want api.ErrOutcomeUnknown and context.Canceled", err)
	}
	if want := "lost track of migration m7 (last seen in phase precopy): context canceled: "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want it to start with %q", err, want)
	}
}

func TestClientCheckAndMigrations(t *testing.T) {
	report := api.CheckReport{Workload: "w1", Name: "db1", Source: "n1", Target: "n2", Processes: 3, Segments: 1,
		MemoryBytes: 1 << 30, TargetFree: 512 << 20,
		Problems: []api.Problem{{Reason: "target-memory", Detail: "n2 has 512 MiB free, db1 needs 1 GiB"}}}
	migs := []api.Migration{
		{ID: "m1", Workload: "w1", Source: "n1", Target: "n2", Phase: record.PhaseDone, Bytes: 4096,
			Stats: &api.MigrationStats{Rounds: 2, FrozenNS: 3e6}},
		{ID: "m2", Workload: "w1", Source: "n2", Target: "n1", Phase: record.PhaseAborted, Error: "criu failed"},
	}
	svc := &fakeService{
		workload: running,
		check: func(_ api.Workload, target string) (api.CheckReport, error) {
			if target != "n2" {
				return api.CheckReport{}, fmt.Errorf("no node %q: %w", target, record.ErrUnknownNode)
			}
			return report, nil
		},
		migrations: func() []api.Migration { return migs },
	}
	c := serveLocal(t, svc, nil)
	ctx := context.Background()

	got, err := c.Check(ctx, api.CheckRequest{Workload: "db1", Target: "n2"})
	if err != nil || !reflectEqualJSON(t, got, report) {
		t.Errorf("Check: %+v, %v", got, err)
	}
	_, err = c.Check(ctx, api.CheckRequest{Workload: "db1", Target: "n9"})
	if !errors.Is(err, record.ErrUnknownNode) || err.Error() != `no node "n9": unknown node` {
		t.Errorf("Check of an unknown node: %v", err)
	}
	gotMigs, err := c.Migrations(ctx)
	if err != nil || !reflectEqualJSON(t, gotMigs, migs) {
		t.Errorf("Migrations: %+v, %v", gotMigs, err)
	}
}

// TestClientBalancer: drain, pin and balance requests through the daemon's router.
func TestClientBalancer(t *testing.T) {
	report := api.BalanceReport{Leader: "n1", At: 42, Auto: true, Interval: "30s", Threshold: 0.1, Mean: 0.4, Spread: 0.7,
		Imbalance: 0.35, Nodes: []api.NodeLoad{{Node: "n1", State: "active", Cores: 4, CPU: 3.2, Load: 0.8, Workloads: 3}},
		Moves:   []api.BalanceMove{{Workload: "w1", Name: "db1", Group: "g1", From: "n1", To: "n2", Kind: "cpu", Reason: "n1 above the mean", Score: 0.2}},
		Skipped: []api.BalanceSkip{{Workload: "w3", Name: "api", Node: "n1", Reason: "pinned: workload w3 never moves"}}}
	var (
		mu    sync.Mutex
		calls []string
	)
	// noted notes each request and checks that a POST's body is a JSON object, one that
	// decodes strictly as an empty request: the router reads none of these bodies
	// today, and when it does it will decode them strictly.
	noted := func(local http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			calls = append(calls, r.Method+" "+r.URL.Path)
			mu.Unlock()
			if r.Method == http.MethodPost {
				b, _ := io.ReadAll(r.Body)
				var body struct{}
				if err := readJSON(httptest.NewRequest("POST", "/", bytes.NewReader(b)), &body); err != nil {
					writeError(w, discardLog(), err)
					return
				}
				r.Body = io.NopCloser(bytes.NewReader(b))
			}
			local.ServeHTTP(w, r)
		})
	}
	svc := &fakeService{
		setDrain: func(id string, drain bool) (api.Node, error) {
			if id != "n1" {
				return api.Node{}, fmt.Errorf("no node %q: %w", id, record.ErrUnknownNode)
			}
			if drain {
				return api.Node{ID: "n1", State: record.NodeDraining}, nil
			}
			return api.Node{ID: "n1", State: record.NodeActive}, nil
		},
		workload: func(ref string) (api.Workload, error) {
			if ref != "db 1" {
				return api.Workload{}, fmt.Errorf("no workload %q: %w", ref, record.ErrUnknownWorkload)
			}
			return running(ref)
		},
		setPinned: func(w api.Workload, pinned bool) (api.Workload, error) {
			w.Pinned = pinned
			return w, nil
		},
		balance: func(dryRun bool) (*api.BalanceReport, error) {
			r := report
			if dryRun {
				r.DryRun = true
				return &r, nil
			}
			r.Moves = []api.BalanceMove{r.Moves[0]}
			r.Moves[0].Started = true
			return &r, nil
		},
		lastBalance: func() (*api.BalanceReport, error) {
			r := report
			r.LastMoves, r.LastMovesAt = r.Moves, 41
			return &r, nil
		},
	}
	c := serveLocal(t, svc, noted)
	ctx := context.Background()
	takeCalls := func() string {
		mu.Lock()
		defer mu.Unlock()
		s := strings.Join(calls, ", ")
		calls = nil
		return s
	}

	n, err := c.Drain(ctx, "n1")
	if err != nil || n.ID != "n1" || n.State != record.NodeDraining {
		t.Errorf("Drain: %+v, %v", n, err)
	}
	n, err = c.Undrain(ctx, "n1")
	if err != nil || n.State != record.NodeActive {
		t.Errorf("Undrain: %+v, %v", n, err)
	}
	if got := takeCalls(); got != "POST /v1/nodes/n1/drain, POST /v1/nodes/n1/undrain" {
		t.Errorf("calls: %s", got)
	}
	_, err = c.Drain(ctx, "n9")
	if !errors.Is(err, record.ErrUnknownNode) || err.Error() != `no node "n9": unknown node` {
		t.Errorf("Drain of an unknown node: %v", err)
	}
	_, err = c.Undrain(ctx, "n9")
	if !errors.Is(err, record.ErrUnknownNode) {
		t.Errorf("Undrain of an unknown node: %v", err)
	}
	takeCalls()

	// A ref is one path segment, escaped.
	w, err := c.Pin(ctx, "db 1")
	if err != nil || !w.Pinned || w.Name != "db 1" {
		t.Errorf("Pin: %+v, %v", w, err)
	}
	w, err = c.Unpin(ctx, "db 1")
	if err != nil || w.Pinned {
		t.Errorf("Unpin: %+v, %v", w, err)
	}
	if got := takeCalls(); got != "POST /v1/workloads/db 1/pin, POST /v1/workloads/db 1/unpin" {
		t.Errorf("calls: %s", got)
	}
	for _, fn := range []func(context.Context, string) (api.Workload, error){c.Pin, c.Unpin} {
		if _, err := fn(ctx, "nope"); !errors.Is(err, record.ErrUnknownWorkload) {
			t.Errorf("pin or unpin of an unknown workload: %v", err)
		}
	}
	takeCalls()

	dry, err := c.Balance(ctx, true)
	want := report
	want.DryRun = true
	if err != nil || !reflectEqualJSON(t, dry, want) {
		t.Errorf("Balance(dry run): %+v, %v", dry, err)
	}
	ran, err := c.Balance(ctx, false)
	if err != nil || ran.DryRun || len(ran.Moves) != 1 || !ran.Moves[0].Started {
		t.Errorf("Balance: %+v, %v", ran, err)
	}
	last, err := c.LastBalance(ctx)
	if err != nil || len(last.LastMoves) != 1 || last.LastMovesAt != 41 || last.LastMoves[0].Name != "db1" {
		t.Errorf("LastBalance: %+v, %v", last, err)
	}
	if got := takeCalls(); got != "GET /v1/balance, POST /v1/balance, GET /v1/balance/last" {
		t.Errorf("calls: %s", got)
	}
}
