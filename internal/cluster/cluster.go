// Package cluster is a node's view of the Raft cluster, over the replicated table
// (shmowner.Store): writes that reach the leader from any node, reads that catch up
// with the leader first, membership (joining, removal, who leads), the events of Raft
// the leader acts on, and Raft's transport over mutual TLS (transport.go). Besides
// shmowner it is the only importer of hashicorp/raft.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/peer"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// Config is what a Cluster is built from.
type Config struct {
	Self     string          // this node's id
	RaftAddr string          // advertised Raft address
	APIAddr  string          // advertised peer API address
	AddrNet  string          // record.Node.AddrNet: the network it serves own addresses on, or ""
	DataDir  string          // for the hint to delete DataDir/raft after a removal
	Store    *shmowner.Store // opened by the caller, closed by the caller
	Peers    *peer.Peers
	Log      *slog.Logger
	// OnApply, if set, observes every Apply: its message type, duration and error.
	OnApply func(t shmowner.MessageType, d time.Duration, err error)
}

// Cluster is one node's handle on the cluster.
type Cluster struct {
	cfg   Config
	store *shmowner.Store
	log   *slog.Logger

	mu      sync.Mutex
	joinErr error // why this node is not a member yet; nil once it is
}

// New returns the cluster as node cfg.Self sees it.
func New(cfg Config) *Cluster {
	return &Cluster{cfg: cfg, store: cfg.Store, log: cfg.Log,
		joinErr: errors.New("starting: not yet a member of the cluster")}
}

// Self returns this node's id.
func (c *Cluster) Self() string { return c.cfg.Self }

// Table returns this node's copy of the table, possibly behind the leader's.
func (c *Cluster) Table() *shmowner.Table { return c.store.Table() }

// FreshTable returns the table for a read a user asked for: first it catches up with
// the leader (up to a second, see CatchUp), so a user who just wrote through one node
// reads the write from any other (read-your-writes, like Raft's ReadIndex without the
// lease check). If the leader is unknown or slow it answers with what it has: a
// partitioned node still shows its last view rather than nothing.
func (c *Cluster) FreshTable(ctx context.Context) *shmowner.Table {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c.CatchUp(ctx)
	return c.store.Table()
}

// CatchUp waits until this node has applied everything the leader had in its log when
// asked, and reports whether it got there before ctx ended. The leader's last log
// index, not its commit index: a leader elected a moment ago does not know yet that
// entries of the last term are committed (it learns when its own first entry commits),
// but it holds every committed entry (Raft's leader completeness). For the same reason
// the leader itself waits until it applied its whole log.
func (c *Cluster) CatchUp(ctx context.Context) bool {
	if c.store.IsLeader() {
		return c.store.WaitApplied(ctx, c.store.Raft().LastIndex())
	}
	addr := c.LeaderAPI()
	for addr == "" && c.leaderID() != "" && ctx.Err() == nil {
		// A leader is known but not yet in this node's table: a node that just restarted
		// replays the log once it hears from the leader. Give it a moment.
		time.Sleep(5 * time.Millisecond)
		addr = c.LeaderAPI()
	}
	if addr == "" {
		return false
	}
	var ls api.Status
	if err := c.cfg.Peers.Client(addr).Call(ctx, "GET", "/v1/status?stale=true", nil, &ls); err != nil {
		return false
	}
	if ls.RaftState != "Leader" {
		return false
	}
	want := max(ls.LastLogIndex, ls.CommitIndex)
	quick, cancel := context.WithTimeout(ctx, catchUpNudge)
	caught := c.store.WaitApplied(quick, want)
	cancel()
	if caught || ctx.Err() != nil {
		return caught
	}
	// A follower learns that entries committed with the leader's next AppendEntries,
	// which an idle leader sends only every CommitTimeout (50-100 ms): a probe entry
	// makes it send one now. A migration's target waits here in the frozen window.
	go func() { _ = c.Apply(ctx, shmowner.ProbeType, shmowner.ProbeRequest{Seq: want}) }()
	return c.store.WaitApplied(ctx, want)
}

