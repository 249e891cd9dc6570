package shmowner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/shmowner/record"
)

// FSM is the raft state machine holding the ownership table.
type FSM struct {
	mu sync.RWMutex
	t  *Table
	// applied is the index of the last entry Apply finished. Raft's own AppliedIndex
	// moves when an entry is handed to the FSM goroutine, before the table shows it.
	applied atomic.Uint64

	// onChange, if set, sees the table before and after each entry and snapshot (see
	// StoreConfig.OnChange); last is the "after" it was given last time. Both are used
	// only on raft's FSM goroutine, which calls Apply and Restore one at a time.
	onChange func(prev, cur *Table, at time.Time)
	last     *Table
}

var _ raft.FSM = (*FSM)(nil)

// NewFSM returns an FSM with an empty table.
func NewFSM() *FSM { return &FSM{t: NewTable()} }

// NewObservedFSM returns an FSM with an empty table that calls onChange as
// StoreConfig.OnChange says.
func NewObservedFSM(onChange func(prev, cur *Table, at time.Time)) *FSM {
	return &FSM{t: NewTable(), onChange: onChange}
}

// Table returns a deep copy of the current table.
func (f *FSM) Table() *Table {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.t.clone()
}

// Apply applies one committed log entry. It returns nil or an error (a rule violation,
// wrapping a sentinel); it panics on an entry it cannot decode.
func (f *FSM) Apply(l *raft.Log) any {
	defer f.applied.Store(l.Index)
	err := f.apply(l.Data)
	at := l.AppendedAt // when the leader took the entry: true on replay too
	if at.IsZero() {
		at = time.Now()
	}
	if err != nil {
		return err // a refused command changed nothing
	}
	f.changed(at)
	return nil
}

// changed hands onChange the table before and after the last entry or snapshot.
func (f *FSM) changed(at time.Time) {
	if f.onChange == nil {
		return
	}
	cur := f.Table()
	prev := f.last
	if prev == nil {
		prev = NewTable()
	}
	f.last = cur
	f.onChange(prev, cur, at)
}

