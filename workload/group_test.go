package workload_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

// member is one started member of a test group and its files.
type member struct {
	workload.Member
	out, status string
}

func join(t *testing.T, g *workload.Process, dir string, script string) member {
	t.Helper()
	st, err := workload.StartTime("/proc", g.Pid)
	if err != nil {
		t.Fatal(err)
	}
	files := t.TempDir()
	m := member{out: filepath.Join(files, "out"), status: filepath.Join(files, "status")}
	m.Member, err = workload.JoinGroup(context.Background(), g.Pid, st, dir, workload.Spec{
		Args: []string{"sh", "-c", script}, Env: []string{"PATH=/usr/bin:/bin"}, Dir: "/",
		Stdout: m.out, Stderr: filepath.Join(files, "err"), StatusFile: m.status})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func exitStatus(t *testing.T, m member) int {
	t.Helper()
	var ex workload.ExitRecord
	wait.For(t, 10*time.Second, "member "+m.out+" to exit", func() (bool, string) {
		var err error
		ex, err = workload.ReadExitStatus(m.status)
		return err == nil, "no status yet"
	})
	return ex.Status
}

func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// TestGroupShape: the members of a group share one PID, IPC, UTS and mount namespace
// under the group init, each under its own member init; a member that daemonizes keeps
// its processes in its own subtree, and a stop signal ends that subtree without
// touching the other member; the group init exits when its last member is gone.
func TestGroupShape(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "group")
	g, err := workload.StartGroup(workload.GroupSpec{Dir: dir, Hostname: "grp", Log: filepath.Join(t.TempDir(), "log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Kill(); _, _ = g.Wait() })

	// a makes a segment and daemonizes a sleeper (its shell exits at once); b sees the
	// segment, the group's hostname and PID 1.
	a := join(t, g, dir, `ipcmk -M 4096 >/dev/null; (trap 'exit 0' TERM; while :; do sleep 0.05; done) & echo started`)
	waitFile(t, a.out, "started")
	b := join(t, g, dir, `trap 'echo b-term; exit 9' TERM
echo "host=$(hostname) one=$(cat /proc/1/cmdline | tr '\0' ' ') segs=$(ipcs -m | grep -c 0x)"
while :; do sleep 0.05; done`)
	line := waitFile(t, b.out, "segs=")
	if !strings.Contains(line, "host=grp") || !strings.Contains(line, "one=migshm-init --group") || !strings.Contains(line, "segs=1") {
		t.Fatalf("member b sees %q; want the group's hostname, the group init as PID 1 and a's segment", line)
	}
	for _, m := range []member{a, b} {
		if m.NSPid <= 1 {
			t.Errorf("member init pid in the group %d, want > 1", m.NSPid)
		}
		for _, ns := range []string{"pid", "ipc", "uts", "mnt"} {
			if got, want := readlink(t, "/proc/"+strconv.Itoa(m.Pid)+"/ns/"+ns), readlink(t, "/proc/"+strconv.Itoa(g.Pid)+"/ns/"+ns); got != want {
				t.Errorf("member %d %s namespace %s, want the group's %s", m.Pid, ns, got, want)
			}
		}
	}
	// a's shell is gone, its sleeper lives on under a's member init.
	time.Sleep(100 * time.Millisecond)
	procs, _, err := workload.ReadAll("/proc")
	if err != nil {
		t.Fatal(err)
	}
	tree, err := workload.FindSubtree(procs, a.Pid)
	if err != nil || len(tree.Pids()) < 2 {
		t.Fatalf("member a's tree %v (%v): want its init and the daemonized loop", tree, err)
	}
	if !alive(a.Pid) {
		t.Fatal("member a's init exited with its command although its daemon lives")
	}

	// SIGTERM to a's member init: its daemon gets it, b does not.
	if err := unix.Kill(a.Pid, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := exitStatus(t, a); st != 0 {
		t.Errorf("member a exit status %d, want 0 (its daemon's)", st)
	}
	if !alive(b.Pid) || !alive(g.Pid) {
		t.Fatal("stopping member a ended member b or the group")
	}
	if strings.Contains(waitFile(t, b.out, "segs="), "b-term") {
		t.Fatal("member b got a's stop signal")
	}

	// The last member ends: so does the group init.
	if err := unix.Kill(b.Pid, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := exitStatus(t, b); st != 9 {
		t.Errorf("member b exit status %d, want 9", st)
	}
	done := make(chan struct{})
	go func() { _, _ = g.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the group init outlived its last member")
	}
}

// TestGroupKillTree: KillTree ends a member that ignores SIGTERM with every process it
// forked, and leaves no orphan with the group init.
func TestGroupKillTree(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "group")
	g, err := workload.StartGroup(workload.GroupSpec{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Kill(); _, _ = g.Wait() })
	keep := join(t, g, dir, `while :; do sleep 0.05; done`)
	m := join(t, g, dir, `trap '' TERM; for i in 1 2 3; do (trap '' TERM; while :; do sleep 0.05; done) & done; echo forked; wait`)
	waitFile(t, m.out, "forked")
	if err := workload.KillTree(m.Pid); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "the killed member to leave nothing", func() (bool, string) {
		procs, _, err := workload.ReadAll("/proc")
		if err != nil {
			return false, err.Error()
		}
		tree, err := workload.FindTree(procs, g.Pid)
		if err != nil {
			return false, err.Error()
		}
		// Left: the group init and keep's subtree.
		var stray []string
		for _, p := range procs {
			if tree.Contains(p.Pid) && p.Pid != g.Pid && !underOf(procs, p.Pid, keep.Pid) && alive(p.Pid) {
				stray = append(stray, p.String())
			}
		}
		return len(stray) == 0, "left in the group: " + strings.Join(stray, ", ")
	})
	if !alive(keep.Pid) {
		t.Fatal("KillTree of one member ended another")
	}
}

// underOf reports whether pid is root or under it.
func underOf(procs []workload.Proc, pid, root int) bool {
	parent := map[int]int{}
	for _, p := range procs {
		parent[p.Pid] = p.PPid
	}
	for i := 0; pid > 1 && i < 64; i++ {
		if pid == root {
			return true
		}
		pid = parent[pid]
	}
	return false
}

// TestJoinGroupErrors: a group whose init died, and a command that does not exist,
// are errors that say so.
func TestJoinGroupErrors(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "group")
	g, err := workload.StartGroup(workload.GroupSpec{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	st, err := workload.StartTime("/proc", g.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := workload.JoinGroup(context.Background(), g.Pid, st, dir, workload.Spec{Args: []string{"/nonexistent/cmd"}}); err == nil ||
		!strings.Contains(err.Error(), "/nonexistent/cmd") {
		t.Errorf("join with a missing command: %v, want an error naming it", err)
	}
	if _, err := workload.JoinGroup(context.Background(), g.Pid, st, dir, workload.Spec{Args: []string{"true"}, Dir: "/nonexistent-dir"}); err == nil ||
		!strings.Contains(err.Error(), "/nonexistent-dir") {
		t.Errorf("join with a missing working directory: %v, want an error naming it", err)
	}
	_ = g.Kill()
	_, _ = g.Wait()
	if _, err := workload.JoinGroup(context.Background(), g.Pid, st, dir, workload.Spec{Args: []string{"true"}}); err == nil ||
		!strings.Contains(err.Error(), "is gone") {
		t.Errorf("join a dead group: %v, want \"its init ... is gone\"", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*.req"))
	if len(left) != 0 {
		t.Errorf("requests left behind: %v", left)
	}
}
