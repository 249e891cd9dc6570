package testwork

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/procfs"
	"github.com/migshm/migshm/internal/wait"
)

const waitTimeout = 15 * time.Second

// needRoot skips the test when not root, or fails it when CI=true.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test needs root (IPC namespaces, nsenter); CI=true, so failing instead of skipping")
		}
		t.Skip("skipping: this test needs root (IPC namespaces, nsenter)")
	}
}

// needTool returns the path of a program from PATH, skipping (or failing
// when CI=true) if it is missing.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found in PATH (CI=true): %v", name, err)
		}
		t.Skipf("skipping: %s not found in PATH: %v", name, err)
	}
	return p
}

// proc is a program started in a fresh IPC namespace (and its own process
// group) with stdout and stderr appended to files.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	outPath string
	errPath string
	done    chan struct{}
	waitErr error
}

func startInNewIPC(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	p := &proc{
		t:       t,
		outPath: filepath.Join(dir, "stdout"),
		errPath: filepath.Join(dir, "stderr"),
		done:    make(chan struct{}),
	}
	open := func(path string) *os.File {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	stdout, stderr := open(p.outPath), open(p.errPath)
	defer stdout.Close()
	defer stderr.Close()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = stdout
	p.cmd.Stderr = stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWIPC, Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(waitTimeout):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", bin, p.cmd.Process.Pid)
		}
	})
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) output() (string, string) {
	out, _ := os.ReadFile(p.outPath)
	errOut, _ := os.ReadFile(p.errPath)
	return string(out), string(errOut)
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitLine polls stdout until the n-th (1-based) line matching re appears and
// returns its submatches. It fails if the process exits first or on timeout.
func (p *proc) waitLine(re *regexp.Regexp, n int) []string {
	p.t.Helper()
	var match []string
	wait.For(p.t, waitTimeout, fmt.Sprintf("line #%d matching %q", n, re), func() (bool, string) {
		exited := p.exited() // before reading, so that an exit cannot hide the last lines
		out, errOut := p.output()
		seen := 0
		for _, line := range strings.Split(out, "\n") {
			if m := re.FindStringSubmatch(line); m != nil {
				if seen++; seen == n {
					match = m
					return true, ""
				}
			}
		}
		state := fmt.Sprintf("still running\nstdout:\n%s\nstderr:\n%s", out, errOut)
		if exited { // waitErr is set before done is closed
			p.t.Fatalf("no line #%d matching %q: exited, wait=%v\nstdout:\n%s\nstderr:\n%s", n, re, p.waitErr, out, errOut)
		}
		return false, state
	})
	return match
}

// waitExit waits for the process to exit and returns its exit code (-1 if it
// was killed by a signal).
func (p *proc) waitExit() int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		p.t.Fatalf("pid %d did not exit within %v", p.pid(), waitTimeout)
	}
	if p.waitErr == nil {
		return 0
	}
	var ee *exec.ExitError
	if !errors.As(p.waitErr, &ee) {
		p.t.Fatalf("wait: %v", p.waitErr)
	}
	return ee.ExitCode()
}

// inNS runs bin in the IPC namespace of pid and returns stdout and the exit code.
func inNS(t *testing.T, pid int, bin string, args ...string) (string, int) {
	t.Helper()
	nsenter := needTool(t, "nsenter")
	a := append([]string{fmt.Sprintf("--ipc=/proc/%d/ns/ipc", pid), bin}, args...)
	cmd := exec.Command(nsenter, a...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("nsenter %s: %v", bin, err)
		}
		t.Logf("nsenter %s %v: %v; stderr: %s", filepath.Base(bin), args, err, stderr.String())
		return string(out), ee.ExitCode()
	}
	return string(out), 0
}

var (
	reCheck    = regexp.MustCompile(`^total=(\d+) sum=(\d+) workers=(\d+) ok=([01])$`)
	reSum      = regexp.MustCompile(`^shmid=(\d+) key=0x([0-9a-f]{8}) size=(\d+) fnv64=([0-9a-f]{16})$`)
	reCounter  = regexp.MustCompile(`^shmcounter ready shmid=(\d+) semid=(\d+) workers=(\d+)$`)
	reWriter   = regexp.MustCompile(`^shmwriter ready keyed_id=(\d+) private_id=(\d+) size=(\d+)$`)
	rePaused   = regexp.MustCompile(`^shmwriter paused counter=(\d+)$`)
	reResumed  = regexp.MustCompile(`^shmwriter resumed counter=(\d+)$`)
	reBench    = regexp.MustCompile(`^shmbench ready private_mib=(\d+) shm_mib=(\d+) dirty_pct=(\S+)$`)
	reTick     = regexp.MustCompile(`^shmbench tick=(\d+) dirtied=(\d+)$`)
	reCorrupt  = regexp.MustCompile(`(?m)^CORRUPT seg=(\d+) off=(\d+)`)
	reSysvMaps = regexp.MustCompile(`^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ (\d+)\s+/SYSV([0-9a-f]{8})`)
)

