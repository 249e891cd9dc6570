package workload

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/migshm/migshm/internal/procfs"
	"golang.org/x/sys/unix"
)

// ImagesMountSource is the source name of the tmpfs the daemon mounts for migration
// images (daemon setting image-tmpfs).
const ImagesMountSource = "migshm-images"

// setupMounts prepares the init's own mount namespace (a copy of its launcher's) so that
// CRIU can dump it and restore it on another node:
//   - every mount is made private: nothing the workload mounts leaks out, and nothing
//     mounted on the host later (a new network namespace, say) appears in a tree that was
//     already checked as movable. CRIU finds the copies of host mounts by their device
//     and root among its own mounts (--ext-mount-map auto) and binds the target node's.
//   - nsfs mounts (ip netns' /run/netns/NAME) are dropped: CRIU cannot carry them. So
//     is the daemon's image tmpfs (source ImagesMountSource): it is the node's, and the
//     target has its own.
//   - /proc is a fresh proc of the workload's own PID namespace, so /proc/self and
//     /proc/<pid> are the workload's own and files it opens there move with it.
func setupMounts() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the workload's mounts private: %w", err)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	mounts, err := procfs.ParseMountinfo(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	// Innermost first, so that no mount is detached from under another we still name.
	for i := len(mounts) - 1; i >= 0; i-- {
		if m := mounts[i]; m.FSType == "nsfs" || m.FSType == "tmpfs" && m.Source == ImagesMountSource {
			if err := unix.Unmount(m.Point, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
				return fmt.Errorf("unmount the node's %s: %w", m.Point, err)
			}
		}
	}
	if err := unix.Unmount("/proc", unix.MNT_DETACH); err != nil && err != unix.EINVAL {
		return fmt.Errorf("unmount the host's /proc: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount the workload's /proc: %w", err)
	}
	return nil
}

// closeInherited closes the fds above stdio that the init inherited without O_CLOEXEC
// from whoever started the daemon: they are on mounts outside the workload's namespace,
// where CRIU cannot follow them. The Go runtime's own fds (epoll, eventfd, pidfds) are
// anonymous inodes and stay.
func closeInherited() {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range fds {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && !strings.HasPrefix(l, "anon_inode:") {
			_ = unix.Close(fd)
		}
	}
}

// reopenStdio points the init's stdin at /dev/null and its stdout and stderr at the
// given log files (append-only, as Start opens them; "" is /dev/null), opened anew in
// its own mount namespace.
func reopenStdio(stdout, stderr string) error {
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("reopen stdin: %w", err)
	}
	out, err := openLog(stdout)
	if err != nil {
		return fmt.Errorf("reopen stdout: %w", err)
	}
	errf, err := openLog(stderr)
	if err != nil {
		return fmt.Errorf("reopen stderr: %w", err)
	}
	for fd, f := range []*os.File{stdin, out, errf} {
		if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
			return fmt.Errorf("reopen stdio fd %d: %w", fd, err)
		}
		f.Close()
	}
	return nil
}
