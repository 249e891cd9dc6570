package supervisor

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

// A workload has one of two shapes, and a migration moves either as one tree:
//
//   - Alone (run without --ipc-group): its init is PID 1 of its own PID, IPC, UTS and
//     mount namespaces and runs its command (workload.Start). Record.GroupPid is its
//     InitPid, NSPid 1, GroupDir empty.
//   - A member of a named IPC group: the group init is PID 1 of the group's namespaces
//     and each member is a member init (a child subreaper) under it, running the
//     member's command (workload.StartGroup, JoinGroup).
//
// The shapes differ because of what CRIU restores: a process whose session leader has
// exited (a daemon that forked, called setsid and forked again) can be restored only as
// a child of the tree's init, where CRIU recreates the session with a helper. Alone, a
// daemonized program is the init's child; in a group it is its member init's, and such
// a group cannot move (migrate's preflight says so).

// groupRoot holds one request directory per group (workload.GroupSpec.Dir). A group keeps
// its directory's path when it moves, so the path must not name the node.
const groupRoot = "/run/migshm/groups"

// localGroup is the init of an IPC group running on this node.
type localGroup struct {
	name  string
	pid   int
	start uint64
	dir   string
	watch *workload.Watch
	proc  *workload.Process // non-nil if this daemon is its parent (it must reap it)
	gone  chan struct{}     // closed once the init exited
	// moved is set when the group moved to another node and this copy is being removed.
	moved atomic.Bool
}

func (g *localGroup) isGone() bool {
	select {
	case <-g.gone:
		return true
	default:
		return false
	}
}

// watchGroup follows the init of a group (s.mu held by the caller): once it exits (its
// last member did) it is reaped and its directory removed, unless the group moved away
// and the directory is the one its new node uses.
func (s *Supervisor) watchGroup(g *localGroup) {
	s.groups[g.name] = g
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := g.watch.Wait(s.ctx); err != nil {
			return // the daemon stops; the group goes on
		}
		if g.proc != nil {
			_, _ = g.proc.Wait()
		}
		g.watch.Close()
		s.mu.Lock()
		close(g.gone)
		if s.groups[g.name] == g {
			delete(s.groups, g.name)
		}
		s.mu.Unlock()
		if g.moved.Load() {
			return
		}
		os.RemoveAll(g.dir)
		s.log.Info("ipc group ended: its last member exited", "group", g.name, "pid", g.pid)
	}()
}

// startAlone starts spec's command as a workload alone: under an init of its own,
// which this daemon is the parent of.
func (s *Supervisor) startAlone(spec workload.Spec, hostname string) (Record, *workload.Process, error) {
	spec.Hostname, spec.InitPath = hostname, s.initPath
	p, err := workload.Start(spec)
	if err != nil {
		return Record{}, nil, err
	}
	st, err := workload.StartTime("/proc", p.Pid)
	if err != nil {
		_ = p.Kill()
		_, _ = p.Wait()
		return Record{}, nil, err
	}
	return Record{InitPid: p.Pid, InitStart: st, NSPid: 1, GroupPid: p.Pid, GroupStart: st}, p, nil
}

// joinGroup starts spec's command as a new member of group on this node: in the group's
// running init, or in a new group init (host name: the group's) when the group has no
// member here yet. A group lives on one node: one running elsewhere, or moving, is an
// error; so is a "group" that is a workload alone.
func (s *Supervisor) joinGroup(ctx context.Context, table *shmowner.Table, group string, spec workload.Spec) (Record, error) {
	for _, w := range table.Workloads() {
		if w.Group != group || w.State == record.WorkloadExited {
			continue
		}
		if w.Node != s.cfg.Self {
			return Record{}, fmt.Errorf("run: ipc group %s lives on node %s; run this workload there "+
				"(`migshm --socket <that node's socket> run --ipc-group %s ...`): %w", group, w.Node, group, api.ErrBadRequest)
		}
		if m, ok := table.ActiveMigration(w.ID); ok {
			return Record{}, fmt.Errorf("run: ipc group %s is moving to %s (migration %s); run this workload there once the move is done: %w",
				group, m.Target, m.ID, record.ErrMigrationInFlight)
		}
		if l := s.get(w.ID); l != nil && l.rec.GroupDir == "" {
			return Record{}, fmt.Errorf("run: %s is workload %s, which runs alone (started without --ipc-group) and takes no members; "+
				"start the workloads that share memory with one --ipc-group NAME: %w", group, w.Name, api.ErrBadRequest)
		}
	}
	s.groupMu.Lock()
	defer s.groupMu.Unlock()
	s.mu.Lock()
	g := s.groups[group]
	s.mu.Unlock()
	if g != nil && !g.isGone() {
		m, err := workload.JoinGroup(ctx, g.pid, g.start, g.dir, spec)
		if err == nil || !g.isGone() {
			return g.member(m), err
		}
		// Its last member exited while this one joined: the group starts afresh.
	}
	g, err := s.startGroup(group, group, spec.NetNS)
	if err != nil {
		return Record{}, err
	}
	m, err := workload.JoinGroup(ctx, g.pid, g.start, g.dir, spec)
	if err != nil {
		// A group init without a member would wait for one forever.
		_ = g.watch.Signal(unix.SIGKILL)
		<-g.gone
		return Record{}, err
	}
	return g.member(m), nil
}

