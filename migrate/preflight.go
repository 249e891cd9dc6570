package migrate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/migshm/migshm/workload"
)

// Preflight decides, from /proc alone and before anything is dumped, whether the workload
// containing a pid can be moved with its SysV shared memory intact.
type Preflight struct {
	// ProcRoot is the proc file system to read; empty means "/proc".
	ProcRoot string
	// HostIPCNS is the identity of the IPC namespace CRIU runs in (the daemon's own,
	// e.g. "ipc:[4026531839]"); empty means this process's.
	HostIPCNS string
}

// Check returns the workload tree of pid when it can be moved, or a *NotMovableError that
// says why not (or ErrNoProcess-wrapped error for an unknown pid). It only reads.
func (pf Preflight) Check(pid int) (*workload.Tree, error) {
	root := pf.ProcRoot
	if root == "" {
		root = "/proc"
	}
	host := pf.HostIPCNS
	if host == "" {
		var err error
		if host, err = os.Readlink(filepath.Join(root, "self", "ns", "ipc")); err != nil {
			return nil, fmt.Errorf("read own IPC namespace: %w", err)
		}
	}
	self, err := workload.ReadProc(root, pid)
	if err != nil {
		return nil, err
	}
	// Processes hidden from root cannot have joined a namespace this daemon's workloads
	// own without root's help; they are left out of the sharers check.
	all, _, err := workload.ReadAll(root)
	if err != nil {
		return nil, fmt.Errorf("read processes: %w", err)
	}
	return checkMovable(all, self, host)
}

func checkMovable(all []workload.Proc, self workload.Proc, hostIPC string) (*workload.Tree, error) {
	pid := self.Pid
	refuse := func(r Reason, procs []workload.Proc, format string, args ...any) error {
		return &NotMovableError{Pid: pid, Reason: r, Procs: procs, Detail: fmt.Sprintf(format, args...)}
	}
	tree, err := workload.FindTree(all, pid)
	var members []workload.Proc
	if err == nil {
		members = tree.Procs
	} else {
		members = []workload.Proc{self}
	}

	// SysV attached in the host IPC namespace is the most specific diagnosis: say it first.
	var hostSysV []workload.Proc
	var ids []string
	for _, p := range members {
		if p.IPCNS == hostIPC && len(p.SysV) > 0 {
			hostSysV = append(hostSysV, p)
			for _, a := range p.SysV {
				ids = append(ids, fmt.Sprintf("shmid %d key %#x", a.Shmid, a.Key))
			}
		}
	}
	if len(hostSysV) > 0 {
		return nil, refuse(ReasonHostIPCSysV, hostSysV,
			"%s has SysV shared memory attached in the host IPC namespace (%s); CRIU can move SysV "+
				"segments only when the workload has an IPC namespace of its own: start it with "+
				"`migshm run -- CMD`", procList(hostSysV), strings.Join(ids, ", "))
	}
	if errors.Is(err, workload.ErrNoProcess) {
		// pid exited between the two reads of /proc: there is nothing to refuse.
		return nil, err
	}
	if err != nil && !errors.Is(err, workload.ErrNotInPidNS) {
		// In a PID namespace, but not below its init (entered with setns, say).
		return nil, refuse(ReasonNoPidNS, []workload.Proc{self},
			"%v, so CRIU cannot dump it as part of a workload: start it with `migshm run -- CMD`", err)
	}
	if err != nil {
		return nil, refuse(ReasonNoPidNS, []workload.Proc{self},
			"%s is not inside a PID namespace of its own, so CRIU cannot restore it with the same pids "+
				"on another node: start it with `migshm run -- CMD`", self)
	}

	ipc := tree.Init.IPCNS
	var mixed, nested []workload.Proc
	for _, p := range tree.Procs {
		if p.IPCNS != ipc {
			mixed = append(mixed, p)
		}
		if p.PidNS != tree.Init.PidNS {
			nested = append(nested, p)
		}
	}
	if len(nested) > 0 {
		return nil, refuse(ReasonNestedPidNS, nested,
			"%s run in a nested PID namespace inside the workload; CRIU cannot dump nested PID namespaces",
			procList(nested))
	}
	if len(mixed) > 0 {
		return nil, refuse(ReasonMixedIPC, mixed,
			"%s live in another IPC namespace than the workload's init %s; CRIU dumps one IPC namespace per tree",
			procList(mixed), tree.Init)
	}
	if ipc == hostIPC {
		return nil, refuse(ReasonHostIPC, []workload.Proc{tree.Init},
			"the workload of %s shares the host IPC namespace; it needs one of its own: start it with "+
				"`migshm run -- CMD`", tree.Init)
	}
	if orphans := orphanSessions(tree); len(orphans) > 0 {
		return nil, refuse(ReasonOrphanSession, orphans,
			"%s belong to a session whose leader has exited (a program that forked, called setsid and "+
				"forked again) and are not children of the tree's init %s; CRIU can restore such a session only "+
				"for the init's children: run the program as a workload alone (without --ipc-group), or in the "+
				"foreground (its --foreground or --no-daemon option)", procList(orphans), tree.Init)
	}
	var entered []workload.Proc
	for _, p := range all {
		if p.PidNS == tree.Init.PidNS && !tree.Contains(p.Pid) {
			entered = append(entered, p)
		}
	}
	if len(entered) > 0 {
		return nil, refuse(ReasonPidShared, entered,
			"%s entered the PID namespace of the workload of %s from outside (nsenter/setns); they are not "+
				"part of its process tree, so CRIU would leave them behind: stop them first",
			procList(entered), tree.Init)
	}
	var outside []workload.Proc
	for _, p := range all {
		if p.IPCNS == ipc && !tree.Contains(p.Pid) {
			outside = append(outside, p)
		}
	}
	if len(outside) > 0 {
		return nil, refuse(ReasonIPCShared, outside,
			"the IPC namespace %s of the workload of %s is also used by %s outside the workload; moving "+
				"it would silently split every segment they share: stop them, or make them part of the workload",
			ipc, tree.Init, procList(outside))
	}
	return tree, nil
}

// orphanSessions returns the processes of tree CRIU cannot restore the session of: as
// CRIU's prepare_pstree_ids decides, a process not leading its session, in another
// session than its parent's, with no ancestor in the tree leading that session, and not
// a child of the init (for which CRIU recreates the session with a helper).
func orphanSessions(tree *workload.Tree) []workload.Proc {
	byPid := make(map[int]workload.Proc, len(tree.Procs))
	for _, p := range tree.Procs {
		byPid[p.Pid] = p
	}
	nspid := func(p workload.Proc) int { return p.NSpid[len(p.NSpid)-1] }
	var out []workload.Proc
	for _, p := range tree.Procs {
		parent, ok := byPid[p.PPid]
		if p.Pid == tree.Init.Pid || !ok || p.Sid == 0 || p.Sid == nspid(p) || parent.Sid == p.Sid ||
			parent.Pid == tree.Init.Pid {
			continue
		}
		found := false
		for a, ok := parent, true; ok; a, ok = byPid[a.PPid] {
			if nspid(a) == p.Sid {
				found = true
				break
			}
			if a.Pid == tree.Init.Pid {
				break
			}
		}
		if !found {
			out = append(out, p)
		}
	}
	return out
}

func procList(ps []workload.Proc) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	if len(s) == 1 {
		return "process " + s[0]
	}
	return "processes " + strings.Join(s, ", ")
}
