package shmowner

import (
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/migshm/migshm/shmowner/record"
)

// MessageType is the first byte of every log entry; the rest is the JSON body.
// Values are part of the log format: never renumber or reuse one. Each type is
// registered once, with its name, request type and apply function (see init below).
type MessageType uint8

// Message types. Each names its body type.
const (
	RegisterNodeType      MessageType = 1  // RegisterNodeRequest
	RemoveNodeType        MessageType = 2  // RemoveNodeRequest
	SetNodeStateType      MessageType = 3  // SetNodeStateRequest
	ReportLoadType        MessageType = 4  // ReportLoadRequest
	UpsertWorkloadType    MessageType = 5  // UpsertWorkloadRequest
	RemoveWorkloadType    MessageType = 6  // RemoveWorkloadRequest
	SetWorkloadStateType  MessageType = 7  // SetWorkloadStateRequest
	SetSegmentsType       MessageType = 8  // SetSegmentsRequest
	PlanMigrationType     MessageType = 9  // PlanMigrationRequest
	SetMigrationPhaseType MessageType = 10 // SetMigrationPhaseRequest

	// ProbeType is a write that changes nothing: it carries IgnoreUnknownFlag, so every
	// node skips it. The daemon uses it to measure commit latency end to end.
	ProbeType MessageType = IgnoreUnknownFlag | 11 // ProbeRequest

	// SetMigrationStatsType records a migration's figures, also once it is done (the
	// downtime is known only after the commit). Losing one loses figures, never
	// state, so old nodes may skip it.
	SetMigrationStatsType MessageType = IgnoreUnknownFlag | 12 // SetMigrationStatsRequest

	// SetWorkloadPinnedType pins or unpins a workload. Not ignorable: a node that
	// missed a pin could move a pinned workload.
	SetWorkloadPinnedType MessageType = 13 // SetWorkloadPinnedRequest

	// SetNodeDrainType sets or clears a node's cordon. Not ignorable: a node that
	// missed it would place workloads on a drained node.
	SetNodeDrainType MessageType = 14 // SetNodeDrainRequest

	// PruneType removes old records (retention). Not ignorable: a node that kept an
	// exited workload would refuse its name to a new one where others accept it.
	PruneType MessageType = 15 // PruneRequest

	// RevokeType puts a certificate on the denylist. Not ignorable: a node that missed
	// it would still talk to the revoked certificate.
	RevokeType MessageType = 16 // RevokeRequest
)

// IgnoreUnknownFlag marks a message type that a node which does not know it may skip
// (Apply returns nil). New commands that old nodes can safely miss set it, so a rolling
// upgrade never crashes an old node; an unknown type without it panics.
const IgnoreUnknownFlag MessageType = 128

// Every command, registered once (consul's fsm registerCommand): Apply dispatches from
// this table, CheckCommand validates against it, String and TypeOf read it.
func init() {
	register(RegisterNodeType, "RegisterNode", (*Table).registerNode)
	register(RemoveNodeType, "RemoveNode", (*Table).removeNode)
	register(SetNodeStateType, "SetNodeState", (*Table).setNodeState)
	register(ReportLoadType, "ReportLoad", (*Table).reportLoad)
	register(UpsertWorkloadType, "UpsertWorkload", (*Table).upsertWorkload)
	register(RemoveWorkloadType, "RemoveWorkload", (*Table).removeWorkload)
	register(SetWorkloadStateType, "SetWorkloadState", (*Table).setWorkloadState)
	register(SetSegmentsType, "SetSegments", (*Table).setSegments)
	register(PlanMigrationType, "PlanMigration", (*Table).planMigration)
	register(SetMigrationPhaseType, "SetMigrationPhase", (*Table).setMigrationPhase)
	register[ProbeRequest](ProbeType, "Probe", nil)
	register(SetMigrationStatsType, "SetMigrationStats", (*Table).setMigrationStats)
	register(SetWorkloadPinnedType, "SetWorkloadPinned", (*Table).setWorkloadPinned)
	register(SetNodeDrainType, "SetNodeDrain", (*Table).setNodeDrain)
	register(PruneType, "Prune", (*Table).prune)
	register(RevokeType, "Revoke", (*Table).revoke)
}

// command is a registered message type.
type command struct {
	name string
	req  reflect.Type // the request type its body decodes into
	// check decodes a body as apply does and returns the decoding error.
	check func(body []byte) error
	// apply decodes a body, panicking if it cannot, and applies it to the table. Nil for
	// a no-op (Probe): the FSM skips the entry without decoding it, as a node that does
	// not know the type would.
	apply func(t *Table, body []byte) error
}

var (
	commands     = map[MessageType]command{}
	commandTypes = map[reflect.Type]MessageType{}
)