// member returns the record fields of member m of g.
func (g *localGroup) member(m workload.Member) Record {
	return Record{InitPid: m.Pid, InitStart: m.Start, NSPid: m.NSPid, GroupPid: g.pid, GroupStart: g.start, GroupDir: g.dir}
}

// startGroup starts the init of a new group, in network namespace netns ("" : the
// node's), and follows it.
func (s *Supervisor) startGroup(group, hostname, netns string) (*localGroup, error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	dir := filepath.Join(groupRoot, group+"-"+hex.EncodeToString(b[:]))
	if err := os.MkdirAll(groupRoot, 0o700); err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	p, err := workload.StartGroup(workload.GroupSpec{Dir: dir, Hostname: hostname, NetNS: netns, InitPath: s.initPath,
		Log: filepath.Join(dir, "init.log")})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("run: %w", err)
	}
	st, err := workload.StartTime("/proc", p.Pid)
	var watch *workload.Watch
	if err == nil {
		watch, err = workload.WatchProcess(p.Pid, st)
	}
	if err != nil {
		_ = p.Kill()
		_, _ = p.Wait()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("run: the group init: %w", err)
	}
	g := &localGroup{name: group, pid: p.Pid, start: st, dir: dir, watch: watch, proc: p, gone: make(chan struct{})}
	s.mu.Lock()
	s.watchGroup(g)
	s.mu.Unlock()
	return g, nil
}

// attachGroup follows the group init a record names if it is not followed yet (s.mu
// held by the caller): after a restart (proc nil), or once a migration restored it here
// (proc, its parent being this daemon).
func (s *Supervisor) attachGroup(rec Record, proc *workload.Process) error {
	if g := s.groups[rec.Group]; g != nil && g.pid == rec.GroupPid && !g.isGone() {
		return nil
	}
	if rec.GroupDir == "" {
		return nil // a workload alone: its init is its own
	}
	watch, err := workload.WatchProcess(rec.GroupPid, rec.GroupStart)
	if err != nil {
		return fmt.Errorf("the init of ipc group %s (pid %d) is gone: %w", rec.Group, rec.GroupPid, err)
	}
	s.watchGroup(&localGroup{name: rec.Group, pid: rec.GroupPid, start: rec.GroupStart, dir: rec.GroupDir,
		watch: watch, proc: proc, gone: make(chan struct{})})
	return nil
}

// GroupMembers returns the records of group's members running on this node, in the
// order they started.
func (s *Supervisor) GroupMembers(group string) []Record {
	var out []Record
	for _, l := range s.snapshot() {
		if l.rec.Group == group && !l.isExited() && !l.moved.Load() {
			out = append(out, l.rec)
		}
	}
	slices.SortStableFunc(out, func(a, b Record) int { return cmp.Compare(a.StartedAt, b.StartedAt) })
	return out
}

// Release removes the copy of a group that moved to another node: it kills the
// (stopped) tree of its init and forgets its members (ids) without recording an exit.
// removeFiles removes the members' workload dirs too, removeGroupDir the group's
// directory: not when the node it moved to uses the same ones.
func (s *Supervisor) Release(group string, ids []string, removeFiles, removeGroupDir bool) {
	s.mu.Lock()
	var ls []*localWL
	for _, id := range ids {
		if l := s.wl[id]; l != nil {
			l.moved.Store(true)
			ls = append(ls, l)
			delete(s.wl, id)
		}
	}
	g := s.groups[group]
	if g != nil {
		g.moved.Store(!removeGroupDir)
	}
	s.mu.Unlock()
	deadline := time.After(10 * time.Second)
	if g != nil && !g.isGone() {
		// The kernel kills the group's whole PID namespace with its init.
		_ = g.watch.Signal(unix.SIGKILL)
		select {
		case <-g.gone:
		case <-deadline:
			s.log.Error("the stopped copy of a moved group survived SIGKILL for 10s", "group", group, "pid", g.pid)
		}
	}
	for _, l := range ls {
		if !l.isExited() && l.watch != nil {
			if g == nil {
				_ = l.watch.Signal(unix.SIGKILL) // the init of a workload alone: its namespace goes with it
			} else {
				_ = workload.KillTree(l.rec.InitPid)
			}
			select {
			case <-l.exited:
			case <-deadline:
				s.log.Error("the stopped copy of a moved workload survived SIGKILL for 10s", "workload", l.rec.Name, "pid", l.rec.InitPid)
			}
		}
		if removeFiles {
			if err := os.RemoveAll(filepath.Join(s.dir, l.rec.ID)); err != nil {
				s.log.Warn("remove the files of a moved workload", "workload", l.rec.Name, "err", err)
			}
		}
		s.log.Info("workload moved away; local copy removed", "workload", l.rec.Name, "pid", l.rec.InitPid)
	}
}

// Adopt takes over a tree restored on this node by a migration: its init (proc if this
// daemon is its parent, nil after a restart) and its members (a workload alone: the one
// whose init it is), whose records it writes (their workload dirs are this node's from
// now on) and follows.
func (s *Supervisor) Adopt(recs []Record, proc *workload.Process) error {
	if len(recs) == 0 {
		return fmt.Errorf("adopt: no members")
	}
	s.mu.Lock()
	err := s.attachGroup(recs[0], proc)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	for _, rec := range recs {
		var own *workload.Process
		if rec.GroupDir == "" {
			own = proc
		}
		if err := s.adopt(rec, own); err != nil {
			return err
		}
	}
	s.poke()
	return nil
}
