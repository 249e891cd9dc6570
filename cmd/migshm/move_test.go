package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner/record"
)

const movingID = "m5f3a9c" // the migration in flight: db1 n1 -> n2

// fakeMigrations returns the daemon's canned migrations, sorted by id as the daemon
// lists them: 22 finished ones started 40..19 minutes ago, and the one in flight,
// started before all of them.
func fakeMigrations() []api.Migration {
	now := time.Now()
	var migs []api.Migration
	for i := range 22 {
		m := api.Migration{ID: fmt.Sprintf("m%02d", i), Workload: "w00000001", Source: "n1", Target: "n2",
			Phase: record.PhaseDone, StartedAt: now.Add(-time.Duration(40-i) * time.Minute).UnixNano(), Bytes: 6 << 20,
			Stats: &api.MigrationStats{Rounds: 2, FrozenNS: int64(84300 * time.Microsecond)}}
		switch i {
		case 20:
			m.Workload = "w00000003"
			m.Phase = record.PhaseAborted
			m.Bytes = 1 << 20
			m.Error = "dump api: criu dump failed:\n(00.123456) Error (criu/sk-inet.c:199): inet: Connected TCP socket, consider using --tcp-established option."
			m.Stats = nil
		case 19:
			m.Reason = "balancer: cpu: n1 load 0.80 > mean 0.45 + threshold 0.10"
		case 21:
			m.Workload = "w000000ff" // removed since
		}
		migs = append(migs, m)
	}
	migs = append(migs, api.Migration{ID: movingID, Workload: "w00000001", Source: "n1", Target: "n2",
		Phase: record.PhasePrecopy, StartedAt: now.Add(-45 * time.Minute).UnixNano(), Bytes: 12 << 20})
	return migs
}

var (
	evPlanned = api.MoveEvent{Event: api.EventPhase, At: 1, Migration: movingID, Phase: "planned"}
	evPrecopy = api.MoveEvent{Event: api.EventPhase, At: 2, Migration: movingID, Phase: "precopy"}
	evRound1  = api.MoveEvent{Event: api.EventRound, At: 3, Migration: movingID, Phase: "precopy", Round: &api.RoundInfo{
		Round: 1, Pages: 131072, ChangedPages: 131072, SentBytes: 512 << 20, DurationNS: int64(1500 * time.Millisecond), RateBPS: 512 << 20 / 1.5}}
	evRound2 = api.MoveEvent{Event: api.EventRound, At: 4, Migration: movingID, Phase: "precopy", Round: &api.RoundInfo{
		Round: 2, Pages: 131072, ChangedPages: 1234, DeltaPages: 1200, SentBytes: 5033165, DurationNS: int64(120 * time.Millisecond), RateBPS: 5033165 / 0.12}}
	evFrozen   = api.MoveEvent{Event: api.EventPhase, At: 5, Migration: movingID, Phase: "frozen"}
	evShipped  = api.MoveEvent{Event: api.EventPhase, At: 6, Migration: movingID, Phase: "shipped"}
	evRestored = api.MoveEvent{Event: api.EventPhase, At: 7, Migration: movingID, Phase: "restored"}
	evDonePh   = api.MoveEvent{Event: api.EventPhase, At: 8, Migration: movingID, Phase: "done"}
	moveStats  = api.MigrationStats{Rounds: 2, PrecopyBytes: 512<<20 + 5033165, FinalBytes: 2 << 20, WorkloadBytes: 520 << 20,
		FrozenNS: int64(84300 * time.Microsecond), DumpNS: int64(31 * time.Millisecond), ShipNS: int64(22 * time.Millisecond),
		RestoreNS: int64(29 * time.Millisecond), TotalNS: int64(2314 * time.Millisecond)}
	evDone = api.MoveEvent{Event: api.EventDone, At: 9, Migration: movingID, Phase: "done",
		Record: &api.Migration{ID: movingID, Workload: "w00000001", Source: "n1", Target: "n2", Phase: record.PhaseDone,
			Bytes: moveStats.PrecopyBytes + moveStats.FinalBytes, Stats: &moveStats},
		Summary: &moveStats}
	evAborted = api.MoveEvent{Event: api.EventError, At: 5, Migration: "m0a0b0c", Phase: "aborted", Code: "migration_failed",
		Error: "migration m0a0b0c of api to n2 aborted; the workload runs on n1 as before: dump api: criu dump failed: migration failed",
		Record: &api.Migration{ID: "m0a0b0c", Workload: "w00000003", Source: "n1", Target: "n2", Phase: record.PhaseAborted,
			Error: "dump api: criu dump failed"}}
	// moveScripts are the streams the fake daemon sends, by the workload asked for.
	moveScripts = map[string][]api.MoveEvent{
		"db1": {evPlanned, evPrecopy, evRound1, evRound2, evFrozen, evShipped, evRestored, evDonePh, evDone},
		"api": {{Event: api.EventPhase, At: 1, Migration: "m0a0b0c", Phase: "planned",
			Record: &api.Migration{ID: "m0a0b0c", Workload: "w00000003", Source: "n1", Target: "n2", Phase: record.PhasePlanned}},
			{Event: api.EventPhase, At: 2, Migration: "m0a0b0c", Phase: "frozen"}, evAborted},
		"cut": {evPlanned, evFrozen},
		// The record in the error event lags (the source's copy of the table had not
		// applied the abort yet); the event's phase says aborted.
		"stale": {evPlanned, {Event: api.EventError, At: 5, Migration: movingID, Phase: "aborted", Code: "unreachable",
			Error:  "migration m5f3a9c of db1 to n2 aborted; the workload runs on n1 as before: prepare: n2 does not answer",
			Record: &api.Migration{ID: movingID, Workload: "w00000001", Source: "n1", Target: "n2", Phase: record.PhasePlanned}}},
	}
)

