// Package procfs is migshm's one reader of the Linux proc file system's process and
// memory files. It owns their formats: the listing of pids, /proc/PID/stat (and the
// stat of every thread under task/), /proc/PID/maps, the fields of /proc/PID/status
// migshm uses (Name, PPid, NSpid, RssAnon), the anonymous memory of smaps_rollup, and
// /proc/meminfo. Files that only one reader needs (fd and fdinfo, net/tcp, sysvipc/shm)
// are read where they are used.
//
// Each parser takes an io.Reader and each reader a proc root (normally "/proc"), so
// fixtures under testdata drive the tests. A pid whose files are missing, or whose
// process was reaped while a file of it was being read (ESRCH), gives an error wrapping
// ErrNoProcess; every other failure names the pid and the file.
package procfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// ErrNoProcess is returned when a pid does not name a live process (zombies are live
// until reaped).
var ErrNoProcess = errors.New("no such process")

// fileErr reports a failed open or read of a process's file. A missing file means the
// process is gone; so does ESRCH, which a read of a file opened before the process was
// reaped fails with. Both keep the underlying error as well.
func fileErr(pid int, file string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pid %d: %s: %w (%w)", pid, file, ErrNoProcess, err)
	}
	return fmt.Errorf("pid %d: %s: %w", pid, file, err)
}

// path is the file elem of process pid under procRoot.
func path(procRoot string, pid int, elem ...string) string {
	return filepath.Join(append([]string{procRoot, strconv.Itoa(pid)}, elem...)...)
}

// ListPids returns every process id under procRoot, ascending.
func ListPids(procRoot string) ([]int, error) {
	return listNumbers(procRoot)
}

// listNumbers returns the names of dir that are positive numbers, ascending.
func listNumbers(dir string) ([]int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}
