package retention_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/internal/retention"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

var now = time.Unix(1_800_000_000, 0)

func ago(d time.Duration) int64 { return now.Add(-d).UnixNano() }

// history builds a table with one running workload that moved back and forth n times
// (migration i ended i hours ago, every third one done, the others aborted) and n
// workloads that exited (workload i exited i hours ago).
func history(t *testing.T, n int, extra ...any) *shmowner.FSM {
	f := shmowner.NewFSM()
	shmownertest.MustApply(t, f, shmowner.RegisterNodeRequest{ID: "n1"}, shmowner.RegisterNodeRequest{ID: "n2"},
		shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "srv", Name: "srv", Group: "g", Node: "n1"}})
	for i := n - 1; i >= 0; i-- {
		id := fmt.Sprintf("m%03d", i)
		w, _ := f.Table().Workload("srv")
		target := map[string]string{"n1": "n2", "n2": "n1"}[w.Node]
		at := ago(time.Duration(i) * time.Hour)
		shmownertest.MustApply(t, f, shmowner.PlanMigrationRequest{ID: id, Workload: "srv", Target: target, Epoch: f.Table().GroupEpoch("g"), At: at})
		phase := record.PhaseAborted
		if i%3 == 0 {
			phase = record.PhaseDone
			for _, p := range []record.Phase{record.PhasePrecopy, record.PhaseFrozen, record.PhaseShipped, record.PhaseRestored} {
				shmownertest.MustApply(t, f, shmowner.SetMigrationPhaseRequest{ID: id, Phase: p, Epoch: 0, At: at})
			}
		}
		shmownertest.MustApply(t, f, shmowner.SetMigrationPhaseRequest{ID: id, Phase: phase, Epoch: 0, At: at,
			Stats: &record.MigrationStats{PrecopyBytes: 10, FinalBytes: 1}})
	}
	for i := range n {
		id := fmt.Sprintf("x%03d", i)
		shmownertest.MustApply(t, f,
			shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: id, Name: id, Group: id, Node: "n1"}},
			shmowner.SetWorkloadStateRequest{ID: id, State: record.WorkloadExited, At: ago(time.Duration(i) * time.Hour)})
	}
	shmownertest.MustApply(t, f, extra...)
	return f
}

func TestPlanKeepsTheNewest(t *testing.T) {
	f := history(t, 10)
	req, ok := retention.Plan(f.Table(), retention.Policy{Migrations: 4, Exited: 3}, now)
	if !ok {
		t.Fatal("nothing to prune")
	}
	// Oldest first: m009 .. m004 go, m003 .. m000 stay; x009 .. x003 go.
	wantM := []string{"m009", "m008", "m007", "m006", "m005", "m004"}
	wantW := []string{"x009", "x008", "x007", "x006", "x005", "x004", "x003"}
	if !slices.Equal(req.Migrations, wantM) || !slices.Equal(req.Workloads, wantW) {
		t.Fatalf("plan = %+v, want migrations %v workloads %v", req, wantM, wantW)
	}
	shmownertest.MustApply(t, f, req)
	tb := f.Table()
	if got := len(tb.Migrations()); got != 4 {
		t.Errorf("%d migrations left, want 4", got)
	}
	var exited int
	for _, w := range tb.Workloads() {
		if w.State == record.WorkloadExited {
			exited++
		}
	}
	if exited != 3 {
		t.Errorf("%d exited workloads left, want 3", exited)
	}
	if _, ok := tb.Workload("srv"); !ok {
		t.Error("the running workload was pruned")
	}
	// Totals survive: 6 pruned migrations, of which m009 and m006 were done.
	var ended uint64
	var done, precopy uint64
	for _, p := range tb.Pruned() {
		for k, v := range p.Ended {
			ended += v
			if k == "done/user" {
				done += v
			}
		}
		precopy += p.PrecopyBytes
	}
	if ended != 6 || done != 2 || precopy != 60 {
		t.Errorf("pruned totals %+v: %d ended, %d done, %d precopy bytes; want 6, 2, 60", tb.Pruned(), ended, done, precopy)
	}
	if _, again := retention.Plan(tb, retention.Policy{Migrations: 4, Exited: 3}, now); again {
		t.Error("a second plan right after the prune found more")
	}
}

