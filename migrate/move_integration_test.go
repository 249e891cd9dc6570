package migrate_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/netnode"
	"github.com/migshm/migshm/internal/nsutil"
	"github.com/migshm/migshm/internal/procfs"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
)

func TestMain(m *testing.M) {
	workload.MaybeRunInit()
	os.Exit(m.Run())
}

// started is a workload under test: its init and where its output goes.
type started struct {
	proc   *workload.Process
	stdout string
}

func startWorkload(t *testing.T, netns string, args ...string) *started {
	t.Helper()
	dir := t.TempDir()
	s := &started{stdout: filepath.Join(dir, "stdout")}
	p, err := workload.Start(workload.Spec{
		Args:   args,
		Stdout: s.stdout,
		Stderr: filepath.Join(dir, "stderr"),
		NetNS:  netns,
	})
	if err != nil {
		t.Fatalf("start %v: %v", args, err)
	}
	s.proc = p
	t.Cleanup(func() { killAndReap(p) })
	return s
}

// killAndReap kills an init (and so its namespace) and reaps it; errors mean it is gone.
func killAndReap(p *workload.Process) {
	_ = p.Kill()
	_, _ = p.Wait()
}

func waitOutput(t *testing.T, path, substr string) string {
	t.Helper()
	var out string
	wait.Until(t, 10*time.Second, fmt.Sprintf("%q in %s", substr, path), func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		out = string(b)
		if !strings.Contains(out, substr) {
			return fmt.Errorf("not yet; output so far: %q", out)
		}
		return nil
	})
	return out
}

var inIPC = testwork.InIPC

