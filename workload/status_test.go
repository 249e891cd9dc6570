package workload_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/workload"
)

// TestStatusFileAndWatch: the init records its command's status in Spec.StatusFile, and
// WatchProcess follows the init the way a restarted daemon does (not as its parent).
func TestStatusFileAndWatch(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	status := filepath.Join(dir, "exit.json")
	p, err := workload.Start(workload.Spec{
		Args:       []string{"sh", "-c", "sleep 0.3; exit 5"},
		StatusFile: status,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(); _, _ = p.Wait() })
	st, err := workload.StartTime("/proc", p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := workload.WatchProcess(p.Pid, st+1); !errors.Is(err, workload.ErrNoProcess) {
		t.Fatalf("watch with a wrong start time: got %v, want ErrNoProcess", err)
	}
	w, err := workload.WatchProcess(p.Pid, st)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := workload.ReadExitStatus(status); !errors.Is(err, workload.ErrNoExitRecord) {
		t.Fatalf("record before exit: got %v, want ErrNoExitRecord", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	if err := w.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait on a running init: got %v, want deadline exceeded", err)
	}
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	rec, err := workload.ReadExitStatus(status)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Status != 5 || rec.At == 0 {
		t.Fatalf("record %+v, want status 5 and a time", rec)
	}
	ps, err := p.Wait()
	if err != nil || ps.ExitCode() != 5 {
		t.Fatalf("init status %v (%v), want 5", ps, err)
	}
	if fi, err := os.Stat(status); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("status file mode %v (%v), want 0600", fi.Mode(), err)
	}
}

func TestWatchUnknownPid(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := workload.WatchProcess(cmd.Process.Pid, 1); !errors.Is(err, workload.ErrNoProcess) {
		t.Fatalf("watch of a reaped pid: got %v, want ErrNoProcess", err)
	}
	if _, err := workload.StartTime("/proc", cmd.Process.Pid); !errors.Is(err, workload.ErrNoProcess) {
		t.Fatalf("start time of a reaped pid: got %v, want ErrNoProcess", err)
	}
}

// TestStartInExistingIPCNamespace: a workload started with Spec.IPCNS shares the SysV
// objects of the other workload's IPC namespace and still gets its own PID namespace.
func TestStartInExistingIPCNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	a, err := workload.Start(workload.Spec{Args: []string{"sleep", "60"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Kill(); _, _ = a.Wait() })
	ipcA := fmt.Sprintf("/proc/%d/ns/ipc", a.Pid)
	b, err := workload.Start(workload.Spec{Args: []string{"sleep", "60"}, IPCNS: ipcA})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Kill(); _, _ = b.Wait() })
	if readlink(t, ipcA) != readlink(t, fmt.Sprintf("/proc/%d/ns/ipc", b.Pid)) {
		t.Fatal("second workload is not in the first one's IPC namespace")
	}
	if readlink(t, ipcA) == readlink(t, "/proc/self/ns/ipc") {
		t.Fatal("first workload shares the host IPC namespace")
	}
	if readlink(t, fmt.Sprintf("/proc/%d/ns/pid", a.Pid)) == readlink(t, fmt.Sprintf("/proc/%d/ns/pid", b.Pid)) {
		t.Fatal("the two workloads share a PID namespace")
	}
	if readlink(t, "/proc/thread-self/ns/ipc") == readlink(t, ipcA) {
		t.Fatal("the launcher's thread was left in the workload's IPC namespace")
	}
	if _, err := workload.Start(workload.Spec{Args: []string{"true"}, IPCNS: "/nonexistent/ipc"}); err == nil {
		t.Fatal("nonexistent IPC namespace: no error")
	}
}
