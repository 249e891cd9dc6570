package migrate_test

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
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
	wait.Until(t, 5*time.Second, "the outsider to join the workload's IPC namespace", func() error {
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
	wait.Until(t, 10*time.Second, "the refused workload to keep counting", func() error {
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

// TestResourcesOfMovableWorkload: the shared counter holds nothing CRIU cannot move;
// the files it needs on the target are its binary, the init's, their libraries and its
// cwd, all present here with the same sizes; its logs are left to the daemon.
func TestResourcesOfMovableWorkload(t *testing.T) {
	testenv.RequireRoot(t)
	bins := testwork.Build(t)
	w := startWorkload(t, "", bins.ShmCounter, "--workers", "2")
	waitOutput(t, w.stdout, "shmcounter ready")
	tree := movableTree(t, w.proc.Pid)
	logDir := filepath.Dir(w.stdout)
	in, err := migrate.Inspect("/proc", tree, logDir)
	if err != nil {
		t.Fatal(err)
	}
	if in.Blockers != nil {
		t.Fatalf("shmcounter is blocked by %+v", in.Blockers)
	}
	needs := in.Files
	byPath := map[string]migrate.FileNeed{}
	for _, n := range needs {
		t.Logf("%-5s %10d %v %s", n.Kind, n.Size, n.Dir, n.Path)
		byPath[n.Path] = n
		switch {
		case strings.HasPrefix(n.Path, "/SYSV"), strings.HasPrefix(n.Path, "/memfd:"), strings.HasPrefix(n.Path, "["):
			t.Errorf("need for a kernel object %q", n.Path)
		case strings.HasPrefix(n.Path, logDir+"/"):
			t.Errorf("need for %s, under the skipped %s", n.Path, logDir)
		}
	}
	exe, err := filepath.EvalSymlinks(bins.ShmCounter)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(exe)
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := byPath[exe]; !ok || n.Kind != "exe" || n.Size != st.Size() {
		t.Errorf("needs lack the workload's binary %s (%d bytes) as exe: %+v", exe, st.Size(), n)
	}
	if n, ok := byPath["/"]; !ok || !n.Dir {
		t.Errorf("needs lack the cwd /: %+v", n)
	}
	if p, c := migrate.CheckFiles("/", "here", needs, nil); p != nil || c != nil {
		t.Errorf("this node lacks files its own workload uses: %+v, carry %+v", p, c)
	}
	// In an empty root everything but the root directory itself is missing: the
	// binary and its libraries are problems, the directories and open files carried.
	p, c := migrate.CheckFiles(t.TempDir(), "empty", needs, nil)
	if len(p)+len(c) != len(needs)-1 || len(p) == 0 {
		t.Errorf("an empty root: %d problems and %d carried for %d needs: %+v %+v", len(p), len(c), len(needs), p, c)
	}
	for _, n := range c {
		if n.Kind == migrate.NeedExe || n.Kind == migrate.NeedMap {
			t.Errorf("an empty root would be given the software %s (%s)", n.Path, n.Kind)
		}
	}

	// Without the skip, the logs are needed, but their size is not (append-only).
	all, err := migrate.Inspect("/proc", tree)
	if err != nil {
		t.Fatal(err)
	}
	var logs int
	for _, n := range all.Files {
		if strings.HasPrefix(n.Path, logDir+"/") {
			logs++
			if n.Kind != "fd" || n.Size != -1 {
				t.Errorf("log need %+v, want kind fd with size -1", n)
			}
		}
	}
	if logs != 2 {
		t.Errorf("found %d logs (stdout, stderr) among the needs, want 2", logs)
	}
}

// openPty opens a pseudo-terminal pair's master and returns it with its slave's path.
func openPty(t *testing.T) (*os.File, string) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		testenv.Unavailable(t, "no pseudo-terminals: %v", err)
	}
	master := os.NewFile(uintptr(fd), "/dev/ptmx")
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	return master, fmt.Sprintf("/dev/pts/%d", n)
}

// someDevice returns a device node other than the harmless ones that root can open.
func someDevice(t *testing.T) string {
	t.Helper()
	for _, d := range []string{"/dev/kmsg", "/dev/loop-control", "/dev/fuse", "/dev/loop0"} {
		if st, err := os.Stat(d); err == nil && st.Mode()&os.ModeDevice != 0 {
			if f, err := os.Open(d); err == nil {
				f.Close()
				return d
			}
		}
	}
	testenv.Unavailable(t, "no openable device node (/dev/kmsg, /dev/loop-control, ...)")
	return ""
}

// listen opens a TCP listener on a loopback address and accepts (and keeps) whatever
// connects, so the workload's side of the connection is ESTABLISHED.
func listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		// tcp6 needs IPv6 on lo: not booted with ipv6.disable=1, net.ipv6.conf.lo.disable_ipv6=0.
		testenv.Unavailable(t, "no %s loopback here: %v", network, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go io.Copy(io.Discard, c)
		}
	}()
	return l
}

