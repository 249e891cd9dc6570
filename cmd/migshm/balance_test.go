package main

import (
	"context"
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner/record"
)

// fakeBalance is the leader's dry run, as of now: n1 is loaded, n2 is not; batch moves,
// cron would too, api is pinned, and the cap stops the rest.
func fakeBalance(now time.Time) api.BalanceReport {
	return api.BalanceReport{
		Leader: "n1", At: now.UnixNano(), DryRun: true, Auto: true, Interval: "30s",
		Threshold: 0.1, Mean: 0.45, Spread: 0.7, Imbalance: 0.35, InFlight: 1,
		Nodes: []api.NodeLoad{
			{Node: "n1", State: "active", Cores: 4, CPU: 3.2, Load: 0.8, Workloads: 4, MemFreeBytes: 2 << 30, MemTotalBytes: 8 << 30},
			{Node: "n2", State: "active", Cores: 2.5, CPU: 0.25, Load: 0.1, Workloads: 1, MemFreeBytes: 6 << 30, MemTotalBytes: 8 << 30},
		},
		Moves: []api.BalanceMove{
			{Workload: "w00000004", Name: "batch", Group: "w00000004", From: "n1", To: "n2", Kind: "cpu",
				Reason: "n1 load 0.80 > mean 0.45 + threshold 0.10: batch (0.98 cores) to n2 (load 0.10)", Score: 0.2},
			{Workload: "w00000005", Group: "w00000005", From: "n1", To: "n2", Kind: "memory",
				Reason: "n1 has 2.0 GiB free < floor 3.0 GiB", Score: -0.01},
		},
		Skipped: []api.BalanceSkip{
			{Workload: "w00000003", Name: "api", Node: "n1", Reason: "pinned: workload w00000003 never moves"},
			{Node: "n2", Reason: "cpu: n2 below the mean; not shedding"},
			{Reason: "cap reached: 1 migrations in flight + 2 planned >= MaxConcurrent 3"},
		},
	}
}

// node returns the fake's node id as it has it now.
func (f *fakeDaemon) node(id string) api.Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		if n.ID == id {
			return n
		}
	}
	return api.Node{}
}

// callPaths lists the calls as "METHOD path".
func callPaths(calls []apiCall) []string {
	var out []string
	for _, c := range calls {
		out = append(out, c.Method+" "+c.Path)
	}
	return out
}

func TestCLIBalance(t *testing.T) {
	f := newFakeDaemon(t)
	out := f.mustCLI(t, "balance", "--dry-run")
	want := `NODE  STATE   CORES  CPU   LOAD  WORKLOADS  MEM FREE
n1    active  4      3.20  0.80  4          2.0 GiB
n2    active  2.5    0.25  0.10  1          6.0 GiB

mean load 0.45, spread 0.70 (threshold 0.10), imbalance 0.350

would move (dry run, nothing moved):
  WORKLOAD   FROM  TO  KIND    REASON
  batch      n1    n2  cpu     n1 load 0.80 > mean 0.45 + threshold 0.10: batch (0.98 cores) to n2 (load 0.10)
  w00000005  n1    n2  memory  n1 has 2.0 GiB free < floor 3.0 GiB

left alone:
  api on n1: pinned: workload w00000003 never moves
  n2: cpu: n2 below the mean; not shedding
  cap reached: 1 migrations in flight + 2 planned >= MaxConcurrent 3

` + "`migshm balance` moves them now\n"
	if out != want {
		t.Errorf("balance --dry-run prints\n%s\nwant\n%s", out, want)
	}
	if c := callPaths(f.takeCalls()); strings.Join(c, ", ") != "GET /v1/balance" {
		t.Errorf("calls %q, want only GET /v1/balance (a dry run moves nothing)", c)
	}

	out = f.mustCLI(t, "balance", "--json", "-n")
	wantJSON(t, out, f.balance)
	f.takeCalls()

	out = f.mustCLI(t, "balance")
	_, moves, ok := strings.Cut(out, "\nmoves:\n")
	if !ok {
		t.Fatalf("balance prints no moves:\n%s", out)
	}
	moves, _, _ = strings.Cut(moves, "\n\n")
	wantRows(t, moves, [][]string{
		{"WORKLOAD", "FROM", "TO", "KIND", "STATUS", "REASON"},
		{"batch", "n1", "n2", "cpu", "started", "n1 load 0.80 > mean 0.45 + threshold 0.10: batch (0.98 cores) to n2 (load 0.10)"},
		{"w00000005", "n1", "n2", "memory", "error: w00000005 is moving already (m7)", "n1 has 2.0 GiB free < floor 3.0 GiB"},
	})
	if !strings.HasSuffix(out, "\n`migshm migrations` follows them\n") {
		t.Errorf("balance does not point at `migshm migrations`:\n%s", out)
	}
	calls := f.takeCalls()
	if len(calls) != 1 || calls[0].Method != "POST" || calls[0].Path != "/v1/balance" || calls[0].Body != "{}" {
		t.Errorf("calls %+v, want POST /v1/balance {}", calls)
	}

	f.balance.Moves, f.balance.Skipped = nil, nil
	out = f.mustCLI(t, "balance", "--dry-run")
	if !strings.HasSuffix(out, "imbalance 0.350\nbalanced: nothing to move\n") {
		t.Errorf("balance with no moves:\n%s", out)
	}
	f.takeCalls()

	f.wantRefused(t, []string{"balance", "now"}, "balance takes no arguments")
}

