// Package supervisor runs a node's workloads: it starts them under the migshm init,
// follows them until they exit (and finds them again after a daemon restart, since they
// outlive the daemon), stops them, hands them over to and takes them from migrations,
// serves their logs, measures their load, and keeps their records in the table (pids,
// state, the segments of their IPC groups) in line with what runs here.
package supervisor

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/atomicfile"
	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/internal/pki"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

// Files of a workload's directory (Dir(id)).
const (
	recordFile = "workload.json" // the Record
	exitFile   = "exit.json"     // written by the init when the command ends
	StdoutFile = "stdout.log"
	StderrFile = "stderr.log"
)

// defaultPath is the PATH a workload gets unless the request sets one.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Record is what a node keeps on disk about a workload it runs, so that a restarted
// daemon finds its workloads again (they outlive the daemon).
type Record struct {
	ID    string   `json:"id"`
	Name  string   `json:"name"`
	Group string   `json:"group"`
	Node  string   `json:"node"`
	Args  []string `json:"args"`
	// InitPid is the host pid of the workload's member init, the root of its subtree;
	// NSPid its pid in the group's PID namespace, which a migration keeps.
	InitPid   int    `json:"init_pid"`
	InitStart uint64 `json:"init_start"` // start time in ticks: pid + start name one process
	NSPid     int    `json:"ns_pid"`
	// GroupPid is the host pid of the group init (PID 1 of the group's namespaces),
	// GroupDir its request directory.
	GroupPid   int    `json:"group_pid"`
	GroupStart uint64 `json:"group_start"`
	GroupDir   string `json:"group_dir"`
	StartedAt  int64  `json:"started_at"`
	// Addr is the address of its own the tree has (its network namespace's, which a
	// migration carries), with its prefix; "" on the node's network.
	Addr string `json:"addr,omitempty"`
}

// localWL is a workload running (or run) on this node.
type localWL struct {
	rec    Record
	watch  *workload.Watch   // nil once exited or if it was gone at re-attach
	proc   *workload.Process // a workload alone whose init this daemon started or restored: it must reap it
	exited chan struct{}     // closed when the init is gone
	status int               // exit status once exited; -1 if unknown (init killed, no record)
	at     int64             // exit time, unix nanos
	// moved is set when the workload moved to another node and this copy is being
	// removed: its end is not an exit of the workload.
	moved atomic.Bool
}

func (l *localWL) isExited() bool {
	select {
	case <-l.exited:
		return true
	default:
		return false
	}
}

// Table is what the supervisor needs of the cluster: the table as this node has it,
// commits through the leader, and whether this node is a member yet.
type Table interface {
	Table() *shmowner.Table
	Apply(ctx context.Context, t shmowner.MessageType, body any) error
	IsMember() bool
}

// Config is what a Supervisor is built from.
type Config struct {
	Self            string        // this node's id
	Dir             string        // the workload dir: one directory per workload, named by its id
	InitDir         string        // where the init's copy is installed
	SegmentInterval time.Duration // how often the table is reconciled with what runs here
	CapacityCores   float64       // CPU cores this node offers workloads; 0: its CPUs
	MemCapacity     uint64        // bytes its workloads may use; 0: the host's memory
	// Network is what the node offers workloads run with an address of their own
	// (RunRequest.IP); the zero Network offers none.
	Network ownnet.Network
	Log     *slog.Logger
}

// Supervisor starts this node's workloads, follows them until they exit, and keeps
// their table records (pids, segments, state) up to date.
type Supervisor struct {
	cfg      Config
	table    Table
	log      *slog.Logger
	dir      string
	initPath string

	mu     sync.Mutex
	wl     map[string]*localWL
	groups map[string]*localGroup // by group name: the inits of groups running here
	kick   chan struct{}          // a reconcile is due now
	// groupMu serialises joining groups, so that two runs into a new group start one init.
	groupMu sync.Mutex

	ctx    context.Context // ends when Run returns; watchers end with it
	cancel context.CancelFunc
	wg     sync.WaitGroup

	cpu cpuSampler
}