var (
	reportOK = api.CheckReport{Workload: "w00000001", Name: "db1", Source: "n1", Target: "n3", OK: true, Processes: 3,
		Segments: 2, MemoryBytes: 1288 << 20, TargetFree: 6 << 30, Problems: []api.Problem{}}
	reportTwo = api.CheckReport{Workload: "w00000003", Name: "api", Source: "n1", Target: "n2", Processes: 1,
		Segments: 1, MemoryBytes: 3 << 30, TargetFree: 512 << 20, Problems: []api.Problem{
			{Reason: "target-memory", Detail: "n2 has 512.0 MiB free, api needs 3.0 GiB: free memory there or pick another node"},
			{Reason: "tcp-established", Detail: "pid 4301 has an established TCP connection to 10.0.0.9:5432; CRIU cannot move it"},
		}}
	reportUnreachable = api.CheckReport{Workload: "w00000001", Name: "db1", Source: "n1", Target: "n4", Processes: 3,
		Segments: 2, MemoryBytes: 1288 << 20, Problems: []api.Problem{
			{Reason: "target-unreachable", Detail: "node n4 does not answer: dial tcp 10.0.0.14:7421: connect: connection refused"},
		}}
	// The daemon stops at a target that is not active: no figures.
	reportOne = api.CheckReport{Workload: "w00000001", Name: "db1", Source: "n1", Target: "n2", Problems: []api.Problem{
		{Reason: "target-state", Detail: "node n2 is draining; only an active node takes workloads"},
	}}
)

// checkReports are the daemon's checks, by workload and target: a target not listed is
// no node.
var checkReports = map[[2]string]api.CheckReport{
	{"db1", "n3"}: reportOK,
	{"api", "n2"}: reportTwo,
	{"db1", "n4"}: reportUnreachable,
	{"db1", "n2"}: reportOne, // asked for as 4242, the pid of its init
}