func TestCLIPin(t *testing.T) {
	f := newFakeDaemon(t)
	for _, tt := range []struct {
		args []string
		out  string
		path string
	}{
		{[]string{"pin", "db1"}, "pinned db1 to n1\n", "/v1/workloads/db1/pin"},
		{[]string{"unpin", "api"}, "unpinned api: the balancer may move it off n1\n", "/v1/workloads/api/unpin"},
	} {
		out, err := f.cli(t, tt.args...)
		if err != nil || out != tt.out {
			t.Errorf("migshm %q: %q, %v; want %q", tt.args, out, err, tt.out)
		}
		if c := f.takeCalls(); len(c) != 1 || c[0].Method != "POST" || c[0].Path != tt.path || c[0].Body != "{}" {
			t.Errorf("migshm %q: calls %+v, want POST %s {}", tt.args, c, tt.path)
		}
	}

	out := f.mustCLI(t, "pin", "db1", "--json")
	want := f.workloads[0]
	want.Pinned = true
	wantJSON(t, out, want)
	out = f.mustCLI(t, "unpin", "--json", "api")
	want = f.workloads[2]
	want.Pinned = false
	wantJSON(t, out, want)
	f.takeCalls()

	out, err := f.cli(t, "pin", "nope")
	if !errors.Is(err, record.ErrUnknownWorkload) || err.Error() != "no workload \"nope\" (see `migshm ps`)" || out != "" {
		t.Errorf("pin nope: %q %v", out, err)
	}
	f.takeCalls()
	for _, args := range [][]string{{"pin"}, {"unpin", "a", "b"}} {
		f.wantRefused(t, args, "give one workload: `migshm "+args[0]+" WORKLOAD`")
	}
}

// drainTable is what the fake lists while n1 drains: db1 migrating to n2 and api
// waiting (polls 1 and 2), then api alone (poll 3), then nothing on n1.
func drainTable(n int) []api.Workload {
	_, ws := fakeTable()
	db1, web, apiWl := ws[0], ws[1], ws[2]
	apiWl.Pinned = false
	switch {
	case n <= 2:
		db1.State = record.WorkloadMigrating
	case n == 3:
		db1.Node = "n2"
	default:
		db1.Node, apiWl.Node = "n2", "n2"
	}
	return []api.Workload{db1, web, apiWl}
}

// fastDrain makes `migshm drain` poll every 5ms for the test.
func fastDrain(t *testing.T) {
	t.Helper()
	old := drainPoll
	drainPoll = 5 * time.Millisecond
	t.Cleanup(func() { drainPoll = old })
}

