package migrate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

// resumePoll is how often Resume looks at the tree again.
const resumePoll = 10 * time.Millisecond

// Resume continues a tree CRIU left stopped (DumpOptions.LeaveStopped, or a restore with
// RestoreOptions.LeaveStopped): SIGCONT to every process of the tree rooted at initPid,
// then waits (up to timeout) until none is stopped (state T or t in /proc/PID/stat, any
// thread). It is how an aborted migration gives the workload back on the source, and how
// the target starts a committed one. procRoot is where it reads; signals go to the pids
// read there, so it must show this process's PID namespace.
//
// Every process gets SIGCONT, stopped or not: CRIU stops the tree with a SIGSTOP that a
// process may not have taken yet, and SIGCONT discards it.
func Resume(procRoot string, initPid int, timeout time.Duration) error {
	if procRoot == "" {
		procRoot = "/proc"
	}
	procs, err := descendants(procRoot, initPid)
	if err != nil {
		return fmt.Errorf("resume tree of pid %d: %w", initPid, err)
	}
	deadline := time.Now().Add(timeout)
	cont := func(ps []statProc) error {
		for _, p := range ps {
			if err := unix.Kill(p.pid, unix.SIGCONT); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("resume tree of pid %d: SIGCONT to %d (%s): %w", initPid, p.pid, p.comm, err)
			}
		}
		return nil
	}
	if err := cont(procs); err != nil {
		return err
	}
	for {
		var stopped []statProc
		for _, p := range procs {
			st, err := taskStates(procRoot, p.pid)
			if err != nil {
				return fmt.Errorf("resume tree of pid %d: %w", initPid, err)
			}
			if strings.ContainsAny(st, "Tt") {
				p.state = st
				stopped = append(stopped, p)
			}
		}
		if len(stopped) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			s := make([]string, len(stopped))
			for i, p := range stopped {
				s[i] = fmt.Sprintf("%d (%s) in state %s", p.pid, p.comm, p.state)
			}
			return fmt.Errorf("resume tree of pid %d: still stopped after %v: %s (a tracer holds it?)",
				initPid, timeout, strings.Join(s, ", "))
		}
		// A stop signal that arrived after the first SIGCONT: send another.
		if err := cont(stopped); err != nil {
			return err
		}
		time.Sleep(resumePoll)
	}
}

// statProc is what /proc/PID/stat says of a process.
type statProc struct {
	pid, ppid int
	comm      string
	state     string
}

// parseStat parses /proc/PID/stat: "pid (comm) S ppid ...", where comm may hold spaces
// and parentheses.
func parseStat(s string) (statProc, error) {
	open := strings.IndexByte(s, '(')
	closing := strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return statProc{}, fmt.Errorf("bad stat %q", s)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(s[:open]))
	if err != nil {
		return statProc{}, fmt.Errorf("bad stat %q", s)
	}
	f := strings.Fields(s[closing+1:])
	if len(f) < 2 {
		return statProc{}, fmt.Errorf("bad stat %q", s)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return statProc{}, fmt.Errorf("bad stat %q", s)
	}
	return statProc{pid: pid, ppid: ppid, comm: s[open+1 : closing], state: f[0]}, nil
}

func readStat(path string) (statProc, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return statProc{}, err
	}
	return parseStat(string(b))
}

// descendants returns the process initPid and every process below it, from one read of
// procRoot.
func descendants(procRoot string, initPid int) ([]statProc, error) {
	pids, err := workload.ListPids(procRoot)
	if err != nil {
		return nil, err
	}
	byPid := map[int]statProc{}
	children := map[int][]int{}
	for _, pid := range pids {
		p, err := readStat(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
		if gone(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pid %d: %w", pid, err)
		}
		byPid[pid] = p
		children[p.ppid] = append(children[p.ppid], pid)
	}
	root, ok := byPid[initPid]
	if !ok {
		return nil, fmt.Errorf("pid %d: %w", initPid, workload.ErrNoProcess)
	}
	out := []statProc{root}
	seen := map[int]bool{initPid: true}
	for i := 0; i < len(out); i++ {
		for _, c := range children[out[i].pid] {
			if !seen[c] {
				seen[c] = true
				out = append(out, byPid[c])
			}
		}
	}
	return out, nil
}

// taskStates returns the states of every thread of pid, one letter each ("" once the
// process is gone; a zombie reads "Z").
func taskStates(procRoot string, pid int) (string, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if gone(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("pid %d: %w", pid, err)
	}
	var b strings.Builder
	for _, e := range ents {
		p, err := readStat(filepath.Join(dir, e.Name(), "stat"))
		if gone(err) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("pid %d task %s: %w", pid, e.Name(), err)
		}
		b.WriteString(p.state)
	}
	return b.String(), nil
}
