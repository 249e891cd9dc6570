package shmowner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/migshm/migshm/shmowner/record"
)

// RaftConfig returns the raft configuration migshm recommends for a node.
//
// Log compaction: every node reports its load every few seconds, so load reports are
// almost all of the log (a few hundred nodes at one report per 5 s is ~60 entries/s of
// ~200 bytes), while the table itself stays small (tens of KB for hundreds of nodes and
// workloads). Snapshots are therefore cheap and we take them often:
//   - SnapshotThreshold 1024: snapshot once 1024 entries accumulated since the last one;
//   - SnapshotInterval 30 s: how often raft checks the threshold (the default 120 s would
//     let ~7000 entries pile up between checks at the rate above);
//   - TrailingLogs 2048: entries kept behind a snapshot, so a follower that falls ~30 s
//     behind catches up from the log instead of being sent a whole snapshot.
//
// The log thus stays near TrailingLogs + max(SnapshotThreshold, rate*SnapshotInterval)
// entries, about 4000 (~1 MB) at the rate above, instead of growing forever.
// TestLogCompaction checks that a snapshot compacts the log down to TrailingLogs.
func RaftConfig(nodeID string) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(nodeID)
	c.SnapshotThreshold = 1024
	c.SnapshotInterval = 30 * time.Second
	c.TrailingLogs = 2048
	return c
}

// StoreConfig configures Open.
type StoreConfig struct {
	NodeID   string
	Dir      string // holds raft.db (bbolt log and stable store) and snapshots/
	BindAddr string // raft TCP address, used when Transport is nil; "127.0.0.1:0" picks a port
	// Bootstrap makes this node a one-voter cluster if it has no raft state yet. It is
	// safe to leave on across restarts: a node with existing state never re-bootstraps.
	Bootstrap bool
	Transport raft.Transport // nil: a TCP transport on BindAddr, closed by Close
	Logger    hclog.Logger   // nil: warnings and errors to stderr
	Raft      *raft.Config   // nil: RaftConfig(NodeID); LocalID is always set to NodeID
	// OnChange, if set, is called after every applied entry (replayed ones at start
	// included) and every restored snapshot, with the table before and after it and the
	// time the leader appended the entry (now, for a snapshot). It runs on raft's FSM
	// goroutine, so it must be quick and must not modify the tables.
	OnChange func(prev, cur *Table, at time.Time)
}

// Store is the raft-replicated ownership table of one node.
type Store struct {
	raft         *raft.Raft
	fsm          *FSM
	logs         *guardedStore // bbolt: raft's log and stable store
	trans        raft.Transport
	ownTrans     bool
	bootstrapped bool
	closeOnce    sync.Once
	closeErr     error
}

// Open opens (or creates) the node's raft state in cfg.Dir and starts raft.
func Open(cfg StoreConfig) (*Store, error) {
	if cfg.NodeID == "" || cfg.Dir == "" {
		return nil, fmt.Errorf("open store: node id and dir are required: %w", record.ErrInvalid)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: os.Stderr})
	}
	rc := RaftConfig(cfg.NodeID)
	if cfg.Raft != nil {
		c := *cfg.Raft
		rc = &c
	}
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = logger

	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s := &Store{fsm: NewObservedFSM(cfg.OnChange), trans: cfg.Transport}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()

	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("open store: bolt: %w", err)
	}
	s.logs = &guardedStore{s: bolt}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, logger.Named("snapshot"))
	if err != nil {
		return nil, fmt.Errorf("open store: snapshots: %w", err)
	}
	if s.trans == nil {
		t, err := raft.NewTCPTransportWithLogger(cfg.BindAddr, nil, 3, 10*time.Second, logger.Named("transport"))
		if err != nil {
			return nil, fmt.Errorf("open store: transport: %w", err)
		}
		s.trans, s.ownTrans = t, true
	}

	existing, err := raft.HasExistingState(s.logs, s.logs, snaps)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if cfg.Bootstrap && !existing {
		conf := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: rc.LocalID, Address: s.trans.LocalAddr(),
		}}}
		if err := raft.BootstrapCluster(rc, s.logs, s.logs, snaps, s.trans, conf); err != nil {
			return nil, fmt.Errorf("open store: bootstrap: %w", err)
		}
		s.bootstrapped = true
	}
	r, err := raft.NewRaft(rc, s.fsm, s.logs, s.logs, snaps, s.trans)
	if err != nil {
		return nil, fmt.Errorf("open store: raft: %w", err)
	}
	s.raft = r
	ok = true
	return s, nil
}

// Bootstrapped reports whether Open bootstrapped a new cluster (false when the node
// already had raft state, whatever StoreConfig.Bootstrap said).
func (s *Store) Bootstrapped() bool { return s.bootstrapped }

// Addr returns the raft address of this node.
func (s *Store) Addr() string { return string(s.trans.LocalAddr()) }

// Raft returns the underlying raft, for the leader loop (notify channel, Barrier).
func (s *Store) Raft() *raft.Raft { return s.raft }

// translate maps raft's leadership errors to ErrNotLeader.
func translate(err error) error {
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
		errors.Is(err, raft.ErrLeadershipTransferInProgress) {
		return fmt.Errorf("%w: %v", record.ErrNotLeader, err)
	}
	return err
}

// timeout turns ctx's deadline into raft's enqueue timeout (0: none).
func timeout(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return 0
}