// AppliedIndex returns the index of the last entry the table reflects (0 before the
// first Apply of this process).
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// apply dispatches an entry to the apply function its type registered (command.go).
func (f *FSM) apply(data []byte) error {
	if len(data) == 0 {
		panic("shmowner: empty log entry")
	}
	t := MessageType(data[0])
	c, ok := commands[t]
	if !ok {
		if t.ignorable() {
			return nil
		}
		// We have to panic so that our state doesn't diverge: a node that cannot apply an
		// entry must not go on as if it had.
		panic(fmt.Sprintf("shmowner: unknown message type %d", uint8(t)))
	}
	if c.apply == nil {
		return nil // a registered no-op
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return c.apply(f.t, data[1:])
}

func (t *Table) registerNode(r RegisterNodeRequest) error {
	if r.ID == "" {
		return fmt.Errorf("register node: empty id: %w", record.ErrInvalid)
	}
	if r.AddrNet != "" {
		if p, err := netip.ParsePrefix(r.AddrNet); err != nil || !p.Addr().Is4() || p != p.Masked() {
			return fmt.Errorf("register node %s: address network %q is not an IPv4 network in CIDR form: %w", r.ID, r.AddrNet, record.ErrInvalid)
		}
	}
	n := t.nodes[r.ID]
	n.ID, n.RaftAddr, n.APIAddr, n.AddrNet = r.ID, r.RaftAddr, r.APIAddr, r.AddrNet
	n.State = upState(n.Drain) // a drained node that restarts stays draining
	t.nodes[r.ID] = n
	return nil
}

func (t *Table) removeNode(r RemoveNodeRequest) error {
	if _, ok := t.nodes[r.ID]; !ok {
		return fmt.Errorf("remove node %q: %w", r.ID, record.ErrUnknownNode)
	}
	delete(t.nodes, r.ID)
	return nil
}

func (t *Table) setNodeState(r SetNodeStateRequest) error {
	n, ok := t.nodes[r.ID]
	if !ok {
		return fmt.Errorf("set node %q state: %w", r.ID, record.ErrUnknownNode)
	}
	if !r.State.Valid() {
		return fmt.Errorf("set node %q state %q: %w", r.ID, r.State, record.ErrInvalid)
	}
	switch r.State {
	case record.NodeDraining:
		n.Drain = true
	case record.NodeActive:
		r.State = upState(n.Drain)
	}
	n.State = r.State
	t.nodes[r.ID] = n
	return nil
}

func (t *Table) setNodeDrain(r SetNodeDrainRequest) error {
	n, ok := t.nodes[r.ID]
	if !ok {
		return fmt.Errorf("set node %q drain: %w", r.ID, record.ErrUnknownNode)
	}
	n.Drain = r.Drain
	if n.State == record.NodeActive || n.State == record.NodeDraining {
		n.State = upState(n.Drain)
	}
	t.nodes[r.ID] = n
	return nil
}

// upState is the state of a node that is up: draining if it is cordoned.
func upState(drain bool) record.NodeState {
	if drain {
		return record.NodeDraining
	}
	return record.NodeActive
}

func (t *Table) reportLoad(r ReportLoadRequest) error {
	n, ok := t.nodes[r.ID]
	if !ok {
		return fmt.Errorf("report load of node %q: %w", r.ID, record.ErrUnknownNode)
	}
	if r.At < n.LoadAt {
		return nil // an older report overtaken by a newer one
	}
	n.Load, n.LoadAt = r.Load, r.At
	t.nodes[r.ID] = n
	for id, l := range r.Workloads { // each entry touches only its own workload
		w, ok := t.workloads[id]
		if !ok || w.Node != r.ID || w.State == record.WorkloadExited {
			continue
		}
		l.At, l.Since, l.Node = r.At, r.Load.Since, r.ID
		w.Load = &l
		t.workloads[id] = w
	}
	if !r.Refresh {
		return nil
	}
	for id, w := range t.workloads {
		if _, sent := r.Workloads[id]; sent || w.Node != r.ID || w.State == record.WorkloadExited || w.Load == nil || w.Load.Node != r.ID {
			continue
		}
		l := *w.Load
		l.At, l.Since = r.At, r.Load.Since
		w.Load = &l
		t.workloads[id] = w
	}
	return nil
}

func (t *Table) setWorkloadPinned(r SetWorkloadPinnedRequest) error {
	w, ok := t.workloads[r.ID]
	if !ok {
		return fmt.Errorf("pin workload %q: %w", r.ID, record.ErrUnknownWorkload)
	}
	w.Pinned = r.Pinned
	t.workloads[r.ID] = w
	return nil
}

func (t *Table) upsertWorkload(r UpsertWorkloadRequest) error {
	w := r.Workload.Clone()
	if w.ID == "" || w.Group == "" {
		return fmt.Errorf("upsert workload %q: empty id or group: %w", w.ID, record.ErrInvalid)
	}
	if w.State == "" {
		w.State = record.WorkloadRunning
	}
	if w.State != record.WorkloadRunning && w.State != record.WorkloadExited {
		return fmt.Errorf("upsert workload %q: state %q: %w", w.ID, w.State, record.ErrInvalid)
	}
	if _, ok := t.nodes[w.Node]; !ok {
		return fmt.Errorf("upsert workload %q on node %q: %w", w.ID, w.Node, record.ErrUnknownNode)
	}
	if w.Name != "" {
		for _, o := range t.workloads {
			if o.Name == w.Name && o.ID != w.ID {
				return fmt.Errorf("upsert workload %q: name %q is taken by %s: %w", w.ID, w.Name, o.ID, record.ErrExists)
			}
		}
	}
	if err := t.checkAddr(w); err != nil {
		return err
	}
	if m, ok := t.ActiveMigration(w.ID); ok {
		return fmt.Errorf("upsert workload %q: migration %s: %w", w.ID, m.ID, record.ErrMigrationInFlight)
	}
	old, existed := t.workloads[w.ID]
	if existed && old.Node != w.Node {
		// Only a migration's done moves a workload; this is a report from where it was.
		return fmt.Errorf("upsert workload %q from node %s: it runs on %s: %w", w.ID, w.Node, old.Node, record.ErrNotOwner)
	}
	if !existed {
		if m, ok := t.groupMigration(w.Group); ok {
			return fmt.Errorf("upsert workload %q: its ipc group %s is moving (migration %s): %w", w.ID, w.Group, m.ID, record.ErrMigrationInFlight)
		}
	}
	if existed {
		// Pinned and Load have commands of their own; a node re-registering its
		// workload from what it saw a moment ago must not undo them.
		w.Pinned, w.Load = old.Pinned, old.Load
	}
	t.workloads[w.ID] = w
	if existed && old.Group != w.Group {
		t.dropGroupIfUnused(old.Group)
	}
	return nil
}

// checkAddr refuses a running workload whose own address another group's running
// workload holds, or that differs from the one its group's members share.
func (t *Table) checkAddr(w record.Workload) error {
	if w.State == record.WorkloadExited {
		return nil
	}
	var p netip.Prefix
	if w.Addr != "" {
		var err error
		if p, err = netip.ParsePrefix(w.Addr); err != nil || p.Addr().Zone() != "" {
			return fmt.Errorf("upsert workload %q: address %q: want ADDR/PREFIX: %w", w.ID, w.Addr, record.ErrInvalid)
		}
	}
	for _, o := range t.Workloads() { // sorted: the error names the same workload on every node
		if o.ID == w.ID || o.State == record.WorkloadExited {
			continue
		}
		if o.Group == w.Group && o.Addr != w.Addr {
			return fmt.Errorf("upsert workload %q: address %q: its ipc group %s has %q: %w", w.ID, w.Addr, w.Group, o.Addr, record.ErrInvalid)
		}
		if q, err := netip.ParsePrefix(o.Addr); err == nil && p.IsValid() && o.Group != w.Group && q.Addr() == p.Addr() {
			return fmt.Errorf("upsert workload %q: address %s is taken by workload %s (%s) on %s: %w",
				w.ID, p.Addr(), o.Name, o.ID, o.Node, record.ErrAddressTaken)
		}
	}
	return nil
}

func (t *Table) removeWorkload(r RemoveWorkloadRequest) error {
	w, ok := t.workloads[r.ID]
	if !ok {
		return fmt.Errorf("remove workload %q: %w", r.ID, record.ErrUnknownWorkload)
	}
	if m, ok := t.ActiveMigration(r.ID); ok {
		return fmt.Errorf("remove workload %q: migration %s: %w", r.ID, m.ID, record.ErrMigrationInFlight)
	}
	delete(t.workloads, r.ID)
	t.dropGroupIfUnused(w.Group)
	return nil
}

// dropGroupIfUnused deletes the segments of an IPC group no workload belongs to any more:
// its IPC namespace, and with it the segments, is gone.
func (t *Table) dropGroupIfUnused(group string) {
	for _, w := range t.workloads {
		if w.Group == group {
			return
		}
	}
	for id := range t.segments {
		if id.Group == group {
			delete(t.segments, id)
		}
	}
}

func (t *Table) setWorkloadState(r SetWorkloadStateRequest) error {
	w, ok := t.workloads[r.ID]
	if !ok {
		return fmt.Errorf("set workload %q state: %w", r.ID, record.ErrUnknownWorkload)
	}
	if r.Node != "" && r.Node != w.Node {
		return fmt.Errorf("set workload %q state from node %s: it runs on %s: %w", r.ID, r.Node, w.Node, record.ErrNotOwner)
	}
	switch r.State {
	case record.WorkloadExited:
	case record.WorkloadRunning:
		if m, ok := t.ActiveMigration(r.ID); ok {
			return fmt.Errorf("set workload %q running: migration %s: %w", r.ID, m.ID, record.ErrMigrationInFlight)
		}
	case record.WorkloadMigrating:
		return fmt.Errorf("set workload %q migrating: only PlanMigration does: %w", r.ID, record.ErrBadTransition)
	default:
		return fmt.Errorf("set workload %q state %q: %w", r.ID, r.State, record.ErrInvalid)
	}
	w.State, w.ExitStatus = r.State, r.ExitStatus
	if r.State == record.WorkloadExited {
		w.ExitedAt = r.At
		w.Pids = nil // gone; the kernel will hand these pids to others
	}
	t.workloads[r.ID] = w
	return nil
}

func (t *Table) setSegments(r SetSegmentsRequest) error {
	if r.Group == "" {
		return fmt.Errorf("set segments: empty group: %w", record.ErrInvalid)
	}
	if _, ok := t.nodes[r.Node]; !ok {
		return fmt.Errorf("set segments of group %q from node %q: %w", r.Group, r.Node, record.ErrUnknownNode)
	}
	seen := make(map[int]bool, len(r.Segments))
	for _, s := range r.Segments {
		if seen[s.Shmid] || s.Shmid < 0 {
			return fmt.Errorf("set segments of group %q: shmid %d repeated or negative: %w", r.Group, s.Shmid, record.ErrInvalid)
		}
		seen[s.Shmid] = true
	}
	// Check before changing anything: the reporter must own every segment the group has.
	// Visiting in id order makes the error text deterministic.
	for _, s := range t.GroupSegments(r.Group) {
		if s.Owner != r.Node {
			return fmt.Errorf("set segments of group %q from node %q: segment %s is owned by %q: %w",
				r.Group, r.Node, s.ID(), s.Owner, record.ErrNotOwner)
		}
	}
	for id := range t.segments {
		if id.Group == r.Group && !seen[id.Shmid] {
			delete(t.segments, id)
		}
	}
	for _, in := range r.Segments {
		id := record.SegmentID{Group: r.Group, Shmid: in.Shmid}
		s, ok := t.segments[id]
		if !ok {
			s = record.Segment{Group: r.Group, Shmid: in.Shmid, Owner: r.Node, Epoch: 1}
		}
		s.Key, s.Size, s.Mode = in.Key, in.Size, in.Mode
		t.segments[id] = s
	}
	return nil
}

func (t *Table) planMigration(r PlanMigrationRequest) error {
	if r.ID == "" {
		return fmt.Errorf("plan migration: empty id: %w", record.ErrInvalid)
	}
	if _, ok := t.migrations[r.ID]; ok {
		return fmt.Errorf("plan migration %s: %w", r.ID, record.ErrExists)
	}
	w, ok := t.workloads[r.Workload]
	if !ok {
		return fmt.Errorf("plan migration %s: workload %q: %w", r.ID, r.Workload, record.ErrUnknownWorkload)
	}
	members := r.Members
	if len(members) == 0 {
		members = []string{r.Workload}
	}
	if members[0] != r.Workload {
		return fmt.Errorf("plan migration %s: members must start with workload %q: %w", r.ID, r.Workload, record.ErrInvalid)
	}
	for i, id := range members {
		m, ok := t.workloads[id]
		switch {
		case !ok:
			return fmt.Errorf("plan migration %s: member %q: %w", r.ID, id, record.ErrUnknownWorkload)
		case slices.Contains(members[:i], id):
			return fmt.Errorf("plan migration %s: member %q listed twice: %w", r.ID, id, record.ErrInvalid)
		case m.Group != w.Group || m.Node != w.Node:
			return fmt.Errorf("plan migration %s: member %q is in group %s on %s, not %s on %s: %w",
				r.ID, id, m.Group, m.Node, w.Group, w.Node, record.ErrInvalid)
		}
		if a, ok := t.ActiveMigration(id); ok {
			return fmt.Errorf("plan migration %s of workload %q: migration %s: %w", r.ID, id, a.ID, record.ErrMigrationInFlight)
		}
		if m.State != record.WorkloadRunning {
			return fmt.Errorf("plan migration %s: workload %q is %s: %w", r.ID, id, m.State, record.ErrBadTransition)
		}
	}
	// A group moves whole: splitting it is not supported.
	for _, o := range t.workloads {
		if o.Group == w.Group && o.State != record.WorkloadExited && !slices.Contains(members, o.ID) {
			return fmt.Errorf("plan migration %s: ipc group %s has member %s (%s), which the migration leaves behind: %w",
				r.ID, w.Group, o.Name, o.ID, record.ErrGroupSplit)
		}
	}
	target, ok := t.nodes[r.Target]
	if !ok {
		return fmt.Errorf("plan migration %s: target %q: %w", r.ID, r.Target, record.ErrUnknownNode)
	}
	if r.Target == w.Node {
		return fmt.Errorf("plan migration %s: workload %q already on %q: %w", r.ID, r.Workload, w.Node, record.ErrSameNode)
	}
	if target.State != record.NodeActive {
		return fmt.Errorf("plan migration %s: target %q is %s: %w", r.ID, r.Target, target.State, record.ErrNodeNotActive)
	}
	if e := t.GroupEpoch(w.Group); r.Epoch != e {
		return fmt.Errorf("plan migration %s: epoch %d, group %q is at %d: %w", r.ID, r.Epoch, w.Group, e, record.ErrStaleEpoch)
	}
	m := record.Migration{
		ID: r.ID, Workload: r.Workload, Source: w.Node, Target: r.Target,
		Phase: record.PhasePlanned, Epoch: r.Epoch, StartedAt: r.At, UpdatedAt: r.At, Reason: r.Reason,
	}
	if len(r.Members) > 0 {
		m.Members = slices.Clone(r.Members)
	}
	t.migrations[r.ID] = m
	for _, id := range members {
		mw := t.workloads[id]
		mw.State = record.WorkloadMigrating
		t.workloads[id] = mw
	}
	return nil
}

func (t *Table) setMigrationPhase(r SetMigrationPhaseRequest) error {
	m, ok := t.migrations[r.ID]
	if !ok {
		return fmt.Errorf("set migration %s phase: %w", r.ID, record.ErrUnknownMigration)
	}
	if r.Epoch != m.Epoch {
		return fmt.Errorf("set migration %s phase %s: epoch %d, migration is at %d: %w", r.ID, r.Phase, r.Epoch, m.Epoch, record.ErrStaleEpoch)
	}
	if !m.Phase.CanMoveTo(r.Phase) {
		return fmt.Errorf("set migration %s phase: %s -> %s: %w", r.ID, m.Phase, r.Phase, record.ErrBadTransition)
	}
	m.Phase, m.UpdatedAt = r.Phase, r.At
	if r.Bytes != 0 {
		m.Bytes = r.Bytes
	}
	if r.Error != "" {
		m.Error = r.Error
	}
	if r.Stats != nil {
		st := *r.Stats
		m.Stats = &st
	}
	t.migrations[r.ID] = m

	switch r.Phase {
	case record.PhaseDone:
		for _, id := range m.Moves() {
			if w, ok := t.workloads[id]; ok { // a workload with a migration in flight cannot be removed
				w.Node = m.Target
				if pid := r.Placed[id]; pid > 0 {
					w.InitPid, w.Pids = pid, []int{pid}
				}
				if w.State == record.WorkloadMigrating {
					w.State = record.WorkloadRunning
				}
				t.workloads[id] = w
			}
		}
		group := t.workloads[m.Workload].Group
		for id, s := range t.segments {
			if id.Group == group {
				s.Owner, s.Epoch, s.Replicas = m.Target, s.Epoch+1, nil
				t.segments[id] = s
			}
		}
	case record.PhaseAborted:
		for _, id := range m.Moves() {
			if w, ok := t.workloads[id]; ok && w.State == record.WorkloadMigrating {
				w.State = record.WorkloadRunning
				t.workloads[id] = w
			}
		}
	}
	return nil
}

func (t *Table) setMigrationStats(r SetMigrationStatsRequest) error {
	m, ok := t.migrations[r.ID]
	if !ok {
		return fmt.Errorf("set migration %s stats: %w", r.ID, record.ErrUnknownMigration)
	}
	st := r.Stats
	m.Stats = &st
	t.migrations[r.ID] = m
	return nil
}

func (t *Table) prune(r PruneRequest) error {
	for _, id := range r.Migrations {
		m, ok := t.migrations[id]
		if !ok || !m.Phase.Terminal() {
			continue
		}
		p := t.pruned[m.Source]
		p.Node = m.Source
		if p.Ended == nil {
			p.Ended = map[string]uint64{}
		}
		outcome := "aborted"
		if m.Phase == record.PhaseDone {
			outcome = "done"
		}
		p.Ended[outcome+"/"+m.Initiator()]++
		if m.Stats != nil {
			p.PrecopyBytes += m.Stats.PrecopyBytes
			p.FinalBytes += m.Stats.FinalBytes
		}
		t.pruned[m.Source] = p
		delete(t.migrations, id)
	}
	for _, id := range r.Workloads {
		w, ok := t.workloads[id]
		if !ok || w.State != record.WorkloadExited {
			continue
		}
		if _, busy := t.ActiveMigration(id); busy {
			continue
		}
		delete(t.workloads, id)
		t.dropGroupIfUnused(w.Group)
	}
	return nil
}

func (t *Table) revoke(r RevokeRequest) error {
	v := r.Revocation
	if v.Serial == "" || strings.Trim(v.Serial, "0123456789abcdef") != "" || v.Node == "" {
		return fmt.Errorf("revoke: serial %q (want lower-case hex) or node %q: %w", v.Serial, v.Node, record.ErrInvalid)
	}
	if _, ok := t.revoked[v.Serial]; !ok {
		t.revoked[v.Serial] = v
	}
	return nil
}

// Snapshot captures a deep copy of the table; Persist does the I/O.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{t: f.Table()}, nil
}

