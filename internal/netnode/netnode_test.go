package netnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/wait"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// script runs scripts/cluster and fails the test unless it exits 0.
func script(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runScript(testCtx(t), args...)
	if err != nil {
		t.Fatalf("scripts/cluster %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// scriptExit runs scripts/cluster and returns its exit code and output.
func scriptExit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := runScript(testCtx(t), args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	default:
		t.Fatalf("scripts/cluster %s: %v\n%s", strings.Join(args, " "), err, out)
		return -1, ""
	}
}

// netnsWithPrefix lists the existing netns names that start with prefix+"-".
func netnsWithPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			names = append(names, f[0])
		}
	}
	return names
}

// downOnCleanup tears down prefix at the end of the test whatever happened.
func downOnCleanup(t *testing.T, prefix string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := runScript(ctx, "down", "--prefix", prefix); err != nil {
			t.Errorf("down --prefix %s: %v\n%s", prefix, err, out)
		}
	})
}

// ipv4Addrs returns the global IPv4 addresses ("A.B.C.D/len") in a namespace ("" = host).
func ipv4Addrs(t *testing.T, netns string) []string {
	t.Helper()
	args := []string{"-4", "-o", "addr", "show"}
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var addrs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		// "2: eth0    inet 10.213.0.11/24 brd ... scope global eth0 ..."
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" && !strings.HasPrefix(f[i+1], "127.") {
				addrs = append(addrs, f[i+1])
			}
		}
	}
	return addrs
}