// catchUpNudge is how long CatchUp waits on a follower before it has the leader send the
// commit index at once.
const catchUpNudge = 2 * time.Millisecond

// Apply commits a table command, on this node if it leads, otherwise through the
// leader's peer API. It retries through elections until ctx ends (15s if ctx has no
// deadline). A rule violation comes back as the table's sentinel.
func (c *Cluster) Apply(ctx context.Context, t shmowner.MessageType, body any) (err error) {
	start := time.Now()
	if c.cfg.OnApply != nil {
		defer func() { c.cfg.OnApply(t, time.Since(start), err) }()
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
	}
	raw, err := shmowner.Encode(t, body)
	if err != nil {
		return err
	}
	wait := 20 * time.Millisecond
	for {
		_, err = c.store.Apply(ctx, t, body)
		if errors.Is(err, record.ErrNotLeader) {
			if addr := c.LeaderAPI(); addr != "" {
				err = c.forward(ctx, addr, api.ApplyRequest{Type: raw[0], Body: raw[1:]})
			}
		}
		if err == nil || !(errors.Is(err, record.ErrNotLeader) || errors.Is(err, api.ErrUnreachable)) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", t, api.ErrNoLeader, err)
		case <-time.After(wait):
		}
		wait = min(wait*2, 500*time.Millisecond)
	}
}

// forwardTimeout bounds one attempt to have the leader commit a command: a leader cut
// off from the cluster never answers, and the next attempt goes to the one elected
// meanwhile.
const forwardTimeout = 5 * time.Second

// forward sends a command to the leader at addr. An attempt that gets no answer within
// forwardTimeout counts as unreachable, so Apply tries again (the leader may have
// changed). If the command did reach a leader that committed it, the retry is refused
// by the table's rules (a phase set twice, a plan made twice), never applied twice in
// effect; callers that must know read the record back.
func (c *Cluster) forward(ctx context.Context, addr string, req api.ApplyRequest) error {
	actx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	err := c.cfg.Peers.Forward(addr).Call(actx, "POST", "/peer/v1/apply", req, nil)
	if err != nil && ctx.Err() == nil && actx.Err() != nil {
		return fmt.Errorf("the leader at %s did not answer within %v: %w", addr, forwardTimeout, api.ErrUnreachable)
	}
	return err
}

// ApplyForwarded commits a command node from sent to this one, the leader. It never
// forwards: if this node does not lead any more the sender gets ErrNotLeader and
// retries. The body must decode as the FSM will decode it before it enters the log: an
// entry the FSM cannot decode would stop every node. A command that reports for a
// node (shmowner.Reporter) is refused from any other node.
func (c *Cluster) ApplyForwarded(ctx context.Context, from string, req api.ApplyRequest) error {
	t := shmowner.MessageType(req.Type)
	if t == 0 || len(req.Body) == 0 {
		return fmt.Errorf("apply: empty command: %w", api.ErrBadRequest)
	}
	if !json.Valid(req.Body) {
		return fmt.Errorf("apply %s: body is not JSON: %w", t, api.ErrBadRequest)
	}
	if err := shmowner.CheckCommand(t, req.Body); err != nil {
		return fmt.Errorf("apply: %v: %w", err, api.ErrBadRequest)
	}
	if r := shmowner.Reporter(t, req.Body); r != "" && r != from {
		return fmt.Errorf("apply %s: it reports for node %q, but %q sent it (a node reports only for itself): %w",
			t, r, from, api.ErrForbidden)
	}
	return c.ApplyHere(ctx, t, req.Body)
}

// ApplyHere commits a command on this node, which must lead (ErrNotLeader otherwise):
// the leader's own jobs act on what this leader observed and must not hand that to
// another leader.
func (c *Cluster) ApplyHere(ctx context.Context, t shmowner.MessageType, body any) error {
	_, err := c.store.Apply(ctx, t, body)
	return err
}

// IsLeader reports whether this node leads the cluster.
func (c *Cluster) IsLeader() bool { return c.store.IsLeader() }

// leaderID returns the leader's node id, "" if none is known.
func (c *Cluster) leaderID() string {
	_, id := c.store.Leader()
	return id
}

