package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
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
	c := newPrivateCluster(t, 3, 3)
	n1 := c.nodes[0]
	pidFile := filepath.Join(t.TempDir(), "shmdaemon.pid")
	if _, err := c.cli(n1, "run", "--name", "pd", "--pidfile", pidFile, "--", "perl", script, pidFile, "3"); err != nil {
		t.Fatal(err)
	}
	w := c.waitSettled(n1, "pd", "perl")
	// Its log is in the workload dir of the node it runs on (each node has its own).
	log := c.nodePath(n1, filepath.Join(c.wdir, w.ID, "stdout.log"))
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
		log = c.nodePath(c.nodes[i+1], filepath.Join(c.wdir, w.ID, "stdout.log"))
		if n := okTotal(t, log); n < before {
			t.Fatalf("the log on %s counts %d, the source's %d: not carried whole", to, n, before)
		}
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

// memberOK returns how many "ok member=N" lines a shmgroup log has, and fails on "BAD".
func memberOK(t *testing.T, log string) int {
	t.Helper()
	b, _ := os.ReadFile(log)
	if strings.Contains(string(b), "BAD") {
		t.Fatalf("a member found the group's segment inconsistent:\n%s", b)
	}
	return strings.Count(string(b), "ok member=")
}

// TestGroupMovesAsOne: three workloads of one IPC group (python3-sysv-ipc members
// sharing a segment under a semaphore, each checking the group's invariant) run as one
// tree and move as one: by hand, naming one member (the move says it takes the group),
// and by the balancer when their node drains (at once, with no pass due). A member moving alone is refused with the
// reason; a member stops on its own while the others go on.
func TestGroupMovesAsOne(t *testing.T) {
	testenv.RequireCRIU(t)
	src, err := testwork.SourceDir()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(src, "thirdparty", "shmgroup.py")
	c := newPrivateCluster(t, 3, 0)
	// No timed balancer pass within the test: the drain below must ask for its own.
	for i, nd := range c.nodes {
		c.start(nd, append(c.memberArgs(i), "--balance-interval", "1h")...)
	}
	c.waitMembers(c.nodes[0], 3)
	n1 := c.nodes[0]
	names := []string{"trio0", "trio1", "trio2"}
	// The group's directories, on every node (each has its own /run/migshm).
	groupDirs := func() []string {
		var dirs []string
		for _, nd := range c.nodes {
			d, _ := filepath.Glob(c.nodePath(nd, "/run/migshm/groups/trio-*"))
			dirs = append(dirs, d...)
		}
		return dirs
	}
	for i, name := range names {
		// Debian's python3 (python3-sysv-ipc is installed for it), not a PATH shim.
		if _, err := c.cli(n1, "run", "--name", name, "--ipc-group", "trio", "--",
			"/usr/bin/python3", script, "0x7e57", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	logs := map[string]string{}
	for _, name := range names {
		w := c.waitSettled(n1, name, "python3")
		logs[name] = filepath.Join(c.wdir, w.ID, "stdout.log")
	}
	t.Cleanup(func() {
		if t.Failed() {
			for name, log := range logs {
				b, _ := os.ReadFile(c.workloadPath(n1, name, strings.TrimSuffix(log, "stdout.log")+"stderr.log"))
				t.Logf("---- %s stderr ----\n%s", name, tailLines(string(b), 20))
			}
		}
	})
	counting := func(where string) {
		t.Helper()
		at := map[string]int{}
		for _, name := range names {
			at[name] = memberOK(t, c.workloadPath(n1, name, logs[name]))
		}
		for _, name := range names {
			wait.For(t, 20*time.Second, name+" to count "+where, func() (bool, string) {
				n := memberOK(t, c.workloadPath(n1, name, logs[name]))
				return n > at[name], fmt.Sprintf("%d ok lines, %d before", n, at[name])
			})
		}
	}
	counting("on n1")
	onNode := func(node string) {
		t.Helper()
		for _, name := range names {
			if w := c.waitSettled(n1, name, "python3"); w.Node != node {
				t.Fatalf("%s runs on %s, want %s with its group", name, w.Node, node)
			}
		}
	}

	// migshm check names the members that move with the one asked about.
	out, err := c.cli(n1, "check", "trio1", "n2")
	if err != nil || !strings.Contains(out, "moves with:") || !strings.Contains(out, "trio0, trio2") {
		t.Fatalf("check trio1 n2: %v\n%s", err, out)
	}
	// By hand: moving one member moves the group, and says so.
	out, err = c.cli(c.nodes[2], "move", "trio1", "n2")
	if err != nil || !strings.Contains(out, "with its ipc group: trio0, trio2") {
		t.Fatalf("move trio1 n2: %v\n%s", err, out)
	}
	onNode("n2")
	counting("on n2")
	if dirs := groupDirs(); len(dirs) != 1 || !strings.HasPrefix(dirs[0], c.nodes[1].net.FS+"/") {
		t.Fatalf("the group's directories after its move to n2: %v (want one, n2's)", dirs)
	}
	segs, err := n1.c.Segments(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if gs := groupSegments(segs, "trio"); len(gs) != 1 || gs[0].Owner != "n2" {
		t.Fatalf("segments of the group after the move: %+v", gs)
	}
	if running, stopped := c.copies("python3"); running != 1 || stopped != 0 {
		t.Fatalf("after the move: %d running and %d stopped copies of the group, want 1 and 0", running, stopped)
	}
	// migshm top --once lists every node and every member where it runs.
	out, err = c.cli(c.nodes[2], "top", "--once")
	if err != nil {
		t.Fatalf("top --once: %v\n%s", err, out)
	}
	for _, want := range append([]string{"n1", "n2", "n3"}, names...) {
		if !strings.Contains(out, want) {
			t.Fatalf("top --once does not show %s:\n%s", want, out)
		}
	}
	// migshm events, from a node that took no part, saw every phase of the migration in
	// order, and every member move.
	wait.For(t, 10*time.Second, "the move's events on n3", func() (bool, string) {
		out, err := c.cli(c.nodes[2], "events", "--json")
		if err != nil {
			return false, err.Error()
		}
		var evs []api.Event
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var ev api.Event
			if json.Unmarshal([]byte(line), &ev) == nil {
				evs = append(evs, ev)
			}
		}
		moved := map[string]bool{}
		var phases []string
		for _, ev := range evs {
			if ev.Kind == api.EventKindWorkload && ev.Change == "moved" && ev.To == "n2" {
				moved[ev.Name] = true
			}
			if ev.Kind == api.EventKindMigration && ev.To == "n2" {
				phases = append(phases, ev.Change)
			}
		}
		all := []string{"planned", "precopy", "frozen", "shipped", "restored", "done"}
		return slices.Equal(phases, all) && len(moved) == 3, fmt.Sprintf("phases %v (want %v), moved %v, in %d events", phases, all, moved, len(evs))
	})

	// A group lives on one node: a member started into it elsewhere is refused.
	if out, err := c.cli(n1, "run", "--name", "trio9", "--ipc-group", "trio", "--", "sleep", "100"); err == nil ||
		!strings.Contains(err.Error(), "ipc group trio lives on node n2") {
		t.Fatalf("run into trio on n1: %v\n%s", err, out)
	}
	// A workload run alone takes no members.
	if _, err := c.cli(n1, "run", "--name", "alone", "--", "sleep", "100"); err != nil {
		t.Fatal(err)
	}
	alone := c.workload(n1, "alone")
	if out, err := c.cli(n1, "run", "--name", "joiner", "--ipc-group", alone.Group, "--", "sleep", "100"); err == nil ||
		!strings.Contains(err.Error(), "runs alone (started without --ipc-group)") {
		t.Fatalf("run into a workload alone: %v\n%s", err, out)
	}
	if _, err := c.cli(n1, "stop", "alone"); err != nil {
		t.Fatal(err)
	}
	// A daemon that forks, calls setsid and forks again cannot move inside a group (CRIU
	// restores its session only under the tree's init): check names it and why.
	daemonScript := filepath.Join(src, "thirdparty", "shmdaemon.pl")
	pidFile := filepath.Join(t.TempDir(), "pdg.pid")
	if _, err := c.cli(n1, "run", "--name", "pdg", "--ipc-group", "pdgroup", "--pidfile", pidFile, "--",
		"perl", daemonScript, pidFile, "1"); err != nil {
		t.Fatal(err)
	}
	if out, err := c.cli(n1, "check", "pdg", "n3"); err == nil || !strings.Contains(out+fmt.Sprint(err), "orphaned-session") {
		t.Fatalf("check of a daemonized program in a group: %v\n%s", err, out)
	}
	if _, err := c.cli(n1, "stop", "pdg"); err != nil {
		t.Fatal(err)
	}

	// By the balancer: n2 drains, and the group leaves it whole.
	if out, err := c.cli(n1, "drain", "n2", "--timeout", "2m"); err != nil {
		t.Fatalf("drain n2: %v\n%s", err, out)
	}
	w0 := c.waitSettled(n1, "trio0", "python3")
	if w0.Node == "n2" {
		t.Fatal("trio0 still on n2 after the drain")
	}
	onNode(w0.Node)
	counting("after the drain")

	// A member stops on its own; the others go on; the last one's stop ends the group.
	if _, err := c.cli(n1, "stop", "trio0"); err != nil {
		t.Fatal(err)
	}
	if w := c.workload(n1, "trio0"); w.State != record.WorkloadExited || w.ExitStatus != 0 {
		t.Fatalf("trio0 after stop: %s, status %d", w.State, w.ExitStatus)
	}
	names = names[1:]
	counting("without trio0")
	for _, name := range names {
		if _, err := c.cli(n1, "stop", name); err != nil {
			t.Fatal(err)
		}
	}
	if running, stopped := c.copies("python3"); running+stopped != 0 {
		t.Fatalf("%d running and %d stopped copies of the group after every member stopped", running, stopped)
	}
	// The group init ends with its last member, and takes its directory with it; the
	// nodes it left removed theirs when it moved.
	wait.For(t, 10*time.Second, "the group's directories to go", func() (bool, string) {
		dirs := groupDirs()
		return len(dirs) == 0, fmt.Sprint(dirs)
	})
}