func TestPlanByAge(t *testing.T) {
	f := history(t, 10)
	req, _ := retention.Plan(f.Table(), retention.Policy{Migrations: 100, Exited: 100, MaxAge: 5*time.Hour + time.Minute}, now)
	wantM := []string{"m009", "m008", "m007", "m006"}
	wantW := []string{"x009", "x008", "x007", "x006"}
	if !slices.Equal(req.Migrations, wantM) || !slices.Equal(req.Workloads, wantW) {
		t.Fatalf("plan = %+v, want migrations %v workloads %v", req, wantM, wantW)
	}
	// Batch caps one entry; the rest waits for the next pass.
	req, _ = retention.Plan(f.Table(), retention.Policy{MaxAge: time.Minute, Batch: 5}, now)
	if len(req.Migrations) != 5 || len(req.Workloads) != 0 || req.Migrations[0] != "m009" {
		t.Errorf("batched plan = %+v, want the 5 oldest migrations", req)
	}
}

// TestPlanSparesWhatANodeMayNeed: migrations in flight, migrations of a node that is
// down (it may come back with a journal) and running workloads are never chosen.
func TestPlanSparesWhatANodeMayNeed(t *testing.T) {
	f := history(t, 4)
	shmownertest.MustApply(t, f, shmowner.PlanMigrationRequest{ID: "live", Workload: "srv", Target: "n2", Epoch: f.Table().GroupEpoch("g"), At: ago(900 * time.Hour)})
	all := retention.Policy{MaxAge: time.Nanosecond}
	req, _ := retention.Plan(f.Table(), all, now)
	if slices.Contains(req.Migrations, "live") || slices.Contains(req.Workloads, "srv") || len(req.Migrations) != 4 {
		t.Errorf("plan = %+v: took the migration in flight or the running workload, or missed ended ones", req)
	}
	shmownertest.MustApply(t, f, shmowner.SetNodeStateRequest{ID: "n2", State: record.NodeDown})
	if req, _ := retention.Plan(f.Table(), all, now); len(req.Migrations) != 0 || len(req.Workloads) != 4 {
		t.Errorf("with n2 down: plan = %+v, want no migration (all touch n2) and the 4 exited workloads", req)
	}
}

// TestPruneAppliesWhatIsStillPrunable: a Prune decided on an older table skips what
// changed since (a workload whose id is unknown, a migration not ended).
func TestPruneAppliesWhatIsStillPrunable(t *testing.T) {
	f := history(t, 2)
	w, _ := f.Table().Workload("srv")
	target := map[string]string{"n1": "n2", "n2": "n1"}[w.Node]
	shmownertest.MustApply(t, f, shmowner.PlanMigrationRequest{ID: "live", Workload: "srv", Target: target, Epoch: f.Table().GroupEpoch("g"), At: 1})
	before := f.Table()
	if err := shmownertest.Apply(t, f, shmowner.PruneRequest{Migrations: []string{"live", "nope"}, Workloads: []string{"srv", "nope"}}); err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(before)
	b, _ := json.Marshal(f.Table())
	if string(a) != string(b) {
		t.Errorf("a prune of nothing prunable changed the table:\n%s\n%s", a, b)
	}
}

