package migrate_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/netnode"
	"github.com/migshm/migshm/internal/nsutil"
	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
)

// connServerScript answers every line on every TCP connection to port ARGV[0] with a
// counter kept in a SysV segment, one answer per line, many connections at once.
const connServerScript = `
use strict; use IO::Socket::INET; use IO::Select; use IPC::SysV qw(IPC_PRIVATE IPC_CREAT);
$| = 1;
my $port = shift;
my $id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600) // die "shmget: $!";
my $l = IO::Socket::INET->new(LocalPort => $port, Listen => 8, ReuseAddr => 1, Proto => "tcp") or die "listen: $@";
print "listening\n";
my $sel = IO::Select->new($l);
while (1) {
	for my $s ($sel->can_read) {
		if ($s == $l) { my $c = $l->accept; $sel->add($c) if $c; next }
		my $n = sysread($s, my $buf, 4096);
		if (!$n) { $sel->remove($s); close $s; next }
		for (1 .. ($buf =~ tr/\n//)) {
			my $v; shmread($id, $v, 0, 8) or die "shmread: $!";
			my $c = unpack("Q", $v) + 1;
			shmwrite($id, pack("Q", $c), 0, 8) or die "shmwrite: $!";
			syswrite($s, "$c\n") or die "write: $!";
		}
	}
}
`

// client keeps one TCP connection to a server and sends a request every 10 ms, checking
// that every answer comes and that the counter only grows.
type client struct {
	mu      sync.Mutex
	answers int
	last    int
	maxGap  time.Duration
	err     error
	stop    chan struct{}
	done    chan struct{}
}

func startClient(t *testing.T, netns, addr string) *client {
	t.Helper()
	var conn net.Conn
	err := nsutil.Do(nsutil.Net, netns, func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("client: connect to %s: %v", addr, err)
	}
	c := &client{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer conn.Close()
		r := bufio.NewReader(conn)
		prev := time.Now()
		for {
			select {
			case <-c.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
			var n int
			_, err := conn.Write([]byte("x\n"))
			if err == nil {
				_, err = fmt.Fscanln(r, &n)
			}
			now := time.Now()
			c.mu.Lock()
			switch {
			case err != nil:
				c.err = fmt.Errorf("after %d answers: %w", c.answers, err)
			case n <= c.last:
				c.err = fmt.Errorf("answer %d after %d: the counter went back", n, c.last)
			}
			if c.err != nil {
				c.mu.Unlock()
				return
			}
			c.answers, c.last = c.answers+1, n
			c.maxGap = max(c.maxGap, now.Sub(prev))
			prev = now
			c.mu.Unlock()
		}
	}()
	return c
}

// waitAnswers waits until the client has had n more answers than now, or failed.
func (c *client) waitAnswers(t *testing.T, n int) {
	t.Helper()
	c.mu.Lock()
	want := c.answers + n
	c.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		got, err := c.answers, c.err
		c.mu.Unlock()
		if err != nil {
			t.Fatalf("client: %v", err)
		}
		if got >= want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("client: fewer than %d answers in 30 s", want)
}

// gap returns the longest wait between two answers so far and resets it.
func (c *client) gap() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.maxGap
	c.maxGap = 0
	return g
}

func (c *client) close(t *testing.T) {
	close(c.stop)
	<-c.done
	if c.err != nil {
		t.Fatalf("client: %v", c.err)
	}
}

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
	w := startWorkload(t, ownnet.Path(ns), "perl", "-e", connServerScript, port)
	ns.Close()
	waitOutput(t, w.stdout, "listening")
	if !ownnet.Own(w.proc.Pid, nodes[0].NetNSPath) {
		t.Fatal("the server runs in node 1's network namespace, not its own")
	}
	server := net.JoinHostPort(addr.Addr().String(), port)
	cl := startClient(t, nodes[2].NetNSPath, server)
	cl.waitAnswers(t, 20)
	t.Logf("before the move: longest wait between answers %v", cl.gap())

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
	cl.waitAnswers(t, 20)
	t.Logf("move: frozen %v (CRIU dump %v), longest wait between answers %v", frozen.Round(time.Millisecond), d.Frozen, cl.gap())
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
	cl.waitAnswers(t, 20)
	t.Logf("aborted dump: longest wait between answers %v", cl.gap())
	cl.close(t)
}
