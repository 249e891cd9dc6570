package shmowner

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// NodeState is the lifecycle state of a node.
type NodeState string

// Node states. Only an active node may be a migration target.
const (
	NodeActive   NodeState = "active"
	NodeDraining NodeState = "draining"
	NodeDown     NodeState = "down"
	NodeLeft     NodeState = "left"
)

func (s NodeState) valid() bool {
	switch s {
	case NodeActive, NodeDraining, NodeDown, NodeLeft:
		return true
	}
	return false
}

// LoadVector is a node's last load report.
type LoadVector struct {
	CPU           float64 `json:"cpu"` // normalised: 0..1 per core, averaged over cores
	RunQueue      float64 `json:"run_queue"`
	MemFreeBytes  uint64  `json:"mem_free_bytes"`
	MemTotalBytes uint64  `json:"mem_total_bytes"`
	Workloads     int     `json:"workloads"`
	// Cores is the CPU capacity the node declares (migshmd capacity-cores; default its
	// CPUs); the balancer divides its workloads' CPU by it.
	Cores float64 `json:"cores,omitempty"`
	// MemBudgetBytes, if not 0, is the memory this node's workloads may use
	// (mem-capacity): set on nodes that share one kernel, whose /proc/meminfo reads
	// the same. The balancer then counts free memory as budget minus workloads.
	MemBudgetBytes uint64 `json:"mem_budget_bytes,omitempty"`
}

// Node is a host running migshmd.
type Node struct {
	ID       string     `json:"id"`
	RaftAddr string     `json:"raft_addr"`
	APIAddr  string     `json:"api_addr"`
	State    NodeState  `json:"state"`
	Load     LoadVector `json:"load"`
	LoadAt   int64      `json:"load_at"` // unix nanos of Load, as sent by the reporter
}

// WorkloadState is the lifecycle state of a workload.
type WorkloadState string

// Workload states. WorkloadMigrating is set only by PlanMigration and cleared when the
// migration is done or aborted.
const (
	WorkloadRunning   WorkloadState = "running"
	WorkloadMigrating WorkloadState = "migrating"
	WorkloadExited    WorkloadState = "exited"
)

func (s WorkloadState) valid() bool {
	switch s {
	case WorkloadRunning, WorkloadMigrating, WorkloadExited:
		return true
	}
	return false
}

// Workload is a process tree in its own PID and IPC namespaces, the unit CRIU moves.
type Workload struct {
	ID         string        `json:"id"`
	Name       string        `json:"name"`
	Node       string        `json:"node"`
	InitPid    int           `json:"init_pid"` // host pid on Node; informative only, never a key
	Pids       []int         `json:"pids"`     // host pids on Node; informative only
	Group      string        `json:"group"`    // IPC group id (shm group)
	State      WorkloadState `json:"state"`
	ExitStatus int           `json:"exit_status"`
	Pinned     bool          `json:"pinned"`               // never moved (SetWorkloadPinned only)
	Load       *WorkloadLoad `json:"load,omitempty"`       // last measured by its node (ReportLoad only)
	Args       []string      `json:"args,omitempty"`       // the command, for display
	StartedAt  int64         `json:"started_at,omitempty"` // unix nanos
	ExitedAt   int64         `json:"exited_at,omitempty"`  // unix nanos, once exited
}

// WorkloadLoad is what a workload uses, as its node measures it from its processes.
type WorkloadLoad struct {
	CPU      float64 `json:"cpu"`       // cores used over the last load interval (1.0 = one core busy)
	MemBytes uint64  `json:"mem_bytes"` // anonymous resident memory of its processes plus its IPC namespace's segments
	At       int64   `json:"at"`        // unix nanos of the measurement
}

// SegmentID is the cluster-wide id of a SysV segment: its IPC group and its shmid inside
// that group's IPC namespace (which CRIU preserves across a migration).
type SegmentID struct {
	Group string `json:"group"`
	Shmid int    `json:"shmid"`
}

// String returns "group/shmid".
func (id SegmentID) String() string { return id.Group + "/" + strconv.Itoa(id.Shmid) }

// ParseSegmentID parses the "group/shmid" form of a SegmentID.
func ParseSegmentID(s string) (SegmentID, error) {
	i := strings.LastIndexByte(s, '/')
	if i <= 0 {
		return SegmentID{}, fmt.Errorf("segment id %q: want group/shmid: %w", s, ErrInvalid)
	}
	n, err := strconv.Atoi(s[i+1:])
	if err != nil || n < 0 {
		return SegmentID{}, fmt.Errorf("segment id %q: bad shmid: %w", s, ErrInvalid)
	}
	return SegmentID{Group: s[:i], Shmid: n}, nil
}

