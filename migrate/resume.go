package migrate

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/migshm/migshm/internal/procfs"
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
	cont := func(ps []procfs.Stat) error {
		for _, p := range ps {
			if err := unix.Kill(p.Pid, unix.SIGCONT); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("resume tree of pid %d: SIGCONT to %d (%s): %w", initPid, p.Pid, p.Comm, err)
			}
		}
		return nil
	}
	if err := cont(procs); err != nil {
		return err
	}
	for {
		var stopped []procfs.Stat
		var states []string // of the stopped processes' threads
		for _, p := range procs {
			st, err := procfs.ReadTaskStates(procRoot, p.Pid)
			if errors.Is(err, procfs.ErrNoProcess) {
				continue // gone: not stopped
			}
			if err != nil {
				return fmt.Errorf("resume tree of pid %d: %w", initPid, err)
			}
			if strings.ContainsAny(st, "Tt") {
				stopped = append(stopped, p)
				states = append(states, st)
			}
		}
		if len(stopped) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			s := make([]string, len(stopped))
			for i, p := range stopped {
				s[i] = fmt.Sprintf("%d (%s) in state %s", p.Pid, p.Comm, states[i])
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

// descendants returns the process initPid and every process below it, from one read of
// procRoot.
func descendants(procRoot string, initPid int) ([]procfs.Stat, error) {
	pids, err := procfs.ListPids(procRoot)
	if err != nil {
		return nil, err
	}
	byPid := map[int]procfs.Stat{}
	children := map[int][]int{}
	for _, pid := range pids {
		p, err := procfs.ReadStat(procRoot, pid)
		if errors.Is(err, procfs.ErrNoProcess) {
			continue
		}
		if err != nil {
			return nil, err
		}
		byPid[pid] = p
		children[p.PPid] = append(children[p.PPid], pid)
	}
	root, ok := byPid[initPid]
	if !ok {
		return nil, fmt.Errorf("pid %d: %w", initPid, workload.ErrNoProcess)
	}
	out := []procfs.Stat{root}
	seen := map[int]bool{initPid: true}
	for i := 0; i < len(out); i++ {
		for _, c := range children[out[i].Pid] {
			if !seen[c] {
				seen[c] = true
				out = append(out, byPid[c])
			}
		}
	}
	return out, nil
}
