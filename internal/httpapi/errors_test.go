package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner/record"
)

// sentinelCase is one sentinel and the wire code and HTTP status it must travel as.
type sentinelCase struct {
	name   string // the variable's name, e.g. "ErrNoLeader"
	err    error
	code   string
	status int
}

var daemonSentinels = []sentinelCase{
	{"ErrBadRequest", api.ErrBadRequest, "bad_request", http.StatusBadRequest},
	{"ErrNoLeader", api.ErrNoLeader, "no_leader", http.StatusServiceUnavailable},
	{"ErrForbidden", api.ErrForbidden, "forbidden", http.StatusForbidden},
	{"ErrNotRunning", api.ErrNotRunning, "not_running", http.StatusConflict},
	{"ErrStillRunning", api.ErrStillRunning, "still_running", http.StatusConflict},
	{"ErrUnreachable", api.ErrUnreachable, "unreachable", http.StatusBadGateway},
	{"ErrNotReady", api.ErrNotReady, "not_ready", http.StatusServiceUnavailable},
	{"ErrNotMovable", api.ErrNotMovable, "not_movable", http.StatusConflict},
	{"ErrMigrationFailed", api.ErrMigrationFailed, "migration_failed", http.StatusBadGateway},
}

var shmownerSentinels = []sentinelCase{
	{"ErrNotLeader", record.ErrNotLeader, "not_leader", http.StatusServiceUnavailable},
	{"ErrUnknownNode", record.ErrUnknownNode, "unknown_node", http.StatusNotFound},
	{"ErrUnknownWorkload", record.ErrUnknownWorkload, "unknown_workload", http.StatusNotFound},
	{"ErrUnknownMigration", record.ErrUnknownMigration, "unknown_migration", http.StatusNotFound},
	{"ErrStaleEpoch", record.ErrStaleEpoch, "stale_epoch", http.StatusConflict},
	{"ErrMigrationInFlight", record.ErrMigrationInFlight, "migration_in_flight", http.StatusConflict},
	{"ErrBadTransition", record.ErrBadTransition, "bad_transition", http.StatusConflict},
	{"ErrSameNode", record.ErrSameNode, "same_node", http.StatusConflict},
	{"ErrNodeNotActive", record.ErrNodeNotActive, "node_not_active", http.StatusConflict},
	{"ErrNotOwner", record.ErrNotOwner, "not_owner", http.StatusConflict},
	{"ErrGroupSplit", record.ErrGroupSplit, "group_split", http.StatusConflict},
	{"ErrExists", record.ErrExists, "exists", http.StatusConflict},
	{"ErrAddressTaken", record.ErrAddressTaken, "address_taken", http.StatusConflict},
	{"ErrInvalid", record.ErrInvalid, "invalid", http.StatusBadRequest},
}

// sentinelNames returns the names of the package-level Err* variables of a Go file.
func sentinelNames(t *testing.T, file string) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.VAR {
			continue
		}
		for _, s := range g.Specs {
			for _, n := range s.(*ast.ValueSpec).Names {
				if strings.HasPrefix(n.Name, "Err") {
					names = append(names, n.Name)
				}
			}
		}
	}
	return names
}

// TestSentinelListsComplete makes sure the wire tests below cover every sentinel of both
// errors.go files, so a new sentinel without a wire code fails here.
func TestSentinelListsComplete(t *testing.T) {
	for _, tt := range []struct {
		file  string
		cases []sentinelCase
	}{{"../../api/errors.go", daemonSentinels}, {"../../shmowner/record/errors.go", shmownerSentinels}} {
		have := map[string]bool{}
		for _, c := range tt.cases {
			have[c.name] = true
		}
		names := sentinelNames(t, tt.file)
		for _, n := range names {
			if !have[n] {
				t.Errorf("%s declares %s, which the wire test does not cover", tt.file, n)
			}
		}
		if len(names) != len(tt.cases) {
			t.Errorf("%s declares %d sentinels %v, the wire test lists %d", tt.file, len(names), names, len(tt.cases))
		}
	}
	codes := map[string]string{}
	for _, c := range append(append([]sentinelCase{}, daemonSentinels...), shmownerSentinels...) {
		if prev, dup := codes[c.code]; dup {
			t.Errorf("code %q is used by %s and %s", c.code, prev, c.name)
		}
		codes[c.code] = c.name
	}
}

// roundTrip sends err over a real unix socket as the daemon and its clients do: the
// handler answers it with writeError, an api.Client receives it. It returns the code and
// HTTP status that went over the wire and the error the client made of them.
func roundTrip(t *testing.T, err error) (code string, status int, back error) {
	t.Helper()
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		writeError(rec, discardLog(), err)
		status = rec.Code
		var body api.ErrorBody
		if jerr := json.Unmarshal(rec.Body.Bytes(), &body); jerr != nil {
			t.Errorf("writeError wrote %q: %v", rec.Body, jerr)
		}
		code = body.Error.Code
		w.Header().Set("Content-Type", rec.Header().Get("Content-Type"))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}), nil)
	back = api.NewClient(sock).Call(context.Background(), http.MethodGet, "/v1/anything", nil, nil)
	if back == nil {
		t.Fatalf("the client saw no error for %v", err)
	}
	return code, status, back
}

