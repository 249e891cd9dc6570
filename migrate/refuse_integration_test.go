package migrate_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
)

// refusal asserts err is a *NotMovableError with the reason, naming every pid in want.
func refusal(t *testing.T, err error, reason migrate.Reason, want ...int) *migrate.NotMovableError {
	t.Helper()
	var nm *migrate.NotMovableError
	if !errors.As(err, &nm) {
		t.Fatalf("got error %v, want a refusal (%s)", err, reason)
	}
	if nm.Reason != reason {
		t.Fatalf("refused for %s (%v), want %s", nm.Reason, err, reason)
	}
	for _, pid := range want {
		found := false
		for _, p := range nm.Procs {
			found = found || p.Pid == pid
		}
		if !found {
			t.Errorf("refusal does not name pid %d: %v", pid, err)
		}
		if !strings.Contains(err.Error(), fmt.Sprint(pid)) {
			t.Errorf("message does not name pid %d: %v", pid, err)
		}
	}
	t.Logf("refused as expected: %v", err)
	return nm
}

// assertUntouched checks a refused process still runs: alive and not stopped.
func assertUntouched(t *testing.T, pid int) {
	t.Helper()
	st, err := procState(pid)
	if err != nil {
		t.Fatalf("pid %d is gone after a refusal: %v", pid, err)
	}
	if st == "T" || st == "t" || st == "Z" {
		t.Fatalf("pid %d is in state %s after a refusal; it must be left running", pid, st)
	}
}

// TestRefuseSysVInHostIPCNamespace: a process that attached SysV shm in the host IPC
// namespace cannot be dumped with its segments; the check says so before any dump.
func TestRefuseSysVInHostIPCNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	bins := testwork.Build(t)
	out := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A random key keeps this out of the way of anything else using the host namespace.
	key := fmt.Sprintf("%#x", 0x6d000000|rand.Uint32N(0xffffff))
	cmd := exec.Command(bins.ShmWriter, "--key", key, "--size", "65536")
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := waitOutput(t, out, "shmwriter ready")
	m := regexp.MustCompile(`keyed_id=(\d+) private_id=(\d+)`).FindStringSubmatch(ready)
	if m == nil {
		t.Fatalf("no segment ids in %q", ready)
	}
	t.Cleanup(func() {
		// The segments live in the host namespace: remove them.
		_ = exec.Command("ipcrm", "-m", m[1], "-m", m[2]).Run()
	})

	_, err = migrate.Preflight{}.Check(cmd.Process.Pid)
	nm := refusal(t, err, migrate.ReasonHostIPCSysV, cmd.Process.Pid)
	for _, id := range m[1:] {
		if !strings.Contains(nm.Error(), "shmid "+id) {
			t.Errorf("refusal does not list segment %s: %v", id, nm)
		}
	}
	assertUntouched(t, cmd.Process.Pid)
}

// TestRefuseIPCNamespaceSharedOutsideTree: a process outside the workload that joined its
// IPC namespace would keep using the old segments while the workload moved away with a
// copy; the check names it and leaves the workload running.
func TestRefuseIPCNamespaceSharedOutsideTree(t *testing.T) {
	testenv.RequireRoot(t)
	bins := testwork.Build(t)
	w := startWorkload(t, "", bins.ShmCounter, "--workers", "2")
	waitOutput(t, w.stdout, "shmcounter ready")
	ipcns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/ipc", w.proc.Pid))
	if err != nil {
		t.Fatal(err)
	}

	outsider := exec.Command("nsenter", fmt.Sprintf("--ipc=/proc/%d/ns/ipc", w.proc.Pid), "--", "sleep", "600")
	if err := outsider.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = outsider.Process.Kill(); _ = outsider.Wait() })
	waitFor(t, "the outsider to join the workload's IPC namespace", 5*time.Second, func() error {
		got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/ipc", outsider.Process.Pid))
		if err != nil || got != ipcns {
			return fmt.Errorf("ipc ns %q (%v)", got, err)
		}
		return nil
	})
	before := counterCheck(t, bins, w.proc.Pid)

	_, err = migrate.Preflight{}.Check(w.proc.Pid)
	refusal(t, err, migrate.ReasonIPCShared, outsider.Process.Pid)

	assertUntouched(t, w.proc.Pid)
	waitFor(t, "the refused workload to keep counting", 10*time.Second, func() error {
		if n := counterCheck(t, bins, w.proc.Pid); n <= before {
			return fmt.Errorf("total %d, was %d", n, before)
		}
		return nil
	})

	// Once the outsider is gone the same workload passes.
	_ = outsider.Process.Kill()
	_ = outsider.Wait()
	if _, err := (migrate.Preflight{}).Check(w.proc.Pid); err != nil {
		t.Fatalf("after the outsider left: %v", err)
	}
}

// TestRefuseProcessWithoutPidNamespace: a plain host process (no SysV) is not a workload.
func TestRefuseProcessWithoutPidNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	_, err := migrate.Preflight{}.Check(cmd.Process.Pid)
	refusal(t, err, migrate.ReasonNoPidNS, cmd.Process.Pid)
	assertUntouched(t, cmd.Process.Pid)
}

func TestRefuseUnknownPid(t *testing.T) {
	testenv.RequireRoot(t)
	_, err := migrate.Preflight{}.Check(1 << 30)
	if !errors.Is(err, workload.ErrNoProcess) {
		t.Fatalf("got %v, want ErrNoProcess", err)
	}
}
