package migrate_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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

// pcChild starts shmbench as a plain child of the test (no namespaces, no root needed;
// no segment, which would outlive it in the host IPC namespace) and waits until it has
// filled its private memory. It is killed at the end of the test.
func pcChild(tb testing.TB, privateMiB int) *exec.Cmd {
	tb.Helper()
	bins := testwork.Build(tb)
	out := filepath.Join(tb.TempDir(), "stdout")
	f, err := os.Create(out)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bins.ShmBench, "--private-mib", strconv.Itoa(privateMiB), "--shm-mib", "0",
		"--dirty-pct-per-sec", "0")
	cmd.Stdout = f
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	wait.For(tb, 30*time.Second, "shmbench to be ready", func() (bool, string) {
		b, _ := os.ReadFile(out)
		return bytes.Contains(b, []byte("shmbench ready")), fmt.Sprintf("output %q", b)
	})
	return cmd
}

// pcLargestAnon returns the largest private writable anonymous mapping of pid.
func pcLargestAnon(tb testing.TB, pid int) (start, end uint64) {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 5 || fields[1] != "rw-p" || fields[4] != "0" {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && e-s > end-start {
			start, end = s, e
		}
	}
	if end == start {
		tb.Fatalf("pid %d has no anonymous mapping", pid)
	}
	return start, end
}

// pcRound runs one pre-copy round into store through an io.Pipe, as the daemon does,
// and commits it.
func pcRound(tb testing.TB, p *migrate.Precopier, store *migrate.PageStore) migrate.RoundStats {
	tb.Helper()
	pr, pw := io.Pipe()
	var st migrate.RoundStats
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		st, werr = p.Round(context.Background(), pw)
		pw.CloseWithError(werr)
	}()
	n, rerr := migrate.ReadPages(context.Background(), pr, store)
	pr.CloseWithError(errors.New("receiver gone"))
	<-done
	if werr != nil || rerr != nil {
		tb.Fatalf("round: %v; receiving: %v", werr, rerr)
	}
	if n != st.Sent {
		tb.Fatalf("the round sent %d pages, the store received %d", st.Sent, n)
	}
	p.Commit()
	return st
}