func TestCLIMove(t *testing.T) {
	f := newFakeDaemon(t)
	out := f.mustCLI(t, "move", "db1", "n2")
	want := `migration m5f3a9c: planned (w00000001 db1 n1 -> n2)
precopy
precopy round 1: 131,072 pages, 512.0 MiB sent in 1.50s (341.3 MiB/s)
precopy round 2: 1,234 of 131,072 pages changed (1,200 sent as deltas), 4.8 MiB sent in 0.12s (40.0 MiB/s)
frozen
shipped
restored
migration m5f3a9c: done, w00000001 (db1) moved from n1 to n2
  downtime:     84.3ms (frozen)
  total time:   2.31s
  on the wire:  518.8 MiB for a 520.0 MiB workload (1.00x)
  rounds:       2 pre-copy, 516.8 MiB sent while it ran, 2.0 MiB while frozen
  frozen time:  dump 31ms, ship 22ms, restore 29ms
`
	if out != want {
		t.Errorf("move db1 n2 prints\n%s\nwant\n%s", out, want)
	}
	// The planned event has no record (as the daemon sends it): the CLI looks it up, and
	// the workload's name, once.
	var paths []string
	for _, c := range f.takeCalls() {
		paths = append(paths, c.Method+" "+c.Path)
		if c.Path == "/v1/migrations" && c.Method == "POST" && c.Body != `{"workload":"db1","target":"n2"}` {
			t.Errorf("request %s, want only workload and target (the daemon's defaults)", c.Body)
		}
	}
	if got := strings.Join(paths, ", "); got != "POST /v1/migrations, GET /v1/migrations, GET /v1/workloads" {
		t.Errorf("calls: %s", got)
	}

	out = f.mustCLI(t, "move", "db1", "n2", "--json")
	f.takeCalls()
	wantEvents(t, out, moveScripts["db1"])
}

// wantEvents checks NDJSON output: one event per line, as the daemon sent them.
func wantEvents(t *testing.T, out string, want []api.MoveEvent) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("--json printed %d lines, want %d events:\n%s", len(lines), len(want), out)
	}
	for i, line := range lines {
		var got api.MoveEvent
		if err := strict(line, &got); err != nil {
			t.Fatalf("line %d %q: %v", i+1, line, err)
		}
		a, _ := json.Marshal(got)
		b, _ := json.Marshal(want[i])
		if string(a) != string(b) {
			t.Errorf("line %d: %s\nwant %s", i+1, a, b)
		}
	}
}

func TestCLIMoveRequest(t *testing.T) {
	f := newFakeDaemon(t)
	for _, tt := range []struct {
		args []string
		body string
	}{
		{[]string{"move", "db1", "n2"}, `{"workload":"db1","target":"n2"}`},
		{[]string{"move", "--max-downtime", "100ms", "--max-rounds", "12", "db1", "n2"},
			`{"workload":"db1","target":"n2","max_downtime_ms":100,"max_rounds":12}`},
		{[]string{"move", "db1", "n2", "--max-downtime=1.5s", "--max-rounds", "1", "--json"},
			`{"workload":"db1","target":"n2","max_downtime_ms":1500,"max_rounds":1}`},
		{[]string{"move", "db1", "--no-precopy", "n2"}, `{"workload":"db1","target":"n2","no_precopy":true}`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			f.mustCLI(t, tt.args...)
			calls := f.takeCalls()
			if len(calls) == 0 || calls[0].Path != "/v1/migrations" || calls[0].Body != tt.body {
				t.Errorf("first call %+v, want POST /v1/migrations %s", calls, tt.body)
			}
		})
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"move"}, "give a workload and a target node: `migshm move WORKLOAD NODE` (got 0 arguments"},
		{[]string{"move", "db1"}, "(got 1 arguments"},
		{[]string{"move", "db1", "n2", "n3"}, "(got 3 arguments"},
		{[]string{"move", "db1", "n2", "--max-rounds", "0"}, "--max-rounds 0: give at least 1 (or --no-precopy for none)"},
		{[]string{"move", "db1", "n2", "--max-downtime", "0s"}, "--max-downtime 0s: give at least 1ms"},
		{[]string{"move", "db1", "n2", "--max-downtime", "-1s"}, "--max-downtime -1s: give at least 1ms"},
		{[]string{"move", "db1", "n2", "--no-precopy", "--max-rounds", "3"}, "--no-precopy does no pre-copy rounds"},
		{[]string{"move", "db1", "n2", "--max-downtime"}, "flag needs an argument: --max-downtime"},
		{[]string{"move", "db1", "n2", "--bogus"}, "flag provided but not defined: --bogus"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			f.wantRefused(t, tt.args, tt.want)
		})
	}
}

