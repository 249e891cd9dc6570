package shmowner_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

// inmemRaft starts a single-node raft on in-memory stores and transport and waits until
// it leads.
func inmemRaft(t *testing.T, conf *raft.Config) (*raft.Raft, *raft.InmemStore, *shmowner.FSM) {
	t.Helper()
	conf.LocalID = "n1"
	conf.Logger = hclog.NewNullLogger()
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	store := raft.NewInmemStore()
	snaps := raft.NewInmemSnapshotStore()
	addr, trans := raft.NewInmemTransport("")
	boot := raft.Configuration{Servers: []raft.Server{{ID: conf.LocalID, Address: addr}}}
	if err := raft.BootstrapCluster(conf, store, store, snaps, trans, boot); err != nil {
		t.Fatal(err)
	}
	fsm := shmowner.NewFSM()
	r, err := raft.NewRaft(conf, fsm, store, store, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Shutdown().Error(); err != nil {
			t.Error(err)
		}
	})
	wait.For(t, 5*time.Second, "leadership", func() (bool, string) {
		return r.State() == raft.Leader, r.State().String()
	})
	return r, store, fsm
}

// applyLoadReports applies n ReportLoad entries for node n1 and waits for all of them.
func applyLoadReports(t *testing.T, r *raft.Raft, n int) {
	t.Helper()
	if err := r.Apply(shmownertest.Entry(t, shmowner.RegisterNodeRequest{ID: "n1"}), time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	futures := make([]raft.ApplyFuture, 0, n)
	for i := range n {
		b := shmownertest.Entry(t, shmowner.ReportLoadRequest{ID: "n1", At: int64(i + 1), Load: record.LoadVector{CPU: float64(i%100) / 100, Workloads: i % 7}})
		futures = append(futures, r.Apply(b, 5*time.Second))
	}
	for i, f := range futures {
		if err := f.Error(); err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
		if resp := f.Response(); resp != nil {
			t.Fatalf("apply %d: response %v", i, resp)
		}
	}
}

func logBounds(t *testing.T, s *raft.InmemStore) (first, last uint64) {
	t.Helper()
	first, err := s.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, err = s.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	return first, last
}

// TestLogCompaction shows that RaftConfig plus the FSM snapshot keep the log bounded
// under a stream of load reports: after a snapshot only TrailingLogs entries remain.
func TestLogCompaction(t *testing.T) {
	const reports = 5000
	rec := shmowner.RaftConfig("n1")
	if rec.SnapshotThreshold != 1024 || rec.TrailingLogs != 2048 || rec.SnapshotInterval != 30*time.Second {
		t.Fatalf("RaftConfig changed (%d/%d/%v): update its comment and this test",
			rec.SnapshotThreshold, rec.TrailingLogs, rec.SnapshotInterval)
	}
	if err := raft.ValidateConfig(rec); err != nil {
		t.Fatalf("RaftConfig is not valid: %v", err)
	}

	t.Run("user snapshot", func(t *testing.T) {
		conf := shmowner.RaftConfig("n1")
		conf.SnapshotInterval = time.Hour // only the explicit snapshot below
		r, store, fsm := inmemRaft(t, conf)
		applyLoadReports(t, r, reports)
		first, last := logBounds(t, store)
		if first != 1 || last < reports {
			t.Fatalf("before snapshot: log [%d, %d], want the whole log", first, last)
		}
		if err := r.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		first, last = logBounds(t, store)
		if first <= 1 {
			t.Fatalf("after snapshot: first index %d, log not compacted", first)
		}
		if kept := last - first + 1; kept > conf.TrailingLogs {
			t.Errorf("after snapshot: log [%d, %d] keeps %d entries, want <= %d", first, last, kept, conf.TrailingLogs)
		}
		if n, _ := fsm.Table().Node("n1"); n.LoadAt != reports {
			t.Errorf("last load report at %d, want %d", n.LoadAt, reports)
		}
	})

	t.Run("automatic snapshot at the threshold", func(t *testing.T) {
		conf := shmowner.RaftConfig("n1")
		conf.SnapshotInterval = 50 * time.Millisecond // raft checks the threshold this often
		r, store, _ := inmemRaft(t, conf)
		// A snapshot is taken once SnapshotThreshold entries piled up since the last one
		// and leaves TrailingLogs behind it, so the log never holds much more than
		// TrailingLogs + SnapshotThreshold entries (plus what arrives between two checks
		// of the threshold), however many reports arrive.
		bound := conf.TrailingLogs + conf.SnapshotThreshold + 512
		for round := 1; round <= 3; round++ {
			applyLoadReports(t, r, reports)
			wait.For(t, 10*time.Second, fmt.Sprintf("round %d: a compacted log of at most %d entries", round, bound), func() (bool, string) {
				first, last := logBounds(t, store)
				return first > 1 && last-first+1 <= bound && last > uint64(round*reports), fmt.Sprintf("log [%d, %d]", first, last)
			})
			first, last := logBounds(t, store)
			t.Logf("round %d: log [%d, %d]", round, first, last)
		}
	})
}
