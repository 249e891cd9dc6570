package balancer_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/balancer"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

const gib = 1 << 30

// t0 is "now" in the rule tests.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// buildTable returns a table holding exactly these records, through the snapshot
// document (the only way to put migrations in any phase without a log).
func buildTable(tb testing.TB, nodes []record.Node, ws []record.Workload, migs []record.Migration) *shmowner.Table {
	tb.Helper()
	doc := map[string]any{
		"version":    shmowner.SnapshotVersion,
		"nodes":      nodes,
		"workloads":  ws,
		"segments":   []record.Segment{},
		"migrations": migs,
	}
	b, err := json.Marshal(doc)
	if err != nil {
		tb.Fatal(err)
	}
	t := shmowner.NewTable()
	if err := json.Unmarshal(b, t); err != nil {
		tb.Fatal(err)
	}
	return t
}

func node(id string, st record.NodeState) record.Node {
	// Every node reports the same busy host, as nodes sharing one kernel do: the
	// balancer must not read it.
	return record.Node{ID: id, State: st, Load: record.LoadVector{CPU: 0.99, RunQueue: 40, MemFreeBytes: 64 * gib, MemTotalBytes: 128 * gib}}
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

func inGroup(w record.Workload, g string) record.Workload { w.Group = g; return w }
func pinned(w record.Workload) record.Workload            { w.Pinned = true; return w }
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
