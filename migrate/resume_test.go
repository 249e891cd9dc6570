package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

// childrenOf lists the pids whose parent is pid.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatalf("children of %d: %v", pid, err)
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

// startStoppable starts a shell with two sleeping children in a process group of its
// own (no namespaces: it needs no root) and returns the shell and its children.
func startStoppable(t *testing.T) (*exec.Cmd, []int) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "sleep 1000 & sleep 1000 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	var kids []int
	wait.Until(t, 5*time.Second, "the shell's two sleeping children", func() error {
		if kids = childrenOf(t, cmd.Process.Pid); len(kids) != 2 {
			return fmt.Errorf("children %v", kids)
		}
		for _, k := range kids {
			// Forked, but not yet sleep until it has exec'd.
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", k)); err != nil || string(b) != "sleep\n" {
				return fmt.Errorf("child %d runs %q (%v)", k, b, err)
			}
		}
		return nil
	})
	return cmd, kids
}

func waitState(t *testing.T, pid int, want func(string) bool, what string) {
	t.Helper()
	wait.Until(t, 5*time.Second, fmt.Sprintf("pid %d to be %s", pid, what), func() error {
		st, err := procState(pid)
		if err != nil || !want(st) {
			return fmt.Errorf("state %q (%v)", st, err)
		}
		return nil
	})
}

func stopped(st string) bool { return st == "T" || st == "t" }
func running(st string) bool { return st != "" && !stopped(st) && st != "Z" }

// TestResumeStoppedTree: every process of a stopped tree runs again after Resume (or
// ResumeTree, Resume in /proc with ResumeTimeout), and Resume of a running tree changes
// nothing.
func TestResumeStoppedTree(t *testing.T) {
	for _, tc := range []struct {
		name   string
		resume func(pid int) error
	}{
		{"Resume", func(pid int) error { return migrate.Resume("/proc", pid, 5*time.Second) }},
		{"ResumeTree", migrate.ResumeTree},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, kids := startStoppable(t)
			all := append([]int{cmd.Process.Pid}, kids...)
			for _, pid := range all {
				if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
			}
			for _, pid := range all {
				waitState(t, pid, stopped, "stopped")
			}
			if err := tc.resume(cmd.Process.Pid); err != nil {
				t.Fatalf("resume: %v", err)
			}
			for _, pid := range all {
				if st, err := procState(pid); err != nil || !running(st) {
					t.Errorf("pid %d is in state %q (%v) after %s returned", pid, st, err, tc.name)
				}
			}
			// Already running: nothing to do.
			if err := migrate.Resume("", cmd.Process.Pid, time.Second); err != nil {
				t.Fatalf("resume of a running tree: %v", err)
			}
		})
	}
}

// TestResumeOnlyTheTree: Resume continues the tree below the given pid and nothing else.
func TestResumeOnlyTheTree(t *testing.T) {
	_, kids := startStoppable(t)
	for _, pid := range kids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		waitState(t, pid, stopped, "stopped")
	}
	if err := migrate.Resume("/proc", kids[0], 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if st, _ := procState(kids[0]); !running(st) {
		t.Errorf("pid %d is in state %q after its Resume", kids[0], st)
	}
	if st, _ := procState(kids[1]); !stopped(st) {
		t.Errorf("pid %d, outside the resumed tree, is in state %q", kids[1], st)
	}
}

func TestResumeUnknownPid(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	// The pid of a reaped child is free (and, with pid_max in the millions, not reused
	// in the next microseconds).
	err := migrate.Resume("/proc", cmd.Process.Pid, time.Second)
	if !errors.Is(err, workload.ErrNoProcess) {
		t.Fatalf("got %v, want ErrNoProcess", err)
	}
}

// TestResumeTimesOutOnTracedProcess: SIGCONT does not end a ptrace stop, so Resume gives
// up after its timeout and names the process and its state.
func TestResumeTimesOutOnTracedProcess(t *testing.T) {
	_, kids := startStoppable(t)
	pid := kids[0]
	// ptrace requests must come from the thread that attached.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.PtraceSeize(pid); err != nil {
		// Root may trace its own descendants unless kernel.yama.ptrace_scope is 3 or a
		// seccomp filter (a container's) refuses ptrace; others need ptrace_scope <= 1.
		testenv.Unavailable(t, "cannot ptrace a child here (%v): check kernel.yama.ptrace_scope and seccomp", err)
	}
	if err := unix.PtraceInterrupt(pid); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil || !ws.Stopped() {
		t.Fatalf("wait for the trace stop: %v (%v)", err, ws)
	}
	defer unix.PtraceDetach(pid)
	start := time.Now()
	err := migrate.Resume("/proc", pid, 300*time.Millisecond)
	if err == nil {
		t.Fatal("Resume returned nil with a process in a trace stop")
	}
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if !strings.Contains(err.Error(), fmt.Sprintf("%d (sleep) in state t", pid)) {
		t.Errorf("error does not name the traced process: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Errorf("gave up after %v, want about 300ms", d)
	}
}

// TestResumeAfterCRIUDump: the tree a real CRIU dump left stopped runs again after
// Resume, and the shared counter keeps growing: what an aborted migration relies on.
func TestResumeAfterCRIUDump(t *testing.T) {
	c := testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	w := startWorkload(t, "", bins.ShmCounter, "--workers", "2")
	waitOutput(t, w.stdout, "shmcounter ready")
	tree := movableTree(t, w.proc.Pid)
	before := counterCheck(t, bins, w.proc.Pid)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.Dump(ctx, migrate.DumpOptions{
		Pid: w.proc.Pid, ImagesDir: filepath.Join(t.TempDir(), "images"), LeaveStopped: true,
	}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	for _, p := range tree.Procs {
		waitState(t, p.Pid, stopped, "stopped by the dump")
	}
	if err := migrate.Resume("/proc", w.proc.Pid, 10*time.Second); err != nil {
		t.Fatalf("resume: %v", err)
	}
	for _, p := range tree.Procs {
		if st, err := procState(p.Pid); err != nil || !running(st) {
			t.Errorf("%v is in state %q (%v) after Resume", p, st, err)
		}
	}
	wait.Until(t, 10*time.Second, "the counter to grow after Resume", func() error {
		if n := counterCheck(t, bins, w.proc.Pid); n < before+50 {
			return fmt.Errorf("total %d, was %d before the dump", n, before)
		}
		return nil
	})
}

// TestTreeMemory: a workload with 32 MiB of private memory and a 16 MiB segment needs
// at least 48 MiB on the target, and not absurdly more.
func TestTreeMemory(t *testing.T) {
	testenv.RequireRoot(t)
	bins := testwork.Build(t)
	w := startWorkload(t, "", bins.ShmBench, "--private-mib", "32", "--shm-mib", "16", "--dirty-pct-per-sec", "0")
	waitOutput(t, w.stdout, "shmbench ready")
	tree := movableTree(t, w.proc.Pid)
	got, err := migrate.TreeMemory("/proc", tree)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tree memory: %.1f MiB", float64(got)/(1<<20))
	if low, high := uint64(48<<20), uint64(48+128)<<20; got < low || got > high {
		t.Fatalf("tree memory %d bytes, want between %d and %d", got, low, high)
	}
}