func TestErrorsOnTheWire(t *testing.T) {
	all := append(append([]sentinelCase{}, daemonSentinels...), shmownerSentinels...)
	for _, c := range all {
		t.Run(c.name, func(t *testing.T) {
			err := fmt.Errorf("stop db1 on node2: %w", c.err)
			code, status, back := roundTrip(t, err)
			if code != c.code || status != c.status {
				t.Errorf("codeOf = %q %d, want %q %d", code, status, c.code, c.status)
			}
			if class := status / 100; class != 4 && class != 5 {
				t.Errorf("status %d is not an error status", status)
			}
			if !errors.Is(back, c.err) {
				t.Errorf("back from the wire, %v (%T) is not %v", back, back, c.err)
			}
			if back.Error() != err.Error() {
				t.Errorf("message %q, want %q", back.Error(), err.Error())
			}
			for _, o := range all {
				if o.err != c.err && errors.Is(back, o.err) {
					t.Errorf("back from the wire, %v also matches %s", back, o.name)
				}
			}
			// A second hop (a follower forwarding to the leader, then to the CLI) keeps it.
			code2, status2, back2 := roundTrip(t, fmt.Errorf("forward to node3: %w", back))
			if code2 != c.code || status2 != c.status || !errors.Is(back2, c.err) {
				t.Errorf("second hop: %q %d %v", code2, status2, back2)
			}
		})
	}
	t.Run("unknown error", func(t *testing.T) {
		err := errors.New("disk on fire")
		code, status, back := roundTrip(t, err)
		if code != "internal" || status != http.StatusInternalServerError {
			t.Errorf("codeOf = %q %d, want internal 500", code, status)
		}
		if back.Error() != "disk on fire" {
			t.Errorf("message %q", back)
		}
		for _, o := range all {
			if errors.Is(back, o.err) {
				t.Errorf("an internal error came back as %s", o.name)
			}
		}
	})
	t.Run("unknown code", func(t *testing.T) {
		back := api.Error{Code: "from_the_future", Message: "something new"}.Err()
		if back == nil || back.Error() != "something new" {
			t.Errorf("fromWire of an unknown code: %v", back)
		}
	})
}

// TestFromWireEmptyMessage: shmowner's wire errors fall back to the sentinel's text when
// the message is empty; the daemon's should too, or the CLI prints "migshm: ".
func TestFromWireEmptyMessage(t *testing.T) {
	for _, c := range append(append([]sentinelCase{}, daemonSentinels...), shmownerSentinels...) {
		err := api.Error{Code: c.code}.Err()
		if !errors.Is(err, c.err) {
			t.Errorf("%s: %v is not %v", c.code, err, c.err)
		}
		if err.Error() == "" {
			t.Errorf("fromWire(%q with no message).Error() is empty (daemon codedError has no fallback to the sentinel's text, "+
				"unlike shmowner's api.Error)", c.code)
		}
	}
}

func TestWriteError(t *testing.T) {
	for _, tt := range []struct {
		err     error
		status  int
		code    string
		logged  bool
		message string
	}{
		{fmt.Errorf("stop x: %w", api.ErrNotRunning), http.StatusConflict, "not_running", false, "stop x: workload not running"},
		{fmt.Errorf("nope: %w", record.ErrUnknownWorkload), http.StatusNotFound, "unknown_workload", false, "nope: unknown workload"},
		{errors.New("boom"), http.StatusInternalServerError, "internal", true, "boom"},
	} {
		t.Run(tt.code, func(t *testing.T) {
			var logBuf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logBuf, nil))
			rec := httptest.NewRecorder()
			writeError(rec, log, tt.err)
			if rec.Code != tt.status || rec.Header().Get("Content-Type") != "application/json" {
				t.Errorf("status %d content type %q", rec.Code, rec.Header().Get("Content-Type"))
			}
			var body struct {
				Error api.Error `json:"error"`
			}
			dec := json.NewDecoder(rec.Body)
			dec.DisallowUnknownFields()
			if err := dec.Decode(&body); err != nil {
				t.Fatalf("body: %v", err)
			}
			if body.Error.Code != tt.code || body.Error.Message != tt.message {
				t.Errorf("body %+v", body.Error)
			}
			if logged := strings.Contains(logBuf.String(), tt.message); logged != tt.logged {
				t.Errorf("logged %v, want %v (4xx/5xx API errors other than internal ones are the caller's business): %s",
					logged, tt.logged, logBuf.String())
			}
		})
	}
}
