package daemon

import (
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/migshm/migshm/internal/procfs"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// NewLogger returns the daemon's logger: text lines on stderr at the given level.
func NewLogger(level string) (*slog.Logger, error) {
	l, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// slogErrorLog adapts net/http's error log (TLS handshake failures of refused peers
// land there) to slog at warn level.
func slogErrorLog(l *slog.Logger, component string) *log.Logger {
	return log.New(slogWriter{l.With("component", component)}, "", 0)
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Warn(strings.TrimSpace(string(p)))
	return len(p), nil
}

// sdNotify sends a state line to systemd if it started us with Type=notify; without
// NOTIFY_SOCKET it does nothing.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// listenUnix binds the local API socket with mode 0600 in a 0700 directory. A stale
// socket file left by a killed daemon is replaced; a live one is an error (another
// daemon serves it).
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("local api: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("local api: another daemon is serving %s; stop it or use another --socket", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("local api: remove stale %s: %w", path, err)
	}
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("local api: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("local api: %w", err)
	}
	return ln, nil
}

// mountImages mounts a tmpfs of its own at dir (source workload.ImagesMountSource,
// mode 0700, transparent huge pages where the kernel has them for tmpfs) unless dir is a
// mount point already, which is then the operator's and left as it is. One of ours left
// by a daemon that did not stop cleanly is taken over. It returns what unmounts ours.
func mountImages(log *slog.Logger, dir string) (func(), error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("image-tmpfs: %w", err)
	}
	mounts, err := procfs.ParseMountinfo(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("image-tmpfs: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image-tmpfs: %w", err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	unmount := func() { _ = unix.Unmount(abs, unix.MNT_DETACH) }
	for i := len(mounts) - 1; i >= 0; i-- { // the last mount at a point is the one seen
		if m := mounts[i]; m.Point == abs {
			if m.FSType == "tmpfs" && m.Source == workload.ImagesMountSource {
				log.Info("image-dir: taking over the tmpfs an earlier run mounted", "image_dir", abs)
				return unmount, nil
			}
			log.Info("image-dir is a mount point already: used as it is (image-tmpfs does nothing)", "image_dir", abs, "fstype", m.FSType)
			return func() {}, nil
		}
	}
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	huge := true
	err = unix.Mount(workload.ImagesMountSource, abs, "tmpfs", flags, "mode=0700,huge=within_size")
	if errors.Is(err, unix.EINVAL) { // a kernel without huge pages for tmpfs
		huge = false
		err = unix.Mount(workload.ImagesMountSource, abs, "tmpfs", flags, "mode=0700")
	}
	if err != nil {
		return nil, fmt.Errorf("image-tmpfs: mount a tmpfs at %s: %w (set image-tmpfs = false to use the directory as it is)", abs, err)
	}
	log.Info("image-dir: mounted a tmpfs of its own", "image_dir", abs, "huge_pages", huge)
	return unmount, nil
}

// noteShmHugePages says, once at start, when SysV segments cannot be on huge pages: the
// frozen window's dump and restore of a segment then fault 4 KiB at a time. Changing
// it is the operator's call (it changes every program's shm), so it is only said.
func noteShmHugePages(log *slog.Logger) {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
	if err != nil {
		return
	}
	if s := string(b); strings.Contains(s, "[never]") || strings.Contains(s, "[deny]") {
		log.Info("SysV segments are on 4 KiB pages (transparent_hugepage/shmem_enabled is never): "+
			"CRIU dumps and restores them about 2x slower while the workload is frozen; "+
			"within_size puts them on huge pages (see deploy/systemd/README.md, tuning)", "shmem_enabled", strings.TrimSpace(s))
	}
}

// warnIfNotTmpfs logs a warning when dir is not on a tmpfs: migration images are
// written there while the workload is frozen.
func warnIfNotTmpfs(log *slog.Logger, dir string) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return
	}
	if st.Type != unix.TMPFS_MAGIC {
		log.Warn("image-dir is not a tmpfs: the final dump of every migration, made while the workload is frozen, "+
			"runs at disk speed; point image-dir at a tmpfs (systemd's RuntimeDirectory /run/migshmd is one)", "image_dir", dir)
	}
}

// CloseExecFrom marks every open file descriptor >= minFd close-on-exec (runc's
// utils.CloseExecFrom), so none of them reaches a child process.
func CloseExecFrom(minFd int) error {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list own file descriptors: %w", err)
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < minFd {
			continue
		}
		// The directory listing's own fd is gone by now: EBADF is fine.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return fmt.Errorf("set close-on-exec on fd %d: %w", fd, err)
		}
	}
	return nil
}