func TestCLIMoveErrors(t *testing.T) {
	f := newFakeDaemon(t)
	for _, tt := range []struct {
		name     string
		args     []string
		out      string // printed before the error
		msg      string // the whole error, or with "..." a part of it
		sentinel error
	}{
		{"aborted", []string{"move", "api", "n2"},
			"migration m0a0b0c: planned (w00000003 api n1 -> n2)\nfrozen\n",
			"migration m0a0b0c aborted, api still runs on n1: dump api: criu dump failed", api.ErrMigrationFailed},
		{"aborted, stale record", []string{"move", "stale", "n2"},
			"migration m5f3a9c: planned (w00000001 db1 n1 -> n2)\n",
			"migration m5f3a9c aborted, db1 still runs on n1: migration m5f3a9c of db1 to n2 aborted; the workload runs on n1 as before: prepare: n2 does not answer",
			api.ErrUnreachable},
		{"refused", []string{"move", "web", "n2"}, "",
			"move: workload web exited (status 3); there is nothing to move", api.ErrNotRunning},
		{"unknown", []string{"move", "nope", "n2"}, "", "no workload \"nope\" (see `migshm ps`)", record.ErrUnknownWorkload},
		{"cut short", []string{"move", "cut", "n2"},
			"migration m5f3a9c: planned (w00000001 db1 n1 -> n2)\nfrozen\n",
			"lost track of migration m5f3a9c (last seen in phase frozen): ...ended the stream early: outcome of the move unknown; see `migshm migrations`",
			api.ErrOutcomeUnknown},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := f.cli(t, tt.args...)
			f.takeCalls()
			if out != tt.out {
				t.Errorf("printed %q, want %q", out, tt.out)
			}
			if err == nil || !matchMsg(err.Error(), tt.msg) || !errors.Is(err, tt.sentinel) {
				t.Errorf("error %v, want %q (%v)", err, tt.msg, tt.sentinel)
			}
			if aborted := strings.Contains(tt.msg, " aborted, "); errors.Is(err, api.ErrMigrationFailed) != aborted {
				t.Errorf("errors.Is(%v, ErrMigrationFailed) = %v, want %v", err, !aborted, aborted)
			}
		})
	}

	// With --json the error event is printed too; the error still makes migshm fail.
	out, err := f.cli(t, "move", "--json", "api", "n2")
	f.takeCalls()
	if !errors.Is(err, api.ErrMigrationFailed) {
		t.Errorf("move --json api n2: %v", err)
	}
	wantEvents(t, out, moveScripts["api"])
}

