package daemon_test

// Integration tests of migrations: real migshmd daemons in node netns, real CRIU, the
// real migshm CLI. They need root and CRIU; outside CI they skip, with CI=true they fail.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/faults"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
)

// waitReady waits until nd is a member that knows the leader.
func (c *cluster) waitReady(nd *tnode) {
	c.t.Helper()
	wait.For(c.t, 30*time.Second, nd.id+" to be a member with a leader", func() (bool, string) {
		st, err := nd.c.Status(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return st.Member && st.Leader != "" && st.Error == "", fmt.Sprintf("%+v", st)
	})
}

// move runs `migshm move --json REF TARGET EXTRA...` through node via and returns every
// event and the command's error.
func (c *cluster) move(via *tnode, ref, target string, extra ...string) ([]api.MoveEvent, error) {
	c.t.Helper()
	args := append([]string{"--socket", via.sock, "move", "--json", ref, target}, extra...)
	cmd := exec.Command(c.migshm, args...)
	var errb strings.Builder
	cmd.Stderr = &errb
	out, err := cmd.Output()
	var evs []api.MoveEvent
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var ev api.MoveEvent
		if jerr := json.Unmarshal(sc.Bytes(), &ev); jerr != nil {
			c.t.Fatalf("migshm move: line %q is not a MoveEvent: %v", sc.Text(), jerr)
		}
		evs = append(evs, ev)
	}
	if err != nil {
		return evs, fmt.Errorf("migshm move %s %s: %v: %s", ref, target, err, strings.TrimSpace(errb.String()))
	}
	return evs, nil
}

// workload returns the table's record of the named workload, read through nd.
func (c *cluster) workload(nd *tnode, name string) api.Workload {
	c.t.Helper()
	ws, err := nd.c.Workloads(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	w, ok := workloadByName(ws, name)
	if !ok {
		c.t.Fatalf("no workload %s in %+v", name, ws)
	}
	return w
}

// copies counts, in the cluster's node namespaces, the IPC namespaces holding processes
// of a command named comm, split into those with a running process and those whose
// processes are all stopped. A moved workload must have exactly one running copy.
// (Other tests, of other packages, may run the same programs at the same time.)
func (c *cluster) copies(comm string) (running, stopped int) {
	t := c.t
	t.Helper()
	procs, _, err := workload.ReadAll("/proc")
	if err != nil {
		t.Fatal(err)
	}
	netns := map[string]bool{}
	for _, nd := range c.nodes {
		if st, err := os.Stat(nd.net.NetNSPath); err == nil {
			netns[fmt.Sprint(st.Sys().(*syscall.Stat_t).Ino)] = true
		}
	}
	type nsState struct{ run, stop int }
	byNS := map[string]*nsState{}
	for _, p := range procs {
		if p.Comm != comm {
			continue
		}
		var nsStat syscall.Stat_t
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", p.Pid), &nsStat); err != nil || !netns[fmt.Sprint(nsStat.Ino)] {
			continue
		}
		st := byNS[p.IPCNS]
		if st == nil {
			st = &nsState{}
			byNS[p.IPCNS] = st
		}
		if s, err := procStateOf(p.Pid); err == nil && (s == "T" || s == "t") {
			st.stop++
		} else {
			st.run++
		}
	}
	for _, st := range byNS {
		if st.run > 0 {
			running++
		} else {
			stopped++
		}
	}
	return running, stopped
}

func procStateOf(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return "", fmt.Errorf("bad stat %q", s)
	}
	return s[i+2 : i+3], nil
}

// nodeOfPid returns the id of the node whose netns pid lives in; an error if pid is
// gone (a copy a migration just removed).
func (c *cluster) nodeOfPid(pid int) (string, error) {
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return "", fmt.Errorf("netns of pid %d: %w", pid, err)
	}
	for _, nd := range c.nodes {
		if l, err := os.Readlink(nd.net.NetNSPath); err == nil && l == link {
			return nd.id, nil
		}
		var a, b os.FileInfo
		a, _ = os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid))
		b, _ = os.Stat(nd.net.NetNSPath)
		if a != nil && b != nil && os.SameFile(a, b) {
			return nd.id, nil
		}
	}
	return "?" + link, nil
}

// waitSettled waits until the workload's last migration is terminal, it runs on one
// node with exactly one running copy and none stopped, and returns the workload.
func (c *cluster) waitSettled(via *tnode, name, comm string) api.Workload {
	c.t.Helper()
	var w api.Workload
	wait.For(c.t, 60*time.Second, name+" to settle on one node", func() (bool, string) {
		ws, err := via.c.Workloads(context.Background())
		if err != nil {
			return false, err.Error()
		}
		var ok bool
		if w, ok = workloadByName(ws, name); !ok {
			return false, "no workload"
		}
		ms, err := via.c.Migrations(context.Background())
		if err != nil {
			return false, err.Error()
		}
		for _, m := range ms {
			if m.MovesWorkload(w.ID) && !m.Phase.Terminal() {
				return false, fmt.Sprintf("migration %s in phase %s", m.ID, m.Phase)
			}
		}
		running, stopped := c.copies(comm)
		if w.State != record.WorkloadRunning || running != 1 || stopped != 0 {
			return false, fmt.Sprintf("state %s on %s, %d running and %d stopped copies", w.State, w.Node, running, stopped)
		}
		// The table may still name the source's init for a moment after the commit.
		if node, err := c.nodeOfPid(w.InitPid); err != nil || node != w.Node {
			return false, fmt.Sprintf("table says init %d on %s; it is on %q (%v)", w.InitPid, w.Node, node, err)
		}
		return true, ""
	})
	return w
}

// counterAdvances checks the shared counter's invariant in the workload's IPC
// namespace and that the workers keep counting.
func counterAdvances(t *testing.T, bins testwork.Bins, pid int) uint64 {
	t.Helper()
	first, err := bins.CounterCheck(pid)
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "the counter to advance", func() (bool, string) {
		n, err := bins.CounterCheck(pid)
		if err != nil {
			t.Fatal(err)
		}
		return n > first+20, fmt.Sprintf("total %d, was %d", n, first)
	})
	return first
}