// Apply commits one command and returns the FSM's response. A rule violation the FSM
// returned is the error (errors.Is works with the sentinels); on a follower, or if
// leadership is lost, the error is ErrNotLeader.
func (s *Store) Apply(ctx context.Context, t MessageType, body any) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, err := Encode(t, body)
	if err != nil {
		return nil, err
	}
	f := s.raft.Apply(b, timeout(ctx))
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("apply %s: %w", t, translate(err))
	}
	resp := f.Response()
	if err, ok := resp.(error); ok {
		return nil, err
	}
	return resp, nil
}

// Join adds a voter (leader only). Joining again with the same id and address is a no-op;
// a known id or address with a different partner is replaced.
func (s *Store) Join(id, addr string) error {
	if s.raft.State() != raft.Leader {
		return fmt.Errorf("join %s: %w", id, record.ErrNotLeader)
	}
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return fmt.Errorf("join %s: %w", id, translate(err))
	}
	for _, srv := range cf.Configuration().Servers {
		sameID, sameAddr := srv.ID == raft.ServerID(id), srv.Address == raft.ServerAddress(addr)
		if sameID && sameAddr {
			return nil
		}
		if sameID || sameAddr {
			if err := s.raft.RemoveServer(srv.ID, 0, 0).Error(); err != nil {
				return fmt.Errorf("join %s: remove stale %s: %w", id, srv.ID, translate(err))
			}
		}
	}
	if err := s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 0).Error(); err != nil {
		return fmt.Errorf("join %s: %w", id, translate(err))
	}
	return nil
}

// Remove removes a server from the cluster (leader only).
func (s *Store) Remove(id string) error {
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, 0).Error(); err != nil {
		return fmt.Errorf("remove %s: %w", id, translate(err))
	}
	return nil
}

// Leader returns the current leader's raft address and id, empty if unknown.
func (s *Store) Leader() (addr, id string) {
	a, i := s.raft.LeaderWithID()
	return string(a), string(i)
}

// IsLeader reports whether this node is the leader.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// WaitLeader waits until the cluster has a known leader or ctx is done.
func (s *Store) WaitLeader(ctx context.Context) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if addr, _ := s.Leader(); addr != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for leader: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// Barrier waits until every entry committed before it has been applied to the FSM
// (leader only); a new leader calls it before trusting its table.
func (s *Store) Barrier(ctx context.Context) error {
	if err := s.raft.Barrier(timeout(ctx)).Error(); err != nil {
		return fmt.Errorf("barrier: %w", translate(err))
	}
	return nil
}

// Table returns a deep copy of this node's table (possibly behind the leader's).
func (s *Store) Table() *Table { return s.fsm.Table() }

// AppliedIndex returns the index of the last entry applied to this node's table.
func (s *Store) AppliedIndex() uint64 {
	if i := s.fsm.AppliedIndex(); i > 0 {
		return i
	}
	return s.raft.AppliedIndex() // restored from a snapshot, nothing applied since
}

// WaitApplied waits until this node's table reflects every entry up to log index i, and
// reports whether that happened before ctx ended. Raft's own AppliedIndex moves when
// entries are handed to the FSM goroutine, before the table shows them, and entries the
// FSM never sees (no-ops, configuration changes) do not move the FSM's index: so this
// waits for raft to pass i, then for the FSM to apply the last command at or below i.
func (s *Store) WaitApplied(ctx context.Context, i uint64) bool {
	wait := func(cond func() bool) bool {
		for !cond() {
			select {
			case <-ctx.Done():
				return false
			case <-time.After(2 * time.Millisecond):
			}
		}
		return true
	}
	if !wait(func() bool { return s.raft.AppliedIndex() >= i }) {
		return false
	}
	var first uint64
	if err := s.logs.ifOpen(func(b boltStore) (err error) { first, err = b.FirstIndex(); return err }); err != nil {
		return false
	}
	for k := i; k >= first && k > 0; k-- {
		var l raft.Log
		if err := s.logs.ifOpen(func(b boltStore) error { return b.GetLog(k, &l) }); err != nil {
			break // compacted into a snapshot: restored before raft passed it
		}
		if l.Type == raft.LogCommand {
			return wait(func() bool { return s.fsm.AppliedIndex() >= k })
		}
	}
	return true
}

// Stats returns raft's statistics.
func (s *Store) Stats() map[string]string { return s.raft.Stats() }

// Close stops this node in consul's order: the transport Open made first (no new RPC
// comes in), then raft (Shutdown waits for raft's goroutines), then bbolt. A Transport
// passed in StoreConfig is left to its owner, though raft's Shutdown closes any
// transport with a Close method once its goroutines stopped. Either way a heartbeat a
// transport goroutine was already handling can outlive Shutdown (hashicorp/raft#717);
// guardedStore keeps it off the closed bbolt. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if c, ok := s.trans.(raft.WithClose); ok && s.ownTrans {
			errs = append(errs, c.Close())
		}
		if s.raft != nil {
			if err := s.raft.Shutdown().Error(); err != nil {
				errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
			}
		}
		if s.logs != nil {
			errs = append(errs, s.logs.Close())
		}
		if err := errors.Join(errs...); err != nil {
			s.closeErr = fmt.Errorf("close store: %w", err)
		}
	})
	return s.closeErr
}