// Restore replaces the whole table with the snapshot read from rc.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	t := NewTable()
	if err := json.NewDecoder(rc).Decode(t); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.t = t
	f.mu.Unlock()
	f.changed(time.Now())
	return nil
}

type fsmSnapshot struct{ t *Table }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	err := json.NewEncoder(sink).Encode(s.t)
	if err == nil {
		return sink.Close()
	}
	if cerr := sink.Cancel(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	return fmt.Errorf("persist snapshot: %w", err)
}

func (s *fsmSnapshot) Release() {}

// SnapshotVersion is the version of the snapshot document written by Persist.
const SnapshotVersion = 1

// snapshotDoc is the JSON form of a Table: every record list sorted by id.
type snapshotDoc struct {
	Version    int                 `json:"version"`
	Nodes      []record.Node       `json:"nodes"`
	Workloads  []record.Workload   `json:"workloads"`
	Segments   []record.Segment    `json:"segments"`
	Migrations []record.Migration  `json:"migrations"`
	Pruned     []record.Pruned     `json:"pruned,omitempty"`
	Revoked    []record.Revocation `json:"revoked,omitempty"`
}

// MarshalJSON writes the versioned snapshot document.
func (t *Table) MarshalJSON() ([]byte, error) {
	return json.Marshal(snapshotDoc{
		Version:    SnapshotVersion,
		Nodes:      t.Nodes(),
		Workloads:  t.Workloads(),
		Segments:   t.Segments(),
		Migrations: t.Migrations(),
		Pruned:     t.Pruned(),
		Revoked:    t.Revocations(),
	})
}