type segLine struct {
	id   int
	key  string
	size int64
	hash string
}

// shmsum runs shmsum in pid's IPC namespace and parses its output.
func shmsum(t *testing.T, bins Bins, pid int) ([]segLine, string) {
	t.Helper()
	out, code := inNS(t, pid, bins.ShmSum)
	if code != 0 {
		t.Fatalf("shmsum exited %d; output:\n%s", code, out)
	}
	var segs []segLine
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		m := reSum.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("bad shmsum line %q", line)
		}
		id, _ := strconv.Atoi(m[1])
		size, _ := strconv.ParseInt(m[3], 10, 64)
		segs = append(segs, segLine{id: id, key: m[2], size: size, hash: m[4]})
	}
	return segs, out
}

func atoi(t *testing.T, s string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestBuild(t *testing.T) {
	needTool(t, "gcc")
	bins := Build(t)
	if again := Build(t); again != bins {
		t.Fatalf("second Build returned %+v, want %+v", again, bins)
	}
	st, err := os.Stat(bins.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(bins.Dir) || st.Mode().Perm() != 0o755 {
		t.Errorf("dir %s: abs=%v mode=%v, want absolute and 0755", bins.Dir, filepath.IsAbs(bins.Dir), st.Mode().Perm())
	}
	for _, p := range []string{bins.ShmWriter, bins.ShmCounter, bins.ShmBench, bins.ShmSum} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !filepath.IsAbs(p) || filepath.Dir(p) != bins.Dir || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v, want an absolute path in %s with mode 0755", p, st.Mode().Perm(), bins.Dir)
		}
	}
}