func TestCLIDrain(t *testing.T) {
	fastDrain(t)
	f := newFakeDaemon(t)
	f.listWorkloads = drainTable
	f.last = &api.BalanceReport{Leader: "n1", At: time.Now().Add(time.Hour).UnixNano(), Auto: true, Skipped: []api.BalanceSkip{
		{Workload: "w00000003", Name: "api", Node: "n1", Reason: "drain: waiting: group g1 has a migration in flight (m5f3a9c)"},
		{Workload: "w00000002", Name: "web", Node: "n2", Reason: "elsewhere: not told"},
		{Reason: "cap reached: not about n1"},
	}}
	out := f.mustCLI(t, "drain", "n1")
	// The line repeats only when it changes; the balancer's reason is told once.
	want := `n1 is draining: it takes no new workloads; waiting up to 10m0s for the balancer to move its workloads off
n1: 2 workloads left; moving: db1 -> n2
n1: api not moved: drain: waiting: group g1 has a migration in flight (m5f3a9c)
n1: 1 workload left
n1 drained: 0 workloads; ` + "`migshm undrain n1` to take new work\n"
	if out != want {
		t.Errorf("drain n1 prints\n%s\nwant\n%s", out, want)
	}
	calls := f.takeCalls()
	if len(calls) == 0 || calls[0].Method != "POST" || calls[0].Path != "/v1/nodes/n1/drain" || calls[0].Body != "{}" {
		t.Fatalf("first call %+v, want POST /v1/nodes/n1/drain {}", calls)
	}
	lists := 0
	for _, c := range calls {
		if c.Path == "/v1/workloads" {
			lists++
		}
	}
	if lists != 4 {
		t.Errorf("drain listed the workloads %d times, want 4 (until n1 is empty): %q", lists, callPaths(calls))
	}
	if got := f.node("n1").State; got != record.NodeDraining {
		t.Errorf("n1 is %s after drain", got)
	}

	t.Run("json", func(t *testing.T) {
		f.mu.Lock()
		f.workloadLists = 0
		f.mu.Unlock()
		out := f.mustCLI(t, "drain", "n1", "--json")
		f.takeCalls()
		wantJSON(t, out, drainResult{Node: f.node("n1"), Workloads: []api.Workload{}})
	})

	t.Run("no wait", func(t *testing.T) {
		out, err := f.cli(t, "drain", "--no-wait", "n1")
		if err != nil || !strings.HasPrefix(out, "n1 is draining: it takes no new workloads") {
			t.Errorf("drain --no-wait n1: %q %v", out, err)
		}
		if c := callPaths(f.takeCalls()); strings.Join(c, ", ") != "POST /v1/nodes/n1/drain" {
			t.Errorf("drain --no-wait called %q", c)
		}
	})

	t.Run("undrain", func(t *testing.T) {
		out, err := f.cli(t, "undrain", "n1")
		if err != nil || out != "n1 is active: it takes new workloads\n" {
			t.Errorf("undrain n1: %q %v", out, err)
		}
		if c := f.takeCalls(); len(c) != 1 || c[0].Path != "/v1/nodes/n1/undrain" || c[0].Body != "{}" {
			t.Errorf("calls %+v", c)
		}
		out = f.mustCLI(t, "undrain", "--json", "n2")
		f.takeCalls()
		wantJSON(t, out, f.node("n2"))
		if f.node("n2").State != record.NodeActive {
			t.Errorf("n2 is %s after undrain", f.node("n2").State)
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, tt := range []struct {
			args []string
			msg  string
		}{
			{[]string{"drain"}, "give one node: `migshm drain NODE` (got 0 arguments"},
			{[]string{"drain", "n1", "n2"}, "give one node: `migshm drain NODE` (got 2 arguments"},
			{[]string{"undrain"}, "give one node: `migshm undrain NODE`"},
			{[]string{"drain", "n1", "--timeout", "0s"}, "--timeout 0s: give a positive duration (or --no-wait not to wait)"},
		} {
			f.wantRefused(t, tt.args, tt.msg)
		}
		// The daemon refuses a node it does not know.
		const unknown = "no node \"n9\" (see `migshm nodes`)"
		for _, args := range [][]string{{"drain", "n9"}, {"undrain", "n9"}} {
			_, err := f.cli(t, args...)
			if err == nil || !strings.Contains(err.Error(), unknown) || !errors.Is(err, record.ErrUnknownNode) {
				t.Errorf("migshm %q: %v, want %q (ErrUnknownNode)", args, err, unknown)
			}
			f.takeCalls()
		}
	})
}

func TestCLIDrainTimeout(t *testing.T) {
	fastDrain(t)
	f := newFakeDaemon(t)
	f.listWorkloads = func(int) []api.Workload { return drainTable(1) }
	f.last = &api.BalanceReport{Leader: "n1", At: time.Now().Add(time.Hour).UnixNano(), Auto: true, Skipped: []api.BalanceSkip{
		{Workload: "w00000003", Name: "api", Node: "n1", Reason: "pinned: workload w00000003 never moves"},
	}}
	out, err := f.cli(t, "drain", "n1", "--timeout", "300ms")
	const msg = "n1 still has 2 workloads after 300ms: api (pinned: workload w00000003 never moves), db1 (moving to n2); " +
		"n1 stays draining: `migshm drain n1` waits again, `migshm move` or `migshm stop` deal with them, `migshm undrain n1` takes it back"
	if err == nil || err.Error() != msg || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("drain that times out: %v\nwant %s", err, msg)
	}
	if want := "n1: 2 workloads left; moving: db1 -> n2\nn1: api not moved: pinned: workload w00000003 never moves\n"; !strings.HasSuffix(out, want) {
		t.Errorf("drain prints\n%s\nwant it to end with\n%s", out, want)
	}
	f.takeCalls()

	// --json prints what is left, and fails all the same.
	out, err = f.cli(t, "drain", "n1", "--timeout", "200ms", "--json")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("drain --json that times out: %v", err)
	}
	var res drainResult
	if err := strict(out, &res); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	var left []string
	for _, w := range res.Workloads {
		left = append(left, w.Name+" "+string(w.State))
	}
	if !reflect.DeepEqual(res.Node, f.node("n1")) || strings.Join(left, ", ") != "api running, db1 migrating" {
		t.Errorf("drain --json that times out prints node %+v and workloads %q, want n1 draining with api and db1", res.Node, left)
	}
	f.takeCalls()

	// A pass older than the drain says nothing of it.
	f.mu.Lock()
	f.last.At = time.Now().Add(-time.Hour).UnixNano()
	f.mu.Unlock()
	f.mu.Lock()
	f.listWorkloads = func(int) []api.Workload { return drainTable(3) }
	f.mu.Unlock()
	out, err = f.cli(t, "drain", "n1", "--timeout", "200ms")
	if err == nil || !strings.HasPrefix(err.Error(), "n1 still has 1 workload after 200ms: api (not moved yet); n1 stays draining") {
		t.Errorf("drain with a stale balancer pass: %v", err)
	}
	if strings.Contains(out, "pinned") {
		t.Errorf("a pass older than the drain is told:\n%s", out)
	}
	f.takeCalls()
}

