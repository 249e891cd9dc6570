// Package api is migshm's API as its clients see it: the wire types of the local API
// (the CLI's, on the daemon's unix socket) and of the peer API between daemons, the
// error codes both carry, and the Client. It links none of the daemon: no Raft, no
// store, no metrics.
package api

import (
	"encoding/json"

	"github.com/migshm/migshm/shmowner/record"
)

// DefaultSocket is where a node's daemon serves the local API.
const DefaultSocket = "/run/migshmd/migshmd.sock"

// Status is what `migshm status` shows: this node and the Raft cluster as it sees it.
type Status struct {
	Node         string `json:"node"`
	RaftAddr     string `json:"raft_addr"`
	APIAddr      string `json:"api_addr"`
	RaftState    string `json:"raft_state"` // Leader, Follower, Candidate, Shutdown
	Member       bool   `json:"member"`     // this node is in the Raft configuration
	Leader       string `json:"leader"`     // leader's node id, "" if none is known
	LeaderAddr   string `json:"leader_addr"`
	LeaderAPI    string `json:"leader_api,omitempty"` // the leader's peer API address (where joins go)
	Term         uint64 `json:"term"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	LastLogIndex uint64 `json:"last_log_index"`
	LastContact  string `json:"last_contact"` // with the leader, as raft reports it
	Peers        []Peer `json:"peers"`
	Workloads    int    `json:"workloads"`       // running on this node
	Version      string `json:"version"`         // daemon build
	Uptime       string `json:"uptime"`          // since this daemon started
	CRIU         string `json:"criu,omitempty"`  // the criu binary this node uses
	Error        string `json:"error,omitempty"` // why this node is not yet a working member
	// Balancer is the leader's newest balancer pass (nil if the leader did not answer).
	Balancer *BalanceReport `json:"balancer,omitempty"`
	// Addresses is what this node offers workloads with an address of their own and
	// the addresses running workloads hold, cluster-wide (nil: neither).
	Addresses *AddressStatus `json:"addresses,omitempty"`
}

// AddressStatus is the address pool as one node sees it (`migshm run --ip`).
type AddressStatus struct {
	Parent  string        `json:"parent,omitempty"`  // this node's ip-parent; "" if it offers none
	Network string        `json:"network,omitempty"` // the network ip-parent is on
	Pool    string        `json:"pool,omitempty"`    // ip-pool
	Gateway string        `json:"gateway,omitempty"` // ip-gateway
	Free    int           `json:"free"`              // addresses of the pool no running workload holds
	Held    []HeldAddress `json:"held"`              // by running workloads, cluster-wide, sorted by address
}

// HeldAddress is an address of its own a running workload holds.
type HeldAddress struct {
	Addr     string `json:"addr"`
	Workload string `json:"workload"`
	Name     string `json:"name"`
	Node     string `json:"node"`
}

// Peer is one server of the Raft configuration.
type Peer struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
}

// RunRequest asks a node to start a workload.
type RunRequest struct {
	Name  string   `json:"name,omitempty"`  // default: command base name + id suffix
	Group string   `json:"group,omitempty"` // IPC group to join or create; default: its own
	Args  []string `json:"args"`
	Env   []string `json:"env,omitempty"` // default: a minimal PATH
	Dir   string   `json:"dir,omitempty"` // default: /
	// PidFile is where a program that daemonizes writes its main process's pid (as the
	// workload sees it; relative to Dir). The run waits for it, up to PidFileTimeoutMS
	// (0: 10 s); stop signals go to that process and its exit status is the workload's.
	PidFile          string `json:"pid_file,omitempty"`
	PidFileTimeoutMS int64  `json:"pid_file_timeout_ms,omitempty"`
	// IP gives the workload an address of its own that moves with it, its connections
	// included: ADDR, ADDR/PREFIX (the node network's) or "auto" (the first free
	// address of the cluster's ip-pool). In a group, the group has it: its first member
	// sets it, the others share it. Empty: the node's network.
	IP string `json:"ip,omitempty"`
}

// StopRequest asks the workload's node to stop it: SIGTERM, then SIGKILL after
// TimeoutMS (0: the node's stop-timeout).
type StopRequest struct {
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// LeaveRequest removes a node from the cluster. Node "" means the node serving the
// request. Force allows it while workloads still run there.
type LeaveRequest struct {
	Node  string `json:"node,omitempty"`
	Force bool   `json:"force,omitempty"`
}

// LeaveResult says what a leave did.
type LeaveResult struct {
	Node string `json:"node"`
}

// ApplyRequest carries one table command to the leader (peer API): its message type
// and JSON body, as shmowner encodes them.
type ApplyRequest struct {
	Type uint8           `json:"type"`
	Body json.RawMessage `json:"body"`
}

// JoinRequest asks the leader to add a node (peer API).
type JoinRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
}

// The table's records, as the API carries them.
type (
	Node       = record.Node
	Workload   = record.Workload
	Segment    = record.Segment
	Migration  = record.Migration
	Revocation = record.Revocation
)

// RevokeRequest puts a node certificate on the cluster's denylist: Serial is its serial
// number in hex (as `openssl x509 -serial` or `migshm tls revoke CERT` read it), Node
// the name it was issued for.
type RevokeRequest struct {
	Serial string `json:"serial"`
	Node   string `json:"node"`
	Reason string `json:"reason,omitempty"`
}

// MoveRequest asks to move a workload to another node (POST /v1/migrations). The
// answer is a stream of MoveEvent, one JSON object per line, ending with an event
// "done" or "error".
type MoveRequest struct {
	Workload string `json:"workload"` // id, name, host pid of any process of its tree, or unique id prefix
	Target   string `json:"target"`   // node id
	// MaxDowntimeMS is the downtime to aim for: pre-copy goes on while the pages that
	// changed in the last round would take longer than this to ship. 0: 300 ms.
	MaxDowntimeMS int64 `json:"max_downtime_ms,omitempty"`
	// MaxRounds bounds the pre-copy rounds; 0: 8.
	MaxRounds int `json:"max_rounds,omitempty"`
	// NoPrecopy skips pre-copy: freeze, dump and ship everything at once.
	NoPrecopy bool `json:"no_precopy,omitempty"`
	// MaxFreezeMS caps the frozen window: a move that would keep the workload frozen
	// longer aborts, and the workload resumes on its node. 0: no cap beyond the
	// size-based bound (and the target's progress timeout).
	MaxFreezeMS int64 `json:"max_freeze_ms,omitempty"`
	// Reason is recorded on the migration (Migration.Reason): empty for an operator;
	// the balancer sets "balancer: KIND: why".
	Reason string `json:"reason,omitempty"`
}

// Move events.
const (
	EventPhase = "phase" // the migration entered Phase
	EventRound = "round" // a pre-copy round ended (Round)
	EventDone  = "done"  // the migration committed (Migration, Summary)
	EventError = "error" // the migration failed or was refused (Error, Code); see Migration.Phase
	// EventStalled: the target has not answered for a while (Error says since when and
	// why); frozen, the move aborts at the progress timeout, running it waits.
	EventStalled   = "stalled"
	EventAnswering = "answering" // the target answers again after EventStalled
)

// MoveEvent is one line of a move's progress stream.
type MoveEvent struct {
	Event     string          `json:"event"`
	At        int64           `json:"at"` // unix nanos
	Migration string          `json:"migration,omitempty"`
	Phase     string          `json:"phase,omitempty"`
	Round     *RoundInfo      `json:"round,omitempty"`
	Record    *Migration      `json:"record,omitempty"` // the migration's record, on done and error
	Summary   *MigrationStats `json:"summary,omitempty"`
	Error     string          `json:"error,omitempty"`
	Code      string          `json:"code,omitempty"` // wire error code (see errors.go)
}

// RoundInfo describes one pre-copy round.
type RoundInfo struct {
	Round        int     `json:"round"`         // 1-based
	Pages        int64   `json:"pages"`         // pages read this round
	ChangedPages int64   `json:"changed_pages"` // pages that differed from the last round (all, in round 1)
	DeltaPages   int64   `json:"delta_pages"`   // pages sent as their changed words only (delta against the target's copy)
	SentBytes    int64   `json:"sent_bytes"`    // bytes on the wire this round
	DurationNS   int64   `json:"duration_ns"`
	RateBPS      float64 `json:"rate_bps"` // bytes per second shipped this round
}

// CheckRequest asks whether a workload can move to a node (POST /v1/migrations/check).
type CheckRequest struct {
	Workload string `json:"workload"`
	Target   string `json:"target"`
}

// Problem is one reason a workload cannot move now.
type Problem struct {
	Reason string `json:"reason"` // machine-readable, e.g. "tcp-established", "target-memory"
	Detail string `json:"detail"` // what and what to do
}

// CheckReport is what a check found. OK is true when Problems is empty.
type CheckReport struct {
	Workload string `json:"workload"` // id
	Name     string `json:"name"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	// Group is the workload's IPC group; Members the names of every workload that moves
	// with it (itself first): a group moves as one tree.
	Group       string    `json:"group,omitempty"`
	Members     []string  `json:"members,omitempty"`
	OK          bool      `json:"ok"`
	Processes   int       `json:"processes"`
	Segments    int       `json:"segments"`
	MemoryBytes uint64    `json:"memory_bytes"` // what the target must hold during the move: the memory (private resident + shm) and its images
	TargetFree  uint64    `json:"target_free_bytes"`
	Problems    []Problem `json:"problems"`
	// Carries are the directories and small files the tree needs that the target
	// lacks: a move makes and copies them there (nodes that share no disk).
	Carries []CarriedFile `json:"carries,omitempty"`
}

