package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/shmowner/record"
)

// TestBalance is the acceptance test of automatic balancing on a local 3-node cluster.
// Six CPU-busy shm workloads (pattern writers that never sleep) and a pinned shared
// counter start on n1. Without any command the leader spreads the writers until the
// most loaded node is within the threshold of the least loaded; every workload keeps
// running, with one copy, its segments owned where it runs, and its invariant (the
// writer verifies its pattern as it goes and exits 3 on a wrong byte; the counter's
// total equals its workers' sum). No workload moves twice, a later pass moves nothing,
// and the pinned counter stays on n1. Then a drain of n2 empties it and it refuses new
// workloads; the pinned counter still stays.
func TestBalance(t *testing.T) {
	testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	const threshold = 0.1
	c := newCluster(t, 3, 0)
	// The nodes share the host's two cores with each other and with the tests of other
	// packages, so a busy writer gets anywhere from a third of a core down to a sixth.
	// Each node offers one core: a writer is then worth more than the threshold
	// wherever it is measured, and 2/2/2 is the one balanced placement (with two cores a
	// starved 3/1 split could already sit within the threshold).
	for i, nd := range c.nodes {
		c.start(nd, append(c.memberArgs(i), "--capacity-cores", "1", "--auto-balance=true", "--balance-interval", "1s", "--node-cooldown", "1s",
			"--workload-cooldown", "10m", "--balance-threshold", fmt.Sprint(threshold), "--mem-capacity", "4GiB",
			"--max-migrations", "2")...)
	}
	c.waitMembers(c.nodes[0], 3)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	for _, nd := range c.nodes {
		c.waitReady(nd)
	}

	// The pinned counter first: pinned before the writers load n1, so it never moves.
	if _, err := c.cli(n1, "run", "--name", "counter", "--", bins.ShmCounter, "--workers", "2"); err != nil {
		t.Fatal(err)
	}
	if out, err := c.cli(n1, "pin", "counter"); err != nil || !strings.Contains(out, "n1") {
		t.Fatalf("pin counter: %v %q", err, out)
	}
	const writers = 6
	start := time.Now()
	for i := range writers {
		if _, err := c.cli(n1, "run", "--name", fmt.Sprintf("busy%d", i), "--",
			bins.ShmWriter, "--size", "1048576", "--interval-ms", "0"); err != nil {
			t.Fatal(err)
		}
	}
	counter := c.workload(n1, "counter")
	if !counter.Pinned || counter.Node != "n1" {
		t.Fatalf("counter: pinned %v on %s, want pinned on n1", counter.Pinned, counter.Node)
	}
	if _, err := c.move(n2, "counter", "n3"); err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("move of a pinned workload: %v, want a refusal naming the pin", err)
	}

	// Spread: wait for a leader pass, after the last migration ended and on figures
	// measured since (no node settling), that saw every node within the threshold and
	// planned nothing.
	var rep api.BalanceReport
	wait.For(t, 3*time.Minute, "the writers to spread", func() (bool, string) {
		r, err := n3.c.LastBalance(context.Background())
		if err != nil {
			return false, err.Error()
		}
		rep = r
		ms, err := n3.c.Migrations(context.Background())
		if err != nil {
			return false, err.Error()
		}
		var lastEnd int64
		for _, m := range ms {
			if !m.Phase.Terminal() {
				return false, "migration " + m.ID + " in flight"
			}
			lastEnd = max(lastEnd, m.UpdatedAt)
		}
		loads := fmt.Sprint(r.Nodes)
		for _, n := range r.Nodes {
			if n.Settling {
				return false, fmt.Sprintf("%s settling (its load predates its last migration); loads %s", n.Node, loads)
			}
		}
		if len(ms) == 0 || r.DryRun || r.At <= lastEnd || len(r.Moves) != 0 || r.InFlight != 0 {
			return false, fmt.Sprintf("%d migrations; pass at %d (dry %v) after the last at %d, %d moves; loads %s",
				len(ms), r.At, r.DryRun, lastEnd, len(r.Moves), loads)
		}
		return r.Spread <= threshold, fmt.Sprintf("spread %.3f; loads %s", r.Spread, loads)
	})
	took := time.Since(start)

	ws, err := n1.c.Workloads(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ms, err := n1.c.Migrations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	perNode := map[string]int{}
	for _, w := range ws {
		if strings.HasPrefix(w.Name, "busy") {
			perNode[w.Node]++
		}
	}
	moved := map[string]int{}
	for _, m := range ms {
		if m.Phase != record.PhaseDone {
			t.Errorf("migration %s of %s: %s (%s), want done", m.ID, m.Workload, m.Phase, m.Error)
		}
		if !strings.HasPrefix(m.Reason, "balancer: cpu: ") || strings.Contains(m.Reason, "cpu: cpu:") {
			t.Errorf("migration %s: reason %q, want the balancer's cpu rule", m.ID, m.Reason)
		}
		moved[m.Workload]++
	}
	for id, n := range moved {
		if n > 1 {
			t.Errorf("workload %s moved %d times; the workload cooldown allows one move", id, n)
		}
	}
	// The minimum: from 6/0/0 to the nearest balanced placement, 2/2/2, four writers move.
	t.Logf("balanced in %v with %d moves (minimum 4): writers per node %v, spread %.3f, loads %+v",
		took.Round(100*time.Millisecond), len(ms), perNode, rep.Spread, rep.Nodes)
	for _, nd := range c.nodes {
		if perNode[nd.id] != writers/3 {
			t.Errorf("%s runs %d writers, want %d: %v", nd.id, perNode[nd.id], writers/3, perNode)
		}
	}
	checkIntact(t, c, bins, n1, writers)

	// Drain n2: it empties, refuses new work, and the pinned counter stays on n1.
	out, err := c.cli(n2, "drain", "n2", "--timeout", "2m")
	if err != nil {
		t.Fatalf("drain: %v\n%s", err, out)
	}
	ws, err = n1.c.Workloads(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		if w.Node == "n2" && w.State != record.WorkloadExited {
			t.Errorf("after the drain %s still runs on n2", w.Name)
		}
	}
	if nodes, err := n1.c.Nodes(context.Background()); err != nil {
		t.Fatal(err)
	} else {
		for _, n := range nodes {
			if n.ID == "n2" && n.State != record.NodeDraining {
				t.Errorf("n2 is %s after the drain, want draining", n.State)
			}
		}
	}
	if _, err := c.cli(n2, "run", "--name", "late", "--", bins.ShmWriter); err == nil || !strings.Contains(err.Error(), "draining") {
		t.Errorf("run on a draining node: %v, want a refusal naming the drain", err)
	}
	checkIntact(t, c, bins, n3, writers)
	if _, err := c.cli(n1, "undrain", "n2"); err != nil {
		t.Fatal(err)
	}

	// A draining node that dies is marked down like an active one (the leader aborts
	// what it drove), and comes back draining: the drain is a cordon.
	if _, err := c.cli(n1, "drain", "n2", "--no-wait"); err != nil {
		t.Fatal(err)
	}
	c.kill(n2)
	via := n1
	nodeState := func(id string) (bool, string) {
		nodes, err := via.c.Nodes(context.Background())
		if err != nil {
			return false, err.Error()
		}
		for _, n := range nodes {
			if n.ID == id {
				return true, string(n.State)
			}
		}
		return false, "no node " + id
	}
	wait.For(t, 30*time.Second, "the dead draining n2 to be marked down", func() (bool, string) {
		_, st := nodeState("n2")
		return st == string(record.NodeDown), st
	})
	c.restart(n2)
	wait.For(t, 30*time.Second, "n2 to be back, draining", func() (bool, string) {
		_, st := nodeState("n2")
		return st == string(record.NodeDraining), st
	})
	if _, err := c.cli(n1, "undrain", "n2"); err != nil {
		t.Fatal(err)
	}
	if _, st := nodeState("n2"); st != string(record.NodeActive) {
		t.Fatalf("n2 is %s after undrain, want active", st)
	}
	// After the undrain the balancer may have been moving a writer to n2 when it died:
	// whatever it was doing ended with every workload in one piece.
	wait.For(t, time.Minute, "no migration in flight", func() (bool, string) {
		ms, err := via.c.Migrations(context.Background())
		if err != nil {
			return false, err.Error()
		}
		for _, m := range ms {
			if !m.Phase.Terminal() {
				return false, fmt.Sprintf("%s %s -> %s in %s", m.ID, m.Source, m.Target, m.Phase)
			}
		}
		return true, ""
	})
	checkIntact(t, c, bins, via, writers)
}

