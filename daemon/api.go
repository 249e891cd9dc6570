package daemon

import (
	"encoding/json"

	"github.com/migshm/migshm/shmowner"
)

// Status is what `migshm status` shows: this node and the Raft cluster as it sees it.
type Status struct {
	Node         string `json:"node"`
	RaftAddr     string `json:"raft_addr"`
	APIAddr      string `json:"api_addr"`
	RaftState    string `json:"raft_state"` // Leader, Follower, Candidate, Shutdown
	Member       bool   `json:"member"`     // this node is in the Raft configuration
	Leader       string `json:"leader"`     // leader's node id, "" if none is known
	LeaderAddr   string `json:"leader_addr"`
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

// applyRequest carries one table command to the leader (peer API).
type applyRequest struct {
	Type uint8           `json:"type"`
	Body json.RawMessage `json:"body"`
}

// joinRequest asks the leader to add a node (peer API).
type joinRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
}

// Types re-exported for API users, so the CLI does not need to import shmowner.
type (
	Node      = shmowner.Node
	Workload  = shmowner.Workload
	Segment   = shmowner.Segment
	Migration = shmowner.Migration
)