// UnmarshalJSON reads a snapshot document, replacing the table's content.
func (t *Table) UnmarshalJSON(b []byte) error {
	var d snapshotDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return err
	}
	if d.Version != SnapshotVersion {
		return fmt.Errorf("snapshot version %d, want %d: %w", d.Version, SnapshotVersion, record.ErrInvalid)
	}
	n := NewTable()
	for _, v := range d.Nodes {
		if _, dup := n.nodes[v.ID]; dup {
			return fmt.Errorf("snapshot: node %q twice: %w", v.ID, record.ErrInvalid)
		}
		if v.State == record.NodeDraining {
			v.Drain = true // written before the flag existed
		}
		n.nodes[v.ID] = v
	}
	for _, v := range d.Workloads {
		if _, dup := n.workloads[v.ID]; dup {
			return fmt.Errorf("snapshot: workload %q twice: %w", v.ID, record.ErrInvalid)
		}
		n.workloads[v.ID] = v
	}
	for _, v := range d.Segments {
		if _, dup := n.segments[v.ID()]; dup {
			return fmt.Errorf("snapshot: segment %s twice: %w", v.ID(), record.ErrInvalid)
		}
		n.segments[v.ID()] = v
	}
	for _, v := range d.Migrations {
		if _, dup := n.migrations[v.ID]; dup {
			return fmt.Errorf("snapshot: migration %q twice: %w", v.ID, record.ErrInvalid)
		}
		n.migrations[v.ID] = v
	}
	for _, v := range d.Pruned {
		if _, dup := n.pruned[v.Node]; dup {
			return fmt.Errorf("snapshot: pruned totals of %q twice: %w", v.Node, record.ErrInvalid)
		}
		n.pruned[v.Node] = v
	}
	for _, v := range d.Revoked {
		if _, dup := n.revoked[v.Serial]; dup {
			return fmt.Errorf("snapshot: revocation of serial %s twice: %w", v.Serial, record.ErrInvalid)
		}
		n.revoked[v.Serial] = v
	}
	*t = *n
	return nil
}