// register records message type t: its name, its request type R and the method that
// applies an R to the table (nil for a no-op, which must be ignorable so that nodes that
// know it and nodes that do not skip it alike).
func register[R any](t MessageType, name string, apply func(*Table, R) error) {
	rt := reflect.TypeFor[R]()
	if _, dup := commands[t]; dup {
		panic(fmt.Sprintf("shmowner: message type %d registered twice", uint8(t)))
	}
	if _, dup := commandTypes[rt]; dup {
		panic(fmt.Sprintf("shmowner: request type %s registered twice", rt))
	}
	if apply == nil && !t.ignorable() {
		panic(fmt.Sprintf("shmowner: no-op message type %d lacks IgnoreUnknownFlag", uint8(t)))
	}
	c := command{name: name, req: rt, check: func(body []byte) error {
		var r R
		return json.Unmarshal(body, &r)
	}}
	if apply != nil {
		c.apply = func(tb *Table, body []byte) error {
			var r R
			if err := json.Unmarshal(body, &r); err != nil {
				// We have to panic so that our state doesn't diverge.
				panic(fmt.Sprintf("shmowner: decode %s: %v", t, err))
			}
			return apply(tb, r)
		}
	}
	commands[t] = c
	commandTypes[rt] = t
}

// ignorable reports whether a node that does not know t may skip it.
func (t MessageType) ignorable() bool { return t&IgnoreUnknownFlag != 0 }

func (t MessageType) String() string {
	if c, ok := commands[t]; ok {
		return c.name
	}
	return fmt.Sprintf("MessageType(%d)", uint8(t))
}

// CheckCommand returns an error unless t is a registered message type and body decodes
// into its request type exactly as Apply will decode it. A command that passes cannot
// stop the FSM; one that fails would panic every node, so the peer API refuses it before
// it enters the log.
func CheckCommand(t MessageType, body []byte) error {
	c, ok := commands[t]
	if !ok {
		return fmt.Errorf("unknown command type %d", uint8(t))
	}
	if err := c.check(body); err != nil {
		return fmt.Errorf("decode %s: %w", t, err)
	}
	return nil
}

// Reporter returns the node a command speaks for: the node that registers itself,
// reports its load, its segments or its workloads' state. Only that node may send it
// (cluster.ApplyForwarded), so that no member reports under another's name. "" for
// commands any member may send (plans, phases, pins, drains) and for bodies that do
// not decode (CheckCommand refuses those).
func Reporter(t MessageType, body []byte) string {
	var r struct {
		ID       string `json:"id"`
		Node     string `json:"node"`
		Workload struct {
			Node string `json:"node"`
		} `json:"workload"`
	}
	if json.Unmarshal(body, &r) != nil {
		return ""
	}
	switch t {
	case RegisterNodeType, ReportLoadType:
		return r.ID
	case SetSegmentsType, SetWorkloadStateType:
		return r.Node
	case UpsertWorkloadType:
		return r.Workload.Node
	}
	return ""
}

// TypeOf returns the message type whose request type is req's (req may also be a
// pointer to a request), and false if none is.
func TypeOf(req any) (MessageType, bool) {
	rt := reflect.TypeOf(req)
	if rt != nil && rt.Kind() == reflect.Pointer {
		rt = rt.Elem()
	}
	t, ok := commandTypes[rt]
	return t, ok
}

// Encode builds a log entry: the type byte followed by the JSON encoding of body.
func Encode(t MessageType, body any) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	out := make([]byte, 0, len(b)+1)
	out = append(out, byte(t))
	return append(out, b...), nil
}

// RegisterNodeRequest adds a node, or updates the addresses of a known one; either way
// its state becomes active. A known node keeps its last load report.
type RegisterNodeRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
	AddrNet  string `json:"addr_net,omitempty"` // record.Node.AddrNet
}

// RemoveNodeRequest deletes a node's record.
type RemoveNodeRequest struct {
	ID string `json:"id"`
}

// SetNodeStateRequest sets a node's state. A node whose Drain flag is set that is made
// active becomes draining instead; making a node draining sets its Drain flag.
type SetNodeStateRequest struct {
	ID    string           `json:"id"`
	State record.NodeState `json:"state"`
}

// SetNodeDrainRequest sets a node's Drain flag (the operator's cordon) or clears it. An
// up node becomes draining or active with it; a down node stays down and comes back
// in the state the flag says.
type SetNodeDrainRequest struct {
	ID    string `json:"id"`
	Drain bool   `json:"drain"`
}

// ReportLoadRequest records a node's load. At (unix nanos) is taken by the reporter;
// a report older than the one already recorded is ignored. Workloads holds what the
// node measured of its workloads (by workload id): each is recorded on a workload the
// table places on that node and ignored otherwise (it moved, or is gone); a workload
// not in the map keeps its last figures (a workload that just arrived has none yet).
//
// With Refresh, the report holds only the workloads whose figures changed: every other
// workload of the node whose figures this node measured keeps them, now dated At (and
// Since), so a node with thousands of steady workloads sends a few bytes per report.
type ReportLoadRequest struct {
	ID        string                         `json:"id"`
	Load      record.LoadVector              `json:"load"`
	At        int64                          `json:"at"`
	Workloads map[string]record.WorkloadLoad `json:"workloads,omitempty"`
	Refresh   bool                           `json:"refresh,omitempty"`
}