func lastEvent(evs []api.MoveEvent) api.MoveEvent {
	if len(evs) == 0 {
		return api.MoveEvent{}
	}
	return evs[len(evs)-1]
}

// TestMoveRoundTrips moves the shared counter (4 workers, one segment, one semaphore
// set) and the pattern writer n1 -> n2 -> n3 -> n1, ten times over, through the CLI of
// varying nodes, with and without pre-copy. After every move: the workload runs on the
// target only, in that node's netns; the table says so, with the segments owned by the
// target at a higher epoch; the counter's invariant holds and it keeps counting; the
// writer's segments are byte-identical to what they were before the move (it is paused).
func TestMoveRoundTrips(t *testing.T) {
	testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	c := newPrivateCluster(t, 3, 3) // nodes that share no disk, as real hosts
	n1 := c.nodes[0]
	if _, err := c.cli(n1, "run", "--name", "counter", "--", bins.ShmCounter, "--workers", "4"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cli(n1, "run", "--name", "writer", "--", bins.ShmWriter, "--size", "1048576", "--interval-ms", "5"); err != nil {
		t.Fatal(err)
	}
	w := c.waitSettled(n1, "counter", "shmcounter")
	counterAdvances(t, bins, w.InitPid)
	c.waitSettled(n1, "writer", "shmwriter")

	hops := 30
	if testing.Short() {
		hops = 3
	}
	var lastCounter uint64
	for i := 0; i < hops; i++ {
		from, to := c.nodes[i%3], c.nodes[(i+1)%3]
		via := c.nodes[(i+2)%3] // the CLI talks to a node that is neither end, or to the source
		var extra []string
		if i%5 == 4 {
			extra = []string{"--no-precopy"}
		}
		before := c.workload(via, "counter")
		if before.Node != from.id {
			t.Fatalf("hop %d: counter is on %s, want %s", i, before.Node, from.id)
		}
		segsBefore, err := via.c.Segments(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		evs, err := c.move(via, "counter", to.id, extra...)
		if err != nil {
			t.Fatalf("hop %d %s -> %s: %v\nevents: %+v", i, from.id, to.id, err, evs)
		}
		last := lastEvent(evs)
		if last.Event != api.EventDone || last.Summary == nil || last.Record == nil || last.Record.Phase != record.PhaseDone {
			t.Fatalf("hop %d: last event %+v", i, last)
		}
		if last.Summary.FrozenNS <= 0 || last.Summary.WorkloadBytes == 0 || last.Summary.FinalBytes == 0 {
			t.Fatalf("hop %d: summary without figures: %+v", i, *last.Summary)
		}
		if len(extra) == 0 && last.Summary.Rounds == 0 {
			t.Fatalf("hop %d: pre-copy made no round: %+v", i, *last.Summary)
		}
		checkWindow(t, i, last.Summary)
		after := c.waitSettled(via, "counter", "shmcounter")
		if after.Node != to.id || after.InitPid == before.InitPid {
			t.Fatalf("hop %d: after the move the table says %s pid %d (was %s pid %d)", i, after.Node, after.InitPid, before.Node, before.InitPid)
		}
		n := counterAdvances(t, bins, after.InitPid)
		if n < lastCounter {
			t.Fatalf("hop %d: counter went back from %d to %d", i, lastCounter, n)
		}
		lastCounter = n
		segsAfter, err := via.c.Segments(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		gb, ga := groupSegments(segsBefore, after.Group), groupSegments(segsAfter, after.Group)
		if len(ga) != 1 || len(gb) != 1 || ga[0].Owner != to.id || ga[0].Epoch != gb[0].Epoch+1 || ga[0].Shmid != gb[0].Shmid || ga[0].Key != gb[0].Key {
			t.Fatalf("hop %d: segments before %+v, after %+v: want the same segment owned by %s at epoch+1", i, gb, ga, to.id)
		}

		// The writer: paused, its segments must arrive byte for byte.
		wb := c.workload(via, "writer")
		if wb.Node != from.id {
			t.Fatalf("hop %d: writer is on %s, want %s", i, wb.Node, from.id)
		}
		if err := syscallKillTree(wb.InitPid, "SIGUSR1"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // lets the writer finish the write in progress
		sumBefore, err := testwork.InIPC(wb.InitPid, bins.ShmSum)
		if err != nil {
			t.Fatalf("shmsum: %v: %s", err, sumBefore)
		}
		if _, err := c.move(via, "writer", to.id, extra...); err != nil {
			t.Fatalf("hop %d: move writer: %v", i, err)
		}
		wa := c.waitSettled(via, "writer", "shmwriter")
		sumAfter, err := testwork.InIPC(wa.InitPid, bins.ShmSum)
		if err != nil {
			t.Fatalf("shmsum: %v: %s", err, sumAfter)
		}
		if sumAfter != sumBefore || strings.Count(sumAfter, "shmid=") != 2 {
			t.Fatalf("hop %d: writer's segments changed in the move:\nbefore:\n%s\nafter:\n%s", i, sumBefore, sumAfter)
		}
		if err := syscallKillTree(wa.InitPid, "SIGUSR2"); err != nil {
			t.Fatal(err)
		}
	}
	// Each node has a workload dir of its own: the counter's logs travelled with it and
	// are on its node only.
	wc := c.workload(n1, "counter")
	for _, nd := range c.nodes {
		_, err := os.Stat(c.nodePath(nd, filepath.Join(c.wdir, wc.ID, "stdout.log")))
		if has := err == nil; has != (nd.id == wc.Node) {
			t.Errorf("counter runs on %s, and %s has its log: %v", wc.Node, nd.id, has)
		}
	}
	// Nothing left behind: no journals, no images, and every record is done.
	ms, err := n1.c.Migrations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2*hops {
		t.Fatalf("%d migration records, want %d", len(ms), 2*hops)
	}
	for _, m := range ms {
		if m.Phase != record.PhaseDone || m.Stats == nil || m.Stats.FrozenNS <= 0 {
			t.Fatalf("migration %+v", m)
		}
	}
	for _, nd := range c.nodes {
		if es, _ := os.ReadDir(filepath.Join(nd.dir, "migrations")); len(es) != 0 {
			t.Fatalf("%s keeps migration journals: %v", nd.id, es)
		}
		if es, _ := os.ReadDir(nd.imageDir()); len(es) != 0 {
			t.Fatalf("%s keeps images: %v", nd.id, es)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(c.wdir, c.workload(n1, "writer").ID, "stderr.log")); strings.Contains(string(b), "CORRUPT") {
		t.Fatalf("writer found corruption:\n%s", b)
	}
}

// syscallKillTree sends a signal to every process of the tree whose init is pid, but
// not the init (it does not forward SIGUSR1/2).
func syscallKillTree(pid int, sig string) error {
	out, err := exec.Command("pkill", "-"+strings.TrimPrefix(sig, "SIG"), "-P", fmt.Sprint(pid)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pkill -%s -P %d: %v: %s", sig, pid, err, out)
	}
	return nil
}

// TestMoveRefusals: every bad request is refused with a clear error and changes
// nothing: no migration record, the workload still running where it was.
func TestMoveRefusals(t *testing.T) {
	testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	c := newCluster(t, 2, 2)
	n1, n2 := c.nodes[0], c.nodes[1]
	if _, err := c.cli(n1, "run", "--name", "counter", "--", bins.ShmCounter, "--workers", "2"); err != nil {
		t.Fatal(err)
	}
	w := c.waitSettled(n1, "counter", "shmcounter")
	// A sharer outside the workload's tree: a host process that joined its IPC namespace.
	outsider := exec.Command("nsenter", "-t", strconv.Itoa(w.InitPid), "--ipc", "--", "sleep", "1000")
	if err := outsider.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = outsider.Process.Kill()
		_ = outsider.Wait()
	})
	// A workload with an established TCP connection (to a listener in its own netns).
	if _, err := c.cli(n1, "run", "--name", "tcp", "--", "bash", "-c",
		"exec 3<>/dev/tcp/127.0.0.1/7421; exec sleep 1000"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cli(n1, "run", "--name", "gone", "--", "true"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "gone to exit", func() (bool, string) {
		g := c.workload(n1, "gone")
		return g.State == record.WorkloadExited, string(g.State)
	})
	cases := []struct {
		name, ref, target string
		code              error
		says              string
	}{
		{"unknown node", "counter", "n9", record.ErrUnknownNode, "no node"},
		{"unknown workload", "nope", "n2", record.ErrUnknownWorkload, "no workload"},
		{"same node", "counter", "n1", record.ErrSameNode, "already runs on n1"},
		{"exited", "gone", "n2", api.ErrNotRunning, "exited"},
		{"sharer outside", "counter", "n2", api.ErrNotMovable, "ipc-shared-outside"},
		{"tcp", "tcp", "n2", api.ErrNotMovable, "tcp-established"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, via := range []*tnode{n1, n2} {
				_, err := via.c.Move(context.Background(), api.MoveRequest{Workload: tc.ref, Target: tc.target}, nil)
				if !errors.Is(err, tc.code) || !strings.Contains(err.Error(), tc.says) {
					t.Fatalf("via %s: move %s to %s: %v; want %v saying %q", via.id, tc.ref, tc.target, err, tc.code, tc.says)
				}
				if _, err := c.move(via, tc.ref, tc.target); err == nil {
					t.Fatalf("via %s: the CLI accepted move %s %s", via.id, tc.ref, tc.target)
				}
			}
		})
	}
	rep, err := n2.c.Check(context.Background(), api.CheckRequest{Workload: "tcp", Target: "n2"})
	if err != nil || rep.OK || len(rep.Problems) == 0 || rep.Problems[0].Reason != "tcp-established" {
		t.Fatalf("check tcp: %+v, %v", rep, err)
	}
	ms, err := n2.c.Migrations(context.Background())
	if err != nil || len(ms) != 0 {
		t.Fatalf("refusals left migration records: %+v, %v", ms, err)
	}
	if after := c.waitSettled(n2, "counter", "shmcounter"); after.InitPid != w.InitPid || after.Node != "n1" {
		t.Fatalf("counter changed: %+v, was %+v", after, w)
	}
	counterAdvances(t, bins, w.InitPid)
}

// TestMoveCorruptImageAborts: a byte flipped in the image stream is caught by its
// checksums; the migration aborts and the workload runs on the source as before.
func TestMoveCorruptImageAborts(t *testing.T) {
	testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	c := newCluster(t, 2, 0)
	c.start(c.nodes[0], "--bootstrap")
	c.startWithEnv(c.nodes[1], []string{faults.Env + "=corrupt-images"}, c.memberArgs(1)...)
	c.waitMembers(c.nodes[0], 2)
	n1, n2 := c.nodes[0], c.nodes[1]
	// The counter starts on n2, whose daemon corrupts what it sends.
	if _, err := c.cli(n2, "run", "--name", "counter", "--", bins.ShmCounter, "--workers", "2"); err != nil {
		t.Fatal(err)
	}
	w := c.waitSettled(n1, "counter", "shmcounter")
	evs, err := c.move(n1, "counter", "n1")
	if err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("move with a corrupt image stream: %v, events %+v", err, evs)
	}
	last := lastEvent(evs)
	if last.Event != api.EventError || last.Record == nil || last.Record.Phase != record.PhaseAborted {
		t.Fatalf("last event %+v", last)
	}
	after := c.waitSettled(n1, "counter", "shmcounter")
	if after.Node != "n2" || after.InitPid != w.InitPid {
		t.Fatalf("after the abort: %+v, was %+v", after, w)
	}
	counterAdvances(t, bins, after.InitPid)
	if es, _ := os.ReadDir(n1.imageDir()); len(es) != 0 {
		t.Fatalf("the target keeps images of the aborted migration: %v", es)
	}
}

// TestMoveCrashes kills a daemon (kill -9, by injected fault) at each point of a
// migration, restarts it, and checks that the migration ends (done or aborted) with the
// workload running on exactly one node, its invariant intact and counting.
func TestMoveCrashes(t *testing.T) {
	testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	cases := []struct {
		name  string
		node  int // 0: the source, 1: the target
		fault string
		want  record.Phase
	}{
		{"source after plan", 0, "crash-at:planned", record.PhaseAborted},
		{"source in pre-copy", 0, "crash-at:precopy", record.PhaseAborted},
		{"source after the dump", 0, "crash-at:dumped", record.PhaseAborted},
		{"source after shipping", 0, "crash-at:shipped", record.PhaseAborted},
		{"source after the restore", 0, "crash-at:restored", record.PhaseAborted},
		{"source after the commit", 0, "crash-at:done", record.PhaseDone},
		{"target after prepare", 1, "crash-at:target-prepared", record.PhaseAborted},
		{"target with the images", 1, "crash-at:target-received", record.PhaseAborted},
		{"target after the restore", 1, "crash-at:target-restored", record.PhaseAborted},
		{"target after the commit", 1, "crash-at:target-resume", record.PhaseDone},
	}
	c := newCluster(t, 3, 3)
	n3 := c.nodes[2]
	if _, err := c.cli(c.nodes[0], "run", "--name", "counter", "--", bins.ShmCounter, "--workers", "2"); err != nil {
		t.Fatal(err)
	}
	c.waitSettled(n3, "counter", "shmcounter")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := c.workload(n3, "counter")
			var src, dst *tnode
			for _, nd := range c.nodes[:2] {
				if nd.id == w.Node {
					src = nd
				} else {
					dst = nd
				}
			}
			victim := []*tnode{src, dst}[tc.node]
			c.kill(victim)
			c.startWithEnv(victim, []string{faults.Env + "=" + tc.fault}, victim.extra...)
			c.waitReady(victim)
			c.waitMembers(n3, 3)

			evs, err := c.move(n3, "counter", dst.id)
			t.Logf("move with %s armed on %s: %v; events %+v", tc.fault, victim.id, err, evs)
			if err == nil && tc.want == record.PhaseAborted {
				t.Fatalf("move succeeded although %s crashed", victim.id)
			}
			select {
			case <-victim.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("%s did not crash at %s", victim.id, tc.fault)
			}
			victim.cmd = nil
			// Restart without the fault: recovery settles the migration.
			c.startWithEnv(victim, nil, victim.extra...)
			c.waitReady(victim)
			c.waitMembers(n3, 3)
			after := c.waitSettled(n3, "counter", "shmcounter")
			ms, err := n3.c.Migrations(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			var mg api.Migration
			for _, m := range ms {
				if m.Workload == w.ID && m.StartedAt >= mg.StartedAt {
					mg = m
				}
			}
			if mg.Phase != tc.want {
				t.Fatalf("migration ended %s (%s), want %s", mg.Phase, mg.Error, tc.want)
			}
			wantNode := src.id
			if tc.want == record.PhaseDone {
				wantNode = dst.id
			}
			if after.Node != wantNode {
				t.Fatalf("workload on %s, want %s", after.Node, wantNode)
			}
			counterAdvances(t, bins, after.InitPid)
		})
	}

	// The leader dies while the workload is frozen: the source's writes go through the
	// election to the new leader and the move completes.
	t.Run("leader killed while frozen", func(t *testing.T) {
		// The source is where the counter runs; the leader must be another node, and the
		// target the third one.
		w := c.workload(n3, "counter")
		var src *tnode
		for _, nd := range c.nodes {
			if nd.id == w.Node {
				src = nd
			}
		}
		var other *tnode
		for _, nd := range c.nodes {
			if nd != src {
				other = nd
			}
		}
		c.kill(src)
		// If the source led, the others elect a leader before it comes back.
		wait.For(t, 20*time.Second, "a leader other than the source", func() (bool, string) {
			l := leaderOf(t, other)
			return l != "" && l != src.id, "leader " + l
		})
		c.startWithEnv(src, []string{faults.Env + "=pause-at:dumped:3s"}, src.extra...)
		c.waitReady(src)
		var leaderNode, dst *tnode
		l := leaderOf(t, src)
		if l == "" || l == src.id {
			t.Fatalf("the restarted source sees leader %q", l)
		}
		for _, nd := range c.nodes {
			switch {
			case nd.id == l:
				leaderNode = nd
			case nd != src:
				dst = nd
			}
		}
		type result struct {
			evs []api.MoveEvent
			err error
		}
		done := make(chan result, 1)
		go func() {
			evs, err := c.move(src, "counter", dst.id)
			done <- result{evs, err}
		}()
		wait.For(t, 20*time.Second, "the migration to be frozen", func() (bool, string) {
			ms, err := src.c.Migrations(context.Background())
			if err != nil {
				return false, err.Error()
			}
			for _, m := range ms {
				if m.Workload == w.ID && m.Phase == record.PhaseFrozen {
					return true, ""
				}
			}
			return false, fmt.Sprintf("%+v", ms)
		})
		c.kill(leaderNode)
		r := <-done
		if r.err != nil {
			t.Fatalf("move through an election: %v; events %+v", r.err, r.evs)
		}
		c.start(leaderNode, leaderNode.extra...)
		c.waitReady(leaderNode)
		after := c.waitSettled(src, "counter", "shmcounter")
		if after.Node != dst.id {
			t.Fatalf("workload on %s, want %s", after.Node, dst.id)
		}
		counterAdvances(t, bins, after.InitPid)
		c.kill(src)
		c.start(src, src.extra...) // without the fault, for whatever runs next
		c.waitReady(src)
	})
}

