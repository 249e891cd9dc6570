package metrics

import (
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// fakeMetricsSource serves a fixed table and raft stats.
type fakeMetricsSource struct {
	table func() *shmowner.Table
	stats func() map[string]string
}

func (f fakeMetricsSource) Table() *shmowner.Table   { return f.table() }
func (f fakeMetricsSource) Stats() map[string]string { return f.stats() }

func staticSource(t *shmowner.Table, stats map[string]string) fakeMetricsSource {
	return fakeMetricsSource{
		table: func() *shmowner.Table { return t },
		stats: func() map[string]string { return stats },
	}
}

func regNodeCmd(id string) any {
	return shmowner.RegisterNodeRequest{ID: id, RaftAddr: id + ":7420", APIAddr: id + ":7421"}
}

func wlCmd(id, node string) any {
	return shmowner.UpsertWorkloadRequest{Workload: record.Workload{
		ID: id, Name: "name-" + id, Node: node, InitPid: 100, Pids: []int{100}, Group: "grp-" + id}}
}

func phaseCmd(id string, p record.Phase, st *record.MigrationStats) any {
	return shmowner.SetMigrationPhaseRequest{ID: id, Phase: p, At: 2_000, Stats: st}
}

// migrationCmds plans migration id of workload wl to target (epoch 0: the test workloads
// have no segments) and moves it through phases.
func migrationCmds(id, wl, target, reason string, phases ...record.Phase) []any {
	cmds := []any{shmowner.PlanMigrationRequest{ID: id, Workload: wl, Target: target, At: 1_000, Reason: reason}}
	for _, p := range phases {
		cmds = append(cmds, phaseCmd(id, p, nil))
	}
	return cmds
}

var toDone = []record.Phase{record.PhaseFrozen, record.PhaseShipped, record.PhaseRestored, record.PhaseDone}

func ms(n float64) int64 { return int64(n * 1e6) }

// metricsScenario: n1 (this node) drove two migrations to done (one asked by the
// balancer), one it aborted and one still in flight; n2 drove one to n1.
//
//	n1 active, reported; n2 active, never reported; n3 draining; n4 down
//	on n1: w5 running with load, w6 running without load (arrived from n2), w7 exited
func metricsScenario(t *testing.T) *shmowner.Table {
	t.Helper()
	cmds := []any{regNodeCmd("n1"), regNodeCmd("n2"), regNodeCmd("n3"), regNodeCmd("n4"),
		shmowner.SetNodeStateRequest{ID: "n3", State: record.NodeDraining},
		shmowner.SetNodeStateRequest{ID: "n4", State: record.NodeDown},
	}
	for _, w := range []string{"w1", "w2", "w3", "w4", "w5", "w7"} {
		cmds = append(cmds, wlCmd(w, "n1"))
	}
	cmds = append(cmds, wlCmd("w6", "n2"))
	cmds = append(cmds, shmowner.ReportLoadRequest{ID: "n1", At: 10,
		Load: record.LoadVector{CPU: 0.375, Cores: 4, MemFreeBytes: 3 << 30, MemTotalBytes: 8 << 30, Workloads: 6},
		Workloads: map[string]record.WorkloadLoad{
			"w5": {CPU: 1.5, MemBytes: 64 << 20},
			"w7": {CPU: 0.5, MemBytes: 1 << 20},
		}})
	cmds = append(cmds, shmowner.SetWorkloadStateRequest{ID: "w7", State: record.WorkloadExited})

	// m1: user, done, with every figure.
	cmds = append(cmds, migrationCmds("m1", "w1", "n2", "", toDone[:3]...)...)
	cmds = append(cmds, phaseCmd("m1", record.PhaseDone, &record.MigrationStats{
		Rounds: 2, PrecopyBytes: 1000, FinalBytes: 100, WorkloadBytes: 5000,
		FrozenNS: ms(62.5), DumpNS: ms(125), ShipNS: ms(375), RestoreNS: ms(62.5), TotalNS: ms(2000),
	}))
	// m2: balancer, done; its figures come after the commit (SetMigrationStats).
	cmds = append(cmds, migrationCmds("m2", "w2", "n2", "balancer: cpu: n1 at 0.9", toDone...)...)
	cmds = append(cmds, shmowner.SetMigrationStatsRequest{ID: "m2",
		Stats: record.MigrationStats{PrecopyBytes: 2000, FinalBytes: 200,
			FrozenNS: ms(750), DumpNS: ms(1500), ShipNS: ms(3000), RestoreNS: ms(750), TotalNS: ms(20000)}})
	// m3: user, aborted after pre-copy: its bytes count, its durations do not.
	cmds = append(cmds, migrationCmds("m3", "w3", "n2", "", record.PhasePrecopy)...)
	cmds = append(cmds, phaseCmd("m3", record.PhaseAborted, &record.MigrationStats{PrecopyBytes: 500, DumpNS: ms(100)}))
	// m4: balancer, in flight.
	cmds = append(cmds, migrationCmds("m4", "w4", "n2", "balancer: drain n1", record.PhasePrecopy)...)
	// m5: n2's, done: not this node's.
	cmds = append(cmds, migrationCmds("m5", "w6", "n1", "", toDone...)...)
	cmds = append(cmds, shmowner.SetMigrationStatsRequest{ID: "m5",
		Stats: record.MigrationStats{PrecopyBytes: 7777, FinalBytes: 777, FrozenNS: ms(9000), DumpNS: ms(9000), TotalNS: ms(9000)}})
	return shmownertest.Table(t, cmds...)
}

var followerStats = map[string]string{
	"state": "Follower", "term": "7", "commit_index": "120", "applied_index": "118",
	"last_contact": "1.5s", "num_peers": "2", "last_log_index": "121",
}

func compare(t *testing.T, m *Metrics, want string, names ...string) {
	t.Helper()
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

func TestMetricsMigrations(t *testing.T) {
	m := New("n1", staticSource(metricsScenario(t), followerStats))
	compare(t, m, `
# HELP migshm_migrations_total Migrations this node drove as source that ended, from the replicated table, by outcome (done, aborted) and initiator (user, balancer).
# TYPE migshm_migrations_total counter
migshm_migrations_total{initiator="balancer",outcome="aborted"} 0
migshm_migrations_total{initiator="balancer",outcome="done"} 1
migshm_migrations_total{initiator="user",outcome="aborted"} 1
migshm_migrations_total{initiator="user",outcome="done"} 1
# HELP migshm_migrations_in_flight Migrations this node drives as source that are not done or aborted yet, by initiator (user, balancer).
# TYPE migshm_migrations_in_flight gauge
migshm_migrations_in_flight{initiator="balancer"} 1
migshm_migrations_in_flight{initiator="user"} 0
# HELP migshm_migration_bytes_total Bytes shipped by the migrations this node drove as source, by stage: precopy (while the workload ran) and final (while it was frozen).
# TYPE migshm_migration_bytes_total counter
migshm_migration_bytes_total{stage="final"} 300
migshm_migration_bytes_total{stage="precopy"} 3500
# HELP migshm_migration_frozen_seconds Downtime of the migrations this node drove to done: from the freeze to the resume on the target.
# TYPE migshm_migration_frozen_seconds histogram
migshm_migration_frozen_seconds_bucket{le="0.01"} 0
migshm_migration_frozen_seconds_bucket{le="0.025"} 0
migshm_migration_frozen_seconds_bucket{le="0.05"} 0
migshm_migration_frozen_seconds_bucket{le="0.1"} 1
migshm_migration_frozen_seconds_bucket{le="0.2"} 1
migshm_migration_frozen_seconds_bucket{le="0.3"} 1
migshm_migration_frozen_seconds_bucket{le="0.5"} 1
migshm_migration_frozen_seconds_bucket{le="1"} 2
migshm_migration_frozen_seconds_bucket{le="2.5"} 2
migshm_migration_frozen_seconds_bucket{le="5"} 2
migshm_migration_frozen_seconds_bucket{le="10"} 2
migshm_migration_frozen_seconds_bucket{le="+Inf"} 2
migshm_migration_frozen_seconds_sum 0.8125
migshm_migration_frozen_seconds_count 2
`, "migshm_migrations_total", "migshm_migrations_in_flight", "migshm_migration_bytes_total", "migshm_migration_frozen_seconds")

	// Phases: m1 and m2 only (m3 aborted, m5 is n2's).
	want := map[string]struct {
		sum     float64
		buckets map[float64]uint64 // cumulative counts at some bounds
	}{
		"dump":    {1.625, map[float64]uint64{0.1: 0, 0.25: 1, 1: 1, 2.5: 2}},
		"ship":    {3.375, map[float64]uint64{0.25: 0, 0.5: 1, 2.5: 1, 5: 2}},
		"restore": {0.8125, map[float64]uint64{0.05: 0, 0.1: 1, 0.5: 1, 1: 2}},
		"total":   {22, map[float64]uint64{1: 0, 2.5: 1, 10: 1, 30: 2, 60: 2}},
	}
	got := histograms(t, m.reg, "migshm_migration_phase_seconds", "phase")
	if len(got) != len(want) {
		t.Errorf("phases %v, want %d", keys(got), len(want))
	}
	for phase, w := range want {
		h, ok := got[phase]
		if !ok {
			t.Errorf("phase %s missing", phase)
			continue
		}
		if h.GetSampleCount() != 2 || math.Abs(h.GetSampleSum()-w.sum) > 1e-9 {
			t.Errorf("phase %s: count %d sum %v, want 2 and %v", phase, h.GetSampleCount(), h.GetSampleSum(), w.sum)
		}
		for _, b := range h.GetBucket() {
			if c, ok := w.buckets[b.GetUpperBound()]; ok && b.GetCumulativeCount() != c {
				t.Errorf("phase %s: bucket le=%v has %d, want %d", phase, b.GetUpperBound(), b.GetCumulativeCount(), c)
			}
		}
	}
}

// histograms gathers reg and returns the histograms of family name by the value of label.
func histograms(t *testing.T, reg prometheus.Gatherer, name, label string) map[string]*dto.Histogram {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.Histogram{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			v := ""
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == label {
					v = lp.GetValue()
				}
			}
			out[v] = mt.GetHistogram()
		}
	}
	return out
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestMetricsNodesAndWorkloads(t *testing.T) {
	m := New("n1", staticSource(metricsScenario(t), followerStats))
	compare(t, m, `
# HELP migshm_node_up 1 if the table has the node active or draining, else 0 (down or left).
# TYPE migshm_node_up gauge
migshm_node_up{node="n1"} 1
migshm_node_up{node="n2"} 1
migshm_node_up{node="n3"} 1
migshm_node_up{node="n4"} 0
# HELP migshm_node_draining 1 if the node is draining (its workloads are being moved off), else 0.
# TYPE migshm_node_draining gauge
migshm_node_draining{node="n1"} 0
migshm_node_draining{node="n2"} 0
migshm_node_draining{node="n3"} 1
migshm_node_draining{node="n4"} 0
# HELP migshm_node_cpu_load CPU load the node last reported, normalised: 0..1 per core, averaged over its cores.
# TYPE migshm_node_cpu_load gauge
migshm_node_cpu_load{node="n1"} 0.375
# HELP migshm_node_cores CPU capacity the node declares (capacity-cores), as last reported.
# TYPE migshm_node_cores gauge
migshm_node_cores{node="n1"} 4
# HELP migshm_node_mem_free_bytes Free memory the node last reported.
# TYPE migshm_node_mem_free_bytes gauge
migshm_node_mem_free_bytes{node="n1"} 3.221225472e+09
# HELP migshm_node_workloads Workloads the node last reported running.
# TYPE migshm_node_workloads gauge
migshm_node_workloads{node="n1"} 6
# HELP migshm_workload_cpu_cores Cores a workload running on this node used over the last load interval (1 = one core busy).
# TYPE migshm_workload_cpu_cores gauge
migshm_workload_cpu_cores{name="name-w5",workload="w5"} 1.5
# HELP migshm_workload_mem_bytes Memory of a workload running on this node: anonymous resident memory of its processes plus its shared memory segments.
# TYPE migshm_workload_mem_bytes gauge
migshm_workload_mem_bytes{name="name-w5",workload="w5"} 6.7108864e+07
`, "migshm_node_up", "migshm_node_draining", "migshm_node_cpu_load", "migshm_node_cores",
		"migshm_node_mem_free_bytes", "migshm_node_workloads", "migshm_workload_cpu_cores", "migshm_workload_mem_bytes")

	// The same table seen from n2: its migrations, and no workload load (m1's and m2's
	// workloads arrived there after the last report).
	m2 := New("n2", staticSource(metricsScenario(t), followerStats))
	compare(t, m2, `
# HELP migshm_migrations_total Migrations this node drove as source that ended, from the replicated table, by outcome (done, aborted) and initiator (user, balancer).
# TYPE migshm_migrations_total counter
migshm_migrations_total{initiator="balancer",outcome="aborted"} 0
migshm_migrations_total{initiator="balancer",outcome="done"} 0
migshm_migrations_total{initiator="user",outcome="aborted"} 0
migshm_migrations_total{initiator="user",outcome="done"} 1
`, "migshm_migrations_total", "migshm_workload_cpu_cores")
}

func TestMetricsRaft(t *testing.T) {
	stats := followerStats
	m := New("n1", fakeMetricsSource{
		table: shmowner.NewTable,
		stats: func() map[string]string { return stats },
	})
	compare(t, m, `
# HELP migshm_raft_state 1 for this node's current Raft state (leader, follower, candidate, shutdown), 0 for the others.
# TYPE migshm_raft_state gauge
migshm_raft_state{state="candidate"} 0
migshm_raft_state{state="follower"} 1
migshm_raft_state{state="leader"} 0
migshm_raft_state{state="shutdown"} 0
# HELP migshm_raft_term This node's current Raft term.
# TYPE migshm_raft_term gauge
migshm_raft_term 7
# HELP migshm_raft_commit_index The highest log index this node knows to be committed.
# TYPE migshm_raft_commit_index gauge
migshm_raft_commit_index 120
# HELP migshm_raft_applied_index The highest log index this node applied to its table.
# TYPE migshm_raft_applied_index gauge
migshm_raft_applied_index 118
# HELP migshm_raft_last_contact_seconds Time since this node last heard from the leader (0 on the leader; absent if it never did).
# TYPE migshm_raft_last_contact_seconds gauge
migshm_raft_last_contact_seconds 1.5
# HELP migshm_raft_peers Other voters in this node's latest Raft configuration (0 if this node is not a voter).
# TYPE migshm_raft_peers gauge
migshm_raft_peers 2
`, "migshm_raft_state", "migshm_raft_term", "migshm_raft_commit_index", "migshm_raft_applied_index",
		"migshm_raft_last_contact_seconds", "migshm_raft_peers")

	// Read at every scrape: the node became leader.
	stats = map[string]string{"state": "Leader", "term": "8", "last_contact": "0"}
	compare(t, m, `
# HELP migshm_raft_state 1 for this node's current Raft state (leader, follower, candidate, shutdown), 0 for the others.
# TYPE migshm_raft_state gauge
migshm_raft_state{state="candidate"} 0
migshm_raft_state{state="follower"} 0
migshm_raft_state{state="leader"} 1
migshm_raft_state{state="shutdown"} 0
# HELP migshm_raft_last_contact_seconds Time since this node last heard from the leader (0 on the leader; absent if it never did).
# TYPE migshm_raft_last_contact_seconds gauge
migshm_raft_last_contact_seconds 0
`, "migshm_raft_state", "migshm_raft_last_contact_seconds")

	stats = map[string]string{"state": "Candidate", "last_contact": "never"}
	if n := testutil.CollectAndCount(&raftCollector{src: statsOnly(stats)}, "migshm_raft_last_contact_seconds", "migshm_raft_term"); n != 0 {
		t.Errorf("never heard from a leader: %d last_contact/term series, want none", n)
	}
}

// statsOnly serves an empty table and stats.
func statsOnly(stats map[string]string) fakeMetricsSource {
	return staticSource(shmowner.NewTable(), stats)
}

func TestParseLastContact(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true}, {"never", 0, false}, {"", 0, false}, {"1.5s", 1500 * time.Millisecond, true},
		{"2m3.004s", 2*time.Minute + 3004*time.Millisecond, true}, {"soon", 0, false},
	} {
		got, ok := parseLastContact(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseLastContact(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestMetricsObserveBalance(t *testing.T) {
	m := New("n1", statsOnly(followerStats))
	m.ObserveBalance(&api.BalanceReport{Imbalance: 0.25, Spread: 0.5,
		Moves: []api.BalanceMove{
			{Kind: "cpu", Started: true}, {Kind: "cpu", Started: true},
			{Kind: "drain", Error: "target n2 full"},
			{Kind: "memory"}, // planned, neither started nor failed (e.g. over max-migrations)
		},
		Skipped: []api.BalanceSkip{{Workload: "w1", Reason: "pinned"}, {Node: "n3", Reason: "draining"}, {Reason: "in flight"}},
	})
	m.ObserveBalance(&api.BalanceReport{Imbalance: 0.125, Spread: 0.25,
		Moves:   []api.BalanceMove{{Kind: "memory", Started: true}, {Kind: "cpu", Error: "refused"}},
		Skipped: []api.BalanceSkip{{Reason: "cooldown"}},
	})
	m.ObserveBalance(&api.BalanceReport{DryRun: true, Imbalance: 9, Moves: []api.BalanceMove{{Kind: "cpu", Started: true}}})
	m.ObserveBalance(nil)
	var none *Metrics
	none.ObserveBalance(&api.BalanceReport{}) // a daemon without metrics

	compare(t, m, `
# HELP migshm_balancer_passes_total Balancer passes (not dry runs) this node ran as leader since it started.
# TYPE migshm_balancer_passes_total counter
migshm_balancer_passes_total 2
# HELP migshm_balancer_moves_total Moves the balancer started, or failed to start, as this node's leader since it started, by kind (cpu, drain, memory).
# TYPE migshm_balancer_moves_total counter
migshm_balancer_moves_total{kind="cpu",result="failed"} 1
migshm_balancer_moves_total{kind="cpu",result="started"} 2
migshm_balancer_moves_total{kind="drain",result="failed"} 1
migshm_balancer_moves_total{kind="drain",result="started"} 0
migshm_balancer_moves_total{kind="memory",result="failed"} 0
migshm_balancer_moves_total{kind="memory",result="started"} 1
# HELP migshm_balancer_skips Workloads, nodes or passes the last balancer pass of this node left alone.
# TYPE migshm_balancer_skips gauge
migshm_balancer_skips 1
# HELP migshm_balancer_imbalance CPU imbalance the last balancer pass of this node saw (what CPU balancing reduces).
# TYPE migshm_balancer_imbalance gauge
migshm_balancer_imbalance 0.125
# HELP migshm_balancer_spread Load of the most loaded minus the least loaded active node, at the last balancer pass of this node.
# TYPE migshm_balancer_spread gauge
migshm_balancer_spread 0.25
`, "migshm_balancer_passes_total", "migshm_balancer_moves_total", "migshm_balancer_skips",
		"migshm_balancer_imbalance", "migshm_balancer_spread")
}

func TestMetricsObserveApply(t *testing.T) {
	m := New("n1", statsOnly(followerStats))
	m.ObserveApply(shmowner.ReportLoadType, 3*time.Millisecond, nil)
	m.ObserveApply(shmowner.ReportLoadType, 30*time.Millisecond, nil)
	m.ObserveApply(shmowner.PlanMigrationType, 2*time.Second, errors.New("no leader"))
	var none *Metrics
	none.ObserveApply(shmowner.ReportLoadType, time.Second, nil)

	got := map[string]*dto.Histogram{}
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "migshm_raft_apply_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			var typ, outcome string
			for _, lp := range mt.GetLabel() {
				switch lp.GetName() {
				case "type":
					typ = lp.GetValue()
				case "outcome":
					outcome = lp.GetValue()
				}
			}
			got[typ+"/"+outcome] = mt.GetHistogram()
		}
	}
	if len(got) != 2 {
		t.Errorf("series %v, want ReportLoad/ok and PlanMigration/error", keys(got))
	}
	if h := got["ReportLoad/ok"]; h.GetSampleCount() != 2 || math.Abs(h.GetSampleSum()-0.033) > 1e-9 {
		t.Errorf("ReportLoad/ok: count %d sum %v, want 2 and 0.033", h.GetSampleCount(), h.GetSampleSum())
	}
	if h := got["PlanMigration/error"]; h.GetSampleCount() != 1 || h.GetSampleSum() != 2 {
		t.Errorf("PlanMigration/error: count %d sum %v, want 1 and 2", h.GetSampleCount(), h.GetSampleSum())
	}
}

// TestMetricsHandler scrapes the handler over HTTP: the table and raft metrics, and the
// Go and process collectors on the same private registry.
func TestMetricsHandler(t *testing.T) {
	tbl := metricsScenario(t)
	// Two daemons in one process: each has its own registry.
	m := New("n1", staticSource(tbl, followerStats))
	other := New("n2", staticSource(tbl, map[string]string{"state": "Leader"}))
	for _, tt := range []struct {
		m    *Metrics
		want []string
	}{
		{m, []string{`migshm_raft_state{state="follower"} 1`, `migshm_migrations_total{initiator="user",outcome="done"} 1`,
			"# TYPE migshm_migration_phase_seconds histogram", "go_goroutines ", "process_cpu_seconds_total "}},
		{other, []string{`migshm_raft_state{state="leader"} 1`}},
	} {
		srv := httptest.NewServer(tt.m.Handler(nil))
		body := get(t, srv.URL+"/metrics")
		srv.Close()
		for _, w := range tt.want {
			if !strings.Contains(body, w) {
				t.Errorf("/metrics lacks %q:\n%s", w, body)
			}
		}
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

// TestMetricsListenBusy: an address in use fails with an error naming the setting.
func TestMetricsListenBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = Listen(ln.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "metrics-addr "+ln.Addr().String()) ||
		!strings.Contains(err.Error(), "MIGSHMD_METRICS_ADDR") {
		t.Fatalf("listen on a busy address: %v, want an error naming metrics-addr", err)
	}
}

// TestMetricsTotalsSurvivePruning: counters read from the table are totals, so the
// migrations retention prunes still count in them.
func TestMetricsTotalsSurvivePruning(t *testing.T) {
	names := []string{"migshm_migrations_total", "migshm_migration_bytes_total"}
	gather := func(tb *shmowner.Table) string {
		t.Helper()
		m := New("n1", staticSource(tb, followerStats))
		mfs, err := m.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, mf := range mfs {
			if slices.Contains(names, mf.GetName()) {
				b.WriteString(mf.String() + "\n")
			}
		}
		return b.String()
	}
	tb := metricsScenario(t)
	before := gather(tb)
	f := shmowner.NewFSM()
	if err := f.Restore(io.NopCloser(strings.NewReader(mustJSON(t, tb)))); err != nil {
		t.Fatal(err)
	}
	shmownertest.MustApply(t, f, shmowner.PruneRequest{Migrations: []string{"m1", "m2", "m3", "m5"}})
	after := f.Table()
	if len(after.Migrations()) != 1 {
		t.Fatalf("%d migrations left after the prune, want m4", len(after.Migrations()))
	}
	if got := gather(after); got != before {
		t.Errorf("totals changed by pruning:\nbefore %s\nafter  %s", before, got)
	}
	if !strings.Contains(before, "value:3500") { // pre-copy bytes of m1, m2 and m3
		t.Errorf("scenario totals do not count m1: %s", before)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
