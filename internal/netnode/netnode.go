// Package netnode is a test helper that brings up N node network namespaces on one host
// via scripts/cluster: each node is a netns with its own address on a private bridge that
// lives in a separate "switch" netns, so the host namespace carries none of the traffic.
// Tests that use it need root; they are skipped otherwise (and fail when CI=true).
package netnode

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Node is one node namespace made by scripts/cluster up.
type Node struct {
	Index     int    // 1-based node number
	NetNS     string // netns name, e.g. "mtab12cd-n1"
	NetNSPath string // /run/netns/NAME, for setns(2) or "nsenter --net="
	Addr      string // IPv4 address of the node's eth0, e.g. "10.213.0.11"
	// With Options.PrivateFS: the node's mount namespace ("nsenter --mount=") and the
	// host directory that holds its private paths (node path P is FS+P on the host).
	MntNSPath string
	FS        string
}

// Options are scripts/cluster up's file-system options.
type Options struct {
	PrivateFS bool     // --private-fs: nodes that share no disk
	Private   []string // --private PATH: more paths each node has its own
	Share     []string // --share PATH: paths kept shared inside private ones
}

// HostPath returns where the host sees path as the node sees it: under FS if path is
// one of the node's private paths (private lists them), else path itself.
func (n Node) HostPath(path string, private ...string) string {
	if n.FS == "" {
		return path
	}
	for _, p := range private {
		if path == p || strings.HasPrefix(path, strings.TrimSuffix(p, "/")+"/") {
			return filepath.Join(n.FS, path)
		}
	}
	return path
}

// Command returns a command that runs name with args inside the node's network namespace
// (via "ip netns exec"), and its mount namespace if it has one (via nsenter).
func (n Node) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if n.MntNSPath != "" {
		return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.NetNSPath, "--mount=" + n.MntNSPath, name}, args...)...)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.NetNS, name}, args...)...)
}

// SetLink takes the node's port on the switch down (up false) or up again: a real cut
// of its link, as a pulled cable is; its daemon and workloads go on running.
func (n Node) SetLink(ctx context.Context, up bool) error {
	prefix := strings.TrimSuffix(n.NetNS, "-n"+strconv.Itoa(n.Index))
	state := "down"
	if up {
		state = "up"
	}
	out, err := exec.CommandContext(ctx, "ip", "-n", prefix+"-sw", "link", "set", "vn"+strconv.Itoa(n.Index), state).CombinedOutput()
	if err != nil {
		return fmt.Errorf("set node %d's link %s: %v: %s", n.Index, state, err, out)
	}
	return nil
}

// SetPeerLink cuts the traffic between this node and peer (up false), both ways, or
// restores it: a partition of two nodes while each still reaches the others. Packets
// are dropped silently by nftables in this node's netns, so each side sees only
// timeouts, as across a broken path; nothing is reset.
func (n Node) SetPeerLink(ctx context.Context, peer Node, up bool) error {
	script := `add table inet migshm-cut
add set inet migshm-cut peers { type ipv4_addr; }
add chain inet migshm-cut in { type filter hook input priority 0; policy accept; }
add chain inet migshm-cut out { type filter hook output priority 0; policy accept; }
flush chain inet migshm-cut in
flush chain inet migshm-cut out
add rule inet migshm-cut in ip saddr @peers drop
add rule inet migshm-cut out ip daddr @peers drop
`
	op := "add"
	if up {
		op = "delete"
	}
	script += op + " element inet migshm-cut peers { " + peer.Addr + " }\n"
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+n.NetNSPath, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("set the link between nodes %d and %d up=%v: %v: %s (nft comes with scripts/setup)", n.Index, peer.Index, up, err, out)
	}
	return nil
}

// prefixRE is the prefix rule of scripts/cluster.
var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,15}$`)

// nodeLineRE matches the lines "node I netns=NS addr=A" printed by scripts/cluster up.
var nodeLineRE = regexp.MustCompile(`^node ([0-9]+) netns=(\S+) addr=(\S+)(?: mntns=(\S+) fs=(\S+))?$`)

const (
	upTimeout   = 2 * time.Minute
	downTimeout = time.Minute
)

// Up brings up n nodes under a fresh prefix and registers a cleanup that tears them down.
// It skips the test when not running as root (fails when CI=true).
func Up(tb testing.TB, n int) []Node {
	tb.Helper()
	return UpWith(tb, n, Options{})
}

// UpWith is Up with file-system options.
func UpWith(tb testing.TB, n int, o Options) []Node {
	tb.Helper()
	RequireRoot(tb)
	if n < 1 {
		tb.Fatalf("netnode.Up: need at least one node, got %d", n)
	}
	prefix := newPrefix()
	// Registered before up so that even a partial up is removed.
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), downTimeout)
		defer cancel()
		if out, err := runScript(ctx, "down", "--prefix", prefix); err != nil {
			tb.Errorf("scripts/cluster down --prefix %s: %v\n%s", prefix, err, out)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
	defer cancel()
	// The tests start their own daemons (or none): the network only.
	args := []string{"up", strconv.Itoa(n), "--prefix", prefix, "--no-daemons"}
	if o.PrivateFS {
		args = append(args, "--private-fs")
		for _, p := range o.Private {
			args = append(args, "--private", p)
		}
		for _, p := range o.Share {
			args = append(args, "--share", p)
		}
	}
	out, err := runScript(ctx, args...)
	if err != nil {
		tb.Fatalf("scripts/cluster up %d --prefix %s: %v\n%s", n, prefix, err, out)
	}
	nodes, err := parseNodes(out)
	if err != nil {
		tb.Fatalf("scripts/cluster up %d --prefix %s: %v\n%s", n, prefix, err, out)
	}
	if len(nodes) != n {
		tb.Fatalf("scripts/cluster up %d --prefix %s: got %d nodes\n%s", n, prefix, len(nodes), out)
	}
	return nodes
}

// RequireRoot skips tb unless the process runs as root; with CI=true it fails instead.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("netnode: network namespaces need root (euid %d) and CI=true", os.Geteuid())
	}
	tb.Skipf("netnode: network namespaces need root (euid %d); skipping", os.Geteuid())
}

// newPrefix returns a random cluster prefix ("mt" + 6 lowercase letters/digits).
func newPrefix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	p := []byte("mt")
	for _, c := range b {
		p = append(p, alphabet[int(c)%len(alphabet)])
	}
	if !prefixRE.Match(p) {
		panic("netnode: generated bad prefix " + string(p))
	}
	return string(p)
}

// scriptPath is the absolute path of scripts/cluster in this repository.
func scriptPath() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("netnode: runtime.Caller failed")
	}
	// file is <root>/internal/netnode/netnode.go
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "cluster")
}

// runScript runs scripts/cluster with args and returns its combined output.
func runScript(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, scriptPath(), args...)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	// If ctx ends bash is killed; do not then wait forever for children holding the pipe.
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	return buf.Bytes(), err
}

func parseNodes(out []byte) ([]Node, error) {
	var nodes []Node
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := nodeLineRE.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		idx, err := strconv.Atoi(m[1])
		if err != nil {
			return nil, fmt.Errorf("bad node line %q: %v", sc.Text(), err)
		}
		if idx != len(nodes)+1 {
			return nil, fmt.Errorf("node lines out of order: got node %d, want %d", idx, len(nodes)+1)
		}
		nodes = append(nodes, Node{
			Index:     idx,
			NetNS:     m[2],
			NetNSPath: filepath.Join("/run/netns", m[2]),
			Addr:      m[3],
			MntNSPath: m[4],
			FS:        m[5],
		})
	}
	return nodes, sc.Err()
}