// TestResourcesThatBlock: real workloads holding what CRIU cannot move are reported,
// with the right reason, the pid holding it, and the object named.
func TestResourcesThatBlock(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("bash"); err != nil {
		testenv.Unavailable(t, "bash is needed for the workloads: %v", err)
	}
	cases := []struct {
		name string
		// setup returns the redirections the workload's shell opens before it sleeps,
		// and what the blocker's detail must name.
		setup  func(t *testing.T) (redirect, names string)
		reason string
	}{
		{"tcp over IPv4", func(t *testing.T) (string, string) {
			l := listen(t, "tcp4", "127.0.0.1:0")
			return "3<>/dev/tcp/127.0.0.1/" + port(l), "-> " + l.Addr().String()
		}, "tcp-established"},
		{"tcp over IPv6", func(t *testing.T) (string, string) {
			l := listen(t, "tcp6", "[::1]:0")
			return "3<>/dev/tcp/::1/" + port(l), "-> " + l.Addr().String()
		}, "tcp-established"},
		{"terminal", func(t *testing.T) (string, string) {
			_, pts := openPty(t)
			return "4<>" + pts, "terminal " + pts + " open (fd 4)"
		}, "terminal"},
		{"device", func(t *testing.T) (string, string) {
			d := someDevice(t)
			return "5<" + d, d + " open (fd 5)"
		}, "device"},
		{"deleted file", func(t *testing.T) (string, string) {
			f := filepath.Join(t.TempDir(), "scratch")
			return fmt.Sprintf("6<>%s; rm %s", f, f), "deleted file " + f + " open (fd 6)"
		}, "deleted-file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			redirect, names := tc.setup(t)
			w := startWorkload(t, "", "bash", "-c", "exec "+redirect+" && echo ready && exec sleep 1000")
			waitOutput(t, w.stdout, "ready")
			tree := movableTree(t, w.proc.Pid)
			in, err := migrate.Inspect("/proc", tree)
			if err != nil {
				t.Fatal(err)
			}
			blockers := in.Blockers
			for _, b := range blockers {
				t.Logf("%s: %s", b.Reason, b.Detail)
			}
			if len(blockers) != 1 {
				t.Fatalf("got %d blockers, want 1 (%s)", len(blockers), tc.reason)
			}
			b := blockers[0]
			sleeper := procOf(tree, "sleep")
			if b.Reason != tc.reason || b.Pid != sleeper.Pid {
				t.Errorf("blocker %s held by pid %d, want %s held by %v", b.Reason, b.Pid, tc.reason, sleeper)
			}
			if !strings.Contains(b.Detail, names) || !strings.Contains(b.Detail, sleeper.String()) {
				t.Errorf("detail %q does not name %q and %v", b.Detail, names, sleeper)
			}
		})
	}
}

func port(l net.Listener) string { return fmt.Sprint(l.Addr().(*net.TCPAddr).Port) }