// TestPruneTenThousandWrites measures what retention saves on a real Raft store on
// bbolt after 10,000 writes: 2,500 migrations (planned, then aborted) and 2,500
// workloads (started, then exited). Table and snapshot sizes before and after are
// printed as FIGURE lines; the test requires the default policy to bring the records
// down to its counts and the snapshot to shrink by at least half.
func TestPruneTenThousandWrites(t *testing.T) {
	dir := t.TempDir()
	conf := shmowner.RaftConfig("n1")
	conf.HeartbeatTimeout, conf.ElectionTimeout, conf.LeaderLeaseTimeout = 100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
	conf.SnapshotThreshold = 1 << 30 // snapshots only when the test asks
	s, err := shmowner.Open(shmowner.StoreConfig{NodeID: "n1", Dir: dir, BindAddr: "127.0.0.1:0", Bootstrap: true,
		Logger: hclog.NewNullLogger(), Raft: conf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	apply := func(reqs ...any) {
		t.Helper()
		futures := make([]raft.ApplyFuture, len(reqs))
		for i, r := range reqs {
			futures[i] = s.Raft().Apply(shmownertest.Entry(t, r), 10*time.Second)
		}
		for i, f := range futures {
			if err := f.Error(); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			if err, _ := f.Response().(error); err != nil {
				t.Fatalf("write %d (%T): %v", i, reqs[i], err)
			}
		}
	}
	apply(shmowner.RegisterNodeRequest{ID: "n1"}, shmowner.RegisterNodeRequest{ID: "n2"},
		shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "srv", Name: "srv", Group: "g", Node: "n1", Args: []string{"/usr/bin/server"}}},
		shmowner.SetSegmentsRequest{Node: "n1", Group: "g", Segments: []shmowner.SegmentInfo{{Shmid: 1, Key: 7, Size: 1 << 20}}})
	const n = 2500
	start := time.Now()
	var writes []any
	for i := range n {
		at := ago(time.Duration(n-i) * time.Minute)
		id := fmt.Sprintf("w%05d", i)
		writes = append(writes,
			shmowner.PlanMigrationRequest{ID: fmt.Sprintf("m%05d", i), Workload: "srv", Target: "n2", Epoch: 1, At: at},
			shmowner.SetMigrationPhaseRequest{ID: fmt.Sprintf("m%05d", i), Phase: record.PhaseAborted, Epoch: 1, At: at,
				Error: "target n2 stopped answering for 2s while the workload was frozen",
				Stats: &record.MigrationStats{Rounds: 3, PrecopyBytes: 1 << 28, FinalBytes: 1 << 22, TotalNS: 4e9}},
			shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: id, Name: id, Group: id, Node: "n1", Args: []string{"/usr/bin/job", "--run", id}}},
			shmowner.SetWorkloadStateRequest{ID: id, State: record.WorkloadExited, At: at},
		)
	}
	for len(writes) > 0 { // pipelined, so that raft batches them as it would a busy cluster's
		k := min(len(writes), 1000)
		apply(writes[:k]...)
		writes = writes[k:]
	}
	t.Logf("FIGURE 10,000 writes applied in %v", time.Since(start).Round(time.Millisecond))

	sizes := func() (table, snapshot int) {
		t.Helper()
		b, err := json.Marshal(s.Table())
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Raft().Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
		metas, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*", "state.bin"))
		slices.Sort(metas) // names start with the term and index: the last is the newest
		if len(metas) == 0 {
			t.Fatal("no snapshot written")
		}
		fi, err := os.Stat(metas[len(metas)-1])
		if err != nil {
			t.Fatal(err)
		}
		return len(b), int(fi.Size())
	}
	tableBefore, snapBefore := sizes()

	p := retention.DefaultPolicy()
	var entries int
	for {
		req, ok := retention.Plan(s.Table(), p, now)
		if !ok {
			break
		}
		apply(req)
		entries++
	}
	tableAfter, snapAfter := sizes()
	tb := s.Table()
	var exited int
	for _, w := range tb.Workloads() {
		if w.State == record.WorkloadExited {
			exited++
		}
	}
	t.Logf("FIGURE retention (default: %d migrations, %d exited, %v): %d Prune entries; table %d -> %d bytes (%.1fx smaller), snapshot %d -> %d bytes (%.1fx smaller)",
		p.Migrations, p.Exited, p.MaxAge, entries, tableBefore, tableAfter, float64(tableBefore)/float64(tableAfter),
		snapBefore, snapAfter, float64(snapBefore)/float64(snapAfter))
	if got := len(tb.Migrations()); got != p.Migrations || exited != p.Exited {
		t.Errorf("after pruning: %d migrations and %d exited workloads, want %d and %d", got, exited, p.Migrations, p.Exited)
	}
	if w, ok := tb.Workload("srv"); !ok || w.State != record.WorkloadRunning || len(tb.Segments()) != 1 {
		t.Errorf("the running workload or its segment was pruned: %+v %v", w, tb.Segments())
	}
	if snapAfter*2 > snapBefore {
		t.Errorf("snapshot %d -> %d bytes: pruning 60%% of the records should at least halve it", snapBefore, snapAfter)
	}
	var total uint64
	for _, pr := range tb.Pruned() {
		total += pr.Ended["aborted/user"]
	}
	if total != n-uint64(p.Migrations) {
		t.Errorf("pruned totals count %d aborted migrations, want %d", total, n-p.Migrations)
	}
	// The totals, like the records, outlive a restart from the snapshot and the log.
	want, _ := json.Marshal(tb)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = shmowner.Open(shmowner.StoreConfig{NodeID: "n1", Dir: dir, BindAddr: "127.0.0.1:0", Logger: hclog.NewNullLogger(), Raft: conf})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	wait.For(t, 10*time.Second, "the table back after a restart", func() (bool, string) {
		got, _ := json.Marshal(s.Table())
		return string(got) == string(want), fmt.Sprintf("%d bytes, want %d", len(got), len(want))
	})
}
