package balancer_test

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/balancer"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

const gib = 1 << 30

// t0 is "now" in the rule tests.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// buildTable returns a table holding exactly these records, built through the FSM the
// way a cluster gets there: the nodes register and report their load; each workload
// starts where its first migration leaves from (a migration of a workload not in ws is
// of one that has since been removed); the migrations run to their phase; then the
// workloads take their final node, pin and state, and the nodes their state. It fails
// the test unless the table holds exactly the records asked for.
func buildTable(tb testing.TB, nodes []record.Node, ws []record.Workload, migs []record.Migration) *shmowner.Table {
	tb.Helper()
	var reqs []any
	for _, n := range nodes {
		reqs = append(reqs, shmowner.RegisterNodeRequest{ID: n.ID, RaftAddr: n.RaftAddr, APIAddr: n.APIAddr, AddrNet: n.AddrNet},
			shmowner.ReportLoadRequest{ID: n.ID, Load: n.Load, At: n.LoadAt})
	}
	// A workload as it starts: running on node, neither pinned nor measured.
	start := func(w record.Workload, node string) shmowner.UpsertWorkloadRequest {
		w = w.Clone()
		w.Node, w.State, w.ExitStatus, w.ExitedAt, w.Pinned, w.Load = node, record.WorkloadRunning, 0, 0, false, nil
		return shmowner.UpsertWorkloadRequest{Workload: w}
	}
	at := map[string]string{} // workload -> node, as the migrations leave it
	for _, m := range migs {
		if _, ok := at[m.Workload]; !ok {
			at[m.Workload] = m.Source
		}
	}
	inTable := map[string]bool{}
	for _, w := range ws {
		inTable[w.ID] = true
		if _, ok := at[w.ID]; !ok {
			at[w.ID] = w.Node
		}
		reqs = append(reqs, start(w, at[w.ID]))
	}
	var gone []string
	for _, m := range migs {
		if !inTable[m.Workload] {
			inTable[m.Workload] = true
			gone = append(gone, m.Workload)
			reqs = append(reqs, start(record.Workload{ID: m.Workload, Group: "g-" + m.Workload}, m.Source))
		}
	}
	for _, m := range migs {
		reqs = append(reqs, shmowner.PlanMigrationRequest{ID: m.ID, Workload: m.Workload, Target: m.Target, Epoch: m.Epoch,
			At: m.StartedAt, Reason: m.Reason})
		last := shmowner.SetMigrationPhaseRequest{ID: m.ID, Phase: m.Phase, Epoch: m.Epoch, At: m.UpdatedAt,
			Bytes: m.Bytes, Error: m.Error, Stats: m.Stats}
		switch m.Phase {
		case record.PhasePlanned:
		case record.PhaseDone:
			reqs = append(reqs, shmowner.SetMigrationPhaseRequest{ID: m.ID, Phase: record.PhaseRestored, Epoch: m.Epoch, At: m.UpdatedAt}, last)
			at[m.Workload] = m.Target
		default:
			reqs = append(reqs, last)
		}
	}
	for _, id := range gone {
		reqs = append(reqs, shmowner.RemoveWorkloadRequest{ID: id})
	}
	for _, w := range ws {
		if w.Node != at[w.ID] {
			reqs = append(reqs, start(w, w.Node))
		}
		if w.Pinned {
			reqs = append(reqs, shmowner.SetWorkloadPinnedRequest{ID: w.ID, Pinned: true})
		}
		if w.State == record.WorkloadExited {
			reqs = append(reqs, shmowner.SetWorkloadStateRequest{ID: w.ID, State: w.State, ExitStatus: w.ExitStatus, At: w.ExitedAt})
		}
	}
	for _, n := range nodes {
		if n.State != record.NodeActive {
			reqs = append(reqs, shmowner.SetNodeStateRequest{ID: n.ID, State: n.State})
		}
	}
	t := shmownertest.Table(tb, reqs...)

	wantWs := slices.Clone(ws)
	for i := range wantWs {
		if wantWs[i].State == "" {
			wantWs[i].State = record.WorkloadRunning
		}
	}
	sameRecords(tb, "nodes", t.Nodes(), nodes, func(n record.Node) string { return n.ID })
	sameRecords(tb, "workloads", t.Workloads(), wantWs, func(w record.Workload) string { return w.ID })
	sameRecords(tb, "migrations", t.Migrations(), migs, func(m record.Migration) string { return m.ID })
	return t
}

