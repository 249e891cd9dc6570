package migrate_test

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/netnode"
	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
)

// treePids returns the pids of the workload tree whose init is pid.
func treePids(t *testing.T, pid int) []int {
	t.Helper()
	all, _, err := workload.ReadAll("/proc")
	if err != nil {
		t.Fatal(err)
	}
	tree, err := workload.FindTree(all, pid)
	if err != nil {
		t.Fatal(err)
	}
	pids := make([]int, len(tree.Procs))
	for i, p := range tree.Procs {
		pids[i] = p.Pid
	}
	return pids
}

// TestMoveKeepsAddressAndConnection moves a SysV-shm TCP server that has an address of
// its own (internal/ownnet) from node 1 to node 2 while a client on node 3 keeps one
// connection open and sends a request every 10 ms: the client never reconnects, gets
// every answer, sees the counter in the segment only grow, and a fresh client reaches
// the server at the same address after the move. Then a dump on node 2 that is given
// up (an aborted move) leaves the connection working there.
func TestMoveKeepsAddressAndConnection(t *testing.T) {
	c := testenv.RequireCRIU(t)
	nodes := netnode.Up(t, 3)
	node := netip.MustParseAddr(nodes[0].Addr).As4()
	node[3] = 200
	addr := netip.PrefixFrom(netip.AddrFrom4(node), 24)
	ns, err := ownnet.Create(ownnet.Config{Parent: "eth0", Addr: addr}, nodes[0].NetNSPath)
	if err != nil {
		t.Fatal(err)
	}
	const port = "7430"
	w := startWorkload(t, ownnet.Path(ns), "perl", testwork.ConnServer(t), port)
	ns.Close()
	waitOutput(t, w.stdout, "listening")
	if !ownnet.Own(w.proc.Pid, nodes[0].NetNSPath) {
		t.Fatal("the server runs in node 1's network namespace, not its own")
	}
	server := net.JoinHostPort(addr.Addr().String(), port)
	cl := testwork.StartConnClient(t, nodes[2].NetNSPath, server)
	cl.WaitAnswers(t, 20)
	t.Logf("before the move: longest wait between answers %v", cl.Gap())

	ctx := context.Background()
	images := filepath.Join(t.TempDir(), "images")
	start := time.Now()
	d, err := c.Dump(ctx, migrate.DumpOptions{Pid: w.proc.Pid, ImagesDir: images, LeaveStopped: true, NetNS: nodes[0].NetNSPath, OwnNetwork: true})
	if err != nil {
		t.Fatalf("dump of a server with its own address and a connection: %v", err)
	}
	killAndReap(w.proc)
	res, err := c.Restore(ctx, migrate.RestoreOptions{ImagesDir: images, WorkDir: t.TempDir(), NetNS: nodes[1].NetNSPath, NetParent: "eth0"})
	if err != nil {
		t.Fatalf("restore on node 2: %v", err)
	}
	frozen := time.Since(start)
	restored := workload.Attach(res.Pid)
	t.Cleanup(func() { killAndReap(restored) })
	cl.WaitAnswers(t, 20)
	t.Logf("move: frozen %v (CRIU dump %v), longest wait between answers %v", frozen.Round(time.Millisecond), d.Frozen, cl.Gap())
	if tcp := ask(t, nodes[2].NetNSPath, "tcp", server); tcp <= 0 {
		t.Fatalf("a fresh client got %d", tcp)
	}

	// A dump given up: CRIU leaves the namespace locked and the connection in repair
	// mode; Release and Resume give the server back as it was.
	again := filepath.Join(t.TempDir(), "again")
	if _, err := c.Dump(ctx, migrate.DumpOptions{Pid: res.Pid, ImagesDir: again, LeaveStopped: true, NetNS: nodes[1].NetNSPath, OwnNetwork: true}); err != nil {
		t.Fatalf("second dump on node 2: %v", err)
	}
	if err := ownnet.Release(treePids(t, res.Pid)); err != nil {
		t.Fatal(err)
	}
	if err := migrate.Resume("/proc", res.Pid, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	cl.WaitAnswers(t, 20)
	t.Logf("aborted dump: longest wait between answers %v", cl.Gap())
	cl.Close(t)
}
