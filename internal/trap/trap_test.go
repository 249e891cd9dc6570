package trap_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/internal/trap"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	workload.MaybeRunInit()
	os.Exit(m.Run())
}

// run runs the filter on a call: the classic BPF subset Program uses.
func run(t *testing.T, p []unix.SockFilter, arch uint32, nr uint32) uint32 {
	t.Helper()
	var acc uint32
	for pc := 0; pc < len(p); pc++ {
		ins := p[pc]
		switch ins.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			switch ins.K {
			case 0:
				acc = nr
			case 4:
				acc = arch
			default:
				t.Fatalf("load of seccomp_data offset %d", ins.K)
			}
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K:
			yes := acc == ins.K
			if ins.Code&0xf0 == unix.BPF_JGE {
				yes = acc >= ins.K
			}
			if yes {
				pc += int(ins.Jt)
			} else {
				pc += int(ins.Jf)
			}
		case unix.BPF_RET | unix.BPF_K:
			return ins.K
		default:
			t.Fatalf("instruction %d: opcode %#x", pc, ins.Code)
		}
	}
	t.Fatal("the program ran off its end")
	return 0
}

func TestProgram(t *testing.T) {
	p := trap.Program()
	for _, nr := range trap.Trapped {
		if got := run(t, p, unix.AUDIT_ARCH_X86_64, nr); got != unix.SECCOMP_RET_USER_NOTIF {
			t.Errorf("syscall %d: %#x, want USER_NOTIF", nr, got)
		}
	}
	for _, nr := range []uint32{unix.SYS_GETPID, unix.SYS_READ, unix.SYS_MSGSND, unix.SYS_FUTEX, 0} {
		if got := run(t, p, unix.AUDIT_ARCH_X86_64, nr); got != unix.SECCOMP_RET_ALLOW {
			t.Errorf("syscall %d: %#x, want ALLOW", nr, got)
		}
	}
	// Other ABIs could reach semop without the filter seeing it: killed.
	if got := run(t, p, unix.AUDIT_ARCH_X86_64, 0x40000000|unix.SYS_SEMTIMEDOP); got != unix.SECCOMP_RET_KILL_PROCESS {
		t.Errorf("x32 semtimedop: %#x, want KILL_PROCESS", got)
	}
	if got := run(t, p, unix.AUDIT_ARCH_I386, 117); got != unix.SECCOMP_RET_KILL_PROCESS { // i386 ipc()
		t.Errorf("i386 ipc: %#x, want KILL_PROCESS", got)
	}
}

// TestRestoreWithTrap dumps the semaphore-protected shared counter, adds the trap to
// its images (its workers, not the init), restores it, takes each worker's listener
// and lets every trapped call run: the counter goes on, its invariant holds, and the
// listeners saw the workers' semops.
func TestRestoreWithTrap(t *testing.T) {
	c := testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	dir := t.TempDir()
	stdout := filepath.Join(dir, "stdout")
	p, err := workload.Start(workload.Spec{Args: []string{bins.ShmCounter, "--workers", "2"}, Stdout: stdout,
		Stderr: filepath.Join(dir, "stderr")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(); _, _ = p.Wait() })
	wait.Until(t, 10*time.Second, "shmcounter ready", func() error {
		b, _ := os.ReadFile(stdout)
		if !strings.Contains(string(b), "shmcounter ready") {
			return errors.New("not yet")
		}
		return nil
	})

	ctx := context.Background()
	images := filepath.Join(dir, "images")
	if _, err := c.Dump(ctx, migrate.DumpOptions{Pid: p.Pid, ImagesDir: images}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	_, _ = p.Wait()
	trapped, err := trap.AddToImages(images, 1) // the init (pid 1 of the tree) makes no SysV calls
	if err != nil {
		t.Fatal(err)
	}
	if len(trapped) < 2 {
		t.Fatalf("trap added to tasks %v, want the counter's processes", trapped)
	}
	res, err := c.Restore(ctx, migrate.RestoreOptions{ImagesDir: images, WorkDir: t.TempDir(), LeaveStopped: true})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	restored := workload.Attach(res.Pid)
	t.Cleanup(func() { _ = restored.Kill(); _, _ = restored.Wait() })

	tree, err := migrate.Preflight{}.Check(res.Pid)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	var wg sync.WaitGroup
	listeners := 0
	for _, proc := range tree.Procs {
		if proc.Pid == res.Pid {
			continue // the init
		}
		l, err := trap.Listener(proc.Pid)
		if err != nil {
			t.Fatal(err)
		}
		listeners++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer l.Close()
			for {
				n, err := trap.Recv(l)
				if err != nil {
					return // ENOENT: no task is left under the filter
				}
				if n.Nr == unix.SYS_SEMOP || n.Nr == unix.SYS_SEMTIMEDOP {
					calls.Add(1)
				}
				_ = trap.Continue(l, n.ID) // ENOENT: the call was interrupted meanwhile
			}
		}()
	}
	if listeners != len(trapped) {
		t.Fatalf("%d listeners for %d trapped tasks", listeners, len(trapped))
	}
	before, err := testwork.CounterTotal(res.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrate.ResumeTree(res.Pid); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 10*time.Second, "the trapped counter to count", func() error {
		n, err := bins.CounterCheck(res.Pid)
		if err != nil {
			out, _ := os.ReadFile(stdout)
			errOut, _ := os.ReadFile(filepath.Join(dir, "stderr"))
			return fmt.Errorf("%w; stdout %q; stderr %q; %d semops trapped", err, tail(out), tail(errOut), calls.Load())
		}
		if n < before+200 || calls.Load() < 200 {
			return fmt.Errorf("total %d (was %d), %d semops trapped", n, before, calls.Load())
		}
		return nil
	})
	t.Logf("trapped %d semops; total %d -> %v", calls.Load(), before, func() uint64 { n, _ := testwork.CounterTotal(res.Pid); return n }())

	// A trapped tree cannot be dumped again yet: the listener fd CRIU's restorer left in
	// each task is a file CRIU does not dump. Say so loudly if that changes.
	_, err = c.Dump(ctx, migrate.DumpOptions{Pid: res.Pid, ImagesDir: filepath.Join(dir, "again"), LeaveRunning: true})
	if err == nil || !strings.Contains(err.Error(), "seccomp notify") {
		t.Errorf("dump of a trapped tree: %v, want CRIU refusing the seccomp notify fd", err)
	}
	// Once the tree is gone, each listener's Recv ends.
	_ = restored.Kill()
	_, _ = restored.Wait()
	wg.Wait()
}

func tail(b []byte) string {
	if len(b) > 400 {
		b = b[len(b)-400:]
	}
	return string(b)
}