func compareSegmentID(a, b SegmentID) int {
	if c := cmp.Compare(a.Group, b.Group); c != 0 {
		return c
	}
	return cmp.Compare(a.Shmid, b.Shmid)
}

// Segment is a SysV shared memory segment and who holds its owner copy.
type Segment struct {
	Group    string   `json:"group"`
	Shmid    int      `json:"shmid"`
	Key      uint32   `json:"key"`
	Size     uint64   `json:"size"`
	Mode     uint32   `json:"mode"`
	Owner    string   `json:"owner"`    // node id holding the authoritative copy
	Replicas []string `json:"replicas"` // node ids holding a copy
	Epoch    uint64   `json:"epoch"`    // bumped at every ownership change
}

// ID returns the segment's cluster-wide id.
func (s Segment) ID() SegmentID { return SegmentID{Group: s.Group, Shmid: s.Shmid} }

// Phase is the phase of a migration.
type Phase string

// Migration phases, in order. Done and aborted are final.
const (
	PhasePlanned  Phase = "planned"
	PhasePrecopy  Phase = "precopy"
	PhaseFrozen   Phase = "frozen"
	PhaseShipped  Phase = "shipped"
	PhaseRestored Phase = "restored"
	PhaseDone     Phase = "done"
	PhaseAborted  Phase = "aborted"
)

// rank orders the forward phases; 0 means unknown.
func (p Phase) rank() int {
	switch p {
	case PhasePlanned:
		return 1
	case PhasePrecopy:
		return 2
	case PhaseFrozen:
		return 3
	case PhaseShipped:
		return 4
	case PhaseRestored:
		return 5
	case PhaseDone:
		return 6
	case PhaseAborted:
		return 7
	}
	return 0
}

// Terminal reports whether p is done or aborted.
func (p Phase) Terminal() bool { return p == PhaseDone || p == PhaseAborted }

// CanMoveTo reports whether a migration in phase p may move to phase next. Phases only
// move forward: planned -> precopy -> frozen -> shipped -> restored -> done. A phase may
// be skipped (a migration without pre-copy goes planned -> frozen), except that done is
// reachable only from restored: ownership moves only once the target confirmed the
// restore. Any non-terminal phase may move to aborted; done and aborted are final.
func (p Phase) CanMoveTo(next Phase) bool {
	if p.rank() == 0 || next.rank() == 0 || p.Terminal() {
		return false
	}
	switch next {
	case PhaseAborted:
		return true
	case PhaseDone:
		return p == PhaseRestored
	}
	return next.rank() > p.rank()
}

// Migration is the replicated record of one workload's move.
type Migration struct {
	ID        string `json:"id"`
	Workload  string `json:"workload"`
	Source    string `json:"source"`
	Target    string `json:"target"`
	Phase     Phase  `json:"phase"`
	Epoch     uint64 `json:"epoch"` // the group epoch the migration was planned at
	StartedAt int64  `json:"started_at"`
	UpdatedAt int64  `json:"updated_at"`
	Bytes     uint64 `json:"bytes"` // bytes shipped so far
	Error     string `json:"error"`
	// Reason says who asked for the move: empty for an operator, "balancer: ..." for
	// the balancer, with its reason.
	Reason string `json:"reason,omitempty"`
	// Stats are the migration's figures, as the source last reported them.
	Stats *MigrationStats `json:"stats,omitempty"`
}

// MigrationStats are the figures of a migration: what it cost and what it shipped.
type MigrationStats struct {
	Rounds        int    `json:"rounds"`         // pre-copy rounds
	PrecopyBytes  uint64 `json:"precopy_bytes"`  // bytes sent while the workload ran
	FinalBytes    uint64 `json:"final_bytes"`    // bytes sent while it was frozen
	WorkloadBytes uint64 `json:"workload_bytes"` // size of its checkpoint images (memory and state)
	FrozenNS      int64  `json:"frozen_ns"`      // downtime: from the freeze to the resume on the target
	DumpNS        int64  `json:"dump_ns"`        // the final dump
	ShipNS        int64  `json:"ship_ns"`        // shipping the final images
	RestoreNS     int64  `json:"restore_ns"`     // the restore on the target
	TotalNS       int64  `json:"total_ns"`       // from plan to done (or abort)
}

