package shmowner_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

// testRaftConfig is RaftConfig with timeouts low enough for a test cluster.
func testRaftConfig(id string) *raft.Config {
	c := shmowner.RaftConfig(id)
	c.HeartbeatTimeout = 150 * time.Millisecond
	c.ElectionTimeout = 150 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 10 * time.Millisecond
	return c
}

func openTestStore(t *testing.T, id, dir, bind string, bootstrap bool) *shmowner.Store {
	t.Helper()
	s, err := shmowner.Open(shmowner.StoreConfig{
		NodeID: id, Dir: dir, BindAddr: bind, Bootstrap: bootstrap,
		Logger: hclog.NewNullLogger(), Raft: testRaftConfig(id),
	})
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// leaderOf waits until exactly one of stores leads and every store agrees on it.
func leaderOf(t *testing.T, stores ...*shmowner.Store) *shmowner.Store {
	t.Helper()
	var leader *shmowner.Store
	wait.For(t, 10*time.Second, "a leader all agree on", func() (bool, string) {
		var seen []string
		leader = nil
		leaders := 0
		for _, s := range stores {
			addr, id := s.Leader()
			seen = append(seen, fmt.Sprintf("%s: %s, leader %s %q", s.Addr(), s.Raft().State(), addr, id))
			if s.IsLeader() {
				leader = s
				leaders++
			}
		}
		if leaders != 1 {
			return false, strings.Join(seen, "; ")
		}
		for _, s := range stores {
			if addr, id := s.Leader(); addr != leader.Addr() || id == "" {
				return false, strings.Join(seen, "; ")
			}
		}
		return true, ""
	})
	return leader
}

// waitLeader waits until s, a one-node cluster, leads.
func waitLeader(t *testing.T, s *shmowner.Store, d time.Duration) {
	t.Helper()
	wait.For(t, d, "leadership", func() (bool, string) {
		return s.IsLeader(), s.Raft().State().String()
	})
}

func TestOpenRejectsMissingConfig(t *testing.T) {
	if _, err := shmowner.Open(shmowner.StoreConfig{Dir: t.TempDir()}); !errors.Is(err, record.ErrInvalid) {
		t.Errorf("Open without node id: %v", err)
	}
}

func TestStoreSingleNode(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, "solo", dir, "127.0.0.1:0", true)
	if !s.Bootstrapped() {
		t.Fatal("fresh store did not bootstrap")
	}
	if err := s.WaitLeader(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, s, 5*time.Second)
	ctx := ctxTimeout(t, 5*time.Second)
	if err := s.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, shmowner.RegisterNodeType, shmowner.RegisterNodeRequest{ID: "solo", RaftAddr: s.Addr()}); err != nil {
		t.Fatal(err)
	}
	// A rule violation comes back as the error, with its sentinel.
	_, err := s.Apply(ctx, shmowner.PlanMigrationType, shmowner.PlanMigrationRequest{ID: "m", Workload: "nope", Target: "solo"})
	if !errors.Is(err, record.ErrUnknownWorkload) {
		t.Fatalf("apply: %v, want ErrUnknownWorkload", err)
	}
	if _, err := s.Apply(ctx, shmowner.ReportLoadType, make(chan int)); err == nil {
		t.Error("apply of an unencodable body succeeded")
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Apply(cancelled, shmowner.RegisterNodeType, shmowner.RegisterNodeRequest{ID: "x"}); !errors.Is(err, context.Canceled) {
		t.Errorf("apply with cancelled ctx: %v", err)
	}
	if st := s.Stats(); st["state"] != "Leader" {
		t.Errorf("stats state = %q", st["state"])
	}
	if s.Raft() == nil {
		t.Error("Raft() is nil")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	// Reopen: the table comes back from the bolt log (and snapshots), no re-bootstrap.
	s2 := openTestStore(t, "solo", dir, s.Addr(), true)
	if s2.Bootstrapped() {
		t.Error("store with existing state bootstrapped again")
	}
	wait.For(t, 10*time.Second, "the table to come back", func() (bool, string) {
		_, ok := s2.Table().Node("solo")
		return ok, tableJSON(t, s2.Table())
	})
}

func TestStoreCluster(t *testing.T) {
	ids := []string{"n0", "n1", "n2"}
	dirs := make([]string, len(ids))
	stores := make([]*shmowner.Store, len(ids))
	for i, id := range ids {
		dirs[i] = filepath.Join(t.TempDir(), id)
		stores[i] = openTestStore(t, id, dirs[i], "127.0.0.1:0", i == 0)
	}
	if !stores[0].Bootstrapped() || stores[1].Bootstrapped() || stores[2].Bootstrapped() {
		t.Fatal("only n0 should bootstrap")
	}
	if leaderOf(t, stores[0]) != stores[0] {
		t.Fatal("n0 does not lead its own cluster")
	}
	for i := 1; i < len(ids); i++ {
		if err := stores[0].Join(ids[i], stores[i].Addr()); err != nil {
			t.Fatalf("join %s: %v", ids[i], err)
		}
	}
	if err := stores[0].Join(ids[1], stores[1].Addr()); err != nil {
		t.Fatalf("joining twice: %v", err)
	}
	if err := stores[1].Join("n9", "127.0.0.1:1"); !errors.Is(err, record.ErrNotLeader) {
		t.Fatalf("join on a follower: %v, want ErrNotLeader", err)
	}
	leader := leaderOf(t, stores...)
	if leader != stores[0] {
		t.Fatalf("leader moved to %s", leader.Addr())
	}

	ctx := ctxTimeout(t, 30*time.Second)
	for i, id := range ids {
		if _, err := leader.Apply(ctx, shmowner.RegisterNodeType, shmowner.RegisterNodeRequest{ID: id, RaftAddr: stores[i].Addr()}); err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
	}
	mustStore(t, leader,
		upsertWL("w1", "n0", "grp-1"),
		segs("n0", "grp-1", 0, 1),
		plan("m1", "w1", "n1", 1),
	)
	converged := func(stores []*shmowner.Store, want string) {
		t.Helper()
		for _, s := range stores {
			wait.For(t, 10*time.Second, fmt.Sprintf("%s to converge", s.Addr()), func() (bool, string) {
				got := tableJSON(t, s.Table())
				return got == want, got
			})
		}
	}
	converged(stores, tableJSON(t, leader.Table()))
	if m, ok := stores[2].Table().Migration("m1"); !ok || m.Phase != record.PhasePlanned || m.Target != "n1" {
		t.Fatalf("follower sees m1 = %+v %v", m, ok)
	}

	// A follower refuses writes with ErrNotLeader.
	for _, f := range stores[1:] {
		if _, err := f.Apply(ctx, shmowner.ReportLoadType, shmowner.ReportLoadRequest{ID: "n1", At: 1}); !errors.Is(err, record.ErrNotLeader) {
			t.Fatalf("apply on follower: %v, want ErrNotLeader", err)
		}
	}

	// The leader goes away; one of the other two takes over and accepts writes.
	oldAddr := stores[0].Addr()
	if err := stores[0].Close(); err != nil {
		t.Fatalf("close leader: %v", err)
	}
	rest := stores[1:]
	leader = leaderOf(t, rest...)
	mustStore(t, leader, phase("m1", record.PhasePrecopy, 1), phase("m1", record.PhaseFrozen, 1), phase("m1", record.PhaseShipped, 1),
		phase("m1", record.PhaseRestored, 1), phase("m1", record.PhaseDone, 1))
	// Fencing survives the change of leader: the old epoch is refused.
	if _, err := leader.Apply(ctx, shmowner.PlanMigrationType, shmowner.PlanMigrationRequest{ID: "m2", Workload: "w1", Target: "n2", Epoch: 1}); !errors.Is(err, record.ErrStaleEpoch) {
		t.Fatalf("plan with the old epoch: %v, want ErrStaleEpoch", err)
	}
	converged(rest, tableJSON(t, leader.Table()))

	// n0 comes back from its own directory, with Bootstrap still set: it must not
	// bootstrap a cluster of its own but rejoin and catch up.
	stores[0] = openTestStore(t, "n0", dirs[0], oldAddr, true)
	if stores[0].Bootstrapped() {
		t.Fatal("n0 bootstrapped again over existing state")
	}
	converged(stores, tableJSON(t, leader.Table()))
	if s, _ := stores[0].Table().Segment(record.SegmentID{Group: "grp-1", Shmid: 0}); s.Owner != "n1" || s.Epoch != 2 {
		t.Fatalf("n0 did not catch up: segment = %+v", s)
	}
	if leaderOf(t, stores...) == nil {
		t.Fatal("no leader")
	}
	cf := leader.Raft().GetConfiguration()
	if err := cf.Error(); err != nil {
		t.Fatal(err)
	}
	if n := len(cf.Configuration().Servers); n != 3 {
		t.Fatalf("configuration has %d servers, want 3", n)
	}

	// Remove a follower; the other two still commit.
	leader = leaderOf(t, stores...)
	victim := "n0"
	if leader == stores[0] {
		victim = "n1"
	}
	if err := leader.Remove(victim); err != nil {
		t.Fatalf("remove %s: %v", victim, err)
	}
	mustStore(t, leader, shmowner.ReportLoadRequest{ID: "n2", At: 99, Load: record.LoadVector{CPU: 0.5}})
	if n, _ := leader.Table().Node("n2"); n.LoadAt != 99 {
		t.Errorf("n2 = %+v", n)
	}
}

// mustStore applies requests through s that must all succeed.
func mustStore(t *testing.T, s *shmowner.Store, reqs ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, req := range reqs {
		typ := shmownertest.Type(t, req)
		if _, err := s.Apply(ctx, typ, req); err != nil {
			t.Fatalf("apply %s: %v", typ, err)
		}
	}
}

// TestWaitApplied: WaitApplied returns once the table shows everything up to an index,
// also when the last entries are ones the FSM never sees (the leader's no-op, the
// bootstrap configuration), and gives up when ctx ends before an index is reached.
func TestWaitApplied(t *testing.T) {
	s := openTestStore(t, "solo", t.TempDir(), "127.0.0.1:0", true)
	waitLeader(t, s, 10*time.Second)
	// Only the configuration and the leader's no-op so far: no command at all.
	if !s.WaitApplied(ctxTimeout(t, 5*time.Second), s.Raft().LastIndex()) {
		t.Fatal("WaitApplied of a log without commands did not return true")
	}
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := s.Apply(ctx, shmowner.RegisterNodeType, shmowner.RegisterNodeRequest{ID: "solo", RaftAddr: s.Addr()}); err != nil {
		t.Fatal(err)
	}
	last := s.Raft().LastIndex()
	if !s.WaitApplied(ctx, last) {
		t.Fatalf("WaitApplied(%d) did not return true", last)
	}
	if _, ok := s.Table().Node("solo"); !ok {
		t.Fatal("WaitApplied returned before the table shows the command")
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if s.WaitApplied(short, last+1000) {
		t.Fatal("WaitApplied of an index far beyond the log returned true")
	}
}

// heartbeatTrap is an in-memory transport that gives the test raft's heartbeat handler
// and holds a heartbeat inside raft, past raft's shutdown check, until released.
type heartbeatTrap struct {
	raft.Transport
	mu      sync.Mutex
	handler func(raft.RPC)
	once    sync.Once
	entered chan struct{} // closed when a heartbeat reached the hold
	release chan struct{}
}

func (h *heartbeatTrap) SetHeartbeatHandler(cb func(raft.RPC)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.handler = cb
}

// EncodePeer is the first call appendEntries makes once processHeartbeat passed its
// shutdown check (it builds the response's header): a heartbeat waits here.
func (h *heartbeatTrap) EncodePeer(id raft.ServerID, addr raft.ServerAddress) []byte {
	if calledFrom("(*Raft).processHeartbeat") {
		h.once.Do(func() { close(h.entered) })
		<-h.release
	}
	return h.Transport.EncodePeer(id, addr)
}

// calledFrom reports whether a function whose name ends in fn is on the stack.
func calledFrom(fn string) bool {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		f, more := frames.Next()
		if strings.HasSuffix(f.Function, fn) {
			return true
		}
		if !more {
			return false
		}
	}
}

// TestHeartbeatAfterClose reproduces hashicorp/raft#717 deterministically: a heartbeat
// that passed raft's shutdown check before Close reaches the stable store (to save the
// leader's newer term) after Close shut raft down and closed bbolt. Raft panics on any
// error from the store, which would crash the process; the guard ends the heartbeat's
// goroutine instead: no panic, the term is not on disk, the leader is not told success.
func TestHeartbeatAfterClose(t *testing.T) {
	dir := t.TempDir()
	_, inmem := raft.NewInmemTransport("")
	trap := &heartbeatTrap{Transport: inmem, entered: make(chan struct{}), release: make(chan struct{})}
	s, err := shmowner.Open(shmowner.StoreConfig{NodeID: "n1", Dir: dir, Transport: trap,
		Logger: hclog.NewNullLogger(), Raft: testRaftConfig("n1")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	trap.mu.Lock()
	heartbeat := trap.handler
	trap.mu.Unlock()
	if heartbeat == nil {
		t.Fatal("raft set no heartbeat handler")
	}

	respCh := make(chan raft.RPCResponse, 1)
	returned := false
	done := make(chan struct{})
	go func() { // as the transport's connection handler does
		defer close(done)
		heartbeat(raft.RPC{RespChan: respCh, Command: &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ID: []byte("n0"), Addr: []byte("n0:7000")}, Term: 99}})
		returned = true
	}()
	select {
	case <-trap.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the heartbeat did not reach appendEntries")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	close(trap.release) // the heartbeat goes on to setCurrentTerm(99) on a closed store
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the heartbeat is still running")
	}
	if returned {
		t.Error("the heartbeat handler returned: raft went on after a write the store refused")
	}
	select {
	case r := <-respCh:
		if resp, ok := r.Response.(*raft.AppendEntriesResponse); !ok || resp.Success || resp.Term == 99 {
			t.Errorf("answer to the leader %+v, want failure with the old term", r.Response)
		}
	default:
		t.Error("appendEntries' deferred answer did not run")
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	if term, err := bolt.GetUint64([]byte("CurrentTerm")); err == nil && term == 99 {
		t.Error("the term of a heartbeat handled after Close is on disk")
	}
}