// procOf returns the process of the tree running comm.
func procOf(tree *workload.Tree, comm string) workload.Proc {
	for _, p := range tree.Procs {
		if p.Comm == comm {
			return p
		}
	}
	return workload.Proc{}
}

// TestInspectLive: on a live workload that holds a connection, a deleted file, a log
// and children, Inspect finds the two blockers, the files, the tree's memory as
// TreeMemory measures it and the segments of its IPC namespace.
func TestInspectLive(t *testing.T) {
	testenv.RequireRoot(t)
	bins := testwork.Build(t)
	l := listen(t, "tcp4", "127.0.0.1:0")
	dir := t.TempDir()
	scratch, log := filepath.Join(dir, "scratch"), filepath.Join(dir, "app.log")
	w := startWorkload(t, "", "bash", "-c", fmt.Sprintf(
		"exec 3<>/dev/tcp/127.0.0.1/%s 6<>%s 7>>%s; rm %s; %s --workers 2 & sleep 1000 & echo ready; wait",
		port(l), scratch, log, scratch, bins.ShmCounter))
	waitOutput(t, w.stdout, "ready")
	tree := waitTree(t, w.proc.Pid, map[string]int{"bash": 1, "shmcounter": 3, "sleep": 1})
	skip := filepath.Dir(w.stdout)

	in, err := migrate.Inspect("/proc", tree, skip)
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, b := range in.Blockers {
		t.Logf("blocker %s: %s", b.Reason, b.Detail)
		reasons = append(reasons, b.Reason)
	}
	if want := []string{migrate.BlockerTCPEstablished, migrate.BlockerDeletedFile}; !reflect.DeepEqual(reasons, want) {
		t.Errorf("blockers %v, want %v", reasons, want)
	}
	byPath := map[string]migrate.FileNeed{}
	for _, n := range in.Files {
		byPath[n.Path] = n
		if strings.HasPrefix(n.Path, skip+"/") {
			t.Errorf("need for %s, under the skipped %s", n.Path, skip)
		}
	}
	for _, exe := range []string{bins.ShmCounter, "/usr/bin/sleep", "/usr/bin/bash"} {
		real, err := filepath.EvalSymlinks(exe)
		if err != nil {
			t.Fatal(err)
		}
		if n, ok := byPath[real]; !ok || n.Kind != migrate.NeedExe {
			t.Errorf("no exe need for %s: %+v", real, n)
		}
	}
	if n, ok := byPath[log]; !ok || n.Kind != migrate.NeedFd || n.Size != -1 {
		t.Errorf("need for the log %s: %+v, want fd of unchecked size", log, n)
	}
	mem, err := migrate.TreeMemory("/proc", tree)
	if err != nil {
		t.Fatal(err)
	}
	segs, err := workload.Segments(w.proc.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if in.MemoryBytes != mem || !reflect.DeepEqual(in.Segments, segs) || len(segs) != 1 {
		t.Errorf("memory %d, segments %+v; TreeMemory says %d, Segments %+v", in.MemoryBytes, in.Segments, mem, segs)
	}
}

// waitTree waits until the workload of init runs the given numbers of processes by
// command name (the init and the others not counted) and returns its tree.
func waitTree(t *testing.T, init int, comms map[string]int) *workload.Tree {
	t.Helper()
	var tree *workload.Tree
	wait.Until(t, 10*time.Second, fmt.Sprintf("processes %v in the tree of %d", comms, init), func() error {
		all, _, err := workload.ReadAll("/proc")
		if err != nil {
			return err
		}
		if tree, err = workload.FindTree(all, init); err != nil {
			return err
		}
		got := map[string]int{}
		for _, p := range tree.Procs {
			if _, ok := comms[p.Comm]; ok {
				got[p.Comm]++
			}
		}
		if !reflect.DeepEqual(got, comms) {
			return fmt.Errorf("processes %v", got)
		}
		return nil
	})
	return tree
}
