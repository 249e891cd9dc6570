package record

import (
	"cmp"
	"fmt"
	"maps"
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

// Valid reports whether s is one of the node states.
func (s NodeState) Valid() bool {
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
	// Since (unix nanos) is when the interval the CPU figures cover began: the node's and
	// those of the workloads reported with it. 0 when there was no interval yet (the
	// first report after a start). The balancer does not act on a node whose figures
	// began before its last migration ended: they describe a placement that is gone.
	Since int64 `json:"since,omitempty"`
}

// Node is a host running migshmd.
type Node struct {
	ID       string    `json:"id"`
	RaftAddr string    `json:"raft_addr"`
	APIAddr  string    `json:"api_addr"`
	State    NodeState `json:"state"`
	// Drain is the operator's cordon: a node with it set takes no new workloads and is
	// emptied by the balancer. It outlives the node going down, so a drained node that
	// restarts comes back draining, not active; only an undrain clears it.
	Drain bool `json:"drain,omitempty"`
	// AddrNet is the IPv4 network (CIDR) on which the node serves workloads with an
	// address of their own (its ip-parent's); empty if it serves none. The balancer
	// moves such a workload only to a node on its address's network.
	AddrNet string     `json:"addr_net,omitempty"`
	Load    LoadVector `json:"load"`
	LoadAt  int64      `json:"load_at"` // unix nanos of Load, as sent by the reporter
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

// Valid reports whether s is one of the workload states.
func (s WorkloadState) Valid() bool {
	switch s {
	case WorkloadRunning, WorkloadMigrating, WorkloadExited:
		return true
	}
	return false
}

// Workload is a process tree in its own PID and IPC namespaces, the unit CRIU moves.
type Workload struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Node    string `json:"node"`
	InitPid int    `json:"init_pid"` // host pid on Node; informative only, never a key
	Pids    []int  `json:"pids"`     // host pids on Node; informative only
	Group   string `json:"group"`    // IPC group id (shm group)
	// Addr is the address of its own the workload's tree has, with the prefix of its
	// network ("10.0.0.50/24"), which moves with it; "" for a workload on its node's
	// network. The members of a group share one; no two groups running hold the same.
	Addr       string        `json:"addr,omitempty"`
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
	// Since (unix nanos) is when the interval of the CPU figure began (the report's
	// LoadVector.Since); 0 if unknown.
	Since int64 `json:"since,omitempty"`
	// Node is the node that measured it: a workload that just moved keeps the figure
	// its old node measured until its new one reports it.
	Node string `json:"node,omitempty"`
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

// CompareSegmentIDs orders segment ids by group, then shmid.
func CompareSegmentIDs(a, b SegmentID) int {
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

// Migration is the replicated record of one move: of an IPC group's members on one
// node, which move as one tree.
type Migration struct {
	ID string `json:"id"`
	// Workload is the member the move was asked for; Members every workload it moves
	// (Workload first). A record without Members moves Workload alone.
	Workload  string   `json:"workload"`
	Members   []string `json:"members,omitempty"`
	Source    string   `json:"source"`
	Target    string   `json:"target"`
	Phase     Phase    `json:"phase"`
	Epoch     uint64   `json:"epoch"` // the group epoch the migration was planned at
	StartedAt int64    `json:"started_at"`
	UpdatedAt int64    `json:"updated_at"`
	Bytes     uint64   `json:"bytes"` // bytes shipped so far
	Error     string   `json:"error"`
	// Reason says who asked for the move: empty for an operator, "balancer: ..." for
	// the balancer, with its reason.
	Reason string `json:"reason,omitempty"`
	// Stats are the migration's figures, as the source last reported them.
	Stats *MigrationStats `json:"stats,omitempty"`
}

// Revocation puts a node certificate on the cluster's denylist: no daemon accepts a
// TLS handshake with it any more, as client or as server.
type Revocation struct {
	Serial string `json:"serial"` // the certificate's serial number, lower-case hex
	Node   string `json:"node"`   // the name (CN) it was issued for
	Reason string `json:"reason,omitempty"`
	At     int64  `json:"at"` // unix nanos
}

// Pruned sums what retention removed from the table of the migrations one node drove
// as source, so that counters read from the table stay totals.
type Pruned struct {
	Node string `json:"node"`
	// Ended counts pruned migrations by outcome ("done", "aborted") and initiator
	// ("user", "balancer"), joined by a slash: "done/user".
	Ended        map[string]uint64 `json:"ended,omitempty"`
	PrecopyBytes uint64            `json:"precopy_bytes,omitempty"`
	FinalBytes   uint64            `json:"final_bytes,omitempty"`
}

// Clone returns a deep copy of p.
func (p Pruned) Clone() Pruned {
	p.Ended = maps.Clone(p.Ended)
	return p
}

// Initiator says who asked for a migration: "user" or "balancer".
func (m Migration) Initiator() string {
	if m.Reason != "" {
		return "balancer"
	}
	return "user"
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
	// Window is the frozen window step by step, in order, back to back from the
	// freeze: the steps add up to FrozenNS.
	Window []WindowStep `json:"window,omitempty"`
}

// WindowStep is one step of a migration's frozen window, timed on the source.
type WindowStep struct {
	Step string `json:"step"`
	NS   int64  `json:"ns"`
	// Parts divide the step as the tool doing it reports (CRIU's own figures, the
	// target's timings); what they leave of NS is the step's overhead (the wire, a
	// process starting, JSON).
	Parts []WindowStep `json:"parts,omitempty"`
}

// Clone returns a deep copy of st.
func (st MigrationStats) Clone() MigrationStats {
	st.Window = cloneSteps(st.Window)
	return st
}

func cloneSteps(steps []WindowStep) []WindowStep {
	if steps == nil {
		return nil
	}
	out := make([]WindowStep, len(steps))
	for i, s := range steps {
		s.Parts = cloneSteps(s.Parts)
		out[i] = s
	}
	return out
}

// Clone returns a deep copy of w.
func (w Workload) Clone() Workload {
	w.Pids = slices.Clone(w.Pids)
	w.Args = slices.Clone(w.Args)
	if w.Load != nil {
		l := *w.Load
		w.Load = &l
	}
	return w
}

// Clone returns a deep copy of m.
func (m Migration) Clone() Migration {
	m.Members = slices.Clone(m.Members)
	if m.Stats != nil {
		st := m.Stats.Clone()
		m.Stats = &st
	}
	return m
}

// Moves returns the workloads the migration moves.
func (m Migration) Moves() []string {
	if len(m.Members) == 0 {
		return []string{m.Workload}
	}
	return m.Members
}

// MovesWorkload reports whether the migration moves workload id.
func (m Migration) MovesWorkload(id string) bool { return slices.Contains(m.Moves(), id) }

// Clone returns a deep copy of s.
func (s Segment) Clone() Segment {
	s.Replicas = slices.Clone(s.Replicas)
	return s
}
