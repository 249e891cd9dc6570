package daemon

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/migshm/migshm/internal/procfs"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

// mountAt returns the mount seen at point, and whether there is one.
func mountAt(t *testing.T, point string) (procfs.Mount, bool) {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ms, err := procfs.ParseMountinfo(f)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Point == point {
			return ms[i], true
		}
	}
	return procfs.Mount{}, false
}

func TestMountImages(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts need root") // CI runs as root
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	unmount, err := mountImages(log, dir)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := mountAt(t, dir)
	if !ok || m.FSType != "tmpfs" || m.Source != workload.ImagesMountSource {
		t.Fatalf("after mountImages, %s has %+v (mounted %v)", dir, m, ok)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); !strings.Contains(string(b), "huge=within_size") {
		t.Errorf("the image tmpfs has no huge pages:\n%s", b)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil || st.Mode&0o777 != 0o700 {
		t.Errorf("image tmpfs mode %o (%v), want 0700", st.Mode&0o777, err)
	}

	// A daemon that did not unmount it (killed): the next one takes it over, once.
	again, err := mountImages(log, dir)
	if err != nil {
		t.Fatal(err)
	}
	again()
	if _, ok := mountAt(t, dir); ok {
		t.Fatalf("%s still mounted after the unmount of the daemon that took it over", dir)
	}
	unmount() // the first daemon's: nothing left to do

	// The operator's mount point is used as it is, and left mounted.
	if err := unix.Mount("operator", dir, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	keep, err := mountImages(log, dir)
	if err != nil {
		t.Fatal(err)
	}
	keep()
	if m, ok := mountAt(t, dir); !ok || m.Source != "operator" {
		t.Fatalf("the operator's mount at %s: %+v (mounted %v)", dir, m, ok)
	}
}
