package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gdamore/tcell/v2"
	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner/record"
)

func TestLoadBar(t *testing.T) {
	for _, tc := range []struct {
		share, capacity float64
		want            string
	}{
		{0.52, 1, "[#####.....] 0.52/1 cores"},
		{0.25, 2.5, "[###.......] 0.62/2.5 cores"},
		{0, 4, "[..........] 0.00/4 cores"},
		{1, 4, "[##########] 4.00/4 cores"},
		{1.7, 2, "[##########] 3.40/2 cores"}, // over capacity: full, not wider
		{0.5, 0, "[#####.....]  50%"},         // no declared capacity
	} {
		if got := loadBar(tc.share, tc.capacity); got != tc.want {
			t.Errorf("loadBar(%v, %v) = %q, want %q", tc.share, tc.capacity, got, tc.want)
		}
	}
}

// topFixture is a frame's data at a fixed time: the fake daemon's table.
func topFixture() topData {
	nodes, ws := fakeTable()
	at := time.Date(2025, 3, 4, 10, 11, 12, 0, time.Local)
	migs := fakeMigrations()
	migs[len(migs)-1].StartedAt = at.Add(-3 * time.Minute).UnixNano()
	migs[len(migs)-1].Members = []string{"w00000001", "w00000003"}
	b := fakeBalance(at.Add(-3 * time.Second))
	b.LastMoves = b.Moves[:1]
	b.LastMovesAt = at.Add(-2 * time.Minute).UnixNano()
	return topData{At: at, Socket: "/run/migshmd/migshmd.sock", Interval: time.Second,
		Nodes: nodes, Workloads: ws, Migrations: migs, Balance: &b}
}

func TestRenderTop(t *testing.T) {
	d := topFixture()
	d.Workloads = append(d.Workloads, api.Workload{ID: "w00000009", Name: "a-workload-with-a-very-long-name", Node: "n2",
		Group: "w00000009", State: record.WorkloadMigrating})
	got := strings.Join(renderTop(d), "\n")
	for _, want := range []string{
		"migshm top  /run/migshmd/migshmd.sock  10:11:12  every 1s",
		"nodes (2)",
		"n1    active    [###.......] 0.62/2.5 cores  2.0 GiB/8.0 GiB  2",
		"n2    draining  [..........]   0%            -                0",
		"workloads (3 running, 1 exited)",
		"db1                       n1    running           0.98  1.3 GiB  g1",
		"api                       n1    running (pinned)  -     -        g1",
		"a-workload-with-a-very-…  n2", // names are cut to 24 characters
		"migrations in flight (1)",
		"m5f3a9c  db1 (+api)  n1 -> n2    precopy  12.0 MiB  3m0s",
		"balancer: last pass 3s ago by n1 (auto every 30s): mean 0.45, spread 0.70 (threshold 0.10), 2 moves",
		"last moves, 2m0s ago:",
		"batch n1 -> n2 (cpu): n1 load 0.80",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("frame lacks %q:\n%s", want, got)
		}
	}
	for _, not := range []string{"web", "m00 ", "m20", "error"} { // exited, finished, no error
		if strings.Contains(got, not) {
			t.Errorf("frame holds %q:\n%s", not, got)
		}
	}

	// The terminal's width cuts every line.
	for _, l := range renderTopWidth(d, 30) {
		if n := len([]rune(l)); n > 30 {
			t.Errorf("line of %d characters at width 30: %q", n, l)
		}
	}
}

func TestRenderTopEmptyAndErrors(t *testing.T) {
	empty := strings.Join(renderTop(topData{}), "\n")
	for _, want := range []string{"nodes (0)", "no nodes", "workloads (0 running)", "none running",
		"migrations in flight (0)", "balancer: no pass known"} {
		if !strings.Contains(empty, want) {
			t.Errorf("empty frame lacks %q:\n%s", want, empty)
		}
	}

	// Never answered: the error, nothing else to show.
	never := renderTop(topData{Err: "no migshmd listening on /x.sock"})
	if len(never) != 3 || never[1] != "error: no migshmd listening on /x.sock (retrying)" || never[2] != "no answer yet" {
		t.Errorf("frame of a daemon that never answered: %q", never)
	}

	// Answered before: the error, and the last tables with their time.
	d := topFixture()
	d.Err, d.Stale = "context deadline exceeded", d.At.Add(-4*time.Second)
	stale := strings.Join(renderTop(d), "\n")
	for _, want := range []string{"error: context deadline exceeded (retrying)", "showing the cluster as of 10:11:08", "db1"} {
		if !strings.Contains(stale, want) {
			t.Errorf("stale frame lacks %q:\n%s", want, stale)
		}
	}

	// The leader's balancer alone does not answer.
	d = topFixture()
	d.Balance, d.BalanceErr = nil, "the leader did not answer"
	if got := strings.Join(renderTop(d), "\n"); !strings.Contains(got, "balancer: the leader did not answer") || !strings.Contains(got, "db1") {
		t.Errorf("frame without the balancer:\n%s", got)
	}
}