// TestMoveTargetDiskFull: the target's image dir fills up while pages and images come
// in; the migration aborts, the workload runs on the source as before, and the target
// keeps nothing of it.
func TestMoveTargetDiskFull(t *testing.T) {
	testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	c := newCluster(t, 2, 1)
	n1, n2 := c.nodes[0], c.nodes[1]
	// n2's image dir: a 512 KiB tmpfs, far less than the workload's images.
	if err := os.MkdirAll(n2.imageDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", n2.imageDir()).CombinedOutput(); err != nil {
		t.Fatalf("mount a small tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", n2.imageDir()).Run() })
	c.start(n2, c.memberArgs(1)...)
	c.waitMembers(n1, 2)
	if _, err := c.cli(n1, "run", "--name", "counter", "--", bins.ShmCounter, "--workers", "2"); err != nil {
		t.Fatal(err)
	}
	w := c.waitSettled(n1, "counter", "shmcounter")
	for _, extra := range [][]string{nil, {"--no-precopy"}} {
		evs, err := c.move(n2, "counter", "n2", extra...)
		if err == nil || !strings.Contains(err.Error(), "no space left on device") {
			t.Fatalf("move %v to a full disk: %v, events %+v", extra, err, evs)
		}
		if last := lastEvent(evs); last.Record == nil || last.Record.Phase != record.PhaseAborted {
			t.Fatalf("last event %+v", last)
		}
		after := c.waitSettled(n2, "counter", "shmcounter")
		if after.Node != "n1" || after.InitPid != w.InitPid {
			t.Fatalf("after the abort: %+v, was %+v", after, w)
		}
		counterAdvances(t, bins, after.InitPid)
		wait.For(t, 10*time.Second, "n2 to remove what it received", func() (bool, string) {
			es, _ := os.ReadDir(n2.imageDir())
			js, _ := os.ReadDir(filepath.Join(n2.dir, "migrations"))
			return len(es) == 0 && len(js) == 0, fmt.Sprintf("images %v, journals %v", es, js)
		})
	}
}