// Table is the whole replicated state. A *Table returned by FSM.Table is a deep copy owned
// by the caller; its getters return copies too. Its JSON form is the versioned snapshot
// document.
type Table struct {
	nodes      map[string]Node
	workloads  map[string]Workload
	segments   map[SegmentID]Segment
	migrations map[string]Migration
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{
		nodes:      map[string]Node{},
		workloads:  map[string]Workload{},
		segments:   map[SegmentID]Segment{},
		migrations: map[string]Migration{},
	}
}

func (w Workload) clone() Workload {
	w.Pids = slices.Clone(w.Pids)
	w.Args = slices.Clone(w.Args)
	if w.Load != nil {
		l := *w.Load
		w.Load = &l
	}
	return w
}

func (m Migration) clone() Migration {
	if m.Stats != nil {
		st := *m.Stats
		m.Stats = &st
	}
	return m
}

func (s Segment) clone() Segment {
	s.Replicas = slices.Clone(s.Replicas)
	return s
}

// clone returns a deep copy of t.
func (t *Table) clone() *Table {
	c := NewTable()
	for k, v := range t.nodes {
		c.nodes[k] = v
	}
	for k, v := range t.workloads {
		c.workloads[k] = v.clone()
	}
	for k, v := range t.segments {
		c.segments[k] = v.clone()
	}
	for k, v := range t.migrations {
		c.migrations[k] = v.clone()
	}
	return c
}

// Nodes returns all nodes sorted by ID.
func (t *Table) Nodes() []Node {
	out := make([]Node, 0, len(t.nodes))
	for _, n := range t.nodes {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Workloads returns all workloads sorted by ID.
func (t *Table) Workloads() []Workload {
	out := make([]Workload, 0, len(t.workloads))
	for _, w := range t.workloads {
		out = append(out, w.clone())
	}
	slices.SortFunc(out, func(a, b Workload) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Segments returns all segments sorted by (Group, Shmid).
func (t *Table) Segments() []Segment {
	out := make([]Segment, 0, len(t.segments))
	for _, s := range t.segments {
		out = append(out, s.clone())
	}
	slices.SortFunc(out, func(a, b Segment) int { return compareSegmentID(a.ID(), b.ID()) })
	return out
}

// GroupSegments returns the segments of one IPC group sorted by Shmid.
func (t *Table) GroupSegments(group string) []Segment {
	var out []Segment
	for id, s := range t.segments {
		if id.Group == group {
			out = append(out, s.clone())
		}
	}
	slices.SortFunc(out, func(a, b Segment) int { return cmp.Compare(a.Shmid, b.Shmid) })
	return out
}

// GroupEpoch returns the current epoch of an IPC group: the highest epoch of its
// segments, 0 if it has none. PlanMigration must carry it.
func (t *Table) GroupEpoch(group string) uint64 {
	var e uint64
	for id, s := range t.segments {
		if id.Group == group {
			e = max(e, s.Epoch)
		}
	}
	return e
}

// Migrations returns all migrations sorted by ID.
func (t *Table) Migrations() []Migration {
	out := make([]Migration, 0, len(t.migrations))
	for _, m := range t.migrations {
		out = append(out, m.clone())
	}
	slices.SortFunc(out, func(a, b Migration) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Node returns the node with the given id.
func (t *Table) Node(id string) (Node, bool) {
	n, ok := t.nodes[id]
	return n, ok
}

// Workload returns the workload with the given id.
func (t *Table) Workload(id string) (Workload, bool) {
	w, ok := t.workloads[id]
	return w.clone(), ok
}

// Segment returns the segment with the given id.
func (t *Table) Segment(id SegmentID) (Segment, bool) {
	s, ok := t.segments[id]
	return s.clone(), ok
}

// Migration returns the migration with the given id.
func (t *Table) Migration(id string) (Migration, bool) {
	m, ok := t.migrations[id]
	return m.clone(), ok
}

// ActiveMigration returns the migration of the workload that is neither done nor
// aborted, if any. There is at most one.
func (t *Table) ActiveMigration(workload string) (Migration, bool) {
	for _, m := range t.migrations {
		if m.Workload == workload && !m.Phase.Terminal() {
			return m.clone(), true
		}
	}
	return Migration{}, false
}