func TestUpThreeNodes(t *testing.T) {
	t.Parallel()
	nodes := Up(t, 3)
	ctx := testCtx(t)

	for i, n := range nodes {
		if n.Index != i+1 {
			t.Errorf("node %d: Index = %d", i+1, n.Index)
		}
		if _, err := os.Stat(n.NetNSPath); err != nil {
			t.Errorf("node %d: NetNSPath: %v", n.Index, err)
		}
		// Each node netns holds exactly its own address.
		want := n.Addr + "/24"
		if got := ipv4Addrs(t, n.NetNS); len(got) != 1 || got[0] != want {
			t.Errorf("node %d (%s): IPv4 addresses %v, want exactly [%s]", n.Index, n.NetNS, got, want)
		}
	}

	// Node 2 reaches node 3.
	if out, err := nodes[1].Command(ctx, "ping", "-n", "-c1", "-W2", nodes[2].Addr).CombinedOutput(); err != nil {
		t.Errorf("ping from node 2 to node 3 (%s): %v\n%s", nodes[2].Addr, err, out)
	}
	// Command really runs inside the node's netns.
	if out, err := nodes[0].Command(ctx, "ip", "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput(); err != nil ||
		!strings.Contains(string(out), nodes[0].Addr+"/24") {
		t.Errorf("Command in node 1: %v\n%s", err, out)
	}

	// The host namespace has no address of the cluster network.
	for _, a := range ipv4Addrs(t, "") {
		if strings.HasPrefix(a, "10.213.0.") {
			t.Errorf("host namespace has cluster address %s", a)
		}
	}
}

func TestDownRemovesEverything(t *testing.T) {
	RequireRoot(t)
	t.Parallel()
	p := newPrefix()
	downOnCleanup(t, p)

	out := script(t, "up", "2", "--prefix", p)
	if !strings.Contains(out, "node 2 netns="+p+"-n2 addr=10.213.0.12") {
		t.Fatalf("up output lacks node 2 line:\n%s", out)
	}
	stateFile := "/run/migshm-cluster/" + p + ".env"
	state, err := os.ReadFile(stateFile)
	if err != nil {
		t.Fatalf("state file: %v", err)
	}
	for _, want := range []string{"NODES=2\n", "NODE1_NETNS=" + p + "-n1\n", "NODE2_ADDR=10.213.0.12\n"} {
		if !strings.Contains(string(state), want) {
			t.Errorf("state file lacks %q:\n%s", want, state)
		}
	}
	if code, out := scriptExit(t, "status", "--prefix", p); code != 0 || !strings.Contains(out, "node 1 netns="+p+"-n1 addr=10.213.0.11") {
		t.Errorf("status: exit %d\n%s", code, out)
	}

	// Running up again with the same prefix is fine.
	script(t, "up", "2", "--prefix", p)

	// A process left in a node must not survive down (nor keep the namespace alive).
	sleeper := exec.Command(scriptPath(), "exec", "--prefix", p, "1", "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()
	wait.For(t, 10*time.Second, "sleep to appear in node 1's netns", func() (bool, string) {
		pids, err := exec.Command("ip", "netns", "pids", p+"-n1").Output()
		return len(strings.TrimSpace(string(pids))) > 0, fmt.Sprintf("pids %q, err %v", pids, err)
	})

	out = script(t, "down", "--prefix", p)
	for _, want := range []string{"removed netns " + p + "-sw", "removed netns " + p + "-n1", "removed netns " + p + "-n2"} {
		if !strings.Contains(out, want) {
			t.Errorf("down output lacks %q:\n%s", want, out)
		}
	}
	if left := netnsWithPrefix(t, p); len(left) != 0 {
		t.Errorf("namespaces left after down: %v", left)
	}
	if _, err := os.Stat(stateFile); !os.IsNotExist(err) {
		t.Errorf("state file still there after down: %v", err)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		_ = sleeper.Process.Kill()
		t.Error("process in node 1 survived down")
	}

	// Down again: nothing there, still success. Status now says there is no cluster.
	script(t, "down", "--prefix", p)
	if code, out := scriptExit(t, "status", "--prefix", p); code != 1 {
		t.Errorf("status after down: exit %d, want 1\n%s", code, out)
	}
}

func TestRate(t *testing.T) {
	RequireRoot(t)
	t.Parallel()
	p := newPrefix()
	downOnCleanup(t, p)
	script(t, "up", "2", "--rate", "100mbit", "--prefix", p)
	for _, ns := range []string{p + "-n1", p + "-n2"} {
		out, err := exec.Command("ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", "eth0").CombinedOutput()
		if err != nil {
			t.Fatalf("tc qdisc show in %s: %v\n%s", ns, err, out)
		}
		if !strings.Contains(string(out), "tbf") || !strings.Contains(string(out), "100Mbit") {
			t.Errorf("%s eth0 has no 100Mbit tbf qdisc:\n%s", ns, out)
		}
	}
}

func TestDownAfterCrash(t *testing.T) {
	RequireRoot(t)
	t.Parallel()
	p := newPrefix()
	downOnCleanup(t, p)
	// What a crash in the middle of up might leave: a node netns but no switch, no state file.
	if out, err := exec.Command("ip", "netns", "add", p+"-n7").CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	if code, out := scriptExit(t, "status", "--prefix", p); code != 1 {
		t.Errorf("status of a broken cluster: exit %d, want 1\n%s", code, out)
	}
	out := script(t, "down", "--prefix", p)
	if !strings.Contains(out, "removed netns "+p+"-n7") {
		t.Errorf("down output lacks the stray netns:\n%s", out)
	}
	if left := netnsWithPrefix(t, p); len(left) != 0 {
		t.Errorf("namespaces left after down: %v", left)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"up", "1", "--prefix", "Bad"},
		{"up", "1", "--prefix", "1abc"},
		{"up", "1", "--prefix", "abcdefghijklmnopq"}, // 17 characters
		{"up", "1", "--prefix", "a_b"},
		{"down", "--prefix", "x/y"},
		{"up", "0"},
		{"up", "245"},
		{"up", "1", "--rate", "fast"},
		{"bogus"},
		{},
		{"--help"},
	} {
		code, out := scriptExit(t, args...)
		if code != 2 {
			t.Errorf("scripts/cluster %q: exit %d, want 2\n%s", args, code, out)
		}
		if !strings.Contains(out, "usage:") {
			t.Errorf("scripts/cluster %q: no usage in output:\n%s", args, out)
		}
	}
	// Nothing was created for the refused prefixes (netns names are not case-folded, so
	// look for any of them exactly).
	if os.Geteuid() == 0 {
		out, err := exec.Command("ip", "netns", "list").CombinedOutput()
		if err != nil {
			t.Fatalf("ip netns list: %v\n%s", err, out)
		}
		for _, p := range []string{"Bad-", "1abc-", "abcdefghijklmnopq-", "a_b-"} {
			if strings.Contains(string(out), p) {
				t.Errorf("netns with refused prefix %q exists:\n%s", p, out)
			}
		}
	}
}

func TestParseNodes(t *testing.T) {
	out := []byte("node 1 netns=mtx-n1 addr=10.213.0.11\nnoise\nnode 2 netns=mtx-n2 addr=10.213.0.12 mntns=/run/m/mtx-n2 fs=/var/fs/n2\n")
	nodes, err := parseNodes(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []Node{
		{Index: 1, NetNS: "mtx-n1", NetNSPath: "/run/netns/mtx-n1", Addr: "10.213.0.11"},
		{Index: 2, NetNS: "mtx-n2", NetNSPath: "/run/netns/mtx-n2", Addr: "10.213.0.12", MntNSPath: "/run/m/mtx-n2", FS: "/var/fs/n2"},
	}
	if len(nodes) != len(want) {
		t.Fatalf("got %v, want %v", nodes, want)
	}
	for i := range want {
		if nodes[i] != want[i] {
			t.Errorf("node %d: got %+v, want %+v", i, nodes[i], want[i])
		}
	}
	if _, err := parseNodes([]byte("node 2 netns=a-n2 addr=10.213.0.12\n")); err == nil {
		t.Error("out-of-order node lines accepted")
	}
	for i := 0; i < 100; i++ {
		if p := newPrefix(); !prefixRE.MatchString(p) || len(p) != 8 {
			t.Fatalf("bad prefix %q", p)
		}
	}
}

// TestPrivateFS: with --private-fs each node has its own /tmp (and the --private paths),
// which the host sees under the node's FS dir, while --share paths and the rest of the
// host's files stay common to all.
func TestPrivateFS(t *testing.T) {
	shared := t.TempDir() // under /tmp: private on the nodes unless shared
	private := filepath.Join(shared, "own")
	nodes := UpWith(t, 2, Options{PrivateFS: true, Private: []string{private}, Share: []string{shared}})
	sh := func(n Node, cmd string) string {
		t.Helper()
		out, err := n.Command(testCtx(t), "sh", "-c", cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("node %d: %s: %v\n%s", n.Index, cmd, err, out)
		}
		return string(out)
	}
	for _, n := range nodes {
		sh(n, fmt.Sprintf("echo node%d > /tmp/who && echo node%d > %s/who", n.Index, n.Index, private))
	}
	for _, n := range nodes {
		want := fmt.Sprintf("node%d\n", n.Index)
		if got := sh(n, "cat /tmp/who "+private+"/who"); got != want+want {
			t.Errorf("node %d reads %q, want its own files", n.Index, got)
		}
		if b, err := os.ReadFile(n.HostPath("/tmp/who", "/tmp")); err != nil || string(b) != want {
			t.Errorf("the host reads node %d's /tmp/who at %s: %q %v", n.Index, n.HostPath("/tmp/who", "/tmp"), b, err)
		}
	}
	if _, err := os.Stat("/tmp/who"); err == nil {
		t.Error("a node's /tmp/who is in the host's /tmp")
	}
	// The shared dir is one for all.
	sh(nodes[0], "echo common > "+shared+"/note")
	if got := sh(nodes[1], "cat "+shared+"/note"); got != "common\n" {
		t.Errorf("node 2 reads %q from the shared dir", got)
	}
}

// TestSetLink: a node whose link is down reaches nobody; up again, it does.
func TestSetLink(t *testing.T) {
	nodes := Up(t, 2)
	ping := func() error {
		return nodes[1].Command(testCtx(t), "ping", "-n", "-q", "-c1", "-W1", nodes[0].Addr).Run()
	}
	if err := ping(); err != nil {
		t.Fatalf("before the cut: %v", err)
	}
	if err := nodes[1].SetLink(testCtx(t), false); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err == nil {
		t.Fatal("node 2 reaches node 1 with its link down")
	}
	if err := nodes[1].SetLink(testCtx(t), true); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "node 2 to reach node 1 again", func() (bool, string) {
		err := ping()
		return err == nil, fmt.Sprint(err)
	})
}