// TestPrecopierChild pre-copies a real process: every page of its 16 MiB of private
// memory reaches the store in the first round, an idle process changes (almost)
// nothing, and a process that has exited is skipped.
func TestPrecopierChild(t *testing.T) {
	cmd := pcChild(t, 16)
	pid := cmd.Process.Pid
	pids := []int{pid}
	p := migrate.NewPrecopier("/proc", func() ([]int, error) { return pids, nil })
	store, err := migrate.OpenPageStore(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	first := pcRound(t, p, store)
	t.Logf("round 1: %+v", first)
	const region = 16 << 20 / migrate.PageSize
	if first.Pages < region || first.Changed != first.Pages || first.Sent < region {
		t.Fatalf("round 1: %+v; want at least the %d pages of the region read and sent, all changed", first, region)
	}
	if store.Len() != int(first.Sent) {
		t.Fatalf("store holds %d pages, the round sent %d", store.Len(), first.Sent)
	}
	// Every page of the region, read independently, is in the store and held.
	start, end := pcLargestAnon(t, pid)
	if end-start < 16<<20 {
		t.Fatalf("largest anonymous mapping is %d bytes", end-start)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	page := make([]byte, migrate.PageSize)
	for a := start; a < end; a += migrate.PageSize {
		if _, err := mem.ReadAt(page, int64(a)); err != nil {
			t.Fatal(err)
		}
		h := migrate.HashPage(page)
		if !store.Has(h) || !p.Held(h) {
			t.Fatalf("page at %#x is not in the store (or not held)", a)
		}
	}

	second := pcRound(t, p, store)
	t.Logf("round 2: %+v", second)
	if second.Pages < region || second.Changed > 64 || second.Sent > second.Changed {
		t.Fatalf("round 2 of an idle process: %+v; want few changed pages and no more sent", second)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	gone, err := p.Round(context.Background(), io.Discard)
	if err != nil {
		t.Fatalf("round over an exited process: %v", err)
	}
	if gone.Pages != 0 || gone.Sent != 0 {
		t.Fatalf("round over an exited process: %+v", gone)
	}
}

// pcTreePids returns a function listing the host pids of the workload tree of init.
func pcTreePids(init int) func() ([]int, error) {
	return func() ([]int, error) {
		all, _, err := workload.ReadAll("/proc")
		if err != nil {
			return nil, err
		}
		tree, err := workload.FindTree(all, init)
		if err != nil {
			return nil, err
		}
		return tree.Pids(), nil
	}
}

// TestPrecopyThenPagedImages is pre-copy end to end with real CRIU: shmbench (64 MiB
// private, a 64 MiB SysV segment, 5% of its pages dirtied per second) is pre-copied in
// two rounds into a PageStore, dumped, and its images sent with the paged image stream;
// the received images must equal the dumped ones, with most pages sent as hashes. It
// also pins down where CRIU 4.1 puts a SysV segment's contents: in a pages-*.img (found
// through pagemap-shmem-<shmid>.img), not in ipcns-shm-*.img, which holds only the
// segment's attributes.
func TestPrecopyThenPagedImages(t *testing.T) {
	c := testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	ctx := context.Background()

	w := startWorkload(t, "", bins.ShmBench, "--private-mib", "64", "--shm-mib", "64", "--dirty-pct-per-sec", "5")
	waitOutput(t, w.stdout, "shmbench ready")
	p := migrate.NewPrecopier("/proc", pcTreePids(w.proc.Pid))
	store, err := migrate.OpenPageStore(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	const workPages = 128 << 20 / migrate.PageSize
	for round := 1; round <= 2; round++ {
		st := pcRound(t, p, store)
		t.Logf("pre-copy round %d: %d pages read, %d changed, %d sent (%d bytes) in %v",
			round, st.Pages, st.Changed, st.Sent, st.SentBytes, st.Duration)
		if st.Pages < workPages {
			t.Fatalf("round %d read %d pages; the workload alone has %d", round, st.Pages, workPages)
		}
	}

	images := filepath.Join(t.TempDir(), "images")
	dump, err := c.Dump(ctx, migrate.DumpOptions{Pid: w.proc.Pid, ImagesDir: images, WorkDir: t.TempDir(), LeaveStopped: true})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	t.Logf("dump: frozen %v, %d pages, images %d bytes", dump.Frozen, dump.PagesWritten, dump.ImageBytes)

	// Where the segment's contents are.
	segs, err := workload.DigestSegments(w.proc.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(segs) != 1 || segs[0].Size != 64<<20 {
		t.Fatalf("segments at the freeze: %+v, want one of 64 MiB", segs)
	}
	names, pagesBytes := pcImages(t, images)
	var holder string
	for _, name := range names {
		path := filepath.Join(images, name)
		switch {
		case migrate.PagesImage(name):
			if pcSHA256(t, path) == segs[0].Digest {
				holder = name
			}
		case strings.HasPrefix(name, "ipcns-shm-"):
			if st, err := os.Stat(path); err != nil || st.Size() >= 4096 {
				t.Errorf("%s: %v, %d bytes: expected the attributes only", name, err, st.Size())
			}
		}
	}
	shmPagemap := fmt.Sprintf("pagemap-shmem-%d.img", segs[0].Shmid)
	t.Logf("images: %v; the segment's contents are %s, indexed by %s", names, holder, shmPagemap)
	if holder == "" {
		t.Fatalf("no pages-*.img holds exactly the segment's contents (sha256 %s)", segs[0].Digest)
	}
	if !slices.Contains(names, shmPagemap) {
		t.Fatalf("no %s among the images", shmPagemap)
	}

	// Send the images page by page: what pre-copy delivered goes as hashes.
	recv := filepath.Join(t.TempDir(), "received")
	pr, pw := io.Pipe()
	var wst migrate.StreamStats
	var werr error
	done := make(chan struct{})
	t0 := time.Now()
	go func() {
		defer close(done)
		wst, werr = migrate.WriteImages(ctx, pw, images, migrate.StreamOptions{Paged: migrate.PagesImage, Held: p.Held})
		pw.CloseWithError(werr)
	}()
	rst, rerr := migrate.ReadImages(ctx, pr, recv, migrate.StreamOptions{Pages: store})
	pr.CloseWithError(errors.New("receiver gone"))
	<-done
	took := time.Since(t0)
	if werr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", werr, rerr)
	}
	if wst != rst {
		t.Fatalf("stats: sender %+v, receiver %+v", wst, rst)
	}
	t.Logf("image stream: %+v in %v", rst, took)

	got, _ := pcImages(t, recv)
	if !slices.Equal(got, names) {
		t.Fatalf("received %v, dumped %v", got, names)
	}
	for _, name := range names {
		a, err := os.ReadFile(filepath.Join(images, name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(recv, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("%s differs after the transfer", name)
		}
	}
	assertPrivateImages(t, recv)
	total := pagesBytes / migrate.PageSize
	share := float64(rst.RefPages) / float64(total)
	t.Logf("%d of %d pages (%.1f%%) travelled as hashes; %d bytes of pages in full", rst.RefPages, total, 100*share, rst.Bytes)
	if share < 0.8 {
		t.Fatalf("only %.1f%% of the pages travelled as hashes, want well over 80%%", 100*share)
	}
}

// pcImages lists an images directory and the total size of its pages-*.img files.
func pcImages(t *testing.T, dir string) ([]string, int64) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	var pages int64
	for _, e := range entries {
		names = append(names, e.Name())
		if migrate.PagesImage(e.Name()) {
			info, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			pages += info.Size()
		}
	}
	return names, pages
}

func pcSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// pcCPUTime is the CPU time this process has used (user and system).
func pcCPUTime(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPrecopyRound measures a pre-copy round over a child's 256 MiB of private
// memory (distinct random pages), against reading the same region through
// /proc/PID/mem alone ("read", the baseline) and reading it and hashing each page on one
// goroutine ("read+hash"):
//
//	round/first   a fresh Precopier: every page is sent (into io.Discard)
//	round/steady  the round after a committed one: nothing changed, nothing sent
//
// Each result reports its time as a multiple of the baseline's ("x-read") and the CPU
// time it took ("cpu-s/op").
func BenchmarkPrecopyRound(b *testing.B) {
	cmd := pcChild(b, 256)
	pid := cmd.Process.Pid
	start, end := pcLargestAnon(b, pid)
	pids := func() ([]int, error) { return []int{pid}, nil }
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer mem.Close()
	buf := make([]byte, 1<<20)
	var readNS float64
	run := func(b *testing.B, baseline bool, fn func() error) {
		b.SetBytes(int64(end - start))
		c0 := pcCPUTime(b)
		for range b.N {
			if err := fn(); err != nil {
				b.Fatal(err)
			}
		}
		cpu := pcCPUTime(b) - c0
		ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if baseline {
			readNS = ns
		}
		if readNS > 0 {
			b.ReportMetric(ns/readNS, "x-read")
		}
		b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	}
	readRegion := func(each func([]byte)) error {
		for a := start; a < end; a += uint64(len(buf)) {
			n := min(uint64(len(buf)), end-a)
			if _, err := mem.ReadAt(buf[:n], int64(a)); err != nil {
				return err
			}
			each(buf[:n])
		}
		return nil
	}
	b.Run("read", func(b *testing.B) {
		run(b, true, func() error { return readRegion(func([]byte) {}) })
	})
	b.Run("read+hash", func(b *testing.B) {
		run(b, false, func() error {
			return readRegion(func(data []byte) {
				for off := 0; off < len(data); off += migrate.PageSize {
					migrate.HashPage(data[off : off+migrate.PageSize])
				}
			})
		})
	})
	b.Run("round/first", func(b *testing.B) {
		run(b, false, func() error {
			st, err := migrate.NewPrecopier("/proc", pids).Round(context.Background(), io.Discard)
			if err == nil && st.Sent < int64(end-start)/migrate.PageSize {
				err = fmt.Errorf("sent %d pages", st.Sent)
			}
			return err
		})
	})
	b.Run("round/steady", func(b *testing.B) {
		p := migrate.NewPrecopier("/proc", pids)
		if _, err := p.Round(context.Background(), io.Discard); err != nil {
			b.Fatal(err)
		}
		p.Commit()
		b.ResetTimer()
		run(b, false, func() error {
			st, err := p.Round(context.Background(), io.Discard)
			if err == nil && st.Sent > 64 {
				err = fmt.Errorf("sent %d pages", st.Sent)
			}
			return err
		})
	})
}
