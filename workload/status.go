package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/migshm/migshm/internal/atomicfile"
	"github.com/migshm/migshm/internal/procfs"
	"golang.org/x/sys/unix"
)

// ExitRecord is what a workload's init writes to Spec.StatusFile when its command ends.
type ExitRecord struct {
	Status int   `json:"status"` // exit status, or 128+signal
	At     int64 `json:"at"`     // unix nanos
}

// writeExitStatus records status atomically and durably (atomicfile) so a reader never
// sees half a record.
func writeExitStatus(path string, status int) error {
	b, err := json.Marshal(ExitRecord{Status: status, At: time.Now().UnixNano()})
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}

// ErrNoExitRecord is returned by ReadExitStatus when the init left no record (it was
// killed with SIGKILL, or the command is still running).
var ErrNoExitRecord = errors.New("no exit record")

// ReadExitStatus reads the record the init wrote to a Spec.StatusFile.
func ReadExitStatus(path string) (ExitRecord, error) {
	var r ExitRecord
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, fmt.Errorf("read exit status %s: %w", path, ErrNoExitRecord)
	}
	if err != nil {
		return r, fmt.Errorf("read exit status: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("read exit status %s: %w", path, err)
	}
	return r, nil
}

// StartTime returns the start time of process pid in clock ticks since boot (field 22
// of /proc/PID/stat). A pid together with its start time names one process for good:
// a recycled pid has a later start time.
func StartTime(procRoot string, pid int) (uint64, error) {
	st, err := procfs.ReadStat(procRoot, pid)
	return st.StartTime, err
}

// Watch follows a process that is not (or no longer) this process's child, such as the
// init of a workload started by an earlier run of the daemon: it holds a pidfd, so the
// pid cannot be confused with a recycled one once Watch returned.
type Watch struct {
	Pid int
	fd  int
}

// WatchProcess opens a pidfd for pid and checks that the process is the one that started
// at startTime (see StartTime); otherwise it returns an error wrapping ErrNoProcess.
func WatchProcess(pid int, startTime uint64) (*Watch, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// Check the start time after opening the pidfd: if the pid was recycled before the
	// open, the start time differs; if it is recycled after, the pidfd still names ours.
	st, err := StartTime("/proc", pid)
	if err != nil || st != startTime {
		unix.Close(fd)
		return nil, fmt.Errorf("pid %d is not the process started at tick %d: %w", pid, startTime, ErrNoProcess)
	}
	return &Watch{Pid: pid, fd: fd}, nil
}

// Wait blocks until the process has exited or ctx is done. Exited includes zombies: the
// process is gone, whoever reaps it.
func (w *Watch) Wait(ctx context.Context) error {
	for {
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll pidfd of %d: %w", w.Pid, err)
		}
		if n > 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Signal sends sig to the watched process through its pidfd.
func (w *Watch) Signal(sig unix.Signal) error {
	return unix.PidfdSendSignal(w.fd, sig, nil, 0)
}

// Close releases the pidfd.
func (w *Watch) Close() error { return unix.Close(w.fd) }
