package migrate_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/netnode"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
)

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
	c := testenv.RequireCRIU(t)
	bins := testwork.Build(t)
	nodes := netnode.Up(t, 2)
	ctx := context.Background()

	w := startWorkload(t, nodes[0].NetNSPath, bins.ShmCounter, "--workers", "3")
	waitOutput(t, w.stdout, "shmcounter ready")
	counterCheck(t, bins, w.proc.Pid)
	tree, err := migrate.Preflight{}.Check(w.proc.Pid)
	if err != nil {
		t.Fatal(err)
	}
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
	waitFor(t, "the half-restored tree to be removed", 10*time.Second, func() error {
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
		waitFor(t, fmt.Sprintf("%v to run again", p), 5*time.Second, func() error {
			if st, err := procState(p.Pid); err != nil || st == "T" {
				return fmt.Errorf("state %q (%v)", st, err)
			}
			return nil
		})
	}
	atResume := counterCheck(t, bins, w.proc.Pid)
	waitFor(t, "the source to keep counting", 10*time.Second, func() error {
		if n := counterCheck(t, bins, w.proc.Pid); n < atResume+50 {
			return fmt.Errorf("total %d", n)
		}
		return nil
	})
	if after := segmentSums(t, bins, w.proc.Pid); after == before {
		t.Fatalf("segment did not change after resuming the source; is it running?\n%s", after)
	}
}