// TestMoveCarriesFiles: on nodes that share no disk, a move carries the directory a
// program runs in and the small file it holds open, and refuses, naming the file, what
// it cannot carry: a file too large, and a same-size file with other content on the
// target. A program holding its own /proc/self/maps open reads its own maps after
// each move.
func TestMoveCarriesFiles(t *testing.T) {
	testenv.RequireCRIU(t)
	c := newPrivateCluster(t, 3, 3)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]

	// Reads its maps through the fd it opened at the start, and checks its own
	// executable is mapped there: the file must be its own /proc's, not the host's.
	maps := `import os, sys, time
f = open("/proc/self/maps")
exe = os.path.realpath("/proc/self/exe")
while True:
    f.seek(0)
    ok = exe in f.read()
    print("ok" if ok else "BAD", flush=True)
    if not ok:
        sys.exit(3)
    time.sleep(0.1)`
	if _, err := c.cli(n1, "run", "--name", "maps", "--", "/usr/bin/python3", "-c", maps); err != nil {
		t.Fatal(err)
	}
	wm := c.waitSettled(n1, "maps", "python3")
	mapsLog := filepath.Join(c.wdir, wm.ID, "stdout.log")
	readsOwn := func(where string) {
		t.Helper()
		before := -1
		wait.For(t, 10*time.Second, "maps to read its own maps "+where, func() (bool, string) {
			b, _ := os.ReadFile(c.workloadPath(n1, "maps", mapsLog))
			if strings.Contains(string(b), "BAD") {
				t.Fatalf("maps read another process's maps %s:\n%s", where, b)
			}
			n := strings.Count(string(b), "ok\n")
			if before < 0 {
				before = n
			}
			return n > before, fmt.Sprintf("%d ok lines, %d at first", n, before)
		})
	}
	readsOwn("on n1")
	for _, to := range []string{"n2", "n3"} {
		if evs, err := c.move(n1, "maps", to); err != nil {
			t.Fatalf("move maps to %s: %v\nevents: %+v", to, err, evs)
		}
		if w := c.waitSettled(n1, "maps", "python3"); w.Node != to {
			t.Fatalf("maps runs on %s after its move to %s", w.Node, to)
		}
		readsOwn("on " + to)
	}
	// Done with it: the programs below are python3 too, and waitSettled counts copies
	// by command name.
	if _, err := c.cli(n1, "stop", "maps"); err != nil {
		t.Fatal(err)
	}

	// It reads its file back every 100 ms and stops if the content changes.
	script := `mkdir -p /tmp/app && cd /tmp/app && echo v1 > data && exec 3<data
while :; do [ "$(cat /proc/self/fd/3)" = v1 ] || exit 7; sleep 0.1; done`
	if _, err := c.cli(n1, "run", "--name", "holder", "--", "sh", "-c", script); err != nil {
		t.Fatal(err)
	}
	c.waitSettled(n1, "holder", "sleep")
	out, err := c.cli(n1, "check", "holder", "n2")
	if err != nil || !strings.Contains(out, "carries:    /tmp/app (directory), missing on n2") ||
		!strings.Contains(out, "carries:    /tmp/app/data (3 B), missing on n2") {
		t.Fatalf("check holder n2: %v\n%s", err, out)
	}
	for _, to := range []*tnode{n2, n3, n1} { // back to n1, which still has its own copy
		if evs, err := c.move(n1, "holder", to.id); err != nil {
			t.Fatalf("move holder to %s: %v\nevents: %+v", to.id, err, evs)
		}
		w := c.waitSettled(n1, "holder", "sleep")
		if w.Node != to.id || w.State != record.WorkloadRunning {
			t.Fatalf("after the move to %s: %+v", to.id, w)
		}
		if b, err := os.ReadFile(c.nodePath(to, "/tmp/app/data")); err != nil || string(b) != "v1\n" {
			t.Fatalf("%s's /tmp/app/data: %q, %v", to.id, b, err)
		}
		// The table's pids follow the tree within a segment-interval of the move.
		wait.For(t, 10*time.Second, "the shell in /tmp/app on "+to.id, func() (bool, string) {
			w := c.workload(n1, "holder")
			for _, pid := range w.Pids {
				if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); string(comm) == "sh\n" {
					cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
					return err == nil && cwd == "/tmp/app", fmt.Sprintf("pid %d runs in %q (%v)", pid, cwd, err)
				}
			}
			return false, fmt.Sprintf("no shell among %v", w.Pids)
		})
	}
	// n2 now holds a file of the same size with other content: never reopened, never replaced.
	stale := c.nodePath(n2, "/tmp/app/data")
	if err := os.WriteFile(stale, []byte("v2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := c.cli(n1, "move", "holder", "n2"); err == nil || !strings.Contains(out+err.Error(), "file-content: /tmp/app/data on n2 has the size of the workload's but other content") {
		t.Fatalf("move onto another /tmp/app/data: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(stale); string(b) != "v2\n" {
		t.Errorf("n2's own file was changed: %q", b)
	}
	// A program that rewrites its own file and checks it reads back what it wrote last.
	// Each node it leaves keeps an outdated copy; coming back, the move replaces that.
	counter := `import os, sys, time
os.makedirs("/tmp/app2", exist_ok=True)
f = open("/tmp/app2/state", "w+")
n = 0
while True:
    f.seek(0)
    got = f.read().strip()
    if got and int(got) != n - 1:
        print("BAD read %s after writing %d" % (got, n - 1), flush=True)
        sys.exit(3)
    f.seek(0)
    f.write("%08d\n" % n)
    f.flush()
    n += 1
    if n % 5 == 0:
        print("ok", n, flush=True)
    time.sleep(0.02)`
	if _, err := c.cli(n1, "run", "--name", "rewriter", "--", "/usr/bin/python3", "-c", counter); err != nil {
		t.Fatal(err)
	}
	wr := c.waitSettled(n1, "rewriter", "python3")
	rlog := filepath.Join(c.wdir, wr.ID, "stdout.log")
	advances := func(where string) {
		t.Helper()
		before := -1
		wait.For(t, 10*time.Second, "rewriter to go on "+where, func() (bool, string) {
			b, _ := os.ReadFile(c.workloadPath(n1, "rewriter", rlog))
			if strings.Contains(string(b), "BAD") {
				t.Fatalf("rewriter %s:\n%s", where, b)
			}
			n := strings.Count(string(b), "ok ")
			if before < 0 {
				before = n
			}
			return n > before, fmt.Sprintf("%d ok lines, %d at first", n, before)
		})
	}
	advances("on n1")
	for i, to := range []string{"n2", "n1", "n2"} {
		if i > 0 {
			out, err := c.cli(n1, "check", "rewriter", to)
			if err != nil || !strings.Contains(out, "/tmp/app2/state (9 B), replaces the outdated copy it left on "+to) {
				t.Fatalf("check rewriter %s: %v\n%s", to, err, out)
			}
		}
		if evs, err := c.move(n1, "rewriter", to); err != nil {
			t.Fatalf("move rewriter to %s: %v\nevents: %+v", to, err, evs)
		}
		advances("on " + to)
	}

	// A file larger than a move carries.
	big := `dd if=/dev/zero of=/tmp/big bs=1M count=17 2>/dev/null && exec 3</tmp/big && touch /tmp/big-held && exec sleep 1000`
	if _, err := c.cli(n1, "run", "--name", "big", "--", "sh", "-c", big); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "big to hold its file", func() (bool, string) {
		_, err := os.Stat(c.nodePath(n1, "/tmp/big-held"))
		return err == nil, fmt.Sprint(err)
	})
	if out, err := c.cli(n1, "check", "big", "n3"); err == nil || !strings.Contains(out, "file-too-large: /tmp/big (17.0 MiB) is missing on n3") {
		t.Fatalf("check big n3: %v\n%s", err, out)
	}
	if w := c.workload(n1, "holder"); w.Node != "n1" || w.State != record.WorkloadRunning {
		t.Fatalf("holder after the refusals: %+v", w)
	}
}

