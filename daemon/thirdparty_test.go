package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/shmowner/record"
)

// okTotal returns the last "ok total=N" of a shmdaemon log and fails on a "BAD" line.
func okTotal(t *testing.T, log string) uint64 {
	t.Helper()
	b, _ := os.ReadFile(log)
	if strings.Contains(string(b), "BAD") {
		t.Fatalf("the program found its segment inconsistent:\n%s", b)
	}
	var n uint64
	for _, line := range strings.Split(string(b), "\n") {
		if s, ok := strings.CutPrefix(line, "ok total="); ok {
			fmt.Sscan(s, &n)
		}
	}
	return n
}

// TestDaemonizingProgramMoves: a Perl SysV server that daemonizes the Unix way (fork,
// setsid, fork, pidfile; its first process exits at once) runs as a workload, moves
// n1 -> n2 -> n3 with its segment and semaphore (its own invariant checked by the
// program all along), and stops cleanly: SIGTERM reaches its master through the
// pidfile, which stops its workers and removes its IPC objects itself. A pidfile that
// never appears fails the run and leaves nothing behind.
func TestDaemonizingProgramMoves(t *testing.T) {
	testenv.RequireCRIU(t)
	src, err := testwork.SourceDir()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(src, "thirdparty", "shmdaemon.pl")
	c := newCluster(t, 3, 3)
	n1 := c.nodes[0]
	pidFile := filepath.Join(t.TempDir(), "shmdaemon.pid")
	if _, err := c.cli(n1, "run", "--name", "pd", "--pidfile", pidFile, "--", "perl", script, pidFile, "3"); err != nil {
		t.Fatal(err)
	}
	w := c.waitSettled(n1, "pd", "perl")
	log := filepath.Join(c.wdir, w.ID, "stdout.log")
	wait.For(t, 10*time.Second, "the daemon to count", func() (bool, string) {
		n := okTotal(t, log)
		return n > 0, fmt.Sprintf("total %d", n)
	})
	for i, to := range []string{"n2", "n3"} {
		evs, err := c.move(c.nodes[(i+2)%3], "pd", to)
		if err != nil {
			t.Fatalf("move to %s: %v\nevents: %+v", to, err, evs)
		}
		after := c.waitSettled(n1, "pd", "perl")
		if after.Node != to {
			t.Fatalf("after the move the table says %s", after.Node)
		}
		before := okTotal(t, log)
		wait.For(t, 10*time.Second, "the daemon to count on "+to, func() (bool, string) {
			n := okTotal(t, log)
			return n > before, fmt.Sprintf("total %d, was %d at the move", n, before)
		})
		segs, err := n1.c.Segments(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if gs := groupSegments(segs, after.Group); len(gs) != 1 || gs[0].Owner != to {
			t.Fatalf("segments of the group after the move to %s: %+v", to, gs)
		}
	}
	if _, err := c.cli(n1, "stop", "pd"); err != nil {
		t.Fatal(err)
	}
	end := c.workload(n1, "pd")
	if end.State != record.WorkloadExited || end.ExitStatus != 0 {
		t.Fatalf("after stop: state %s, status %d; want exited(0)", end.State, end.ExitStatus)
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "shmdaemon stopped") {
		t.Fatalf("the daemon's master did not stop itself:\n%s", b)
	}
	if running, stopped := c.copies("perl"); running+stopped != 0 {
		t.Fatalf("%d running and %d stopped copies left after stop", running, stopped)
	}

	// A pidfile that never appears: a clear error, and no workload, no process left.
	out, err := c.cli(n1, "run", "--name", "nopid", "--pidfile", "/nonexistent/x.pid", "--pidfile-timeout", "1s", "--", "sleep", "300")
	if err == nil || !strings.Contains(err.Error(), "pidfile /nonexistent/x.pid does not exist after 1s") {
		t.Fatalf("run with a pidfile that never appears: %v\n%s", err, out)
	}
	ws, err := n1.c.Workloads(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := workloadByName(ws, "nopid"); ok {
		t.Fatal("the failed run left a workload in the table")
	}
	if running, stopped := c.copies("sleep"); running+stopped != 0 {
		t.Fatalf("the failed run left %d running and %d stopped sleeps", running, stopped)
	}

	// A working directory that does not exist is named as such (not as a missing init).
	out, err = c.cli(n1, "run", "--name", "nodir", "--dir", "/nonexistent", "--", "sleep", "300")
	if err == nil || !strings.Contains(err.Error(), "working directory /nonexistent (--dir) does not exist on node n1") {
		t.Fatalf("run --dir /nonexistent: %v\n%s", err, out)
	}
	if ws, err = n1.c.Workloads(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := workloadByName(ws, "nodir"); ok {
		t.Fatal("run --dir /nonexistent left a workload in the table")
	}
}