// sameRecords fails the test unless got (sorted by id) holds exactly the records of want.
func sameRecords[R any](tb testing.TB, what string, got, want []R, id func(R) string) {
	tb.Helper()
	want = slices.SortedFunc(slices.Values(want), func(a, b R) int { return strings.Compare(id(a), id(b)) })
	if len(got) != len(want) || (len(got) > 0 && !reflect.DeepEqual(got, want)) {
		tb.Fatalf("buildTable: %s\n got %+v\nwant %+v", what, got, want)
	}
}

func node(id string, st record.NodeState) record.Node {
	// Every node reports the same busy host, as nodes sharing one kernel do: the
	// balancer must not read it.
	// Its figures were measured over the second before t0.
	return record.Node{ID: id, State: st, Drain: st == record.NodeDraining, Load: record.LoadVector{CPU: 0.99, RunQueue: 40, MemFreeBytes: 64 * gib, MemTotalBytes: 128 * gib,
		Since: t0.Add(-time.Second).UnixNano()}}
}

// measuredFrom is n with figures measured from ago before t0.
func measuredFrom(n record.Node, ago time.Duration) record.Node {
	n.Load.Since = t0.Add(-ago).UnixNano()
	return n
}

func active(ids ...string) []record.Node {
	var out []record.Node
	for _, id := range ids {
		out = append(out, node(id, record.NodeActive))
	}
	return out
}

// wl is a running workload alone in its own group (named after it).
func wl(id, on string) record.Workload {
	return record.Workload{ID: id, Node: on, Group: "g-" + id, State: record.WorkloadRunning}
}

func inGroup(w record.Workload, g string) record.Workload  { w.Group = g; return w }
func withAddr(w record.Workload, a string) record.Workload { w.Addr = a; return w }
func pinned(w record.Workload) record.Workload             { w.Pinned = true; return w }
func state(w record.Workload, s record.WorkloadState) record.Workload {
	w.State = s
	return w
}

// done is a finished migration of workload from src to dst that ended ago before t0.
func done(id, workload, src, dst string, ago time.Duration) record.Migration {
	at := t0.Add(-ago).UnixNano()
	return record.Migration{ID: id, Workload: workload, Source: src, Target: dst, Phase: record.PhaseDone,
		StartedAt: at - int64(time.Second), UpdatedAt: at}
}

// testConfig: 4-core nodes with 16 GiB each for their workloads.
func testConfig(nodes []record.Node) balancer.Config {
	c := balancer.DefaultConfig()
	c.Hysteresis = 0.01 // the cases' numbers are worked out with it
	c.MaxConcurrent = 10
	c.MemFloorBytes = 1 * gib
	c.DefaultCapacity = 4
	c.MemCapacity = map[string]uint64{}
	for _, n := range nodes {
		c.MemCapacity[n.ID] = 16 * gib
	}
	return c
}

// cpu returns a load map of workloads using the given cores and 256 MiB each.
func cpu(kv ...any) map[string]balancer.WorkloadLoad {
	m := map[string]balancer.WorkloadLoad{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = balancer.WorkloadLoad{CPU: kv[i+1].(float64), MemBytes: 256 << 20}
	}
	return m
}

// measuredSince returns load with id's figure measured from ago before t0.
func measuredSince(load map[string]balancer.WorkloadLoad, id string, ago time.Duration) map[string]balancer.WorkloadLoad {
	out := maps.Clone(load)
	l := out[id]
	l.Since = t0.Add(-ago).UnixNano()
	out[id] = l
	return out
}

func moveString(m balancer.Move) string {
	return fmt.Sprintf("%s %s->%s %s", m.Workload, m.From, m.To, m.Kind)
}

// checkSkip asserts a skip of who ("w1", "node:n1" or "" for the plan) whose reason
// contains want.
func checkSkip(t *testing.T, d balancer.Decision, who, want string) {
	t.Helper()
	for _, s := range d.Skipped {
		var id string
		switch {
		case s.Workload != "":
			id = s.Workload
		case s.Node != "":
			id = "node:" + s.Node
		}
		if id == who && strings.Contains(s.Reason, want) {
			return
		}
	}
	t.Errorf("no skip of %q with %q; skips:\n%s", who, want, dump(d))
}

func dump(d balancer.Decision) string {
	var b strings.Builder
	for _, m := range d.Moves {
		fmt.Fprintf(&b, "  move %s  score %.4f  %s\n", moveString(m), m.Score, m.Reason)
	}
	for _, s := range d.Skipped {
		fmt.Fprintf(&b, "  skip w=%q n=%q: %s\n", s.Workload, s.Node, s.Reason)
	}
	return b.String()
}