// counterCheck asserts the shared counter's invariant in the workload's IPC namespace and
// returns the shared total.
func counterCheck(t *testing.T, bins testwork.Bins, pid int) uint64 {
	t.Helper()
	total, err := bins.CounterCheck(pid)
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// counterTotal reads the shared counter's total in the workload's IPC namespace without
// taking its mutex, as a stopped tree may hold it.
func counterTotal(t *testing.T, pid int) uint64 {
	t.Helper()
	total, err := testwork.CounterTotal(pid)
	if err != nil {
		t.Fatal(err)
	}
	return total
}

func segmentSums(t *testing.T, bins testwork.Bins, pid int) string {
	t.Helper()
	out, err := inIPC(pid, bins.ShmSum)
	if err != nil {
		t.Fatalf("shmsum in ipc ns of %d: %v: %s", pid, err, out)
	}
	return out
}

func procState(pid int) (string, error) {
	st, err := procfs.ReadStat("/proc", pid)
	if err != nil {
		return "", err
	}
	return string(st.State), nil
}

func netnsID(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

// movableTree returns the tree of the workload whose init is pid, which must be movable.
func movableTree(t *testing.T, pid int) *workload.Tree {
	t.Helper()
	tree, err := migrate.Preflight{}.Check(pid)
	if err != nil {
		t.Fatalf("preflight of pid %d: %v", pid, err)
	}
	return tree
}

// counterOnNode1 brings up two nodes and starts the shared counter with workers workers
// on the first; it returns them with CRIU and the test programs.
func counterOnNode1(t *testing.T, workers int) (*migrate.CRIU, testwork.Bins, []netnode.Node, *started) {
	t.Helper()
	c := testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	nodes := netnode.Up(t, 2)
	w := startWorkload(t, nodes[0].NetNSPath, bins.ShmCounter, "--workers", strconv.Itoa(workers))
	waitOutput(t, w.stdout, "shmcounter ready")
	return c, bins, nodes, w
}

// TestMoveSharedCounterBetweenNodes moves the semaphore-protected shared counter (four
// workers, one segment, one semaphore set) from node 1's network namespace to node 2's
// with the CRIU adapter, and proves nothing was lost: every segment's contents are equal
// at the freeze and before the restored tree resumes, the invariant holds, the counter
// keeps growing on node 2, and the source copy is gone.
func TestMoveSharedCounterBetweenNodes(t *testing.T) {
	c, bins, nodes, w := counterOnNode1(t, 4)
	ctx := context.Background()
	first := counterCheck(t, bins, w.proc.Pid)

	tree := movableTree(t, w.proc.Pid)
	if got := len(tree.Procs); got != 6 {
		t.Fatalf("tree has %d processes, want 6 (init, parent, 4 workers): %v", got, tree.Procs)
	}
	if segs := tree.Segments(); len(segs) != 1 {
		t.Fatalf("tree attaches %d segments, want 1: %v", len(segs), segs)
	}
	// Let the workers make progress, so the move carries a non-trivial state.
	wait.Until(t, 10*time.Second, "counter progress on node 1", func() error {
		if n := counterCheck(t, bins, w.proc.Pid); n < first+50 {
			return fmt.Errorf("total %d", n)
		}
		return nil
	})

	images := filepath.Join(t.TempDir(), "images")
	dump, err := c.Dump(ctx, migrate.DumpOptions{
		Pid: w.proc.Pid, ImagesDir: images, LeaveStopped: true, NetNS: nodes[0].NetNSPath,
	})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	t.Logf("dump: frozen %v (freezing %v, memdump %v, memwrite %v), %d pages, images %d bytes",
		dump.Frozen, dump.Freezing, dump.Memdump, dump.Memwrite, dump.PagesWritten, dump.ImageBytes)
	// CRIU detaches with SIGSTOP queued: the state reads T once the signal is taken,
	// and no user code runs in between.
	for _, p := range tree.Procs {
		wait.Until(t, 5*time.Second, fmt.Sprintf("%v to be stopped after the dump", p), func() error {
			if st, err := procState(p.Pid); err != nil || st != "T" {
				return fmt.Errorf("state %q (%v)", st, err)
			}
			return nil
		})
	}
	assertPrivateImages(t, images)
	before := segmentSums(t, bins, w.proc.Pid)
	if strings.Count(before, "shmid=") != 1 {
		t.Fatalf("shmsum at the freeze: want one segment, got:\n%s", before)
	}

	digests, err := workload.DigestSegments(w.proc.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(digests) != 1 || digests[0].Size != 4096 {
		t.Fatalf("digests at the freeze: %+v, want one 4096-byte segment", digests)
	}

	// Two independent checks of the restored segments while the tree is not yet
	// running: the product's own (VerifySegments, which aborts the restore on a
	// difference) and the C shmsum tool.
	var after string
	verify := migrate.VerifySegments(digests)
	res, err := c.Restore(ctx, migrate.RestoreOptions{
		ImagesDir: images, WorkDir: t.TempDir(), NetNS: nodes[1].NetNSPath,
		BeforeResume: func(pid int) error {
			out, err := inIPC(pid, bins.ShmSum)
			after = out
			if err != nil {
				return err
			}
			return verify(pid)
		},
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	restored := workload.Attach(res.Pid)
	t.Cleanup(func() { killAndReap(restored) })
	t.Logf("restore: pid %d in %v (forking %v)", res.Pid, res.Restore, res.Forking)
	if after != before {
		t.Fatalf("segment contents differ:\nat the freeze on node 1:\n%s\nrestored on node 2:\n%s", before, after)
	}

	// Only now, with the copy on node 2 restored, the stopped source goes.
	killAndReap(w.proc)
	for _, p := range tree.Procs {
		wait.Until(t, 5*time.Second, fmt.Sprintf("source process %v to be gone", p), func() error {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.Pid)); err == nil {
				return errors.New("still there")
			}
			return nil
		})
	}

	if got, want := netnsID(t, fmt.Sprintf("/proc/%d/ns/net", res.Pid)), netnsID(t, nodes[1].NetNSPath); got != want {
		t.Fatalf("restored tree lives in netns %d, want node 2's %d", got, want)
	}
	moved, err := migrate.Preflight{}.Check(res.Pid)
	if err != nil {
		t.Fatalf("restored tree: %v", err)
	}
	if len(moved.Procs) != len(tree.Procs) {
		t.Fatalf("restored tree has %d processes, the source had %d", len(moved.Procs), len(tree.Procs))
	}
	if got, want := nsPids(moved), nsPids(tree); got != want {
		t.Fatalf("pids inside the namespace after the move %v, before %v", got, want)
	}
	if moved.Init.IPCNS == tree.Init.IPCNS {
		t.Fatalf("restored tree reuses the source IPC namespace %s", tree.Init.IPCNS)
	}
	atMove := counterCheck(t, bins, res.Pid)
	wait.Until(t, 10*time.Second, "counter progress on node 2", func() error {
		if n := counterCheck(t, bins, res.Pid); n < atMove+50 {
			return fmt.Errorf("total %d, was %d after the restore", n, atMove)
		}
		return nil
	})
	if b, _ := os.ReadFile(w.stdout); strings.Contains(string(b), "died") {
		t.Fatalf("workload reported a dead worker:\n%s", b)
	}
}

// nsPids lists the pids of a tree as seen inside its own PID namespace, sorted.
func nsPids(tree *workload.Tree) string {
	ids := make([]int, 0, len(tree.Procs))
	for _, p := range tree.Procs {
		ids = append(ids, p.NSpid[len(p.NSpid)-1])
	}
	sort.Ints(ids)
	return fmt.Sprint(ids)
}

// assertPrivateImages checks that no image file or the images dir is readable by others.
func assertPrivateImages(t *testing.T, dir string) {
	t.Helper()
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o007 != 0 {
			return fmt.Errorf("%s has mode %v: images must not be world-accessible", path, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRestoreLeftStopped: a tree restored with LeaveStopped does not run until it gets
// SIGCONT; a migration resumes it only once the move is committed.
func TestRestoreLeftStopped(t *testing.T) {
	c, bins, nodes, w := counterOnNode1(t, 2)
	ctx := context.Background()
	images := filepath.Join(t.TempDir(), "images")
	if _, err := c.Dump(ctx, migrate.DumpOptions{Pid: w.proc.Pid, ImagesDir: images, NetNS: nodes[0].NetNSPath}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	res, err := c.Restore(ctx, migrate.RestoreOptions{ImagesDir: images, WorkDir: t.TempDir(),
		NetNS: nodes[1].NetNSPath, LeaveStopped: true})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	restored := workload.Attach(res.Pid)
	t.Cleanup(func() { killAndReap(restored) })
	tree, err := migrate.Preflight{}.Check(res.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range tree.Procs {
		wait.Until(t, 5*time.Second, fmt.Sprintf("%v to be stopped", p), func() error {
			if st, err := procState(p.Pid); err != nil || st != "T" {
				return fmt.Errorf("state %q (%v)", st, err)
			}
			return nil
		})
	}
	// Read without the counter's mutex: a worker stopped inside its critical section
	// holds it (and `shmcounter check` would wait for it in vain).
	stopped := counterTotal(t, res.Pid)
	time.Sleep(200 * time.Millisecond) // a running tree counts hundreds in this time
	if n := counterTotal(t, res.Pid); n != stopped {
		t.Fatalf("the stopped tree counted from %d to %d", stopped, n)
	}
	for _, p := range tree.Procs {
		if err := syscall.Kill(p.Pid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	wait.Until(t, 10*time.Second, "counter progress after SIGCONT", func() error {
		if n := counterCheck(t, bins, res.Pid); n < stopped+50 {
			return fmt.Errorf("total %d, was %d", n, stopped)
		}
		return nil
	})
}

// shmcounterMagic starts shmcounter's segment ("GMSMCNT1", see testdata/shmcounter.c).
const shmcounterMagic = 0x31544e434d534d47

// corruptShmImage flips one byte of the shared counter's segment inside the images: the
// pages file whose first page starts with the segment's magic.
func corruptShmImage(t *testing.T, images string) string {
	t.Helper()
	magic := binary.LittleEndian.AppendUint64(nil, shmcounterMagic)
	files, _ := filepath.Glob(filepath.Join(images, "pages-*.img"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+len(magic) <= len(b); off += 4096 {
			if bytes.Equal(b[off:off+len(magic)], magic) {
				b[off+2048] ^= 0x5a
				if err := os.WriteFile(f, b, 0o600); err != nil {
					t.Fatal(err)
				}
				return f
			}
		}
	}
	t.Fatalf("no pages image in %s holds the shared counter's segment", images)
	return ""
}

// TestCorruptImageAbortsRestoreAndSourceResumes: a byte flipped in the segment's image is
// caught before the restored tree runs; CRIU removes the half-restored tree (and with it
// its IPC namespace and segments) and the stopped source resumes intact. The workload
// ends up running on exactly one node.
func TestCorruptImageAbortsRestoreAndSourceResumes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		digest func(int) ([]workload.Segment, error)
	}{{"sha256", workload.DigestSegments}, {"xxh3", workload.QuickDigestSegments}} {
		t.Run(tc.name, func(t *testing.T) { corruptImageAborts(t, tc.digest) })
	}
}

func corruptImageAborts(t *testing.T, digestSegments func(int) ([]workload.Segment, error)) {
	c, bins, nodes, w := counterOnNode1(t, 3)
	ctx := context.Background()
	counterCheck(t, bins, w.proc.Pid)
	tree := movableTree(t, w.proc.Pid)
	images := filepath.Join(t.TempDir(), "images")
	if _, err := c.Dump(ctx, migrate.DumpOptions{Pid: w.proc.Pid, ImagesDir: images, LeaveStopped: true, NetNS: nodes[0].NetNSPath}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	digests, err := digestSegments(w.proc.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("corrupted %s", corruptShmImage(t, images))

	var restoredPid int
	verify := migrate.VerifySegments(digests)
	_, err = c.Restore(ctx, migrate.RestoreOptions{
		ImagesDir: images, WorkDir: t.TempDir(), NetNS: nodes[1].NetNSPath,
		BeforeResume: func(pid int) error { restoredPid = pid; return verify(pid) },
	})
	if !errors.Is(err, migrate.ErrSegmentMismatch) {
		t.Fatalf("restore of a corrupted image: got %v, want ErrSegmentMismatch", err)
	}
	var ce *migrate.CRIUError
	if !errors.As(err, &ce) || ce.Op != "restore" {
		t.Fatalf("want a *CRIUError for the restore, got %T: %v", err, err)
	}
	t.Logf("refused: %v", err)
	if restoredPid <= 0 {
		t.Fatal("the restore never reached the check before resume")
	}
	// The half-restored tree is gone from node 2, and nothing else runs there.
	wait.Until(t, 10*time.Second, "the half-restored tree to be removed", func() error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", restoredPid)); err == nil {
			return fmt.Errorf("restored pid %d still exists", restoredPid)
		}
		out, err := exec.Command("ip", "netns", "pids", nodes[1].NetNS).Output()
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			return fmt.Errorf("processes left in node 2: %s", s)
		}
		return nil
	})

	// Abort: resume the source where it stopped.
	before := segmentSums(t, bins, w.proc.Pid)
	if err := tree.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for _, p := range tree.Procs {
		wait.Until(t, 5*time.Second, fmt.Sprintf("%v to run again", p), func() error {
			if st, err := procState(p.Pid); err != nil || st == "T" {
				return fmt.Errorf("state %q (%v)", st, err)
			}
			return nil
		})
	}
	atResume := counterCheck(t, bins, w.proc.Pid)
	wait.Until(t, 10*time.Second, "the source to keep counting", func() error {
		if n := counterCheck(t, bins, w.proc.Pid); n < atResume+50 {
			return fmt.Errorf("total %d", n)
		}
		return nil
	})
	if after := segmentSums(t, bins, w.proc.Pid); after == before {
		t.Fatalf("segment did not change after resuming the source; is it running?\n%s", after)
	}
}

// procSelfScript is a Perl program (a SysV user not written for migshm) that holds
// /proc/self/maps open for good and every 50 ms rereads it through that fd, checks that
// /proc/self is itself, that its maps are its own (they name perl) and that its SysV
// segment still holds what it wrote, and says so.
const procSelfScript = `
$| = 1;
my $id = shmget(0, 65536, 01600) // die "shmget: $!";
shmwrite($id, "migshm", 0, 6) or die "shmwrite: $!";
open(my $maps, "<", "/proc/self/maps") or die "open maps: $!";
my $n = 0;
while (1) {
	seek($maps, 0, 0);
	my @lines = <$maps>;
	my $self = readlink("/proc/self");
	my $exe = grep { m{/perl} } @lines;
	my $buf;
	shmread($id, $buf, 0, 6) or die "shmread: $!";
	$n++;
	print(($self == $$ && $exe > 0 && $buf eq "migshm" ? "ok" : "BAD"), " n=$n pid=$$ self=$self perl=$exe shm=$buf\n");
	select(undef, undef, undef, 0.05);
}
`

// TestMoveKeepsItsOwnProc: a program that keeps /proc/self/maps open moves, and on the
// other node its fd still reads its own maps, its /proc/self is still itself.
func TestMoveKeepsItsOwnProc(t *testing.T) {
	c := testenv.RequireCRIU(t)
	nodes := netnode.Up(t, 2)
	w := startWorkload(t, nodes[0].NetNSPath, "perl", "-e", procSelfScript)
	waitOutput(t, w.stdout, "ok n=3 ")
	movableTree(t, w.proc.Pid)

	images := filepath.Join(t.TempDir(), "images")
	ctx := context.Background()
	if _, err := c.Dump(ctx, migrate.DumpOptions{Pid: w.proc.Pid, ImagesDir: images, LeaveStopped: true, NetNS: nodes[0].NetNSPath}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	out, _ := os.ReadFile(w.stdout)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := lines[len(lines)-1]
	var n, pid int
	if _, err := fmt.Sscanf(last, "ok n=%d pid=%d", &n, &pid); err != nil {
		t.Fatalf("last line before the move %q: %v", last, err)
	}
	res, err := c.Restore(ctx, migrate.RestoreOptions{ImagesDir: images, WorkDir: t.TempDir(), NetNS: nodes[1].NetNSPath})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	restored := workload.Attach(res.Pid)
	t.Cleanup(func() { killAndReap(restored) })
	killAndReap(w.proc)
	after := waitOutput(t, w.stdout, fmt.Sprintf("ok n=%d pid=%d ", n+3, pid))
	if strings.Contains(after, "BAD") {
		t.Fatalf("the program saw another process's /proc:\n%s", after)
	}
	if got, want := netnsID(t, fmt.Sprintf("/proc/%d/ns/net", res.Pid)), netnsID(t, nodes[1].NetNSPath); got != want {
		t.Fatalf("restored tree lives in netns %d, want node 2's %d", got, want)
	}
}

// TestMoveGroupAsOneTree moves an IPC group of three members (Python processes of
// python3-sysv-ipc sharing a segment and a semaphore, each under its own member init)
// as one dump of the group init: every member comes back under the restored group init
// with its pid in the group, and the group's own invariant (the total equals the sum of
// the members' counters, checked under the semaphore) holds as they go on.
func TestMoveGroupAsOneTree(t *testing.T) {
	c := testenv.RequireCRIU(t)
	nodes := netnode.Up(t, 2)
	script, err := filepath.Abs("../testdata/thirdparty/shmgroup.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "group")
	g, err := workload.StartGroup(workload.GroupSpec{Dir: dir, Hostname: "g", NetNS: nodes[0].NetNSPath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killAndReap(g) })
	gst, err := workload.StartTime("/proc", g.Pid)
	if err != nil {
		t.Fatal(err)
	}
	type mem struct {
		workload.Member
		out string
	}
	var members []mem
	for i := range 3 {
		out := filepath.Join(t.TempDir(), "out")
		m, err := workload.JoinGroup(context.Background(), g.Pid, gst, dir, workload.Spec{
			Args: []string{"/usr/bin/python3", script, "0x5eed", strconv.Itoa(i)}, Env: []string{"PATH=/usr/bin:/bin"},
			Stdout: out, Stderr: out})
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, mem{m, out})
	}
	for i, m := range members {
		waitOutput(t, m.out, fmt.Sprintf("ok member=%d ", i))
	}
	tree := movableTree(t, g.Pid)
	if len(tree.Segments()) != 1 {
		t.Fatalf("group attaches %v, want one segment", tree.Segments())
	}

	images := filepath.Join(t.TempDir(), "images")
	ctx := context.Background()
	if _, err := c.Dump(ctx, migrate.DumpOptions{Pid: g.Pid, ImagesDir: images, LeaveStopped: true, NetNS: nodes[0].NetNSPath}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	// The tree as dumped, listed while it is stopped: a process the group had a moment
	// before (a helper that exited since) is not in the images, rightly.
	tree = movableTree(t, g.Pid)
	digests, err := workload.DigestSegments(g.Pid)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Restore(ctx, migrate.RestoreOptions{ImagesDir: images, WorkDir: t.TempDir(), NetNS: nodes[1].NetNSPath,
		BeforeResume: migrate.VerifySegments(digests)})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	restored := workload.Attach(res.Pid)
	t.Cleanup(func() { killAndReap(restored) })
	killAndReap(g)

	procs, _, err := workload.ReadAll("/proc")
	if err != nil {
		t.Fatal(err)
	}
	moved, err := workload.FindTree(procs, res.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := nsPids(moved), nsPids(tree); got != want {
		t.Fatalf("pids in the group after the move %v, before %v", got, want)
	}
	for i, m := range members {
		after, err := workload.MemberByNSPid(procs, res.Pid, m.NSPid)
		if err != nil {
			t.Fatalf("member %d after the move: %v", i, err)
		}
		if after.Pid == m.Pid {
			t.Fatalf("member %d kept host pid %d: it did not move", i, m.Pid)
		}
		sub, err := workload.FindSubtree(procs, after.Pid)
		if err != nil || len(sub.Procs) != 2 {
			t.Fatalf("member %d's subtree after the move: %v (%v), want its init and its program", i, sub, err)
		}
	}
	// Every member goes on, with the total past where it stood at the freeze.
	for i, m := range members {
		b, _ := os.ReadFile(m.out)
		n := strings.Count(string(b), "ok member=")
		wait.Until(t, 20*time.Second, fmt.Sprintf("member %d to go on after the move", i), func() error {
			b, _ := os.ReadFile(m.out)
			if strings.Contains(string(b), "BAD") {
				t.Fatalf("member %d broke the group's invariant:\n%s", i, b)
			}
			if strings.Count(string(b), "ok member=") < n+2 {
				return fmt.Errorf("%d ok lines, had %d at the freeze", strings.Count(string(b), "ok member="), n)
			}
			return nil
		})
	}
	if got, want := netnsID(t, fmt.Sprintf("/proc/%d/ns/net", res.Pid)), netnsID(t, nodes[1].NetNSPath); got != want {
		t.Fatalf("restored group lives in netns %d, want node 2's %d", got, want)
	}
}

// serverScript is a network server on a SysV segment: it listens on TCP and UDP port
// ARGV[0] of every address (0.0.0.0, which CRIU restores on any node) and answers the
// first line of each connection, and each datagram, with a counter kept in its segment.
const serverScript = `
use strict; use IO::Socket::INET; use IO::Select; use IPC::SysV qw(IPC_PRIVATE IPC_CREAT);
$| = 1;
my $port = shift;
my $id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600) // die "shmget: $!";
my $t = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => $port, Listen => 8, ReuseAddr => 1, Proto => "tcp") or die "tcp: $@";
my $u = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => $port, Proto => "udp") or die "udp: $@";
print "listening\n";
my $sel = IO::Select->new($t, $u);
while (1) {
	for my $s ($sel->can_read) {
		my $v; shmread($id, $v, 0, 8) or die "shmread: $!";
		my $n = unpack("Q", $v) + 1;
		shmwrite($id, pack("Q", $n), 0, 8) or die "shmwrite: $!";
		if ($s == $t) { my $c = $t->accept or next; my $req = <$c>; print $c "$n\n"; close $c; next }
		my $peer = $u->recv(my $buf, 64); $u->send("$n\n", 0, $peer);
	}
}
`

// ask sends one request ("x\n") over a fresh TCP connection or as one UDP datagram to
// addr from the network namespace netns and returns the number the server answered.
func ask(t *testing.T, netns, proto, addr string) int {
	t.Helper()
	var n int
	err := nsutil.Do(nsutil.Net, netns, func() error {
		c, err := net.DialTimeout(proto, addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("x\n")); err != nil {
			return err
		}
		// Through a buffer: a UDP read takes the whole datagram at once.
		_, err = fmt.Fscan(bufio.NewReader(c), &n)
		return err
	})
	if err != nil {
		t.Fatalf("%s request to %s: %v", proto, addr, err)
	}
	return n
}

// askServer asks addr once over TCP, then once over UDP, and returns both answers.
func askServer(t *testing.T, netns, addr string) (tcp, udp int) {
	t.Helper()
	return ask(t, netns, "tcp", addr), ask(t, netns, "udp", addr)
}

// TestMoveServerWithListeners moves a server that listens on TCP and UDP on every
// address: `migshm check` lets it move, and CRIU must carry both sockets. CRIU 4.1 cannot
// dump any inet socket on kernels >= 6.16 (SO_PASSCRED is refused on them); this is the
// test that shows the CRIU scripts/setup installs can. After the move the server answers
// at the target node's address, its counter (in the segment) going on where it was.
func TestMoveServerWithListeners(t *testing.T) {
	c := testenv.RequireCRIU(t)
	nodes := netnode.Up(t, 2)
	const port = "7420"
	w := startWorkload(t, nodes[0].NetNSPath, "perl", "-e", serverScript, port)
	waitOutput(t, w.stdout, "listening")
	tree := movableTree(t, w.proc.Pid)
	if got := len(tree.Procs); got != 2 {
		t.Fatalf("tree has %d processes, want the init and the server", got)
	}
	if tcp, udp := askServer(t, nodes[1].NetNSPath, net.JoinHostPort(nodes[0].Addr, port)); tcp != 1 || udp != 2 {
		t.Fatalf("before the move the server answered %d (tcp) and %d (udp), want 1 and 2", tcp, udp)
	}

	images := filepath.Join(t.TempDir(), "images")
	ctx := context.Background()
	if _, err := c.Dump(ctx, migrate.DumpOptions{Pid: w.proc.Pid, ImagesDir: images, LeaveStopped: true, NetNS: nodes[0].NetNSPath}); err != nil {
		t.Fatalf("dump of a server with TCP and UDP listeners: %v", err)
	}
	killAndReap(w.proc)
	res, err := c.Restore(ctx, migrate.RestoreOptions{ImagesDir: images, WorkDir: t.TempDir(), NetNS: nodes[1].NetNSPath})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	restored := workload.Attach(res.Pid)
	t.Cleanup(func() { killAndReap(restored) })
	if tcp, udp := askServer(t, nodes[0].NetNSPath, net.JoinHostPort(nodes[1].Addr, port)); tcp != 3 || udp != 4 {
		t.Fatalf("after the move the server answered %d (tcp) and %d (udp), want 3 and 4", tcp, udp)
	}
}