// TestMoveError: how the CLI words a move's error, from the last event.
func TestMoveError(t *testing.T) {
	names := func() map[string]string { return map[string]string{"w1": "db1"} }
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	cut := fmt.Errorf("lost track of migration m1: %w: %w", context.Canceled, api.ErrOutcomeUnknown)
	failed := fmt.Errorf("criu died: %w", api.ErrMigrationFailed)
	noLeader := fmt.Errorf("outcome could not be recorded: %w", api.ErrNoLeader)
	for _, tt := range []struct {
		name     string
		ctx      context.Context // the command's context, before the signal handler
		last     api.MoveEvent
		err      error
		msg      string
		sentinel error
	}{
		{"interrupted", context.Background(), api.MoveEvent{Event: api.EventRound, Migration: "m1"}, cut,
			"interrupted: stopped following migration m1, which goes on without us; see `migshm migrations` for how it ends: outcome of the move unknown",
			api.ErrOutcomeUnknown},
		// The caller's own context ended (not a signal): the error stays as it is.
		{"caller's context", canceled, api.MoveEvent{Event: api.EventRound, Migration: "m1"}, cut, cut.Error(), context.Canceled},
		{"aborted without a record", context.Background(), api.MoveEvent{Event: api.EventError, Migration: "m1"}, failed,
			"migration m1 aborted, the workload still runs on its node: criu died: migration failed", api.ErrMigrationFailed},
		{"aborted", context.Background(), api.MoveEvent{Event: api.EventError, Migration: "m1",
			Record: &api.Migration{ID: "m1", Workload: "w1", Source: "n1", Phase: record.PhaseAborted, Error: "criu died"}}, failed,
			"migration m1 aborted, db1 still runs on n1: criu died", api.ErrMigrationFailed},
		{"not settled", context.Background(), api.MoveEvent{Event: api.EventError, Migration: "m1",
			Record: &api.Migration{ID: "m1", Workload: "w2", Source: "n1", Phase: record.PhaseRestored}}, noLeader,
			"migration m1 of w2 failed in phase restored (see `migshm migrations` and `migshm ps`): outcome could not be recorded: no raft leader",
			api.ErrNoLeader},
		{"refused in the stream", context.Background(), api.MoveEvent{Event: api.EventError}, noLeader, noLeader.Error(), api.ErrNoLeader},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := moveError(tt.ctx, tt.last, tt.err, names)
			if err == nil || err.Error() != tt.msg || !errors.Is(err, tt.sentinel) {
				t.Errorf("got %v, want %q (%v)", err, tt.msg, tt.sentinel)
			}
		})
	}
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

func TestCLIMigrations(t *testing.T) {
	f := newFakeDaemon(t)
	header := []string{"ID", "WORKLOAD", "SOURCE", "TARGET", "BY", "PHASE", "STARTED", "DOWNTIME", "BYTES", "ERROR"}
	moving := []string{movingID, "db1", "n1", "n2", "user", "precopy", "45m0s", "-", "12.0 MiB"}
	aborted := []string{"m20", "api", "n1", "n2", "user", "aborted", "20m0s", "-", "1.0 MiB",
		"dump api: criu dump failed: (00.123456) Error (criu/sk-inet…"}
	removed := []string{"m21", "w000000ff", "n1", "n2", "user", "done", "19m0s", "84.3ms", "6.0 MiB"}
	done := func(i int) []string {
		by := "user"
		if i == 19 {
			by = "balancer"
		}
		return []string{fmt.Sprintf("m%02d", i), "db1", "n1", "n2", by, "done", fmt.Sprintf("%dm0s", 40-i), "84.3ms", "6.0 MiB"}
	}

	out := f.mustCLI(t, "migrations")
	// Oldest first: the one in flight is older than the last 20, and shown all the same.
	want := [][]string{header, moving}
	for i := 2; i < 20; i++ {
		want = append(want, done(i))
	}
	want = append(want, aborted, removed, []string{"(2 older finished migrations not shown; --all shows them)"})
	wantRows(t, out, want)

	out = f.mustCLI(t, "migrations", "--all")
	want = [][]string{header, moving}
	for i := range 20 {
		want = append(want, done(i))
	}
	wantRows(t, out, append(want, aborted, removed))

	all := f.migrations
	byAge := append([]api.Migration{all[22]}, all[:22]...)
	out = f.mustCLI(t, "migrations", "--json")
	wantJSON(t, out, append(byAge[:1:1], byAge[3:]...))
	out = f.mustCLI(t, "migrations", "--json", "-a")
	wantJSON(t, out, byAge)

	f.migrations = nil
	out, err := f.cli(t, "migrations", "--json")
	if err != nil || out != "[]\n" {
		t.Errorf("no migrations: %q %v", out, err)
	}
	out, err = f.cli(t, "migrations")
	if err != nil || tableRows(out)[0][0] != "ID" || len(tableRows(out)) != 1 {
		t.Errorf("no migrations: %q %v", out, err)
	}
	f.takeCalls()
	f.wantRefused(t, []string{"migrations", "m1"}, "takes no arguments")
}

