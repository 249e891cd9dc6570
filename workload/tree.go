package workload

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
)

// ErrNotInPidNS is returned by FindTree for a process that lives in the reader's own PID
// namespace: it is not under a workload init, so there is no tree CRIU could restore
// with the same pids.
var ErrNotInPidNS = errors.New("process does not live in its own PID namespace")

// Tree is a workload's process tree as read from /proc.
type Tree struct {
	// Init is PID 1 of the workload's PID namespace.
	Init Proc
	// Procs is every process of the tree, the init included, by ascending pid.
	Procs []Proc
}

// FindTree finds, among all (a full read of /proc), the workload tree that process pid
// belongs to: the init is the ancestor that is PID 1 of pid's PID namespace, and the
// tree is every descendant of it (orphans inside a PID namespace are adopted by its
// init, so that is the whole namespace).
func FindTree(all []Proc, pid int) (*Tree, error) {
	byPid, children := index(all)
	p, ok := byPid[pid]
	if !ok {
		return nil, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	if len(p.NSpid) < 2 {
		return nil, fmt.Errorf("pid %d (%s): %w", p.Pid, p.Comm, ErrNotInPidNS)
	}
	init := p
	// all is read one process at a time, so a pid reused during the read can make the
	// parent links loop: never visit a process twice.
	seen := map[int]bool{init.Pid: true}
	for !(init.NSpid[len(init.NSpid)-1] == 1 && len(init.NSpid) == len(p.NSpid)) {
		parent, ok := byPid[init.PPid]
		if !ok || len(parent.NSpid) < len(p.NSpid) || seen[parent.Pid] {
			return nil, fmt.Errorf("pid %d (%s): cannot find the init of its PID namespace %s", p.Pid, p.Comm, p.PidNS)
		}
		seen[parent.Pid] = true
		init = parent
	}
	return subtree(byPid, children, init), nil
}

// FindSubtree returns pid and every process under it: a member of an IPC group, whose
// tree is part of its group's (FindTree gives the whole group). Init is pid's process.
func FindSubtree(all []Proc, pid int) (*Tree, error) {
	byPid, children := index(all)
	p, ok := byPid[pid]
	if !ok {
		return nil, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	return subtree(byPid, children, p), nil
}

// index maps all by pid, and each pid to its children's pids.
func index(all []Proc) (map[int]Proc, map[int][]int) {
	byPid := make(map[int]Proc, len(all))
	children := make(map[int][]int)
	for _, p := range all {
		byPid[p.Pid] = p
		children[p.PPid] = append(children[p.PPid], p.Pid)
	}
	return byPid, children
}

func subtree(byPid map[int]Proc, children map[int][]int, init Proc) *Tree {
	t := &Tree{Init: init}
	queue := []int{init.Pid}
	seen := map[int]bool{init.Pid: true}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		t.Procs = append(t.Procs, byPid[cur])
		for _, c := range children[cur] {
			if !seen[c] {
				seen[c] = true
				queue = append(queue, c)
			}
		}
	}
	sort.Slice(t.Procs, func(i, j int) bool { return t.Procs[i].Pid < t.Procs[j].Pid })
	return t
}

// Pids returns the host pids of the tree's processes, sorted.
func (t *Tree) Pids() []int {
	pids := make([]int, 0, len(t.Procs))
	for _, p := range t.Procs {
		pids = append(pids, p.Pid)
	}
	slices.Sort(pids)
	return pids
}

// Contains reports whether pid is part of the tree.
func (t *Tree) Contains(pid int) bool {
	for _, p := range t.Procs {
		if p.Pid == pid {
			return true
		}
	}
	return false
}

// Segments returns the distinct SysV segments attached anywhere in the tree, by shmid.
func (t *Tree) Segments() []Attachment {
	seen := map[int]bool{}
	var out []Attachment
	for _, p := range t.Procs {
		for _, a := range p.SysV {
			if !seen[a.Shmid] {
				seen[a.Shmid] = true
				out = append(out, a)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Shmid < out[j].Shmid })
	return out
}

// Signal sends sig to every process of the tree; processes already gone are skipped.
// Used to resume (SIGCONT) a tree CRIU left stopped.
func (t *Tree) Signal(sig os.Signal) error {
	var errs []error
	for _, p := range t.Procs {
		proc, _ := os.FindProcess(p.Pid)
		if err := proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("signal %d: %w", p.Pid, err))
		}
	}
	return errors.Join(errs...)
}