// LeaderAPI returns the leader's peer API address, "" if this node leads or none is
// known.
func (c *Cluster) LeaderAPI() string {
	id := c.leaderID()
	if id == "" || id == c.cfg.Self {
		return ""
	}
	return c.NodeAPI(id)
}

// Barrier waits until this leader applied every entry committed before it.
func (c *Cluster) Barrier(ctx context.Context) error { return c.store.Barrier(ctx) }

// InConfig reports whether Raft's latest configuration has node id.
func (c *Cluster) InConfig(id string) bool {
	f := c.store.Raft().GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			return true
		}
	}
	return false
}

// IsMember reports whether this node is in Raft's latest configuration.
func (c *Cluster) IsMember() bool { return c.InConfig(c.cfg.Self) }

// Status fills in what this node's Raft knows of itself and the cluster: its id and
// addresses, Raft state, term and indexes, the leader, the voters, and why it is not a
// working member (Error) if it is not.
func (c *Cluster) Status() api.Status {
	st := c.store.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(st[k], 10, 64); return v }
	addr, id := c.store.Leader()
	s := api.Status{
		Node: c.cfg.Self, RaftAddr: c.cfg.RaftAddr, APIAddr: c.cfg.APIAddr, RaftState: st["state"],
		Leader: id, LeaderAddr: addr, Term: u("term"), CommitIndex: u("commit_index"),
		AppliedIndex: u("applied_index"), LastLogIndex: u("last_log_index"), LastContact: st["last_contact"],
		Peers: []api.Peer{}, LeaderAPI: c.LeaderAPI(),
	}
	if id == c.cfg.Self {
		s.LeaderAPI = c.cfg.APIAddr
	}
	if f := c.store.Raft().GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			s.Peers = append(s.Peers, api.Peer{ID: string(srv.ID), Address: string(srv.Address),
				Suffrage: strings.ToLower(srv.Suffrage.String()), Leader: string(srv.ID) == id})
			if string(srv.ID) == c.cfg.Self {
				s.Member = true
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.joinErr != nil:
		s.Error = c.joinErr.Error()
	case !s.Member:
		s.Error = fmt.Sprintf("this node is no longer a voter of the cluster (it left or was removed); its table is stale. "+
			"To join again: stop it, delete %s, start it with --join", filepath.Join(c.cfg.DataDir, "raft"))
	}
	return s
}

// Term returns the current Raft term, as Raft's statistics say it.
func (c *Cluster) Term() string { return c.store.Stats()["term"] }

// Join adds a node to Raft and the table (leader only: ErrNotLeader otherwise).
func (c *Cluster) Join(ctx context.Context, req api.JoinRequest) error {
	if err := c.store.Join(req.ID, req.RaftAddr); err != nil {
		return err
	}
	c.log.Info("node joined", "peer", req.ID, "raft", req.RaftAddr, "api", req.APIAddr)
	return c.Apply(ctx, shmowner.RegisterNodeType,
		shmowner.RegisterNodeRequest{ID: req.ID, RaftAddr: req.RaftAddr, APIAddr: req.APIAddr})
}

// Remove removes node id from the table and from Raft (leader only: ErrNotLeader
// otherwise).
func (c *Cluster) Remove(ctx context.Context, id string) error {
	if !c.store.IsLeader() {
		return fmt.Errorf("remove node %s: %w", id, record.ErrNotLeader)
	}
	// The table first: once the leader removes itself from Raft it steps down and its
	// Raft shuts down, so nothing can be committed through it after that.
	if _, ok := c.store.Table().Node(id); ok {
		if err := c.ApplyHere(ctx, shmowner.RemoveNodeType, shmowner.RemoveNodeRequest{ID: id}); err != nil {
			return err
		}
	}
	if c.InConfig(id) {
		if err := c.store.Remove(id); err != nil {
			return err
		}
	}
	return nil
}

// NodeAPI returns node id's peer API address from this node's table, "" if the table
// has none.
func (c *Cluster) NodeAPI(id string) string {
	if n, ok := c.store.Table().Node(id); ok {
		return n.APIAddr
	}
	return ""
}