// TestLinkCuts cuts the target's link for real (its port on the switch goes down):
//   - during pre-copy, for about the progress timeout: the move says it is stalled,
//     that the target answers again once the link is back, and completes;
//   - while the workload is frozen, for good: the move aborts within the progress
//     timeout and the workload runs on the source again, the one copy there is; when the
//     link returns the target cleans up from the table.
func TestLinkCuts(t *testing.T) {
	testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	const progress = 2 * time.Second
	c := newCluster(t, 3, 0)
	// Pauses give the test time to cut: in pre-copy before the first round, and frozen
	// after the dump, before anything ships.
	env := []string{faults.Env + "=pause-at:precopy:3s,pause-at:dumped:1s"}
	for i, nd := range c.nodes {
		c.startWithEnv(nd, env, append(c.memberArgs(i), "--progress-timeout", progress.String())...)
	}
	c.waitMembers(c.nodes[0], 3)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	if _, err := c.cli(n1, "run", "--name", "writer", "--", bins.ShmWriter, "--size", "16777216", "--interval-ms", "5"); err != nil {
		t.Fatal(err)
	}
	c.waitSettled(n1, "writer", "shmwriter")
	inPhase := c.waitNewestPhase
	type result struct {
		evs []api.MoveEvent
		err error
		at  time.Time
	}
	moveAsync := func(via *tnode, to string) <-chan result {
		done := make(chan result, 1)
		go func() {
			evs, err := c.move(via, "writer", to)
			done <- result{evs, err, time.Now()}
		}()
		return done
	}
	link := func(nd *tnode, up bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := nd.net.SetLink(ctx, up); err != nil {
			t.Fatal(err)
		}
	}

	// 1. Cut in pre-copy: stalled, answering again, done.
	done := moveAsync(n1, "n2")
	inPhase(n1, record.PhasePrecopy)
	link(n2, false)
	time.Sleep(progress) // within the source's 3 s pause: nothing else waits on n2
	link(n2, true)
	r := <-done
	if r.err != nil {
		t.Fatalf("move through a pre-copy cut: %v\nevents: %+v", r.err, r.evs)
	}
	var kinds []string
	for _, ev := range r.evs {
		if ev.Event == api.EventStalled || ev.Event == api.EventAnswering {
			kinds = append(kinds, ev.Event)
		}
	}
	if !slices.Equal(kinds, []string{api.EventStalled, api.EventAnswering}) {
		t.Fatalf("the move through a pre-copy cut said %v, want stalled then answering; events %+v", kinds, r.evs)
	}
	if w := c.waitSettled(n1, "writer", "shmwriter"); w.Node != "n2" {
		t.Fatalf("writer on %s after the move, want n2", w.Node)
	}

	// 2. Cut while frozen, for good: aborted within the progress timeout, running on n2.
	done = moveAsync(n2, "n3")
	inPhase(n2, record.PhaseFrozen)
	link(n3, false)
	cutAt := time.Now()
	r = <-done
	if r.err == nil || !strings.Contains(r.err.Error(), "n3 did not answer for") || !strings.Contains(r.err.Error(), "still runs on n2") {
		t.Fatalf("move cut while frozen: %v, want an abort naming n3's silence\nevents: %+v", r.err, r.evs)
	}
	w := c.waitSettled(n2, "writer", "shmwriter")
	if w.Node != "n2" || w.State != record.WorkloadRunning {
		t.Fatalf("after the aborted move: %+v", w)
	}
	if running, stopped := c.copies("shmwriter"); running != 1 || stopped != 0 {
		t.Fatalf("after the abort: %d running and %d stopped copies, want 1 and 0", running, stopped)
	}
	ms, err := n2.c.Migrations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var frozen time.Duration
	for _, m := range ms {
		if m.Target == "n3" && m.Stats != nil {
			frozen = time.Duration(m.Stats.FrozenNS)
		}
	}
	t.Logf("cut while frozen: the move ended %v after the cut (progress-timeout %v, the source's pause after the dump 1s); recorded frozen time %v",
		r.at.Sub(cutAt).Round(time.Millisecond), progress, frozen)

	// The link back: n3 learns the abort from the table and keeps nothing.
	link(n3, true)
	wait.For(t, 30*time.Second, "n3 to clean up the aborted move", func() (bool, string) {
		ents, _ := os.ReadDir(n3.imageDir())
		j, _ := filepath.Glob(filepath.Join(n3.dir, "migrations", "*.json"))
		return len(ents) == 0 && len(j) == 0, fmt.Sprintf("images %d, journals %v", len(ents), j)
	})
	if running, stopped := c.copies("shmwriter"); running != 1 || stopped != 0 {
		t.Fatalf("with the link back: %d running and %d stopped copies, want 1 and 0", running, stopped)
	}
}

