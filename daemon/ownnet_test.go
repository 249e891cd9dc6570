package daemon_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/faults"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/shmowner/record"
)

// TestMoveKeepsAddress is issue 13's acceptance test on the local cluster: a SysV-shm
// TCP server started with `migshm run --ip auto` moves n1 -> n2 -> n3 -> n1 while a
// client in a fourth namespace (no daemon there) keeps one connection open and sends a
// request every 10 ms. The client never reconnects, sees no reset, loses no answer and
// sees the counter (kept in the segment) only grow; a fresh client reaches the server
// at the same address after every move. A move aborted in the frozen window (the dump
// done, the network locked) leaves the connection working on the source. Addresses
// taken, outside the pool or with a foreign prefix are refused and create nothing.
func TestMoveKeepsAddress(t *testing.T) {
	testenv.RequireCRIU(t)
	c := newClusterWith(t, 4, 0, false)
	// The pool: 16 addresses of the nodes' network (scripts/cluster's /24), far from the
	// nodes' own.
	node := netip.MustParseAddr(c.nodes[0].net.Addr).As4()
	node[3] = 192
	pool := netip.PrefixFrom(netip.AddrFrom4(node), 28)
	c.common = []string{"--ip-parent", "eth0", "--ip-pool", pool.String()}
	for i := range 3 {
		c.start(c.nodes[i], c.memberArgs(i)...)
	}
	c.waitMembers(c.nodes[0], 3)
	n1, n2, n3, client := c.nodes[0], c.nodes[1], c.nodes[2], c.nodes[3]

	const port = "7430"
	var w api.Workload
	c.cliJSON(t, n1, &w, "run", "--json", "--name", "srv", "--ip", "auto", "--", "perl", testwork.ConnServer(t), port)
	want := netip.PrefixFrom(pool.Addr(), 24).String()
	if w.Addr != want {
		t.Fatalf("run --ip auto gave address %q, want the pool's first, %s", w.Addr, want)
	}
	wait.For(t, 10*time.Second, "the server to listen", func() (bool, string) {
		b, _ := os.ReadFile(filepath.Join(c.wdir, w.ID, "stdout.log"))
		return strings.Contains(string(b), "listening"), string(b)
	})

	// Bad addresses: each refused with what is wrong, nothing started.
	other := pool.Addr().Next()
	for _, bad := range []struct{ ip, why string }{
		{pool.Addr().String(), "taken"},
		{netip.AddrFrom4([4]byte{node[0], node[1], node[2], 100}).String(), "outside the workload address pool"},
		{other.String() + "/16", "does not fit the node's network"},
		{"10.99.0.1", "not on the node's network"},
	} {
		_, err := c.cli(n2, "run", "--name", "bad", "--ip", bad.ip, "--", "sleep", "100")
		if err == nil || !strings.Contains(err.Error(), bad.why) {
			t.Errorf("run --ip %s: %v, want an error saying %q", bad.ip, err, bad.why)
		}
	}
	ws, err := n1.c.Workloads(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 {
		t.Fatalf("refused runs left workloads behind: %+v", ws)
	}

	st, err := n2.c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if a := st.Addresses; a == nil || a.Parent != "eth0" || a.Pool != pool.String() || a.Free != 15 ||
		len(a.Held) != 1 || a.Held[0].Addr != want || a.Held[0].Node != n1.id {
		t.Errorf("status of n2: addresses %+v, want pool %s with 15 free and %s held on n1", a, pool, want)
	}

	// The table says on which network each node serves addresses (the balancer's
	// filter): every node here, on the nodes' /24.
	nodeNet := netip.PrefixFrom(netip.MustParseAddr(n1.net.Addr), 24).Masked().String()
	wait.For(t, 10*time.Second, "every node to register its address network", func() (bool, string) {
		ns, err := n2.c.Nodes(context.Background())
		if err != nil {
			return false, err.Error()
		}
		for _, n := range ns {
			if n.AddrNet != nodeNet {
				return false, fmt.Sprintf("%s has address network %q, want %s", n.ID, n.AddrNet, nodeNet)
			}
		}
		return len(ns) == 3, fmt.Sprintf("%d nodes", len(ns))
	})

	server := net.JoinHostPort(pool.Addr().String(), port)
	cl := testwork.StartConnClient(t, client.net.NetNSPath, server)
	cl.WaitAnswers(t, 20)
	t.Logf("before the moves: longest wait between answers %v", cl.Gap())
	for hop, to := range []*tnode{n2, n3, n1} {
		evs, err := c.move(n1, "srv", to.id)
		if err != nil {
			t.Fatalf("hop %d to %s: %v", hop+1, to.id, err)
		}
		done := lastEvent(evs)
		if done.Event != api.EventDone || done.Summary == nil {
			t.Fatalf("hop %d: last event %+v", hop+1, done)
		}
		cl.WaitAnswers(t, 20)
		st := done.Summary
		t.Logf("hop %d to %s: downtime %v, longest wait between answers %v; window %s", hop+1, to.id,
			time.Duration(st.FrozenNS).Round(time.Millisecond), cl.Gap().Round(time.Millisecond), windowText(st.Window))
		got := c.workload(n1, "srv")
		if got.Node != to.id || got.Addr != want {
			t.Fatalf("hop %d: the table has srv on %s at %q, want %s at %s", hop+1, got.Node, got.Addr, to.id, want)
		}
		fresh := testwork.StartConnClient(t, client.net.NetNSPath, server)
		fresh.WaitAnswers(t, 3)
		fresh.Close(t)
	}

	// Aborted in the frozen window: the source pauses after the dump (its network
	// locked, its connection in repair mode) past --max-freeze, so the move aborts and
	// the server must serve the same connection from n1 again.
	c.kill(n1)
	c.startWithEnv(n1, []string{faults.Env + "=pause-at:dumped:1s"}, n1.extra...)
	c.waitReady(n1)
	evs, err := c.move(n1, "srv", n2.id, "--max-freeze", "300ms")
	if err == nil {
		t.Fatalf("a move past --max-freeze committed: %+v", lastEvent(evs))
	}
	cl.WaitAnswers(t, 20)
	t.Logf("aborted move: longest wait between answers %v", cl.Gap().Round(time.Millisecond))
	ms, err := n1.c.Migrations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var aborted record.Migration
	for _, m := range ms {
		if m.StartedAt > aborted.StartedAt {
			aborted = m
		}
	}
	if aborted.Phase != record.PhaseAborted || aborted.Stats == nil || aborted.Stats.DumpNS == 0 {
		t.Fatalf("newest migration %+v: want aborted after its dump", aborted)
	}
	if got := c.workload(n1, "srv"); got.Node != n1.id {
		t.Fatalf("after the abort the table has srv on %s", got.Node)
	}
	fresh := testwork.StartConnClient(t, client.net.NetNSPath, server)
	fresh.WaitAnswers(t, 3)
	fresh.Close(t)
	cl.Close(t)
}

// windowText lists a frozen window's steps and their times.
func windowText(steps []record.WindowStep) string {
	var b strings.Builder
	for _, s := range steps {
		fmt.Fprintf(&b, "%s %v; ", s.Step, time.Duration(s.NS).Round(time.Millisecond))
		for _, p := range s.Parts {
			fmt.Fprintf(&b, "(%s %v) ", p.Step, time.Duration(p.NS).Round(100*time.Microsecond))
		}
	}
	return b.String()
}