func TestBuildAll(t *testing.T) {
	// BuildAll into a second directory works too (used by non-test code).
	needTool(t, "gcc")
	bins, err := BuildAll(filepath.Join(t.TempDir(), "bin"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bins.ShmSum); err != nil {
		t.Fatal(err)
	}
}

func TestShmCounter(t *testing.T) {
	needRoot(t)
	bins := Build(t)
	p := startInNewIPC(t, bins.ShmCounter, "--workers", "3")
	ready := p.waitLine(reCounter, 1)
	if ready[3] != "3" {
		t.Fatalf("ready line says workers=%s, want 3", ready[3])
	}
	shmid := atoi(t, ready[1])

	// The total must keep growing and always equal the sum of the slots.
	var prev int64 = -1
	for i := 0; i < 5; i++ {
		wait.For(t, waitTimeout, fmt.Sprintf("the total to grow past %d", prev), func() (bool, string) {
			out, code := inNS(t, p.pid(), bins.ShmCounter, "check")
			m := reCheck.FindStringSubmatch(strings.TrimSpace(out))
			if code != 0 || m == nil || m[4] != "1" || m[3] != "3" {
				t.Fatalf("check #%d: exit %d, output %q; want ok=1 workers=3", i, code, out)
			}
			if m[1] != m[2] {
				t.Fatalf("check #%d: total %s != sum %s", i, m[1], m[2])
			}
			total := atoi(t, m[1])
			if total <= prev {
				return false, fmt.Sprintf("total stuck at %d", total)
			}
			prev = total
			return true, ""
		})
	}

	segs, out := shmsum(t, bins, p.pid())
	if len(segs) != 1 {
		t.Fatalf("shmsum listed %d segments, want 1:\n%s", len(segs), out)
	}
	if s := segs[0]; int64(s.id) != shmid || s.key != "4d494754" || s.size != 4096 {
		t.Fatalf("shmsum: got %+v, want shmid=%d key=4d494754 size=4096", s, shmid)
	}

	// SIGTERM to the parent stops the workers and exits 0.
	if err := syscall.Kill(p.pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(); code != 0 {
		_, errOut := p.output()
		t.Fatalf("shmcounter exited %d after SIGTERM; stderr:\n%s", code, errOut)
	}
	if err := syscall.Kill(-p.pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("workers still alive after the parent exited (kill -0: %v)", err)
	}
}

// TestCounterTotal: CounterTotal reads the total without the mutex: of a stopped tree
// (which may hold the mutex) it reads the same total twice; once the tree runs again
// the total grows, and CounterCheck, which takes the mutex, agrees with it.
func TestCounterTotal(t *testing.T) {
	needRoot(t)
	bins := Build(t)
	p := startInNewIPC(t, bins.ShmCounter, "--workers", "3")
	p.waitLine(reCounter, 1)
	if err := syscall.Kill(-p.pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Stopped once every process of the group is (state T).
	wait.For(t, waitTimeout, "shmcounter to stop", func() (bool, string) { return groupStopped(t, p.pid()), "" })
	stopped, err := CounterTotal(p.pid())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // a running counter counts dozens in this time
	if again, err := CounterTotal(p.pid()); err != nil || again != stopped {
		t.Fatalf("the stopped counter read %d, then %d (%v)", stopped, again, err)
	}
	if err := syscall.Kill(-p.pid(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	wait.For(t, waitTimeout, "the total to grow after SIGCONT", func() (bool, string) {
		n, err := CounterTotal(p.pid())
		if err != nil {
			t.Fatal(err)
		}
		return n > stopped+10, fmt.Sprintf("total %d", n)
	})
	checked, err := bins.CounterCheck(p.pid())
	if err != nil {
		t.Fatal(err)
	}
	if now, err := CounterTotal(p.pid()); err != nil || now < checked {
		t.Fatalf("CounterTotal %d (%v) after CounterCheck said %d", now, err, checked)
	}
	if _, err := CounterTotal(os.Getpid()); err == nil {
		t.Error("CounterTotal found a counter in this test's IPC namespace")
	}
}

// groupStopped reports whether every process of process group pgid is stopped.
func groupStopped(t *testing.T, pgid int) bool {
	t.Helper()
	pids, err := procfs.ListPids("/proc")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, pid := range pids {
		if g, err := syscall.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		if st, err := procfs.ReadStat("/proc", pid); err == nil && st.State != 'T' {
			return false
		}
		found = true
	}
	return found
}

func TestShmCounterWorkerDeath(t *testing.T) {
	needRoot(t)
	bins := Build(t)
	p := startInNewIPC(t, bins.ShmCounter, "--workers", "2")
	p.waitLine(reCounter, 1)
	childrenFile := fmt.Sprintf("/proc/%d/task/%d/children", p.pid(), p.pid())
	var worker int
	wait.For(t, waitTimeout, "shmcounter to fork its workers", func() (bool, string) {
		b, err := os.ReadFile(childrenFile)
		if err != nil {
			t.Skipf("skipping: cannot read %s: %v", childrenFile, err)
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return false, "no children"
		}
		worker = int(atoi(t, f[0]))
		return true, ""
	})
	if err := syscall.Kill(worker, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(); code != 1 {
		t.Fatalf("shmcounter exited %d after a worker was killed, want 1", code)
	}
	_, errOut := p.output()
	if !strings.Contains(errOut, fmt.Sprintf("(pid %d) killed by signal 9", worker)) {
		t.Fatalf("stderr does not report the dead worker:\n%s", errOut)
	}
	if err := syscall.Kill(-p.pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("workers still alive after the parent exited (kill -0: %v)", err)
	}
}

func TestShmCounterCheckNoSegment(t *testing.T) {
	needRoot(t)
	bins := Build(t)
	p := startInNewIPC(t, bins.ShmCounter, "check")
	if code := p.waitExit(); code != 2 {
		t.Fatalf("check in an empty namespace exited %d, want 2", code)
	}
	if _, errOut := p.output(); !strings.Contains(errOut, "no segment") {
		t.Fatalf("stderr: %q", errOut)
	}
}

func TestShmWriterPauseResume(t *testing.T) {
	needRoot(t)
	bins := Build(t)
	const size = 1 << 20
	p := startInNewIPC(t, bins.ShmWriter, "--size", strconv.Itoa(size), "--interval-ms", "2")
	ready := p.waitLine(reWriter, 1)
	keyed, private := atoi(t, ready[1]), atoi(t, ready[2])
	if atoi(t, ready[3]) != size {
		t.Fatalf("ready line: %q", ready[0])
	}

	segs, out := shmsum(t, bins, p.pid())
	if len(segs) != 2 {
		t.Fatalf("shmsum listed %d segments, want 2:\n%s", len(segs), out)
	}
	for _, s := range segs {
		want := map[int64]string{keyed: "4d494753", private: "00000000"}[int64(s.id)]
		if want == "" || s.key != want || s.size != size {
			t.Fatalf("unexpected segment %+v (keyed_id=%d private_id=%d)", s, keyed, private)
		}
	}

	if err := syscall.Kill(p.pid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	paused := p.waitLine(rePaused, 1)
	_, a := shmsum(t, bins, p.pid())
	_, b := shmsum(t, bins, p.pid())
	if a != b {
		t.Fatalf("segments changed while paused (counter=%s):\n%s\nvs\n%s", paused[1], a, b)
	}

	if err := syscall.Kill(p.pid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	p.waitLine(reResumed, 1)
	wait.For(t, waitTimeout, "the segments to change after SIGUSR2", func() (bool, string) {
		_, c := shmsum(t, bins, p.pid())
		return c != a, "\n" + c
	})
	if p.exited() {
		t.Fatalf("shmwriter exited: %v", p.waitErr)
	}
	if _, errOut := p.output(); errOut != "" {
		t.Fatalf("unexpected stderr: %s", errOut)
	}
}

// sysvMapping finds the address of the mapping of the SysV segment with the
// given key (8 hex digits) in /proc/PID/maps.
func sysvMapping(t *testing.T, pid int, key string) uint64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := reSysvMaps.FindStringSubmatch(sc.Text()); m != nil && m[4] == key {
			addr, err := strconv.ParseUint(m[1], 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return addr
		}
	}
	t.Fatalf("no SYSV%s mapping in /proc/%d/maps", key, pid)
	return 0
}

func TestShmWriterDetectsCorruption(t *testing.T) {
	needRoot(t)
	bins := Build(t)
	const size = 64 << 10
	p := startInNewIPC(t, bins.ShmWriter, "--size", strconv.Itoa(size), "--interval-ms", "1")
	p.waitLine(reWriter, 1)

	// Flip one pattern byte of the keyed segment through /proc/PID/mem.
	const off = 3*4096 + 123
	addr := sysvMapping(t, p.pid(), "4d494753")
	mem, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", p.pid()), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	buf := make([]byte, 1)
	if _, err := mem.ReadAt(buf, int64(addr+off)); err != nil {
		t.Fatal(err)
	}
	if want := byte((off*31 + 0) & 0xff); buf[0] != want {
		t.Fatalf("pattern byte at %d is %#x, want %#x", off, buf[0], want)
	}
	buf[0] ^= 0xff
	if _, err := mem.WriteAt(buf, int64(addr+off)); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(); code != 3 {
		t.Fatalf("shmwriter exited %d after corruption, want 3", code)
	}
	_, errOut := p.output()
	m := reCorrupt.FindStringSubmatch(errOut)
	if m == nil || m[1] != "0" || m[2] != strconv.Itoa(off) {
		t.Fatalf("stderr %q, want CORRUPT seg=0 off=%d", errOut, off)
	}
}

func TestShmBench(t *testing.T) {
	needRoot(t)
	bins := Build(t)
	t.Run("8+8MiB-50pct", func(t *testing.T) {
		t.Parallel()
		p := startInNewIPC(t, bins.ShmBench, "--private-mib", "8", "--shm-mib", "8", "--dirty-pct-per-sec", "50")
		ready := p.waitLine(reBench, 1)
		if ready[1] != "8" || ready[2] != "8" || ready[3] != "50" {
			t.Fatalf("ready line: %q", ready[0])
		}
		const perSec = (16 << 20) / 4096 / 2
		for n := 1; n <= 2; n++ {
			m := p.waitLine(reTick, n)
			if atoi(t, m[1]) != int64(n) {
				t.Fatalf("tick line #%d: %q", n, m[0])
			}
			if d := atoi(t, m[2]); d <= 0 || d > perSec {
				t.Fatalf("tick %d dirtied %d pages, want 1..%d", n, d, perSec)
			}
		}
		segs, out := shmsum(t, bins, p.pid())
		if len(segs) != 1 || segs[0].key != "4d494755" || segs[0].size != 8<<20 {
			t.Fatalf("shmsum:\n%s", out)
		}
	})
	t.Run("zeros", func(t *testing.T) {
		t.Parallel()
		p := startInNewIPC(t, bins.ShmBench, "--private-mib", "0", "--shm-mib", "0", "--dirty-pct-per-sec", "0")
		p.waitLine(reBench, 1)
		if m := p.waitLine(reTick, 1); m[0] != "shmbench tick=1 dirtied=0" {
			t.Fatalf("tick line: %q", m[0])
		}
		if segs, out := shmsum(t, bins, p.pid()); len(segs) != 0 {
			t.Fatalf("shmsum listed segments:\n%s", out)
		}
	})
	t.Run("missing-args", func(t *testing.T) {
		t.Parallel()
		p := startInNewIPC(t, bins.ShmBench, "--private-mib", "1")
		if code := p.waitExit(); code != 2 {
			t.Fatalf("exit code %d, want 2 (usage)", code)
		}
	})
}
