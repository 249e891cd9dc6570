package daemon_test

// Integration tests: real migshmd processes, one per node network namespace, talking
// Raft and the peer API over mutual TLS on real TCP, driven through the real migshm CLI
// and the daemon's client. They need root (namespaces); outside CI they skip without it,
// with CI=true they fail.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/netnode"
	"github.com/migshm/migshm/internal/nsutil"
	"github.com/migshm/migshm/internal/peer"
	"github.com/migshm/migshm/internal/pki"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/shmowner/record"
	"golang.org/x/sys/unix"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds migshmd and migshm once per test process into a directory anyone may
// read (the local-API test runs the CLI as nobody).
func binaries(t *testing.T) (migshmd, migshm string) {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "migshm-bin-"); binErr != nil {
			return
		}
		if binErr = os.Chmod(binDir, 0o755); binErr != nil {
			return
		}
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..")
		for _, b := range []string{"migshmd", "migshm"} {
			// With fault injection (internal/faults), which the tests of failure paths use.
			cmd := exec.Command("go", "build", "-tags", "faults", "-o", filepath.Join(binDir, b), "./cmd/"+b)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				binErr = fmt.Errorf("go build %s: %v\n%s", b, err, out)
				return
			}
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "migshmd"), filepath.Join(binDir, "migshm")
}

// tnode is one node: its netns and, once started, its daemon.
type tnode struct {
	id    string
	net   netnode.Node
	dir   string // data dir
	sock  string
	log   string
	tls   string // dir with ca.crt, node.crt, node.key
	args  []string
	extra []string // the arguments given to start, after the common ones
	env   []string // added to the daemon's environment
	cmd   *exec.Cmd
	done  chan struct{}
	c     *api.Client
}

type cluster struct {
	t       *testing.T
	dir     string
	migshmd string
	migshm  string
	caDir   string
	wdir    string   // workload dir: shared by the nodes (one host, one filesystem) unless private
	private []string // the paths each node has its own (newPrivateCluster)
	common  []string // daemon arguments of every node (newClusterWith)
	nodes   []*tnode
}

// nodePath returns where the host sees path as node nd sees it.
func (c *cluster) nodePath(nd *tnode, path string) string { return nd.net.HostPath(path, c.private...) }

// workloadPath returns where the host sees path as the node that runs workload name
// (as node via's table says) sees it: a workload's own files are on its node.
func (c *cluster) workloadPath(via *tnode, name, path string) string {
	c.t.Helper()
	w := c.workload(via, name)
	for _, nd := range c.nodes {
		if nd.id == w.Node {
			return c.nodePath(nd, path)
		}
	}
	c.t.Fatalf("workload %s runs on %q, not a node of this cluster", name, w.Node)
	return ""
}

// newCluster brings up n node namespaces with a cluster CA and a certificate per node;
// daemons are started for the first members (node 1 bootstraps, the others join it).
// The nodes share the host's files, the workload dir included.
func newCluster(t *testing.T, n, members int) *cluster {
	t.Helper()
	return newClusterWith(t, n, members, false)
}

// newPrivateCluster is newCluster on nodes that share no disk (scripts/cluster
// --private-fs): each has its own /tmp, /var/tmp, /run/migshm and workload dir. The
// test's own temp dirs and the binaries the tests build stay shared, as a real
// cluster's OS image and installed programs are.
func newPrivateCluster(t *testing.T, n, members int) *cluster {
	t.Helper()
	return newClusterWith(t, n, members, true)
}

// newClusterWith is newCluster (private: newPrivateCluster) whose daemons all get the
// arguments common.
func newClusterWith(t *testing.T, n, members int, private bool, common ...string) *cluster {
	t.Helper()
	migshmd, migshm := binaries(t)
	dir := t.TempDir()
	wdir := filepath.Join(dir, "workloads")
	var opts netnode.Options
	if private {
		// The checkout too: the CLI runs workloads in its cwd, and the tests run scripts
		// of testdata/ (a CI clone may live under /tmp).
		_, file, _, _ := runtime.Caller(0)
		shared := []string{filepath.Dir(dir), filepath.Clean(filepath.Join(filepath.Dir(file), ".."))}
		built, _ := filepath.Glob(filepath.Join(os.TempDir(), "migshm-*")) // binaries, test workloads
		for _, b := range built {
			if info, err := os.Stat(b); err == nil && info.IsDir() {
				shared = append(shared, b)
			}
		}
		opts = netnode.Options{PrivateFS: true, Private: []string{wdir}, Share: shared}
	}
	nets := netnode.UpWith(t, n, opts)
	c := &cluster{t: t, dir: dir, migshmd: migshmd, migshm: migshm, caDir: filepath.Join(dir, "ca"),
		wdir: wdir, common: common}
	if private {
		c.private = []string{"/tmp", "/var/tmp", "/run/migshm", wdir}
	}
	if err := pki.InitCA(c.caDir, pki.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, nn := range nets {
		id := fmt.Sprintf("n%d", i+1)
		tdir, err := pki.IssueNode(c.caDir, id, pki.NodeOptions{IPs: []net.IP{net.ParseIP(nn.Addr)}})
		if err != nil {
			t.Fatal(err)
		}
		nd := &tnode{id: id, net: nn, dir: filepath.Join(dir, id), sock: filepath.Join(dir, id+".sock"),
			log: filepath.Join(dir, id+".log"), tls: tdir}
		nd.c = api.NewClient(nd.sock)
		c.nodes = append(c.nodes, nd)
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			c.kill(nd)
			// A killed daemon leaves its image tmpfs (image-tmpfs) mounted.
			_ = unix.Unmount(nd.imageDir(), unix.MNT_DETACH)
		}
		if t.Failed() {
			for _, nd := range c.nodes {
				if b, err := os.ReadFile(nd.log); err == nil {
					t.Logf("---- %s log ----\n%s", nd.id, tailLines(string(b), 60))
				}
			}
		}
	})
	for i := 0; i < members; i++ {
		c.start(c.nodes[i], c.memberArgs(i)...)
	}
	if members > 0 {
		c.waitMembers(c.nodes[0], members)
	}
	return c
}

