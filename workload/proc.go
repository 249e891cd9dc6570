package workload

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// ErrNoProcess is returned when a pid does not name a live process.
var ErrNoProcess = errors.New("no such process")

// Proc is what the /proc readers learn about one process.
type Proc struct {
	Pid   int    // host pid (as seen in the proc root that was read)
	PPid  int    // host pid of the parent
	Comm  string // command name
	NSpid []int  // pid in each nested PID namespace, outermost first (status "NSpid:")
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
	f, err := os.Open(filepath.Join(dir, "status"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return p, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		return p, err
	}
	err = parseStatus(f, &p)
	f.Close()
	if err != nil {
		return p, readErr(pid, "status", err)
	}
	if p.PidNS, err = os.Readlink(filepath.Join(dir, "ns", "pid")); err != nil {
		return p, nsErr(pid, err)
	}
	if p.IPCNS, err = os.Readlink(filepath.Join(dir, "ns", "ipc")); err != nil {
		return p, nsErr(pid, err)
	}
	m, err := os.Open(filepath.Join(dir, "maps"))
	if err != nil {
		return p, nsErr(pid, err)
	}
	p.SysV, err = ParseSysVMaps(m)
	m.Close()
	if err != nil {
		return p, readErr(pid, "maps", err)
	}
	return p, nil
}

// readErr reports a failed read of an opened /proc file. Reading a file of a process
// that was reaped after the open fails with ESRCH: that process is gone, not broken.
func readErr(pid int, file string, err error) error {
	if errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pid %d: %s: %w (%w)", pid, file, ErrNoProcess, err)
	}
	return fmt.Errorf("pid %d: %s: %w", pid, file, err)
}

func nsErr(pid int, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	return fmt.Errorf("pid %d: %w", pid, err)
}

func parseStatus(r io.Reader, p *Proc) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Name":
			p.Comm = v
		case "PPid":
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("bad PPid %q", v)
			}
			p.PPid = n
		case "NSpid":
			for _, f := range strings.Fields(v) {
				n, err := strconv.Atoi(f)
				if err != nil {
					return fmt.Errorf("bad NSpid %q", v)
				}
				p.NSpid = append(p.NSpid, n)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(p.NSpid) == 0 {
		return errors.New("no NSpid line (kernel older than 4.1?)")
	}
	return nil
}

// ParseSysVMaps returns the SysV shm segments in a /proc/PID/maps listing. The kernel
// shows them as mappings of "/SYSV<key in hex>" whose inode column is the shmid; one
// segment attached twice is listed once.
func ParseSysVMaps(r io.Reader) ([]Attachment, error) {
	var out []Attachment
	seen := map[int]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// address perms offset dev inode path [(deleted)]
		if len(f) < 6 || !strings.HasPrefix(f[5], "/SYSV") {
			continue
		}
		key, err := strconv.ParseUint(strings.TrimPrefix(f[5], "/SYSV"), 16, 32)
		if err != nil {
			continue // a real file that happens to be called /SYSV...
		}
		id, err := strconv.Atoi(f[4])
		if err != nil {
			return nil, fmt.Errorf("bad inode %q in %q", f[4], sc.Text())
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, Attachment{Shmid: id, Key: uint32(key)})
	}
	return out, sc.Err()
}

// ListPids returns every process id under procRoot, ascending.
func ListPids(procRoot string) ([]int, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > 0 {
			pids = append(pids, n)
		}
	}
	sort.Ints(pids)
	return pids, nil
}

// ReadAll reads every process under procRoot. Processes that exit while it reads are
// left out; processes the kernel does not let even root inspect (a sandbox's own
// non-dumpable PID 1, say) are left out and their pids returned as hidden.
func ReadAll(procRoot string) (procs []Proc, hidden []int, err error) {
	pids, err := ListPids(procRoot)
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