func TestCLIStatusBalancer(t *testing.T) {
	f := newFakeDaemon(t)
	now := time.Now()
	rep := fakeBalance(now.Add(-12 * time.Second))
	rep.DryRun = false
	rep.LastMoves = []api.BalanceMove{rep.Moves[0], rep.Moves[1]}
	rep.LastMoves[0].Started = true
	rep.LastMoves[1].Error = "w00000005 is moving already (m7)"
	rep.LastMovesAt = now.Add(-3 * time.Minute).UnixNano()
	rep.Moves = nil
	f.last = &rep // the router puts the leader's last pass in the status

	out := f.mustCLI(t, "status")
	_, bal, ok := strings.Cut(out, "\n\nbalancer:\n")
	if !ok {
		t.Fatalf("no balancer section in\n%s", out)
	}
	head, moves, ok := strings.Cut(bal, "    WORKLOAD")
	if !ok {
		t.Fatalf("no last moves in\n%s", bal)
	}
	wantRows(t, regexp.MustCompile(`(?m)^(\s*[a-z ]+):`).ReplaceAllString(head, "$1"), [][]string{
		{"auto", "on, every 30s"},
		{"last pass", "12s ago by n1"},
		{"in flight", "1 migration"},
		{"load", "mean 0.45, spread 0.70 (threshold 0.10)"},
		{"last moves", "2 moves, 3m0s ago"},
	})
	wantRows(t, "WORKLOAD"+moves, [][]string{
		{"WORKLOAD", "FROM", "TO", "KIND", "STATUS", "REASON"},
		{"batch", "n1", "n2", "cpu", "started", "n1 load 0.80 > mean 0.45 + threshold 0.10: batch (0.98 cores) to n2 (load 0.10)"},
		{"w00000005", "n1", "n2", "memory", "error: w00000005 is moving already (m7)", "n1 has 2.0 GiB free < floor 3.0 GiB"},
	})

	out = f.mustCLI(t, "status", "--json")
	want := f.status
	want.Balancer = &rep
	wantJSON(t, out, want)

	// A leader that never ran a pass, and does not balance on its own.
	f.last = &api.BalanceReport{Leader: "n1", Threshold: 0.1}
	out = f.mustCLI(t, "status")
	_, bal, _ = strings.Cut(out, "\n\nbalancer:\n")
	wantRows(t, regexp.MustCompile(`(?m)^(\s*[a-z ]+):`).ReplaceAllString(bal, "$1"), [][]string{
		{"auto", "off: drains only (`migshm balance` runs a full pass)"},
		{"last pass", "none yet"},
		{"in flight", "0 migrations"},
		{"load", "mean 0.00, spread 0.00 (threshold 0.10)"},
		{"last moves", "none"},
	})
}