func (c *cluster) memberArgs(i int) []string {
	if i == 0 {
		return []string{"--bootstrap"}
	}
	return []string{"--join", c.nodes[0].net.Addr + ":7421"}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// start runs the node's daemon in its netns; extra args are added to the usual ones.
func (c *cluster) start(nd *tnode, extra ...string) {
	c.t.Helper()
	c.startWithEnv(nd, nil, extra...)
}

// startWithEnv is start with env added to the daemon's environment (e.g. faults).
func (c *cluster) startWithEnv(nd *tnode, env []string, extra ...string) {
	c.t.Helper()
	nd.env, nd.extra = env, extra
	nd.args = append([]string{
		"--data-dir", nd.dir, "--workload-dir", c.wdir, "--image-dir", nd.imageDir(), "--socket", nd.sock,
		"--tls-ca", filepath.Join(nd.tls, "ca.crt"), "--tls-cert", filepath.Join(nd.tls, "node.crt"),
		"--tls-key", filepath.Join(nd.tls, "node.key"),
		"--load-interval", "1s", "--segment-interval", "200ms", "--config", "",
		// Tests move workloads themselves; TestBalance turns the balancer on.
		"--auto-balance=false",
	}, append(slices.Clone(c.common), extra...)...)
	c.restart(nd)
}

// restart starts the daemon again with the arguments of its last start.
func (c *cluster) restart(nd *tnode) {
	c.t.Helper()
	logf, err := os.OpenFile(nd.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	// nsenter --net keeps the host's mount namespace (ip netns exec would make one per
	// start, and a restarted daemon's CRIU could not dump workloads of the last one).
	ns := []string{"--net=" + nd.net.NetNSPath}
	if nd.net.MntNSPath != "" {
		ns = append(ns, "--mount="+nd.net.MntNSPath)
	}
	cmd := exec.Command("nsenter", append(append(ns, c.migshmd), nd.args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), nd.env...)
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	nd.cmd, nd.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(nd.done)
	wait.For(c.t, 20*time.Second, nd.id+" serves its local API", func() (bool, string) {
		_, err := nd.c.Status(context.Background())
		select {
		case <-nd.done:
			c.t.Fatalf("%s exited at start:\n%s", nd.id, c.logOf(nd))
		default:
		}
		return err == nil, fmt.Sprint(err)
	})
}

// imageDir is the node's image dir (migration images and pages).
func (nd *tnode) imageDir() string { return nd.dir + "-images" }

func (c *cluster) logOf(nd *tnode) string {
	b, _ := os.ReadFile(nd.log)
	return tailLines(string(b), 40)
}

// kill SIGKILLs the node's daemon (its workloads keep running) and waits for it.
func (c *cluster) kill(nd *tnode) {
	if nd.cmd == nil {
		return
	}
	_ = nd.cmd.Process.Kill()
	<-nd.done
	nd.cmd = nil
}

// waitMembers waits until via's table has want active nodes and every started daemon
// reports the same leader.
func (c *cluster) waitMembers(via *tnode, want int) {
	c.t.Helper()
	wait.For(c.t, 30*time.Second, fmt.Sprintf("%d active nodes", want), func() (bool, string) {
		nodes, err := via.c.Nodes(context.Background())
		if err != nil {
			return false, err.Error()
		}
		active := 0
		for _, n := range nodes {
			if n.State == record.NodeActive {
				active++
			}
		}
		return active == want, fmt.Sprintf("%d active of %+v", active, nodes)
	})
}

// cli runs the migshm binary against node nd and returns its stdout; a non-zero exit is
// returned as an error carrying stderr.
func (c *cluster) cli(nd *tnode, args ...string) (string, error) {
	cmd := exec.Command(c.migshm, append([]string{"--socket", nd.sock}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("migshm %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// cliJSON runs `migshm SUBCOMMAND --json ARGS...` and decodes its output into v.
func (c *cluster) cliJSON(t *testing.T, nd *tnode, v any, args ...string) {
	t.Helper()
	full := append([]string{args[0], "--json"}, args[1:]...)
	out, err := c.cli(nd, full...)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("migshm %v: %v\n%s", full, err, out)
	}
}

func workloadByName(ws []api.Workload, name string) (api.Workload, bool) {
	for _, w := range ws {
		if w.Name == name {
			return w, true
		}
	}
	return api.Workload{}, false
}

func groupSegments(segs []api.Segment, group string) []api.Segment {
	var out []api.Segment
	for _, s := range segs {
		if s.Group == group {
			out = append(out, s)
		}
	}
	return out
}

func leaderOf(t *testing.T, nd *tnode) string {
	s, err := nd.c.Status(context.Background())
	if err != nil {
		return ""
	}
	return s.Leader
}

// TestCluster drives a 3-node cluster through what an operator does: run workloads on
// one node and see them and their segments from the others, follow segments created
// and removed later, read logs and stop workloads across nodes, lose the leader, and
// restart a daemon under running workloads.
func TestCluster(t *testing.T) {
	netnode.RequireRoot(t)
	bins := testwork.Build(t)
	c := newCluster(t, 3, 3)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]

	t.Run("run on one node, seen from every node", func(t *testing.T) {
		out, err := c.cli(n2, "run", "--name", "counter", "--", bins.ShmCounter, "--workers", "3")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "started counter") {
			t.Errorf("run printed %q", out)
		}
		var w api.Workload
		c.cliJSON(t, n2, &w, "run", "--name", "writer", "--ipc-group", "gw", "--", bins.ShmWriter, "--size", "65536")
		if w.Name != "writer" || w.Node != "n2" || w.Group != "gw" || w.InitPid <= 0 {
			t.Fatalf("run --json gave %+v", w)
		}
		for _, nd := range c.nodes {
			wait.For(t, 10*time.Second, "workloads and segments on "+nd.id, func() (bool, string) {
				var ws []api.Workload
				var segs []api.Segment
				c.cliJSON(t, nd, &ws, "ps")
				c.cliJSON(t, nd, &segs, "segments")
				cw, ok1 := workloadByName(ws, "counter")
				ww, ok2 := workloadByName(ws, "writer")
				if !ok1 || !ok2 {
					return false, fmt.Sprintf("ps: %+v", ws)
				}
				// shmcounter: init, parent and 3 workers, 1 segment with key 0x4d494754; shmwriter:
				// init and itself, a keyed and a private segment.
				cs, gs := groupSegments(segs, cw.Group), groupSegments(segs, "gw")
				ok := cw.Node == "n2" && ww.Node == "n2" && len(cw.Pids) == 5 && len(ww.Pids) == 2 &&
					len(cs) == 1 && cs[0].Key == 0x4d494754 && cs[0].Owner == "n2" && cs[0].Epoch == 1 &&
					len(gs) == 2 && gs[0].Size == 65536 && gs[1].Key == 0
				return ok, fmt.Sprintf("ps %+v segments %+v", ws, segs)
			})
		}
		// The table output for a human names the same things.
		out, err = c.cli(n3, "segments")
		if err != nil || !strings.Contains(out, "0x4d494754") || !strings.Contains(out, "writer") {
			t.Errorf("segments table: %v\n%s", err, out)
		}
	})

	t.Run("segments created and removed later show up", func(t *testing.T) {
		ws, err := n1.c.Workloads(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		cw, _ := workloadByName(ws, "counter")
		ipc := fmt.Sprintf("--ipc=/proc/%d/ns/ipc", cw.InitPid)
		out, err := exec.Command("nsenter", ipc, "ipcmk", "-M", "8192").CombinedOutput()
		if err != nil {
			t.Fatalf("ipcmk: %v %s", err, out)
		}
		f := strings.Fields(string(out))
		shmid, err := strconv.Atoi(f[len(f)-1])
		if err != nil {
			t.Fatalf("ipcmk output %q", out)
		}
		has := func(want bool) func() (bool, string) {
			return func() (bool, string) {
				segs, err := n3.c.Segments(context.Background())
				if err != nil {
					return false, err.Error()
				}
				for _, s := range groupSegments(segs, cw.Group) {
					if s.Shmid == shmid {
						return want && s.Size == 8192, fmt.Sprintf("%+v", segs)
					}
				}
				return !want, fmt.Sprintf("%+v", segs)
			}
		}
		wait.For(t, 5*time.Second, "the new segment in the table", has(true))
		if out, err := exec.Command("nsenter", ipc, "ipcrm", "-m", strconv.Itoa(shmid)).CombinedOutput(); err != nil {
			t.Fatalf("ipcrm: %v %s", err, out)
		}
		wait.For(t, 5*time.Second, "the removed segment gone from the table", has(false))
	})

	t.Run("logs and stop across nodes, exit status recorded", func(t *testing.T) {
		out, err := c.cli(n3, "logs", "--tail", "1", "writer")
		if err != nil || !strings.Contains(out, "shmwriter ready") {
			t.Fatalf("logs from n3: %v %q", err, out)
		}
		if _, err := c.cli(n1, "run", "--name", "three", "--", "sh", "-c", "echo bye >&2; exit 3"); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 10*time.Second, "exit status 3 recorded", func() (bool, string) {
			ws, _ := n2.c.Workloads(context.Background())
			w, _ := workloadByName(ws, "three")
			return w.State == record.WorkloadExited && w.ExitStatus == 3 && w.ExitedAt > 0, fmt.Sprintf("%+v", w)
		})
		out, err = c.cli(n3, "logs", "--stderr", "three")
		if err != nil || out != "bye\n" {
			t.Errorf("stderr of three from n3: %v %q", err, out)
		}
		var stopped api.Workload
		c.cliJSON(t, n1, &stopped, "stop", "counter") // runs on n2
		if stopped.State != record.WorkloadExited || stopped.ExitStatus != 0 {
			t.Errorf("stop counter: %+v", stopped)
		}
		var ps []api.Workload
		c.cliJSON(t, n3, &ps, "ps")
		if _, ok := workloadByName(ps, "counter"); ok {
			t.Errorf("ps without --all lists the stopped workload: %+v", ps)
		}
		wait.For(t, 5*time.Second, "counter's segments dropped", func() (bool, string) {
			segs, _ := n3.c.Segments(context.Background())
			w, _ := workloadByName(ps, "counter")
			return len(groupSegments(segs, w.Group)) == 0 || w.Group == "", fmt.Sprintf("%+v", segs)
		})
		if _, err := c.cli(n2, "stop", "counter"); err == nil || !strings.Contains(err.Error(), "already exited") {
			t.Errorf("stopping an exited workload: %v", err)
		}
		if _, err := c.cli(n3, "rm", "writer"); err == nil || !strings.Contains(err.Error(), "stop it first") {
			t.Errorf("rm of a running workload: %v", err)
		}
		if _, err := c.cli(n3, "rm", "three"); err != nil {
			t.Errorf("rm three: %v", err)
		}
		if _, err := os.Stat(filepath.Join(c.wdir)); err != nil {
			t.Fatal(err)
		}
		_, err = c.cli(n1, "stop", "nosuch")
		if err == nil || !strings.Contains(err.Error(), `migshm: no workload "nosuch"`) {
			t.Errorf("stop of an unknown workload: %v", err)
		}
	})

	t.Run("leader failover", func(t *testing.T) {
		old := leaderOf(t, n1)
		var leader *tnode
		for _, nd := range c.nodes {
			if nd.id == old {
				leader = nd
			}
		}
		if leader == nil {
			t.Fatalf("no leader known (%q)", old)
		}
		before, err := n1.c.Workloads(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var survivors []*tnode
		for _, nd := range c.nodes {
			if nd != leader {
				survivors = append(survivors, nd)
			}
		}
		killed := time.Now()
		c.kill(leader)
		wait.For(t, 15*time.Second, "a new leader", func() (bool, string) {
			l := leaderOf(t, survivors[0])
			return l != "" && l != old && leaderOf(t, survivors[1]) == l, l
		})
		t.Logf("FIGURE leader failover: %v from kill -9 of %s to a new leader agreed by both survivors",
			time.Since(killed).Round(time.Millisecond), old)
		after, err := survivors[0].c.Workloads(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) {
			t.Fatalf("table changed across failover: %d workloads before, %d after", len(before), len(after))
		}
		// Writable: a follower's write goes through the new leader.
		if _, err := c.cli(survivors[1], "run", "--name", "after-failover", "--", "sleep", "600"); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 15*time.Second, "the dead node marked down", func() (bool, string) {
			ns, _ := survivors[0].c.Nodes(context.Background())
			for _, n := range ns {
				if n.ID == old {
					return n.State == record.NodeDown, string(n.State)
				}
			}
			return false, "missing"
		})
		// Drained while down (a cordon), it must come back draining, not active. Its
		// workloads are pinned first so that the drain moves none of them.
		var pinned []string
		for _, w := range after {
			if w.Node == old && w.State == record.WorkloadRunning {
				if _, err := c.cli(survivors[0], "pin", w.Name); err != nil {
					t.Fatal(err)
				}
				pinned = append(pinned, w.Name)
			}
		}
		if _, err := c.cli(survivors[0], "drain", "--no-wait", old); err != nil {
			t.Fatalf("drain of a down node: %v", err)
		}
		// The old leader comes back from its data dir and catches up.
		c.restart(leader)
		wait.For(t, 20*time.Second, "the old leader rejoined and caught up", func() (bool, string) {
			s, err := leader.c.Status(context.Background())
			if err != nil {
				return false, err.Error()
			}
			ws, _ := leader.c.Workloads(context.Background())
			_, ok := workloadByName(ws, "after-failover")
			ns, _ := survivors[0].c.Nodes(context.Background())
			state := ""
			for _, n := range ns {
				if n.ID == old {
					state = string(n.State)
				}
			}
			return s.Member && s.Leader != "" && ok && state == "draining", fmt.Sprintf("%+v node state %s", s, state)
		})
		if _, err := c.cli(survivors[0], "undrain", old); err != nil {
			t.Fatal(err)
		}
		for _, name := range pinned {
			if _, err := c.cli(survivors[0], "unpin", name); err != nil {
				t.Fatal(err)
			}
		}
		ns, _ := survivors[0].c.Nodes(context.Background())
		for _, n := range ns {
			if n.ID == old && (n.State != record.NodeActive || n.Drain) {
				t.Fatalf("%s after undrain: %s drain=%v", old, n.State, n.Drain)
			}
		}
		ws, _ := survivors[0].c.Workloads(context.Background())
		for _, name := range pinned {
			if w, ok := workloadByName(ws, name); !ok || w.Node != old {
				t.Errorf("pinned %s moved off the drained node: %+v", name, w)
			}
		}
	})

	t.Run("daemon restart re-attaches to running workloads", func(t *testing.T) {
		var a, b api.Workload
		c.cliJSON(t, n3, &a, "run", "--name", "survivor", "--", "sh", "-c", "trap 'exit 9' TERM; while :; do sleep 0.1; done")
		c.cliJSON(t, n3, &b, "run", "--name", "quitter", "--", "sh", "-c", "read x; sleep 1; exit 4") // stdin is /dev/null
		c.kill(n3)
		// quitter exits while its daemon is down; survivor keeps running.
		wait.For(t, 10*time.Second, "quitter's init gone", func() (bool, string) {
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", b.InitPid))
			return err != nil || strings.Contains(string(st), ") Z "), string(st)
		})
		if err := syscall.Kill(a.InitPid, 0); err != nil {
			t.Fatalf("survivor died with its daemon: %v", err)
		}
		c.restart(n3)
		wait.For(t, 10*time.Second, "quitter recorded exited(4) after the restart", func() (bool, string) {
			ws, err := n1.c.Workloads(context.Background())
			if err != nil {
				return false, err.Error()
			}
			q, _ := workloadByName(ws, "quitter")
			s, _ := workloadByName(ws, "survivor")
			return q.State == record.WorkloadExited && q.ExitStatus == 4 && s.State == record.WorkloadRunning &&
				s.InitPid == a.InitPid, fmt.Sprintf("%+v %+v", q, s)
		})
		// The restarted daemon is no longer the survivor's parent; stop still works and
		// the status comes from the init's record.
		var stopped api.Workload
		c.cliJSON(t, n2, &stopped, "stop", "survivor")
		if stopped.ExitStatus != 9 {
			t.Errorf("survivor stopped with %+v, want exit status 9", stopped)
		}
	})

	t.Run("status and leave", func(t *testing.T) {
		var st api.Status
		c.cliJSON(t, n2, &st, "status")
		if st.Node != "n2" || st.Leader == "" || len(st.Peers) != 3 || st.Term == 0 || st.CommitIndex == 0 ||
			st.AppliedIndex > st.CommitIndex || !st.Member {
			t.Fatalf("status from n2: %+v", st)
		}
		// n2 still runs "writer": it may not leave without --force.
		if _, err := c.cli(n1, "leave", "n2"); err == nil || !strings.Contains(err.Error(), "stop or move them first") {
			t.Fatalf("leave of a node with workloads: %v", err)
		}
		if _, err := c.cli(n1, "leave", "nosuch"); err == nil || !strings.Contains(err.Error(), "not in the cluster") {
			t.Fatalf("leave of an unknown node: %v", err)
		}
		// Once its workloads are stopped n3 may leave, asked through itself.
		ws, err := n1.c.Workloads(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range ws {
			if w.Node == "n3" && w.State == record.WorkloadRunning {
				if _, err := c.cli(n1, "stop", "--timeout", "2s", w.Name); err != nil {
					t.Fatal(err)
				}
			}
		}
		var res api.LeaveResult
		c.cliJSON(t, n3, &res, "leave")
		if res.Node != "n3" {
			t.Fatalf("leave: %+v", res)
		}
		wait.For(t, 10*time.Second, "n3 says it left", func() (bool, string) {
			st, err := n3.c.Status(context.Background())
			if err != nil {
				return false, err.Error()
			}
			return !st.Member && strings.Contains(st.Error, "no longer a voter"), fmt.Sprintf("%+v", st)
		})
		wait.For(t, 10*time.Second, "n3 gone from the table and the voters", func() (bool, string) {
			ns, err := n1.c.Nodes(context.Background())
			if err != nil {
				return false, err.Error()
			}
			st, err := n1.c.Status(context.Background())
			if err != nil {
				return false, err.Error()
			}
			return len(ns) == 2 && len(st.Peers) == 2, fmt.Sprintf("nodes %+v peers %+v", ns, st.Peers)
		})
		// The two remaining nodes still make a working cluster.
		if _, err := c.cli(n2, "run", "--name", "after-leave", "--", "sleep", "600"); err != nil {
			t.Fatal(err)
		}
		// The leader itself can be removed (through the other node): the table change
		// is committed before it leaves Raft, and the last node leads alone.
		leader, other := n1, n2
		if leaderOf(t, n1) == "n2" {
			leader, other = n2, n1
		}
		if _, err := c.cli(other, "leave", leader.id, "--force"); err != nil {
			t.Fatalf("leave %s (the leader) --force: %v", leader.id, err)
		}
		wait.For(t, 15*time.Second, other.id+" leading alone", func() (bool, string) {
			st, err := other.c.Status(context.Background())
			if err != nil {
				return false, err.Error()
			}
			ns, err := other.c.Nodes(context.Background())
			if err != nil {
				return false, err.Error()
			}
			return st.Leader == other.id && len(st.Peers) == 1 && len(ns) == 1 && ns[0].ID == other.id,
				fmt.Sprintf("status %+v nodes %+v", st, ns)
		})
		if _, err := c.cli(other, "run", "--name", "alone", "--", "sleep", "600"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("local API is root only", func(t *testing.T) {
		fi, err := os.Stat(n1.sock)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
		}
		cmd := exec.Command(c.migshm, "--socket", n1.sock, "ps")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		// The socket's directory is the test's private temp dir or the socket is 0600:
		// either way nobody cannot connect, and says why.
		if err == nil || !strings.Contains(string(out), "migshm: ") {
			t.Errorf("ps as nobody: %v %s", err, out)
		}
	})
}

// TestPeersNeedClusterCertificate: a daemon with a certificate from another CA cannot
// join, the peer API and Raft refuse connections without a cluster certificate, and a
// node with a valid certificate cannot join under another node's name.
func TestPeersNeedClusterCertificate(t *testing.T) {
	netnode.RequireRoot(t)
	c := newCluster(t, 3, 2)
	n1, outsider := c.nodes[0], c.nodes[2]

	// A foreign CA with a node certificate named like a member-to-be.
	foreign := filepath.Join(c.dir, "foreign")
	if err := pki.InitCA(foreign, pki.CAOptions{CommonName: "someone else"}); err != nil {
		t.Fatal(err)
	}
	ftls, err := pki.IssueNode(foreign, "n3", pki.NodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	outsider.tls = ftls
	c.start(outsider, "--join", n1.net.Addr+":7421")
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		s, err := outsider.c.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if s.Member || s.Leader != "" {
			t.Fatalf("foreign-CA node became a member: %+v", s)
		}
		time.Sleep(200 * time.Millisecond)
	}
	s, _ := outsider.c.Status(context.Background())
	if !strings.Contains(s.Error, "certificate") {
		t.Errorf("the refused node does not say why: %q", s.Error)
	}
	ns, err := n1.c.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 2 {
		t.Fatalf("table has %d nodes after a foreign join attempt: %+v", len(ns), ns)
	}
	c.kill(outsider)

	member, err := pki.Load(filepath.Join(c.nodes[1].tls, "ca.crt"), filepath.Join(c.nodes[1].tls, "node.crt"),
		filepath.Join(c.nodes[1].tls, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	foreignCfg, err := pki.Load(filepath.Join(ftls, "ca.crt"), filepath.Join(ftls, "node.crt"), filepath.Join(ftls, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	noCert := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	peerAPI, raftAddr := n1.net.Addr+":7421", n1.net.Addr+":7420"

	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		addr string
	}{
		{"peer API without a certificate", noCert, peerAPI},
		{"peer API with a foreign certificate", foreignCfg.ClientTLS(), peerAPI},
		{"raft without a certificate", noCert, raftAddr},
		{"raft with a foreign certificate", foreignCfg.ClientTLS(), raftAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body, err := peerRequest(outsider.net.NetNSPath, tc.addr, tc.cfg, "GET", "/v1/nodes", "")
			if err == nil {
				t.Fatalf("request succeeded: %d %s", status, body)
			}
		})
	}

	t.Run("valid certificate, someone else's name", func(t *testing.T) {
		body := fmt.Sprintf(`{"id":"n1","raft_addr":"%s:7420","api_addr":"%s:7421"}`, outsider.net.Addr, outsider.net.Addr)
		status, resp, err := peerRequest(outsider.net.NetNSPath, peerAPI, member.ClientTLS(), "POST", "/peer/v1/join", body)
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusForbidden || !strings.Contains(resp, `"forbidden"`) {
			t.Fatalf("join as n1 with n2's certificate: %d %s", status, resp)
		}
		// The same client may read: it is a member.
		status, resp, err = peerRequest(outsider.net.NetNSPath, peerAPI, member.ClientTLS(), "GET", "/v1/nodes", "")
		if err != nil || status != http.StatusOK || !strings.Contains(resp, `"n2"`) {
			t.Fatalf("member read: %v %d %s", err, status, resp)
		}
	})

	t.Run("forged forwarded requests", func(t *testing.T) {
		fwd := func(by string) http.Header { return http.Header{peer.ForwardedHeader: {by}} }
		leaderAPI := peerAPI // sent to the leader, so that nothing is refused only for not leading
		for _, nd := range c.nodes {
			if nd.id == leaderOf(t, n1) {
				leaderAPI = nd.net.Addr + ":7421"
			}
		}
		for _, tc := range []struct {
			name, path, body string
			header           http.Header
			want             string
		}{
			// Once, a join marked as relayed skipped the name check.
			{"join relayed, as someone else", "/peer/v1/join",
				fmt.Sprintf(`{"id":"evil","raft_addr":"%s:7420","api_addr":"%s:7421"}`, outsider.net.Addr, outsider.net.Addr),
				fwd("n2"), "the caller's certificate is for"},
			{"relay mark naming another node", "/peer/v1/join",
				fmt.Sprintf(`{"id":"n2","raft_addr":"%s:7420","api_addr":"%s:7421"}`, outsider.net.Addr, outsider.net.Addr),
				fwd("n1"), `marked as relayed by \"n1\"`},
			{"load report under another node's name", "/peer/v1/apply",
				`{"type":4,"body":{"id":"n1","load":{"cpu":0.99},"at":1}}`, fwd("n2"), `reports for node \"n1\"`},
			{"workload placed on another node", "/peer/v1/apply",
				`{"type":5,"body":{"workload":{"id":"fake","group":"fake","node":"n1"}}}`, nil, `reports for node \"n1\"`},
		} {
			status, resp, err := peerRequestWith(outsider.net.NetNSPath, leaderAPI, member.ClientTLS(), "POST", tc.path, tc.body, tc.header)
			if err != nil {
				t.Fatal(err)
			}
			if status != http.StatusForbidden || !strings.Contains(resp, tc.want) {
				t.Errorf("%s: %d %s, want 403 saying %s", tc.name, status, resp, tc.want)
			}
		}
		ns, _ := n1.c.Nodes(context.Background())
		ws, _ := n1.c.Workloads(context.Background())
		if len(ns) != 2 || slices.ContainsFunc(ws, func(w api.Workload) bool { return w.ID == "fake" }) {
			t.Fatalf("a forged request changed the table: nodes %+v workloads %+v", ns, ws)
		}
		for _, n := range ns {
			if n.ID == "n1" && n.Load.CPU == 0.99 {
				t.Fatal("a forged load report was recorded")
			}
		}
	})

	t.Run("malformed forwarded command is refused before the log", func(t *testing.T) {
		for _, body := range []string{
			`{"type":5,"body":{"workload":"not an object"}}`,
			`{"type":77,"body":{}}`,
			`{"type":5,"body":`,
		} {
			status, resp, err := peerRequest(outsider.net.NetNSPath, peerAPI, member.ClientTLS(), "POST", "/peer/v1/apply", body)
			if err != nil || status != http.StatusBadRequest || !strings.Contains(resp, "bad_request") {
				t.Errorf("apply %s: %v %d %s", body, err, status, resp)
			}
		}
		if _, err := n1.c.Status(context.Background()); err != nil {
			t.Fatalf("leader unwell after bad commands: %v", err)
		}
	})
	// Last: it revokes the certificate the subtests above use.
	t.Run("certificate rotated on SIGHUP, the old one revoked", func(t *testing.T) {
		n2 := c.nodes[1]
		oldCopy := filepath.Join(t.TempDir(), "old-node.crt")
		b, err := os.ReadFile(filepath.Join(n2.tls, "node.crt"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(oldCopy, b, 0o600); err != nil {
			t.Fatal(err)
		}
		oldSerial := member.Serial()
		if _, err := pki.IssueNode(c.caDir, "n2", pki.NodeOptions{IPs: []net.IP{net.ParseIP(n2.net.Addr)}}); err != nil {
			t.Fatal(err)
		}
		renewed, err := pki.Load(filepath.Join(n2.tls, "ca.crt"), filepath.Join(n2.tls, "node.crt"), filepath.Join(n2.tls, "node.key"))
		if err != nil {
			t.Fatal(err)
		}
		if err := n2.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		n2API := n2.net.Addr + ":7421"
		wait.For(t, 10*time.Second, "n2 to serve its renewed certificate", func() (bool, string) {
			serial, err := servedSerial(outsider.net.NetNSPath, n2API, renewed.ClientTLS())
			return err == nil && serial.Cmp(renewed.Serial()) == 0, fmt.Sprintf("%v %v", serial, err)
		})
		if _, err := c.cli(n1, "tls", "revoke", oldCopy, "--reason", "rotated"); err != nil {
			t.Fatal(err)
		}
		var revs []api.Revocation
		revoked := func(nd *tnode) {
			t.Helper()
			out, err := c.cli(nd, "tls", "revoked", "--json")
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(out), &revs); err != nil {
				t.Fatalf("tls revoked --json: %v\n%s", err, out)
			}
		}
		revoked(n2)
		if len(revs) != 1 || revs[0].Serial != oldSerial.Text(16) || revs[0].Node != "n2" || revs[0].Reason != "rotated" {
			t.Fatalf("revoked: %+v", revs)
		}
		// Every node refuses the old certificate, the renewed one works.
		// The client only gets TLS's alert; the server's log says why.
		for _, nd := range []*tnode{n1, n2} {
			addr := nd.net.Addr + ":7421"
			wait.For(t, 10*time.Second, "the old certificate refused by "+nd.id, func() (bool, string) {
				status, resp, err := peerRequest(outsider.net.NetNSPath, addr, member.ClientTLS(), "GET", "/v1/nodes", "")
				return err != nil && strings.Contains(err.Error(), "bad certificate") &&
						strings.Contains(c.logOf(nd), `certificate of \"n2\" (serial `+oldSerial.Text(16)+`) is revoked`),
					fmt.Sprintf("%d %s %v", status, resp, err)
			})
			if status, resp, err := peerRequest(outsider.net.NetNSPath, addr, renewed.ClientTLS(), "GET", "/v1/nodes", ""); err != nil || status != http.StatusOK {
				t.Errorf("renewed certificate at %s: %v %d %s", addr, err, status, resp)
			}
		}
		// n2 still works as a member: its writes go to the leader on new connections.
		if _, err := c.cli(n2, "run", "--name", "after-rotation", "--", "sleep", "600"); err != nil {
			t.Fatalf("n2 after the rotation: %v\n%s", err, tailLines(c.logOf(n2), 20))
		}
		// A bad revocation changes nothing.
		if _, err := c.cli(n1, "tls", "revoke", "--serial", "xyz", "--node", "n2"); err == nil || !strings.Contains(err.Error(), `serial "xyz"`) {
			t.Errorf("revoke of a malformed serial: %v", err)
		}
		revoked(n1)
		if len(revs) != 1 {
			t.Errorf("revoked after a refused revoke: %+v", revs)
		}
	})
}

// peerRequest makes one HTTPS request from inside the network namespace at nsPath
// (the connection is made synchronously on the namespace's thread).
func peerRequest(nsPath, addr string, cfg *tls.Config, method, path, body string) (int, string, error) {
	return peerRequestWith(nsPath, addr, cfg, method, path, body, nil)
}

// servedSerial returns the serial of the certificate the TLS server at addr presents.
func servedSerial(nsPath, addr string, cfg *tls.Config) (*big.Int, error) {
	var raw net.Conn
	if err := nsutil.Do(nsutil.Net, nsPath, func() (err error) {
		raw, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		return nil, err
	}
	conn := tls.Client(raw, cfg)
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := conn.Handshake(); err != nil {
		return nil, err
	}
	return conn.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// peerRequestWith is peerRequest with header added to the request.
func peerRequestWith(nsPath, addr string, cfg *tls.Config, method, path, body string, header http.Header) (int, string, error) {
	var conn *tls.Conn
	err := nsutil.Do(nsutil.Net, nsPath, func() error {
		d := &net.Dialer{Timeout: 5 * time.Second}
		raw, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		conn = tls.Client(raw, cfg)
		return nil
	})
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := conn.Handshake(); err != nil {
		return 0, "", err
	}
	req, err := http.NewRequestWithContext(context.Background(), method, "https://"+addr+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	if err := req.Write(conn); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String(), nil
}

// TestRetentionPrunes: the leader prunes exited workloads beyond retain-exited, oldest
// first, through the log; a pruned workload's name is free again.
func TestRetentionPrunes(t *testing.T) {
	netnode.RequireRoot(t)
	c := newCluster(t, 1, 0)
	nd := c.nodes[0]
	c.start(nd, "--bootstrap", "--retain-exited", "2")
	c.waitMembers(nd, 1)
	for i := range 4 {
		name := fmt.Sprintf("job%d", i)
		if _, err := c.cli(nd, "run", "--name", name, "--", "true"); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 10*time.Second, name+" exited", func() (bool, string) {
			ws, _ := nd.c.Workloads(context.Background())
			w, ok := workloadByName(ws, name)
			return ok && w.State == record.WorkloadExited, string(w.State)
		})
	}
	wait.For(t, 10*time.Second, "the two oldest exited workloads pruned", func() (bool, string) {
		ws, _ := nd.c.Workloads(context.Background())
		var names []string
		for _, w := range ws {
			names = append(names, w.Name)
		}
		slices.Sort(names)
		return slices.Equal(names, []string{"job2", "job3"}), fmt.Sprint(names)
	})
	if _, err := c.cli(nd, "run", "--name", "job0", "--", "sleep", "600"); err != nil {
		t.Fatalf("the name of a pruned workload is not free: %v", err)
	}
}

// TestReadyNotification: under systemd (Type=notify) the daemon says READY=1 only once
// Raft and both listeners are up, and STOPPING=1 on SIGTERM, after which it exits 0
// and leaves its workloads running.
func TestReadyNotification(t *testing.T) {
	netnode.RequireRoot(t)
	c := newCluster(t, 1, 0)
	nd := c.nodes[0]
	notify := filepath.Join(c.dir, "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", notify) // inherited by the daemon started below
	msgs := make(chan string, 8)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ln.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	c.start(nd, "--bootstrap")
	select {
	case m := <-msgs:
		if !strings.Contains(m, "READY=1") {
			t.Fatalf("first notification %q, want READY=1", m)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no READY=1 within 20s")
	}
	// READY means serving: the local API answers and Raft is open.
	s, err := nd.c.Status(context.Background())
	if err != nil || s.RaftState == "" || s.RaftState == "Shutdown" {
		t.Fatalf("after READY: %+v %v", s, err)
	}
	peerOK := false
	_ = nsutil.Do(nsutil.Net, nd.net.NetNSPath, func() error {
		conn, err := net.DialTimeout("tcp", nd.net.Addr+":7421", 2*time.Second)
		if err == nil {
			peerOK = true
			conn.Close()
		}
		return nil
	})
	if !peerOK {
		t.Fatal("peer API not listening after READY")
	}
	c.waitMembers(nd, 1)
	var w api.Workload
	c.cliJSON(t, nd, &w, "run", "--name", "keeps-running", "--", "sleep", "600")
	if err := nd.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		if !strings.Contains(m, "STOPPING=1") {
			t.Fatalf("notification on SIGTERM %q, want STOPPING=1", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no STOPPING=1 within 10s of SIGTERM")
	}
	select {
	case <-nd.done:
	case <-time.After(15 * time.Second):
		t.Fatal("daemon still running 15s after SIGTERM")
	}
	if code := nd.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("daemon exit code %d after SIGTERM, want 0:\n%s", code, c.logOf(nd))
	}
	nd.cmd = nil
	if err := syscall.Kill(w.InitPid, 0); err != nil {
		t.Fatalf("workload died with the daemon: %v", err)
	}
	if _, err := os.Stat(nd.sock); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind after a clean stop (%v)", nd.sock, err)
	}
	_ = syscall.Kill(w.InitPid, syscall.SIGKILL)
}
