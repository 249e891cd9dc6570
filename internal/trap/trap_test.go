package trap_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/seccomp"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/internal/trap"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
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

	pids := trappedPids(t, res.Pid)
	if len(pids) != len(trapped) {
		t.Fatalf("%d restored tasks for %d trapped ones", len(pids), len(trapped))
	}
	calls, served := serve(t, pids)
	if err := migrate.ResumeTree(res.Pid); err != nil {
		t.Fatal(err)
	}
	waitCounting(t, bins, res.Pid, calls, 0, filepath.Join(dir, "stderr"))
	t.Logf("trapped %d semops in the first restored tree", calls.Load())

	// The listener fd CRIU's restorer left in each task is a file CRIU does not dump.
	again := filepath.Join(dir, "again")
	_, err = c.Dump(ctx, migrate.DumpOptions{Pid: res.Pid, ImagesDir: again, LeaveRunning: true})
	if err == nil || !strings.Contains(err.Error(), "seccomp notify") {
		t.Errorf("dump of a trapped tree holding its listener fds: %v, want CRIU refusing the seccomp notify fd", err)
	}
	os.RemoveAll(again)
	// Released (closed inside each task), the tree goes on trapped and dumps.
	for _, pid := range trappedPids(t, res.Pid) {
		if err := trap.Release(pid); err != nil {
			t.Fatal(err)
		}
	}
	seen := calls.Load()
	waitCounting(t, bins, res.Pid, calls, seen, filepath.Join(dir, "stderr"))
	if _, err := c.Dump(ctx, migrate.DumpOptions{Pid: res.Pid, ImagesDir: again}); err != nil {
		t.Fatalf("dump of the released trapped tree: %v", err)
	}
	_, _ = restored.Wait()
	served() // the tree is gone: each listener's Recv ended

	// Moved again: the filter is in the images without its listener; the trap asks for
	// one again, and the second restore runs trapped like the first.
	retrapped, err := trap.AddToImages(again, 1)
	if err != nil {
		t.Fatal(err)
	}
	// CRIU dumps each task's filter (each task installed its own): one per task, ours,
	// with no filter under it.
	if fs := seccompFilters(t, again); len(fs) != len(retrapped) {
		t.Fatalf("seccomp.img holds %d filters for %d trapped tasks", len(fs), len(retrapped))
	} else {
		for i, f := range fs {
			if f.Prev != nil || f.GetFlags()&unix.SECCOMP_FILTER_FLAG_NEW_LISTENER == 0 {
				t.Fatalf("filter %d: prev %v, flags %#x: want ours alone, with a listener", i, f.Prev, f.GetFlags())
			}
		}
	}
	res2, err := c.Restore(ctx, migrate.RestoreOptions{ImagesDir: again, WorkDir: t.TempDir(), LeaveStopped: true})
	if err != nil {
		t.Fatalf("second restore: %v", err)
	}
	restored2 := workload.Attach(res2.Pid)
	t.Cleanup(func() { _ = restored2.Kill(); _, _ = restored2.Wait() })
	calls2, served2 := serve(t, trappedPids(t, res2.Pid))
	if err := migrate.ResumeTree(res2.Pid); err != nil {
		t.Fatal(err)
	}
	waitCounting(t, bins, res2.Pid, calls2, 0, filepath.Join(dir, "stderr"))
	_ = restored2.Kill()
	_, _ = restored2.Wait()
	served2()
}

// serve takes the listener of each of pids and lets every trapped call run, counting
// the semops; the returned function waits until every listener is done (its tasks gone).
func serve(t *testing.T, pids []int) (*atomic.Int64, func()) {
	t.Helper()
	var calls atomic.Int64
	var wg sync.WaitGroup
	for _, pid := range pids {
		l, err := trap.Listener(pid)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer l.Close()
			for {
				n, err := trap.Recv(l)
				if err != nil {
					if !errors.Is(err, trap.ErrNoTasks) {
						t.Errorf("recv: %v", err)
					}
					return
				}
				if n.Nr == unix.SYS_SEMOP || n.Nr == unix.SYS_SEMTIMEDOP {
					calls.Add(1)
				}
				_ = trap.Continue(l, n.ID) // ENOENT: the call was interrupted meanwhile
			}
		}()
	}
	return &calls, wg.Wait
}

// trappedPids are the processes of the tree rooted at root but its init.
func trappedPids(t *testing.T, root int) []int {
	t.Helper()
	tree, err := migrate.Preflight{}.Check(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, p := range tree.Procs {
		if p.Pid != root {
			out = append(out, p.Pid)
		}
	}
	return out
}

// waitCounting waits until the counter of the tree rooted at root grows by 200 and its
// listeners see 200 more calls than seen; its invariant must hold throughout.
func waitCounting(t *testing.T, bins testwork.Bins, root int, calls *atomic.Int64, seen int64, stderr string) {
	t.Helper()
	before, err := testwork.CounterTotal(root) // the tree may be stopped: no mutex
	if err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 10*time.Second, "the trapped counter to count", func() error {
		n, err := bins.CounterCheck(root)
		if err != nil {
			b, _ := os.ReadFile(stderr)
			return fmt.Errorf("%w; the workload's stderr: %q", err, tail(b))
		}
		if n < before+200 || calls.Load() < seen+200 {
			return fmt.Errorf("total %d (was %d), %d calls trapped (were %d)", n, before, calls.Load(), seen)
		}
		return nil
	})
}

// seccompFilters returns the filters of an images dir's seccomp.img.
func seccompFilters(t *testing.T, dir string) []*seccomp.SeccompFilter {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "seccomp.img"))
	if err != nil {
		t.Fatal(err)
	}
	var e seccomp.SeccompEntry
	if len(b) < 12 {
		t.Fatalf("seccomp.img of %d bytes", len(b))
	}
	if err := proto.Unmarshal(b[12:12+binary.LittleEndian.Uint32(b[8:])], &e); err != nil {
		t.Fatal(err)
	}
	return e.SeccompFilters
}

func tail(b []byte) string {
	if len(b) > 400 {
		b = b[len(b)-400:]
	}
	return string(b)
}