func TestCLICheckMove(t *testing.T) {
	f := newFakeDaemon(t)
	for _, tt := range []struct {
		args     []string
		out      string
		msg      string // "": movable
		sentinel error
	}{
		{[]string{"check", "db1", "n3"}, `workload:   db1 (w00000001) on n1
target:     n3
processes:  3
segments:   2 SysV
memory:     1.3 GiB needed, 6.0 GiB free on n3
result:     movable
`, "", nil},
		{[]string{"check", "api", "n2"}, `workload:   api (w00000003) on n1
target:     n2
processes:  1
segments:   1 SysV
memory:     3.0 GiB needed, 512.0 MiB free on n2
result:     cannot move
problem:    target-memory: n2 has 512.0 MiB free, api needs 3.0 GiB: free memory there or pick another node
problem:    tcp-established: pid 4301 has an established TCP connection to 10.0.0.9:5432; CRIU cannot move it
`, "api cannot move to n2: 2 problems: target-memory, tcp-established (details above)", api.ErrNotMovable},
		{[]string{"check", "4242", "n2"}, `workload:  db1 (w00000001) on n1
target:    n2
result:    cannot move
problem:   target-state: node n2 is draining; only an active node takes workloads
`, "db1 cannot move to n2: target-state: node n2 is draining; only an active node takes workloads", api.ErrNotMovable},
		{[]string{"check", "db1", "n4"}, `workload:   db1 (w00000001) on n1
target:     n4
processes:  3
segments:   2 SysV
memory:     1.3 GiB needed, free memory on n4 unknown
result:     cannot move
problem:    target-unreachable: node n4 does not answer: dial tcp 10.0.0.14:7421: connect: connection refused
`, "db1 cannot move to n4: target-unreachable: node n4 does not answer: dial tcp 10.0.0.14:7421: connect: connection refused", api.ErrNotMovable},
		{[]string{"check", "db1", "n9"}, "", "no node \"n9\" (see `migshm nodes`)", record.ErrUnknownNode},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, err := f.cli(t, tt.args...)
			if out != tt.out {
				t.Errorf("printed\n%s\nwant\n%s", out, tt.out)
			}
			switch {
			case tt.msg == "" && err != nil:
				t.Errorf("error %v", err)
			case tt.msg != "" && (err == nil || err.Error() != tt.msg || !errors.Is(err, tt.sentinel)):
				t.Errorf("error %v, want %q (%v)", err, tt.msg, tt.sentinel)
			}
			calls := f.takeCalls()
			if len(calls) != 1 || calls[0].Method != "POST" || calls[0].Path != "/v1/migrations/check" {
				t.Errorf("calls %+v", calls)
			}
		})
	}

	for _, tt := range []struct {
		args []string
		want api.CheckReport
		err  bool
	}{
		{[]string{"check", "--json", "db1", "n3"}, reportOK, false},
		{[]string{"check", "api", "n2", "--json"}, reportTwo, true},
	} {
		out, err := f.cli(t, tt.args...)
		if (err != nil) != tt.err {
			t.Errorf("migshm %q: %v", tt.args, err)
		}
		wantJSON(t, out, tt.want)
		f.takeCalls()
	}

	// One argument is the local /proc check; it never asks the daemon.
	f.wantRefused(t, []string{"check", "1073741824", "--json"}, "no process with pid 1073741824")
}

// TestCLIHelpHasExamples: every command the user runs shows examples in its help.
func TestCLIHelpHasExamples(t *testing.T) {
	for _, cmd := range newApp().Commands {
		out, err := run(t, cmd.Name, "--help")
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`(?m)^\s+Examples:\n\s+migshm `).MatchString(out) {
			t.Errorf("migshm %s --help has no examples:\n%s", cmd.Name, out)
		}
	}
}