// SetWorkloadPinnedRequest pins a workload (nothing moves it: neither the balancer nor
// `migshm move`) or unpins it.
type SetWorkloadPinnedRequest struct {
	ID     string `json:"id"`
	Pinned bool   `json:"pinned"`
}

// ProbeRequest is the body of a ProbeType entry.
type ProbeRequest struct {
	Seq uint64 `json:"seq"`
}

// UpsertWorkloadRequest adds or replaces a workload. Its node must be registered; its
// name, if any, must not be another workload's; an
// empty State means running; State may not be migrating (only PlanMigration sets it),
// and a workload with a migration in flight cannot be replaced.
type UpsertWorkloadRequest struct {
	Workload record.Workload `json:"workload"`
}

// RemoveWorkloadRequest deletes a workload (not while a migration is in flight). When the
// last workload of an IPC group goes, the group's segments go with it.
type RemoveWorkloadRequest struct {
	ID string `json:"id"`
}

// SetWorkloadStateRequest sets a workload's state to running or exited. Exited is allowed
// while a migration is in flight (the workload died; the migration is then aborted);
// running is not.
type SetWorkloadStateRequest struct {
	ID string `json:"id"`
	// Node, if set, is the node reporting: a report from another node than the
	// workload's (a source that moved it away a moment ago) is refused as stale.
	Node       string               `json:"node,omitempty"`
	State      record.WorkloadState `json:"state"`
	ExitStatus int                  `json:"exit_status"`
	At         int64                `json:"at,omitempty"` // unix nanos; recorded as ExitedAt
}

// SegmentInfo is one segment as the owner node observes it.
type SegmentInfo struct {
	Shmid int    `json:"shmid"`
	Key   uint32 `json:"key"`
	Size  uint64 `json:"size"`
	Mode  uint32 `json:"mode"`
}

// SetSegmentsRequest replaces the full segment list of an IPC group as observed by Node,
// the owner node. Segments that stay keep their owner, replicas and epoch; new ones get
// Owner=Node, Epoch=1; missing ones are deleted. Node must own every segment the group
// already has (ErrNotOwner), so a stale report from a former owner is rejected.
type SetSegmentsRequest struct {
	Node     string        `json:"node"`
	Group    string        `json:"group"`
	Segments []SegmentInfo `json:"segments"`
}

// PlanMigrationRequest records a new migration of Workload from its current node to
// Target, with the other Members of its IPC group (Workload first; empty: Workload
// alone). The members must be every running workload of the group: a group moves whole.
// Epoch must be the current epoch of the workload's group (Table.GroupEpoch).
type PlanMigrationRequest struct {
	ID       string   `json:"id"`
	Workload string   `json:"workload"`
	Members  []string `json:"members,omitempty"`
	Target   string   `json:"target"`
	Epoch    uint64   `json:"epoch"`
	At       int64    `json:"at"`               // unix nanos
	Reason   string   `json:"reason,omitempty"` // recorded as Migration.Reason
}

// SetMigrationPhaseRequest moves a migration to Phase. Epoch must be the migration's
// epoch. Bytes, if non-zero, replaces the shipped byte count; Error, if non-empty, is
// recorded (normally with PhaseAborted).
type SetMigrationPhaseRequest struct {
	ID    string       `json:"id"`
	Phase record.Phase `json:"phase"`
	Epoch uint64       `json:"epoch"`
	At    int64        `json:"at"` // unix nanos
	Bytes uint64       `json:"bytes,omitempty"`
	Error string       `json:"error,omitempty"`
	// Stats, if set, replaces the migration's figures.
	Stats *record.MigrationStats `json:"stats,omitempty"`
	// Placed, with PhaseDone, names the host pid of each moved workload's init on the
	// target, so the table is right from the commit on (the target's reports then fill in
	// the rest of its processes).
	Placed map[string]int `json:"placed,omitempty"`
}

// PruneRequest removes the records the leader's retention chose: migrations that are
// done or aborted, and exited workloads. An id that is unknown or no longer prunable
// (a workload started again) is skipped: the request was decided on an older table.
// Each pruned migration is added to its source's Pruned totals.
type PruneRequest struct {
	Migrations []string `json:"migrations,omitempty"`
	Workloads  []string `json:"workloads,omitempty"`
}

// RevokeRequest puts the certificate with Serial (lower-case hex, as
// big.Int.Text(16)) on the denylist. Revoking a serial again keeps the first record.
type RevokeRequest struct {
	Revocation record.Revocation `json:"revocation"`
}

// SetMigrationStatsRequest replaces a migration's figures, in any phase.
type SetMigrationStatsRequest struct {
	ID    string                `json:"id"`
	Stats record.MigrationStats `json:"stats"`
}