// TestTopPlain: against the daemon, --once prints one frame and --count 2 two, a blank
// line apart, as plain text (the test's output is no terminal).
func TestTopPlain(t *testing.T) {
	f := newFakeDaemon(t)
	f.last = &api.BalanceReport{Leader: "n1", At: time.Now().UnixNano(), Auto: true, Interval: "30s"}
	once := f.mustCLI(t, "top", "--once")
	if strings.Contains(once, "\x1b") {
		t.Errorf("--once output has escape codes: %q", once)
	}
	for _, want := range []string{"n1", "n2", "db1", "api", "m5f3a9c", "n1 -> n2", "balancer: last pass"} {
		if !strings.Contains(once, want) {
			t.Errorf("--once frame lacks %q:\n%s", want, once)
		}
	}
	if n := strings.Count(once, "migshm top"); n != 1 {
		t.Errorf("--once printed %d frames:\n%s", n, once)
	}
	if got := callPaths(f.takeCalls()); strings.Join(got, ",") != "GET /v1/nodes,GET /v1/workloads,GET /v1/migrations,GET /v1/balance/last" {
		t.Errorf("--once asked %q", got)
	}

	two := f.mustCLI(t, "top", "--count", "2", "--interval", "10ms")
	frames := strings.Split(strings.TrimRight(two, "\n"), "\n\nmigshm top")
	if len(frames) != 2 || strings.Contains(two, "\x1b") {
		t.Errorf("--count 2: %d frames, want 2 without escape codes:\n%q", len(frames), two)
	}
	if n := len(f.takeCalls()); n != 8 {
		t.Errorf("--count 2 made %d requests, want 8 (4 a frame)", n)
	}

	f.wantRefused(t, []string{"top", "--interval", "0s"}, "--interval 0s: give a positive duration")
	f.wantRefused(t, []string{"top", "n1"}, "top takes no arguments")
}

// TestTopNoDaemon: a daemon that does not answer is in the frame, frame after frame; a
// finite run then fails.
func TestTopNoDaemon(t *testing.T) {
	out, err := run(t, "--socket", filepath.Join(t.TempDir(), "none.sock"), "top", "--count", "2", "--interval", "10ms")
	if err == nil || !strings.Contains(err.Error(), "the daemon did not answer") {
		t.Errorf("top without a daemon: %v, want the daemon did not answer", err)
	}
	if n := strings.Count(out, "error: no migshmd listening on"); n != 2 {
		t.Errorf("%d frames with the error, want 2:\n%s", n, out)
	}
}

// TestTopScreen: the full-screen view draws the frame and quits on q, Esc and Ctrl-C,
// restoring the terminal (a simulated one).
func TestTopScreen(t *testing.T) {
	f := newFakeDaemon(t)
	for _, key := range []struct {
		name string
		k    tcell.Key
		r    rune
	}{{"q", tcell.KeyRune, 'q'}, {"esc", tcell.KeyEscape, 0}, {"ctrl-c", tcell.KeyCtrlC, 0}} {
		t.Run(key.name, func(t *testing.T) {
			s := tcell.NewSimulationScreen("UTF-8")
			s.SetSize(100, 40)
			tp := &topper{cl: api.NewClient(f.sock), last: topData{Socket: f.sock, Interval: 10 * time.Millisecond}, interval: 10 * time.Millisecond}
			shown := make(chan string, 100)
			tp.drawn = func(tcell.Screen) {
				select {
				case shown <- screenText(s):
				default:
				}
			}
			done := make(chan error, 1)
			go func() { done <- tp.screen(context.Background(), s) }()
			var text string
			for timeout := time.After(10 * time.Second); !strings.Contains(text, "db1"); {
				select {
				case text = <-shown:
				case <-timeout:
					t.Fatalf("the view never showed db1:\n%s", text)
				}
			}
			if !strings.Contains(text, "q quits") || !strings.Contains(text, "[###.......] 0.62/2.5 cores") {
				t.Errorf("the view lacks its status line or a load bar:\n%s", text)
			}
			s.InjectKey(key.k, key.r, tcell.ModNone)
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s did not quit", key.name)
			}
		})
	}
}

// screenText is what a simulated screen shows, line by line.
func screenText(s tcell.SimulationScreen) string {
	cells, w, h := s.GetContents()
	var b strings.Builder
	for y := range h {
		for x := range w {
			c := cells[y*w+x]
			if len(c.Runes) > 0 {
				b.WriteString(string(c.Runes))
			} else {
				b.WriteByte(' ')
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}