// CarriedFile is a file or directory a move carries to its target.
type CarriedFile struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
	Dir   bool   `json:"dir,omitempty"`
	// Replaces: the target has an outdated copy the workload's group left there when
	// it moved away, unchanged since; the move replaces it.
	Replaces bool `json:"replaces,omitempty"`
}

// MigrationStats are the figures of a migration (the table's record).
type MigrationStats = record.MigrationStats

// WindowStep is one step of a migration's frozen window.
type WindowStep = record.WindowStep

// NodeLoad is a node's load as the leader's balancer counts it (GET /v1/balance): the
// CPU its workloads use, from their processes, over the cores the node declares.
type NodeLoad struct {
	Node          string  `json:"node"`
	State         string  `json:"state"`
	Cores         float64 `json:"cores"`     // capacity the node declares (capacity-cores)
	CPU           float64 `json:"cpu"`       // cores its workloads use
	Load          float64 `json:"load"`      // CPU / Cores
	Workloads     int     `json:"workloads"` // running workloads counted on it
	MemFreeBytes  uint64  `json:"mem_free_bytes"`
	MemTotalBytes uint64  `json:"mem_total_bytes"`
	// Settling: its load was last measured from before its last migration ended, so CPU
	// balancing leaves it out until its next report.
	Settling bool `json:"settling,omitempty"`
}

