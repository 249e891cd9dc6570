package daemon

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

// TestLoadReporterSendsChanges: steady workloads are sent once, then only when their
// figures move beyond the thresholds, and all of them every fullReportEvery reports and
// after a failed report; a workload that left is new again when it returns.
func TestLoadReporterSendsChanges(t *testing.T) {
	var r loadReporter
	loads := map[string]record.WorkloadLoad{
		"a": {CPU: 1.0, MemBytes: 100 << 20},
		"b": {CPU: 0.5, MemBytes: 1 << 30},
	}
	send := func(ok bool) map[string]record.WorkloadLoad {
		c, full := r.changed(loads)
		r.done(c, full, ok)
		return c
	}
	if got := send(true); len(got) != 2 {
		t.Fatalf("first report sends %d workloads, want both", len(got))
	}
	if got := send(true); len(got) != 0 {
		t.Fatalf("steady: sent %v", got)
	}
	loads["a"] = record.WorkloadLoad{CPU: 1.04, MemBytes: 110 << 20}     // within 0.05 cores and 16 MiB
	loads["b"] = record.WorkloadLoad{CPU: 0.5, MemBytes: 1<<30 + 40<<20} // within a twentieth of 1 GiB
	if got := send(true); len(got) != 0 {
		t.Fatalf("small changes: sent %v", got)
	}
	loads["a"] = record.WorkloadLoad{CPU: 1.2, MemBytes: 110 << 20}
	if got := send(true); len(got) != 1 || got["a"].CPU != 1.2 {
		t.Fatalf("a's CPU moved: sent %v", got)
	}
	if got := send(false); len(got) != 0 {
		t.Fatalf("steady: sent %v", got)
	}
	if got := send(true); len(got) != 2 {
		t.Fatalf("after a failed report: sent %d, want all", len(got))
	}
	delete(loads, "b")
	send(true)
	loads["b"] = record.WorkloadLoad{CPU: 0.5, MemBytes: 1 << 30}
	if got := send(true); len(got) != 1 || got["b"].MemBytes != 1<<30 {
		t.Fatalf("b came back: sent %v", got)
	}
	for r.n%fullReportEvery != fullReportEvery-1 {
		send(true)
	}
	if got := send(true); len(got) != 2 {
		t.Fatalf("report %d (every %d is full): sent %d", r.n, fullReportEvery, len(got))
	}
}

// TestRefreshKeepsFiguresCurrent: a Refresh report renews the date of the figures its
// node measured and left out, and not those of a workload that just arrived (measured
// by its old node), which stay old until its new node reports them.
func TestRefreshKeepsFiguresCurrent(t *testing.T) {
	f := shmowner.NewFSM()
	shmownertest.MustApply(t, f, shmowner.RegisterNodeRequest{ID: "n1"}, shmowner.RegisterNodeRequest{ID: "n2"},
		shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "a", Group: "a", Node: "n1"}},
		shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "b", Group: "b", Node: "n2"}},
		shmowner.ReportLoadRequest{ID: "n1", At: 10, Load: record.LoadVector{Since: 5}, Workloads: map[string]record.WorkloadLoad{"a": {CPU: 1}}},
		shmowner.ReportLoadRequest{ID: "n2", At: 10, Load: record.LoadVector{Since: 5}, Workloads: map[string]record.WorkloadLoad{"b": {CPU: 2}}},
		shmowner.PlanMigrationRequest{ID: "m1", Workload: "b", Target: "n1", At: 11},
	)
	for _, p := range []record.Phase{record.PhaseFrozen, record.PhaseShipped, record.PhaseRestored, record.PhaseDone} {
		shmownertest.MustApply(t, f, shmowner.SetMigrationPhaseRequest{ID: "m1", Phase: p, At: 12})
	}
	shmownertest.MustApply(t, f, shmowner.ReportLoadRequest{ID: "n1", At: 20, Load: record.LoadVector{Since: 15}, Refresh: true})
	tb := f.Table()
	if a, _ := tb.Workload("a"); a.Load == nil || a.Load.At != 20 || a.Load.Since != 15 || a.Load.CPU != 1 || a.Load.Node != "n1" {
		t.Errorf("a after a refresh: %+v, want CPU 1 dated 20 (since 15)", a.Load)
	}
	if b, _ := tb.Workload("b"); b.Load == nil || b.Load.At != 10 || b.Load.Since != 5 || b.Load.Node != "n2" {
		t.Errorf("b, arrived from n2: %+v, want n2's figure dated 10", b.Load)
	}
}

// TestLoadReportVolume measures the Raft log bytes of load reports for a node with
// 1,000 workloads over 60 reports (5 minutes at the default interval), 2% of the
// workloads changing per interval, against sending every workload every time; it
// requires at least a fivefold saving.
func TestLoadReportVolume(t *testing.T) {
	const n, reports = 1000, 60
	rng := rand.New(rand.NewPCG(1, 2))
	loads := map[string]record.WorkloadLoad{}
	for i := range n {
		loads[fmt.Sprintf("w%08x", i)] = record.WorkloadLoad{CPU: rng.Float64(), MemBytes: uint64(rng.IntN(1 << 30))}
	}
	var r loadReporter
	var full, delta int
	size := func(ws map[string]record.WorkloadLoad, refresh bool) int {
		b, err := shmowner.Encode(shmowner.ReportLoadType, shmowner.ReportLoadRequest{ID: "n1", At: 1_800_000_000_000_000_000,
			Load:      record.LoadVector{CPU: 0.5, MemFreeBytes: 1 << 34, MemTotalBytes: 1 << 35, Workloads: n, Cores: 16, Since: 1},
			Workloads: ws, Refresh: refresh})
		if err != nil {
			t.Fatal(err)
		}
		return len(b)
	}
	for range reports {
		for id, l := range loads {
			if rng.IntN(50) == 0 {
				l.CPU += 0.5
				loads[id] = l
			}
		}
		full += size(loads, false)
		c, isFull := r.changed(loads)
		r.done(c, isFull, true)
		delta += size(c, true)
	}
	ratio := float64(full) / float64(delta)
	t.Logf("FIGURE load reports, 1000 workloads, %d reports: every workload each time %d bytes (%.1f KiB/report), changes only %d bytes (%.1f KiB/report): %.1fx less",
		reports, full, float64(full)/reports/1024, delta, float64(delta)/reports/1024, ratio)
	if ratio < 5 {
		t.Errorf("changes-only reports are %.1fx smaller, want at least 5x", ratio)
	}
}