// TestPartitions cuts the network between the parts of a move, in the switch's nodes'
// own netns (nftables drops: timeouts, no resets), not by killing processes:
//
//  1. source and leader apart while the workload is frozen (source and target still
//     talk): the source can record neither outcome and must not guess; the leader
//     marks it down and aborts; once the cut heals the source learns the abort and
//     resumes, or the commit it made first stands;
//  2. target and leader apart from pre-copy to past the commit: the move commits
//     through the source, and the target resumes its copy only once it can read the
//     commit from the table;
//  3. the leader isolated during pre-copy: the two others elect a leader, the move
//     and a new write go through it, and the old leader rejoins and agrees.
//
// Each case ends with the workload running on exactly one node, every node's table
// saying so, and no migration left open.
func TestPartitions(t *testing.T) {
	testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	c := newCluster(t, 3, 0)
	env := []string{faults.Env + "=pause-at:precopy:2s,pause-at:dumped:1s"}
	for i, nd := range c.nodes {
		c.startWithEnv(nd, env, c.memberArgs(i)...)
	}
	c.waitMembers(c.nodes[0], 3)
	byID := map[string]*tnode{}
	for _, nd := range c.nodes {
		byID[nd.id] = nd
	}
	// roles names the leader and the two others, in node order.
	roles := func() (leader, a, b *tnode) {
		t.Helper()
		var id string
		wait.For(t, 20*time.Second, "one leader all agree on", func() (bool, string) {
			id = leaderOf(t, c.nodes[0])
			for _, nd := range c.nodes[1:] {
				if leaderOf(t, nd) != id {
					return false, "disagree"
				}
			}
			return id != "", id
		})
		leader = byID[id]
		var others []*tnode
		for _, nd := range c.nodes {
			if nd != leader {
				others = append(others, nd)
			}
		}
		return leader, others[0], others[1]
	}
	cut := func(a, b *tnode, up bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.net.SetPeerLink(ctx, b.net, up); err != nil {
			t.Fatal(err)
		}
	}
	inPhase := c.waitNewestPhase
	type result struct {
		evs []api.MoveEvent
		err error
	}
	moveAsync := func(via *tnode, to string) <-chan result {
		done := make(chan result, 1)
		go func() {
			evs, err := c.move(via, "writer", to)
			done <- result{evs, err}
		}()
		return done
	}
	// settled checks the end of a case on every node and returns where it runs.
	settled := func(name string) string {
		t.Helper()
		var where string
		for _, nd := range c.nodes {
			w := c.waitSettled(nd, "writer", "shmwriter")
			if where != "" && w.Node != where {
				t.Fatalf("%s: %s's table says %s, another node's %s", name, nd.id, w.Node, where)
			}
			where = w.Node
		}
		for _, nd := range c.nodes {
			ms, err := nd.c.Migrations(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				if !m.Phase.Terminal() {
					t.Fatalf("%s: migration %s still %s on %s's table", name, m.ID, m.Phase, nd.id)
				}
			}
		}
		return where
	}

	leader, src, dst := roles()
	if _, err := c.cli(src, "run", "--name", "writer", "--", bins.ShmWriter, "--size", "16777216", "--interval-ms", "5"); err != nil {
		t.Fatal(err)
	}
	c.waitSettled(src, "writer", "shmwriter")

	// 1. Source and leader apart while frozen.
	done := moveAsync(dst, dst.id)
	inPhase(dst, record.PhaseFrozen)
	cut(src, leader, false)
	// While cut off, the source knows no outcome: nothing may run, on either side. The
	// cut outlasts the leader's view of it (raft's 10 s RPC timeout, then downAfter), so
	// the leader marks the source down and aborts the move meanwhile.
	for range 16 {
		time.Sleep(time.Second)
		if running, _ := c.copies("shmwriter"); running != 0 {
			t.Fatalf("the source cut off from the leader while frozen: %d running copies, want none until it learns the outcome", running)
		}
	}
	cut(src, leader, true)
	r := <-done
	where := settled("source-leader cut")

	t.Logf("FIGURE source-leader cut for 16s while frozen: the workload runs on %s (source %s, target %s); move: %v", where, src.id, dst.id, r.err)
	if where == src.id && r.err == nil {
		t.Fatalf("the move says done but the workload runs on the source")
	}

	// 2. Target and leader apart from pre-copy to past the commit.
	leader, src, dst = roles()
	if w := c.workload(leader, "writer"); w.Node != src.id {
		src, dst = dst, src // the workload's node is the source
	}
	done = moveAsync(src, dst.id)
	inPhase(src, record.PhasePrecopy)
	cut(dst, leader, false)
	inPhase(src, record.PhaseDone)
	time.Sleep(2 * time.Second) // the target cannot read the commit yet: its copy waits
	// Nothing runs: the source committed, the target has not seen it (the source's
	// frozen copy may linger while it waits for the target's answer).
	if running, stopped := c.copies("shmwriter"); running != 0 || stopped == 0 {
		t.Fatalf("committed, the target cut from the leader: %d running and %d stopped copies, want only stopped ones", running, stopped)
	}
	cut(dst, leader, true)
	r = <-done
	if where := settled("target-leader cut"); where != dst.id {
		t.Fatalf("target-leader cut: the workload runs on %s, want the target %s (move: %v)", where, dst.id, r.err)
	}

	// 3. The leader isolated during pre-copy.
	leader, src, dst = roles()
	if w := c.workload(leader, "writer"); w.Node != src.id {
		src, dst = dst, src
	}
	done = moveAsync(src, dst.id)
	inPhase(src, record.PhasePrecopy)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := leader.net.SetLink(ctx, false); err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	r = <-done
	if r.err != nil {
		t.Fatalf("move with the leader cut off: %v\nevents: %+v", r.err, r.evs)
	}
	t.Logf("leader %s isolated: the move ended %v after the cut", leader.id, time.Since(cutAt).Round(time.Millisecond))
	// The majority keeps deciding: a new workload starts through it.
	if _, err := c.cli(src, "run", "--name", "majority", "--", "sleep", "600"); err != nil {
		t.Fatalf("a write with the leader cut off: %v", err)
	}
	if err := leader.net.SetLink(ctx, true); err != nil {
		t.Fatal(err)
	}
	if where := settled("leader isolated"); where != dst.id {
		t.Fatalf("leader isolated: the workload runs on %s, want %s", where, dst.id)
	}
	wait.For(t, 20*time.Second, "the old leader to learn the write made without it", func() (bool, string) {
		ws, err := leader.c.Workloads(context.Background())
		if err != nil {
			return false, err.Error()
		}
		_, ok := workloadByName(ws, "majority")
		return ok, fmt.Sprintf("%d workloads", len(ws))
	})
}

