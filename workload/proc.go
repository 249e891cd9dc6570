package workload

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/migshm/migshm/internal/procfs"
)

// ErrNoProcess is returned when a pid does not name a live process. It is
// procfs.ErrNoProcess: errors of either package match it.
var ErrNoProcess = procfs.ErrNoProcess

// Proc is what the /proc readers learn about one process.
type Proc struct {
	Pid   int    // host pid (as seen in the proc root that was read)
	PPid  int    // host pid of the parent
	Comm  string // command name
	NSpid []int  // pid in each nested PID namespace, outermost first (status "NSpid:")
	// Sid is its session id as its own PID namespace sees it (the last of "NSsid:"); 0
	// if unknown.
	Sid   int
	PidNS string // identity of its PID namespace, e.g. "pid:[4026532201]"
	IPCNS string // identity of its IPC namespace
	// SysV lists the SysV shm segments it has attached (from /proc/PID/maps).
	SysV []Attachment
}

// Attachment is one SysV shm segment mapped into a process.
type Attachment struct {
	Shmid int
	Key   uint32
}

// String formats a process for error messages: "1234 (postgres)".
func (p Proc) String() string { return fmt.Sprintf("%d (%s)", p.Pid, p.Comm) }

// ReadProc reads what Proc describes for one pid under procRoot (normally "/proc").
func ReadProc(procRoot string, pid int) (Proc, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	p := Proc{Pid: pid}
	st, err := procfs.ReadStatus(procRoot, pid)
	if err != nil {
		return p, err
	}
	if len(st.NSpid) == 0 {
		return p, fmt.Errorf("pid %d: status: no NSpid line (kernel older than 4.1?)", pid)
	}
	p.Comm, p.PPid, p.NSpid = st.Name, st.PPid, st.NSpid
	if len(st.NSsid) > 0 {
		p.Sid = st.NSsid[len(st.NSsid)-1]
	}
	if p.PidNS, err = os.Readlink(filepath.Join(dir, "ns", "pid")); err != nil {
		return p, nsErr(pid, err)
	}
	if p.IPCNS, err = os.Readlink(filepath.Join(dir, "ns", "ipc")); err != nil {
		return p, nsErr(pid, err)
	}
	maps, err := procfs.ReadMaps(procRoot, pid)
	if err != nil {
		return p, err
	}
	p.SysV = attachments(maps)
	return p, nil
}

func nsErr(pid int, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	return fmt.Errorf("pid %d: %w", pid, err)
}

// attachments returns the SysV shm segments attached in a process's mappings, in
// address order; one segment attached twice is listed once.
func attachments(maps []procfs.Mapping) []Attachment {
	var out []Attachment
	seen := map[int]bool{}
	for _, m := range maps {
		id, key, ok := m.SysV()
		if !ok || seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, Attachment{Shmid: id, Key: key})
	}
	return out
}

// ReadAll reads every process under procRoot. Processes that exit while it reads are
// left out; processes the kernel does not let even root inspect (a sandbox's own
// non-dumpable PID 1, say) are left out and their pids returned as hidden.
func ReadAll(procRoot string) (procs []Proc, hidden []int, err error) {
	pids, err := procfs.ListPids(procRoot)
	if err != nil {
		return nil, nil, err
	}
	procs = make([]Proc, 0, len(pids))
	for _, pid := range pids {
		p, err := ReadProc(procRoot, pid)
		if errors.Is(err, ErrNoProcess) {
			continue
		}
		if errors.Is(err, fs.ErrPermission) {
			hidden = append(hidden, pid)
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		procs = append(procs, p)
	}
	return procs, hidden, nil
}