// New installs the init and finds the workloads an earlier run of this daemon started;
// Run follows them.
func New(cfg Config, table Table) (*Supervisor, error) {
	s := &Supervisor{cfg: cfg, table: table, log: cfg.Log.With("component", "supervisor"), dir: cfg.Dir,
		wl: map[string]*localWL{}, groups: map[string]*localGroup{}, kick: make(chan struct{}, 1)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	var err error
	if s.initPath, err = installInit(cfg.InitDir); err != nil {
		return nil, err
	}
	if err := s.reattach(); err != nil {
		return nil, err
	}
	return s, nil
}

// reattach finds the workloads an earlier run of this daemon started and follows them
// again: a live init (same pid and start time) is watched through a pidfd; one that is
// gone is recorded as exited with the status its init left (or -1 if it left none).
func (s *Supervisor) reattach() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("read workload dir: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, e.Name(), recordFile))
		if err != nil {
			continue // a half-made dir of a failed start, or another node's
		}
		var rec Record
		if err := json.Unmarshal(b, &rec); err != nil || rec.ID != e.Name() {
			s.log.Warn("ignoring unreadable workload record", "dir", e.Name(), "err", err)
			continue
		}
		if rec.Node != s.cfg.Self {
			continue // the workload dir may be shared by the nodes of one host
		}
		l := &localWL{rec: rec, exited: make(chan struct{})}
		if ex, err := workload.ReadExitStatus(s.path(rec.ID, exitFile)); err == nil {
			l.status, l.at = ex.Status, ex.At
			close(l.exited)
		} else if w, err := workload.WatchProcess(rec.InitPid, rec.InitStart); err == nil {
			l.watch = w
			if err := s.attachGroup(rec, nil); err != nil {
				s.log.Warn("workload runs but its group init is gone", "workload", rec.Name, "err", err)
			}
			s.log.Info("re-attached to workload", "workload", rec.Name, "pid", rec.InitPid)
		} else {
			l.status, l.at = -1, time.Now().UnixNano()
			close(l.exited)
			s.log.Warn("workload ended while the daemon was down and left no exit status", "workload", rec.Name, "pid", rec.InitPid)
		}
		s.wl[rec.ID] = l
	}
	// The directory of a group that ended while the daemon was down goes.
	for _, l := range s.wl {
		if d := l.rec.GroupDir; d != "" && s.groups[l.rec.Group] == nil {
			os.RemoveAll(d)
		}
	}
	return nil
}

func (s *Supervisor) path(id, file string) string { return filepath.Join(s.dir, id, file) }

// Run follows the workloads and reconciles the table until ctx ends. Workloads keep
// running after it returns.
func (s *Supervisor) Run(ctx context.Context) {
	s.mu.Lock()
	for _, l := range s.wl {
		if !l.isExited() {
			s.follow(l)
		}
	}
	s.mu.Unlock()
	t := time.NewTicker(s.cfg.SegmentInterval)
	defer t.Stop()
	for {
		s.reconcile(ctx)
		select {
		case <-ctx.Done():
			s.cancel()
			s.wg.Wait()
			return
		case <-t.C:
		case <-s.kick:
		}
	}
}

func (s *Supervisor) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// follow waits for l's init to exit (s.mu held by the caller).
func (s *Supervisor) follow(l *localWL) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := l.watch.Wait(s.ctx); err != nil {
			return // the daemon stops; the workload goes on
		}
		if l.moved.Load() {
			if l.proc != nil {
				_, _ = l.proc.Wait()
			}
			l.watch.Close()
			s.mu.Lock()
			close(l.exited)
			s.mu.Unlock()
			return
		}
		// The init records the status; one killed before it could is known from wait
		// if this daemon is its parent, else unknown (-1) unless Stop recorded its kill.
		status, at := -1, time.Now().UnixNano()
		if l.proc != nil {
			if ps, err := l.proc.Wait(); err == nil {
				status = exitCode(ps.Sys().(syscall.WaitStatus))
			}
		}
		if ex, err := workload.ReadExitStatus(s.path(l.rec.ID, exitFile)); err == nil {
			status, at = ex.Status, ex.At
		} else if status >= 0 {
			_ = atomicfile.Write(s.path(l.rec.ID, exitFile), mustJSON(workload.ExitRecord{Status: status, At: at}), 0o600)
		}
		l.watch.Close()
		s.mu.Lock()
		l.status, l.at = status, at
		close(l.exited)
		s.mu.Unlock()
		s.log.Info("workload exited", "workload", l.rec.Name, "status", status)
		s.poke()
	}()
}

func exitCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func newID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "w" + hex.EncodeToString(b[:])
}

// start runs a new workload on this node and registers it; if registering fails the
// workload is killed and nothing is left behind.
func (s *Supervisor) Start(ctx context.Context, req api.RunRequest) (record.Workload, error) {
	if len(req.Args) == 0 || req.Args[0] == "" {
		return record.Workload{}, fmt.Errorf("run: no command given: %w", api.ErrBadRequest)
	}
	id := newID()
	if req.Name == "" {
		req.Name = filepath.Base(req.Args[0]) + "-" + id[1:5]
	}
	if pki.ValidateName(req.Name) != nil {
		return record.Workload{}, fmt.Errorf("run: name %q: use 1-63 letters, digits, '.', '_' or '-': %w", req.Name, api.ErrBadRequest)
	}
	if req.Group != "" && pki.ValidateName(req.Group) != nil {
		return record.Workload{}, fmt.Errorf("run: ipc group %q: use 1-63 letters, digits, '.', '_' or '-': %w", req.Group, api.ErrBadRequest)
	}
	table := s.table.Table()
	self, ok := table.Node(s.cfg.Self)
	if !ok {
		return record.Workload{}, fmt.Errorf("run: this node has not joined the cluster yet (see `migshm status`): %w", api.ErrNotReady)
	}
	if self.State == record.NodeDraining {
		return record.Workload{}, fmt.Errorf("run: node %s is draining and takes no new workloads; run it on another node, or `migshm undrain %s`: %w",
			self.ID, self.ID, record.ErrNodeNotActive)
	}
	for _, w := range table.Workloads() {
		if w.Name == req.Name {
			return record.Workload{}, fmt.Errorf("run: a workload named %q exists (%s on %s); pick another --name or `migshm rm` it: %w",
				req.Name, w.ID, w.Node, record.ErrExists)
		}
	}
	// A workload run without a group is a group of its own, named by its id.
	group := cmp.Or(req.Group, id)
	env := append([]string{defaultPath}, req.Env...)
	dir := req.Dir
	if dir == "" {
		dir = "/"
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		why := "is not a directory"
		if errors.Is(err, os.ErrNotExist) {
			why = "does not exist"
		}
		return record.Workload{}, fmt.Errorf("run: working directory %s (--dir) %s on node %s; create it there or pick another: %w",
			dir, why, s.cfg.Self, api.ErrBadRequest)
	}
	pidFile := req.PidFile
	if pidFile != "" && !filepath.IsAbs(pidFile) {
		pidFile = filepath.Join(dir, pidFile)
	}
	pidFileTimeout := time.Duration(req.PidFileTimeoutMS) * time.Millisecond
	if pidFileTimeout <= 0 {
		pidFileTimeout = defaultPidFileTimeout
	}
	wdir := filepath.Join(s.dir, id)
	if err := os.Mkdir(wdir, 0o700); err != nil {
		return record.Workload{}, fmt.Errorf("run: %w", err)
	}
	spec := workload.Spec{
		Args: req.Args, Env: env, Dir: dir,
		Stdout: filepath.Join(wdir, StdoutFile), Stderr: filepath.Join(wdir, StderrFile),
		StatusFile: filepath.Join(wdir, exitFile), PidFile: pidFile,
	}
	base := Record{ID: id, Name: req.Name, Group: group, Node: s.cfg.Self, Args: req.Args}
	// An address of its own is held in the table before anything runs with it.
	netns, reserved, err := s.ownAddress(ctx, table, req, &base)
	if err != nil {
		os.RemoveAll(wdir)
		return record.Workload{}, err
	}
	unreserve := func() {
		if reserved {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := s.table.Apply(ctx, shmowner.RemoveWorkloadType, shmowner.RemoveWorkloadRequest{ID: id}); err != nil {
				s.log.Warn("run failed and its address stays held until this node restarts", "workload", req.Name, "err", err)
			}
		}
	}
	if netns != nil {
		defer netns.Close() // the workload holds its namespace once it runs
		spec.NetNS = ownnet.Path(netns)
	}
	var rec Record
	var proc *workload.Process
	if req.Group == "" {
		rec, proc, err = s.startAlone(spec, req.Name)
	} else {
		rec, err = s.joinGroup(ctx, table, group, spec)
	}
	if err != nil {
		unreserve()
		os.RemoveAll(wdir)
		if code, _ := api.Code(err); code != "internal" {
			return record.Workload{}, err
		}
		return record.Workload{}, fmt.Errorf("run %s: %v: %w", req.Args[0], err, api.ErrBadRequest)
	}
	watch, err := workload.WatchProcess(rec.InitPid, rec.InitStart)
	if err != nil {
		unreserve()
		os.RemoveAll(wdir)
		return record.Workload{}, fmt.Errorf("run: %w", err)
	}
	fail := func(err error) (record.Workload, error) {
		_ = workload.KillTree(rec.InitPid)
		if proc != nil {
			_, _ = proc.Wait()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = watch.Wait(ctx)
		cancel()
		watch.Close()
		unreserve()
		os.RemoveAll(wdir)
		return record.Workload{}, err
	}
	if pidFile != "" {
		if _, err := waitPidFile(ctx, rec.InitPid, watch, pidFile, pidFileTimeout); err != nil {
			if tail := lastLines(filepath.Join(wdir, StderrFile), 3); tail != "" {
				err = fmt.Errorf("%w; its stderr ends with:\n%s", err, tail)
			}
			return fail(err)
		}
	}
	rec.ID, rec.Name, rec.Group, rec.Node, rec.Args, rec.Addr, rec.StartedAt = id, req.Name, group, s.cfg.Self, req.Args, base.Addr, time.Now().UnixNano()
	if err := atomicfile.Write(filepath.Join(wdir, recordFile), mustJSON(rec), 0o600); err != nil {
		return fail(fmt.Errorf("run: save record: %w", err))
	}
	w := rec.workload()
	if err := s.table.Apply(ctx, shmowner.UpsertWorkloadType, shmowner.UpsertWorkloadRequest{Workload: w}); err != nil {
		return fail(fmt.Errorf("run: register workload: %w", err))
	}
	l := &localWL{rec: rec, watch: watch, proc: proc, exited: make(chan struct{})}
	s.mu.Lock()
	s.wl[id] = l
	s.follow(l)
	s.mu.Unlock()
	s.log.Info("workload started", "workload", rec.Name, "id", id, "pid", rec.InitPid, "group", group)
	s.poke()
	return w, nil
}

func (r Record) workload() record.Workload {
	w := record.Workload{ID: r.ID, Name: r.Name, Node: r.Node, InitPid: r.InitPid,
		Group: r.Group, State: record.WorkloadRunning, Args: r.Args, StartedAt: r.StartedAt, Addr: r.Addr}
	if r.InitPid > 0 {
		w.Pids = []int{r.InitPid}
	}
	return w
}

// Stop sends SIGTERM to the workload (its member init forwards it as a service manager
// does), then after timeout kills its whole subtree, and records the exit.
func (s *Supervisor) Stop(ctx context.Context, id string, timeout time.Duration) (record.Workload, error) {
	s.mu.Lock()
	l := s.wl[id]
	s.mu.Unlock()
	if l == nil {
		return record.Workload{}, fmt.Errorf("stop: workload %s is not on this node: %w", id, record.ErrUnknownWorkload)
	}
	if l.isExited() {
		return record.Workload{}, fmt.Errorf("stop %s: it already exited with status %d: %w", l.rec.Name, l.status, api.ErrNotRunning)
	}
	_ = l.watch.Signal(unix.SIGTERM)
	select {
	case <-l.exited:
	case <-time.After(timeout):
		s.log.Warn("workload ignored SIGTERM; killing it", "workload", l.rec.Name, "after", timeout)
		// Killed, its init records no status: record the kill's.
		if _, err := os.Stat(s.path(id, exitFile)); err != nil {
			_ = atomicfile.Write(s.path(id, exitFile), mustJSON(workload.ExitRecord{Status: 128 + int(unix.SIGKILL), At: time.Now().UnixNano()}), 0o600)
		}
		_ = workload.KillTree(l.rec.InitPid)
		select {
		case <-l.exited:
		case <-time.After(10 * time.Second):
			return record.Workload{}, fmt.Errorf("stop %s: its init %d survived SIGKILL for 10s", l.rec.Name, l.rec.InitPid)
		}
	case <-ctx.Done():
		return record.Workload{}, ctx.Err()
	}
	if err := s.recordExit(ctx, l); err != nil {
		return record.Workload{}, err
	}
	w, _ := s.table.Table().Workload(id)
	if w.State != record.WorkloadExited { // this node's table may lag the leader's
		w = l.rec.workload()
		w.State, w.ExitStatus, w.ExitedAt = record.WorkloadExited, l.status, l.at
	}
	return w, nil
}

func (s *Supervisor) recordExit(ctx context.Context, l *localWL) error {
	return s.table.Apply(ctx, shmowner.SetWorkloadStateType, shmowner.SetWorkloadStateRequest{
		ID: l.rec.ID, Node: s.cfg.Self, State: record.WorkloadExited, ExitStatus: l.status, At: l.at})
}

// remove forgets an exited workload: its table record and its files.
func (s *Supervisor) Remove(ctx context.Context, id string) error {
	s.mu.Lock()
	l := s.wl[id]
	s.mu.Unlock()
	if l != nil && !l.isExited() {
		return fmt.Errorf("remove %s: still running: %w", l.rec.Name, api.ErrStillRunning)
	}
	if err := s.table.Apply(ctx, shmowner.RemoveWorkloadType, shmowner.RemoveWorkloadRequest{ID: id}); err != nil &&
		!errors.Is(err, record.ErrUnknownWorkload) {
		return err
	}
	s.mu.Lock()
	delete(s.wl, id)
	s.mu.Unlock()
	if err := os.RemoveAll(filepath.Join(s.dir, id)); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	return nil
}

func (s *Supervisor) get(id string) *localWL {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wl[id]
}

// Record returns the record of workload id if this node has it, running or exited.
func (s *Supervisor) Record(id string) (Record, bool) {
	if l := s.get(id); l != nil {
		return l.rec, true
	}
	return Record{}, false
}

// Running returns the record of workload id if it runs on this node (stopped by a
// dump counts as running).
func (s *Supervisor) Running(id string) (Record, bool) {
	if l := s.get(id); l != nil && !l.isExited() {
		return l.rec, true
	}
	return Record{}, false
}

// Dir returns the directory of workload id: its record and its log files.
func (s *Supervisor) Dir(id string) string { return filepath.Join(s.dir, id) }

// adopt takes over one member of a group restored here (see Adopt); proc is its init
// if it is a workload alone and this daemon its parent.
func (s *Supervisor) adopt(rec Record, proc *workload.Process) error {
	s.mu.Lock()
	if l := s.wl[rec.ID]; l != nil && !l.isExited() {
		s.mu.Unlock()
		if l.rec.InitPid == rec.InitPid {
			return nil // adopted before
		}
		return fmt.Errorf("workload %s already runs here as pid %d", rec.Name, l.rec.InitPid)
	}
	s.mu.Unlock()
	watch, err := workload.WatchProcess(rec.InitPid, rec.InitStart)
	if err != nil {
		return fmt.Errorf("the restored init %d of %s is gone: %w", rec.InitPid, rec.Name, err)
	}
	if err := os.MkdirAll(filepath.Join(s.dir, rec.ID), 0o700); err != nil {
		watch.Close()
		return err
	}
	// A leftover exit record (the source's copy never wrote one; an old one would make
	// a restart think the workload ended) goes.
	_ = os.Remove(s.path(rec.ID, exitFile))
	if err := atomicfile.Write(s.path(rec.ID, recordFile), mustJSON(rec), 0o600); err != nil {
		watch.Close()
		return err
	}
	l := &localWL{rec: rec, watch: watch, proc: proc, exited: make(chan struct{})}
	s.mu.Lock()
	s.wl[rec.ID] = l
	s.follow(l)
	s.mu.Unlock()
	return nil
}

func (s *Supervisor) RunningCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.wl {
		if !l.isExited() {
			n++
		}
	}
	return n
}

// snapshot returns this node's workloads, sorted by id.
func (s *Supervisor) snapshot() []*localWL {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*localWL, 0, len(s.wl))
	for _, l := range s.wl {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rec.ID < out[j].rec.ID })
	return out
}