// checkIntact checks every workload after moves: the writers and the counter run, each
// with exactly one running copy and none stopped, on the node the table says, owning
// their segments; no writer found a wrong byte; the counter's invariant holds, it keeps
// counting, and it is still pinned on n1.
func checkIntact(t *testing.T, c *cluster, bins testwork.Bins, via *tnode, writers int) {
	t.Helper()
	for i := range writers {
		name := fmt.Sprintf("busy%d", i)
		w := c.workload(via, name)
		if w.State != record.WorkloadRunning {
			t.Fatalf("%s is %s (exit %d)", name, w.State, w.ExitStatus)
		}
		if n, err := c.nodeOfPid(w.InitPid); err != nil || n != w.Node {
			t.Errorf("%s: table says %s, its init %d runs on %q (%v)", name, w.Node, w.InitPid, n, err)
		}
		segs, err := via.c.Segments(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		gs := groupSegments(segs, w.Group)
		if len(gs) != 2 {
			t.Errorf("%s: %d segments in the table, want 2", name, len(gs))
		}
		for _, s := range gs {
			if s.Owner != w.Node {
				t.Errorf("%s: segment %d owned by %s, runs on %s", name, s.Shmid, s.Owner, w.Node)
			}
		}
		b, err := os.ReadFile(filepath.Join(c.wdir, w.ID, "stderr.log"))
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if strings.Contains(string(b), "CORRUPT") {
			t.Errorf("%s found a wrong byte: %s", name, b)
		}
	}
	if running, stopped := c.copies("shmwriter"); running != writers || stopped != 0 {
		t.Errorf("%d running and %d stopped writer copies, want %d and 0", running, stopped, writers)
	}
	counter := c.workload(via, "counter")
	if counter.Node != "n1" || !counter.Pinned {
		t.Errorf("the pinned counter is on %s (pinned %v), want n1", counter.Node, counter.Pinned)
	}
	counterAdvances(t, bins, counter.InitPid)
}