// BalanceMove is one move the balancer planned.
type BalanceMove struct {
	Workload string  `json:"workload"` // id
	Name     string  `json:"name"`
	Group    string  `json:"group"`
	From     string  `json:"from"`
	To       string  `json:"to"`
	Kind     string  `json:"kind"`   // memory, drain or cpu
	Reason   string  `json:"reason"` // why, with the numbers
	Score    float64 `json:"score"`  // how much the move reduces the imbalance
	// Started is set when the leader started the migration (not in a dry run);
	// Error when starting it failed.
	Started bool   `json:"started,omitempty"`
	Error   string `json:"error,omitempty"`
}

// BalanceSkip says why the balancer left a workload (or a node, or the whole pass) alone.
type BalanceSkip struct {
	Workload string `json:"workload,omitempty"`
	Name     string `json:"name,omitempty"`
	Node     string `json:"node,omitempty"`
	Reason   string `json:"reason"`
}

// BalanceReport is one balancer pass of the leader: the loads it saw, the moves it
// planned (and started, unless DryRun) and what it left alone and why. GET /v1/balance
// plans without moving anything; POST /v1/balance runs a pass now; GET
// /v1/balance/last returns the leader's newest pass.
type BalanceReport struct {
	Leader    string        `json:"leader"`
	At        int64         `json:"at"` // unix nanos
	DryRun    bool          `json:"dry_run"`
	Auto      bool          `json:"auto"`     // the leader balances on its own (auto-balance)
	Interval  string        `json:"interval"` // between automatic passes
	Threshold float64       `json:"threshold"`
	Mean      float64       `json:"mean"`      // cluster mean load of the active nodes
	Spread    float64       `json:"spread"`    // most loaded minus least loaded active node
	Imbalance float64       `json:"imbalance"` // what CPU balancing reduces (balancer.Imbalance)
	InFlight  int           `json:"in_flight"` // migrations not yet done or aborted
	Nodes     []NodeLoad    `json:"nodes"`
	Moves     []BalanceMove `json:"moves"`
	Skipped   []BalanceSkip `json:"skipped"`
	// LastMoves are the moves of the newest pass that started any, at LastMovesAt
	// (GET /v1/balance/last and status only).
	LastMoves   []BalanceMove `json:"last_moves,omitempty"`
	LastMovesAt int64         `json:"last_moves_at,omitempty"`
}

// Event is one change of the table as a node applied it (GET /v1/events): a node's
// state, a workload starting, exiting or moving, a migration's phase, a segment's
// owner. The daemon finds them by comparing the table with what it was a moment ago,
// so each node numbers its own (Seq) and a change undone within that moment may be
// missed.
type Event struct {
	Seq    uint64 `json:"seq"`              // this node's number of the event, from 1
	At     int64  `json:"at"`               // unix nanos, when the node saw the change
	Kind   string `json:"kind"`             // node, workload, migration or segment
	ID     string `json:"id"`               // of the node, workload, migration or segment (group/shmid)
	Name   string `json:"name,omitempty"`   // of the workload, if any
	Change string `json:"change"`           // what happened, e.g. down, started, moved, frozen, owner
	Node   string `json:"node,omitempty"`   // where: the workload's node, a migration's source
	From   string `json:"from,omitempty"`   // a move's or owner change's former node
	To     string `json:"to,omitempty"`     // its new node
	Detail string `json:"detail,omitempty"` // e.g. exit status, abort error, members moved
}

// Event kinds.
const (
	EventKindNode      = "node"
	EventKindWorkload  = "workload"
	EventKindMigration = "migration"
	EventKindSegment   = "segment"
)