// checkWindow checks a move's frozen window breakdown: the steps of the frozen path in
// order, each timed, adding up to the downtime, with CRIU's and the target's parts.
func checkWindow(t *testing.T, hop int, st *api.MigrationStats) {
	t.Helper()
	var names []string
	var sum int64
	parts := map[string]int{}
	for _, s := range st.Window {
		names = append(names, s.Step)
		sum += s.NS
		parts[s.Step] = len(s.Parts)
		if s.NS < 0 {
			t.Errorf("hop %d: step %q took %dns", hop, s.Step, s.NS)
		}
	}
	want := []string{"dump", "logs and carried files", "ship images", "record shipped",
		"segment digests (what is left once shipped)", "restore on the target", "record restored", "commit", "resume on the target"}
	if !slices.Equal(names, want) {
		t.Fatalf("hop %d: frozen window steps %q, want %q", hop, names, want)
	}
	if sum != st.FrozenNS {
		t.Errorf("hop %d: frozen window steps add up to %v, the downtime is %v", hop, time.Duration(sum), time.Duration(st.FrozenNS))
	}
	// After a pre-copy the target first gives back the memory it reserved for the images.
	images := 1
	if st.Rounds > 0 {
		images = 2
	}
	if parts["dump"] != 4 || parts["ship images"] != images || parts["restore on the target"] != 4 {
		t.Errorf("hop %d: parts per step %v, want CRIU's 4 for the dump, the target's %d for the images and 4 for the restore", hop, parts, images)
	}
}

// waitNewestPhase waits until the newest migration, as via's table has it, is in phase p.
func (c *cluster) waitNewestPhase(via *tnode, p record.Phase) {
	c.t.Helper()
	wait.For(c.t, 30*time.Second, "the newest migration in phase "+string(p), func() (bool, string) {
		ms, err := via.c.Migrations(context.Background())
		if err != nil {
			return false, err.Error()
		}
		var newest api.Migration
		for _, m := range ms {
			if m.StartedAt > newest.StartedAt {
				newest = m
			}
		}
		return newest.Phase == p, fmt.Sprintf("%s in %s", newest.ID, newest.Phase)
	})
}
