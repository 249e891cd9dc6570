package procfs

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat is what /proc/PID/stat (or /proc/PID/task/TID/stat) says of a process (or
// thread), as far as migshm cares.
type Stat struct {
	Pid   int
	Comm  string // may hold spaces and parentheses
	State byte   // R, S, D, T (stopped), t (traced), Z, ...
	PPid  int
	// UTime and STime are the CPU time spent in user and kernel mode, in clock ticks
	// (USER_HZ); StartTime is when the process started, in clock ticks since boot.
	UTime, STime, StartTime uint64
}

// CPUTicks is the CPU time the process used, in clock ticks: UTime + STime.
func (s Stat) CPUTicks() uint64 { return s.UTime + s.STime }

// ParseStat parses one stat line: "pid (comm) state ppid ...". comm may hold spaces and
// parentheses, so the fields after it are read after the last ')'. Every field up to
// starttime (field 22) must be there.
func ParseStat(b []byte) (Stat, error) {
	s := strings.TrimRight(string(b), "\n")
	open := strings.IndexByte(s, '(')
	closing := strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return Stat{}, fmt.Errorf("bad stat %q: no (comm)", s)
	}
	var st Stat
	var err error
	if st.Pid, err = strconv.Atoi(strings.TrimSpace(s[:open])); err != nil {
		return Stat{}, fmt.Errorf("bad stat %q: pid", s)
	}
	st.Comm = s[open+1 : closing]
	// f[0] is field 3 (state): field n is f[n-3].
	f := strings.Fields(s[closing+1:])
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("bad stat %q: %d fields after comm, want at least 20", s, len(f))
	}
	if len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("bad stat %q: state %q", s, f[0])
	}
	st.State = f[0][0]
	ppid, err1 := strconv.Atoi(f[1])
	ut, err2 := strconv.ParseUint(f[11], 10, 64)
	stime, err3 := strconv.ParseUint(f[12], 10, 64)
	start, err4 := strconv.ParseUint(f[19], 10, 64)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return Stat{}, fmt.Errorf("bad stat %q: %w", s, err)
	}
	st.PPid, st.UTime, st.STime, st.StartTime = ppid, ut, stime, start
	return st, nil
}

// ReadStat reads /proc/PID/stat under procRoot.
func ReadStat(procRoot string, pid int) (Stat, error) {
	return readStat(path(procRoot, pid, "stat"), pid, "stat")
}

func readStat(file string, pid int, name string) (Stat, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return Stat{}, fileErr(pid, name, err)
	}
	st, err := ParseStat(b)
	if err != nil {
		return Stat{}, fmt.Errorf("pid %d: %s: %w", pid, name, err)
	}
	return st, nil
}

// ReadTaskStates returns the state of every thread of process pid, one letter each
// (see Stat.State), in thread id order. Threads that exit while it reads are left out.
func ReadTaskStates(procRoot string, pid int) (string, error) {
	tids, err := listNumbers(path(procRoot, pid, "task"))
	if err != nil {
		return "", fileErr(pid, "task", err)
	}
	var b strings.Builder
	for _, tid := range tids {
		name := "task/" + strconv.Itoa(tid) + "/stat"
		st, err := readStat(path(procRoot, pid, "task", strconv.Itoa(tid), "stat"), pid, name)
		if errors.Is(err, ErrNoProcess) {
			continue
		}
		if err != nil {
			return "", err
		}
		b.WriteByte(st.State)
	}
	return b.String(), nil
}
