package balancer_test

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/balancer"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

type skipWant struct{ who, reason string }

// TestPlanRules is one case per rule: the moves planned (workload from->to kind), words
// each move's reason must hold, and the skips (with their reasons) that must be there.
func TestPlanRules(t *testing.T) {
	inflight := record.Migration{ID: "m9", Workload: "w9", Source: "n4", Target: "n2", Phase: record.PhasePrecopy,
		StartedAt: t0.Add(-time.Minute).UnixNano(), UpdatedAt: t0.Add(-time.Second).UnixNano()}
	mem := func(kv ...any) map[string]balancer.WorkloadLoad { // id, cores, GiB
		m := map[string]balancer.WorkloadLoad{}
		for i := 0; i < len(kv); i += 3 {
			m[kv[i].(string)] = balancer.WorkloadLoad{CPU: kv[i+1].(float64), MemBytes: uint64(kv[i+2].(float64) * gib)}
		}
		return m
	}
	// groupCase: n1 holds group g (a, b) and two small workloads; n2 is empty.
	groupNodes := active("n1", "n2", "n3")
	groupWs := []record.Workload{inGroup(wl("a", "n1"), "g"), inGroup(wl("b", "n1"), "g"), wl("c", "n1"), wl("e", "n1"), wl("d", "n3")}
	groupLoad := cpu("a", 0.8, "b", 0.7, "c", 0.3, "e", 0.2, "d", 0.4)

	// settle cases: 1-core nodes; n1 runs a, b, c; n2 runs d and e; n3 runs f, g.
	settleWs := []record.Workload{wl("a", "n1"), wl("b", "n1"), wl("c", "n1"), wl("d", "n2"), wl("e", "n2"), wl("f", "n3"), wl("g", "n3")}
	settleLoad := cpu("a", 0.4, "b", 0.4, "c", 0.4, "d", 0.4, "e", 0.0, "f", 0.4, "g", 0.4)

	cases := []struct {
		name  string
		nodes []record.Node
		ws    []record.Workload
		migs  []record.Migration
		load  map[string]balancer.WorkloadLoad
		cfg   func(*balancer.Config)
		want  []string   // "w n1->n2 kind", in order
		why   [][]string // words of each move's reason
		skips []skipWant
	}{
		{
			name:  "overloaded node sheds the unit that helps most to the least loaded node",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1"), wl("w3", "n2"), wl("w4", "n3")},
			load:  cpu("w1", 2.0, "w2", 1.0, "w3", 0.4, "w4", 0.8),
			want:  []string{"w2 n1->n2 cpu"},
			why:   [][]string{{"n1 load 0.750 > mean 0.350 + threshold 0.100", "to n2", "n2 load 0.100 -> 0.350", "imbalance -0.2000 >= hysteresis 0.0100"}},
			// One CPU move per node per NodeCooldown, within a plan too.
			skips: []skipWant{{"node:n1", "node cooldown: n1 is already in a move of this plan"}},
		},
		{
			name: "a workload with an address of its own goes only to a node on its network",
			nodes: func() []record.Node {
				ns := active("n1", "n2", "n3")
				ns[0].AddrNet, ns[2].AddrNet = "10.0.0.0/24", "10.0.0.0/24"
				return ns
			}(),
			ws:   []record.Workload{pinned(wl("w1", "n1")), withAddr(wl("w2", "n1"), "10.0.0.50/24"), wl("w3", "n2"), wl("w4", "n3")},
			load: cpu("w1", 2.0, "w2", 1.0, "w3", 0.2, "w4", 0.4),
			want: []string{"w2 n1->n3 cpu"}, // n2 is less loaded, but not on 10.0.0.0/24
		},
		{
			name:  "a draining node's workload with an address of its own waits for a node on its network",
			nodes: []record.Node{node("n1", record.NodeDraining), node("n2", record.NodeActive)},
			ws:    []record.Workload{withAddr(wl("w1", "n1"), "10.0.0.50/24")},
			load:  cpu("w1", 0.5),
			skips: []skipWant{{"w1", "no target for workload w1 (0.50 cores, 256 MiB): of 1 other active nodes, 1 not on the network of its address 10.0.0.50 (ip-parent)"}},
		},
		{
			name:  "balanced cluster: nothing to do, nothing to explain",
			nodes: active("n1", "n2"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n2")},
			load:  cpu("w1", 1.0, "w2", 1.2),
		},
		{
			name:  "a lone workload does not swap nodes: no gain",
			nodes: active("n1", "n2"),
			ws:    []record.Workload{wl("w1", "n1")},
			load:  cpu("w1", 1.0),
			skips: []skipWant{
				{"w1", "hysteresis: workload w1 (1.00 cores) to n2 (n2 load 0.000 -> 0.250"},
				{"w1", "would reduce the imbalance by 0.0000 < hysteresis 0.0100"},
				{"node:n1", "cpu: n1 load 0.250 > mean 0.125 + threshold 0.100; no unit on it can move"},
			},
		},
		{
			name:  "hysteresis margin: helpful but not helpful enough",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1"), wl("w3", "n2"), wl("w4", "n3")},
			load:  cpu("w1", 2.0, "w2", 1.0, "w3", 0.4, "w4", 0.8),
			cfg:   func(c *balancer.Config) { c.Hysteresis = 0.25 },
			skips: []skipWant{{"w1", "by 0.1500 < hysteresis 0.2500"}, {"w2", "by 0.2000 < hysteresis 0.2500"}},
		},
		{
			name:  "an underloaded node pulls from the most loaded node above the mean",
			nodes: active("n1", "n2", "n3", "n4"),
			ws: []record.Workload{wl("a1", "n1"), wl("a2", "n1"), wl("a3", "n1"), wl("b1", "n2"), wl("b2", "n2"), wl("b3", "n2"),
				wl("c1", "n3"), wl("c2", "n3"), wl("c3", "n3")},
			load: cpu("a1", 0.5, "a2", 0.5, "a3", 0.5, "b1", 0.5, "b2", 0.5, "b3", 0.5, "c1", 0.5, "c2", 0.5, "c3", 0.5),
			want: []string{"a1 n1->n4 cpu"},
			why:  [][]string{{"n4 load 0.000 < mean 0.281 - threshold 0.100; n1 (load 0.375) is above the mean", "imbalance -0.0625"}},
		},
		{
			name:  "an IPC group moves whole, to one target",
			nodes: groupNodes, ws: groupWs, load: groupLoad,
			want: []string{"a n1->n2 cpu", "b n1->n2 cpu"},
			why:  [][]string{{"group g (a, b) together (1.50 cores) to n2"}, {"group g (a, b) together"}},
		},
		{
			name:  "a pinned member keeps its whole group in place",
			nodes: groupNodes, load: groupLoad,
			ws:    []record.Workload{inGroup(wl("a", "n1"), "g"), pinned(inGroup(wl("b", "n1"), "g")), wl("c", "n1"), wl("e", "n1"), wl("d", "n3")},
			want:  []string{"c n1->n2 cpu"},
			skips: []skipWant{{"a", "pinned: workload b of group g is pinned"}, {"b", "pinned: workload b of group g is pinned"}},
		},
		{
			name:  "a pinned workload never moves",
			nodes: active("n1", "n2"),
			ws:    []record.Workload{pinned(wl("w1", "n1")), pinned(wl("w2", "n1"))},
			load:  cpu("w1", 2.0, "w2", 1.0),
			skips: []skipWant{{"w1", "pinned: workload w1 never moves"}, {"w2", "pinned"}, {"node:n1", "no unit on it can move"}},
		},
		{
			name:  "a split group is not moved by balancing",
			nodes: groupNodes, load: groupLoad,
			ws:    []record.Workload{inGroup(wl("a", "n1"), "g"), inGroup(wl("b", "n3"), "g"), wl("c", "n1"), wl("e", "n1"), wl("d", "n3")},
			want:  []string{"c n1->n2 cpu"},
			skips: []skipWant{{"a", "group split: group g also runs on n3"}},
		},
		{
			name:  "group larger than what the cap leaves: the next best single moves",
			nodes: groupNodes, ws: groupWs, load: groupLoad,
			cfg:  func(c *balancer.Config) { c.MaxConcurrent = 1 },
			want: []string{"c n1->n2 cpu"},
			skips: []skipWant{
				{"a", "cap: group g (a, b) together needs 2 migrations, 1 left under MaxConcurrent 1 (0 in flight, 0 planned)"},
				{"", "cap reached: 0 migrations in flight + 1 planned >= MaxConcurrent 1"},
			},
		},
		{
			name:  "workload cooldown: a workload moved a minute ago stays",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1")},
			migs:  []record.Migration{done("m1", "w1", "n3", "n1", time.Minute)},
			load:  cpu("w1", 1.2, "w2", 0.2),
			want:  []string{"w2 n1->n2 cpu"},
			skips: []skipWant{{"w1", "workload cooldown: last migration of workload w1 1m0s ago < 5m0s"}},
		},
		{
			name:  "node cooldown: a source that just took part in a move waits",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1")},
			migs:  []record.Migration{done("m0", "gone", "n1", "n3", 10*time.Second)},
			load:  cpu("w1", 1.0, "w2", 1.0),
			skips: []skipWant{{"node:n1", "not shedding now: node cooldown: last migration of n1 ended 10s ago < 30s"}},
		},
		{
			name:  "node cooldown: a target in cooldown is passed over for the next least loaded",
			nodes: active("n1", "n2", "n3", "n4"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1"), wl("w3", "n2"), wl("w4", "n3"), wl("w5", "n4")},
			migs:  []record.Migration{done("m0", "gone", "n4", "n2", 10*time.Second)},
			load:  cpu("w1", 1.0, "w2", 1.0, "w3", 0.1, "w4", 0.2, "w5", 0.3),
			want:  []string{"w1 n1->n3 cpu"},
		},
		{
			name:  "a migration in flight keeps both its nodes out of balancing",
			nodes: active("n1", "n2", "n3", "n4"),
			ws: []record.Workload{wl("w1", "n1"), wl("w2", "n1"), state(wl("w9", "n4"), record.WorkloadMigrating),
				wl("w3", "n3"), wl("w8", "n4")},
			migs: []record.Migration{inflight},
			load: cpu("w1", 1.0, "w2", 1.0, "w9", 1.2, "w3", 0.4, "w8", 0.4),
			want: []string{"w1 n1->n3 cpu"},
		},
		{
			name:  "cap counts migrations in flight",
			nodes: active("n1", "n2", "n3", "n4"),
			ws: []record.Workload{wl("w1", "n1"), wl("w2", "n1"), state(wl("w9", "n4"), record.WorkloadMigrating),
				wl("w3", "n3"), wl("w8", "n4")},
			migs:  []record.Migration{inflight},
			load:  cpu("w1", 1.0, "w2", 1.0, "w9", 1.2, "w3", 0.4, "w8", 0.4),
			cfg:   func(c *balancer.Config) { c.MaxConcurrent = 1 },
			skips: []skipWant{{"", "cap reached: 1 migrations in flight + 0 planned >= MaxConcurrent 1"}},
		},
		{
			name:  "memory ushering: the smallest workload that ends the shortage leaves",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("x", "n1"), wl("y", "n1"), wl("z", "n1"), wl("v", "n1")},
			load:  mem("x", 0.1, 4.0, "y", 0.1, 2.0, "z", 0.1, 1.0, "v", 0.1, 0.5),
			cfg:   func(c *balancer.Config) { c.MemCapacity["n1"] = 8 * gib },
			want:  []string{"v n1->n2 memory"},
			why:   [][]string{{"memory: n1 has 512 MiB free < floor 1.0 GiB; workload v (512 MiB) to n2", "15.5 GiB free after"}},
		},
		{
			name:  "memory ushering respects the workload cooldown",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("x", "n1"), wl("y", "n1"), wl("z", "n1"), wl("v", "n1")},
			migs:  []record.Migration{done("m1", "v", "n3", "n1", time.Minute)},
			load:  mem("x", 0.1, 4.0, "y", 0.1, 2.0, "z", 0.1, 1.0, "v", 0.1, 0.5),
			cfg:   func(c *balancer.Config) { c.MemCapacity["n1"] = 8 * gib },
			want:  []string{"z n1->n2 memory"},
			skips: []skipWant{{"v", "workload cooldown"}},
		},
		{
			name:  "memory ushering comes before CPU balancing under the cap",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("x", "n1"), wl("y", "n1"), wl("z", "n1"), wl("v", "n1"), wl("w1", "n3"), wl("w2", "n3")},
			load:  mem("x", 0.1, 4.0, "y", 0.1, 2.0, "z", 0.1, 1.0, "v", 0.1, 0.5, "w1", 2.0, 0.25, "w2", 1.0, 0.25),
			cfg:   func(c *balancer.Config) { c.MemCapacity["n1"] = 8 * gib; c.MaxConcurrent = 1 },
			want:  []string{"v n1->n2 memory"},
			skips: []skipWant{{"", "cap reached"}},
		},
		{
			name:  "a target must keep its memory headroom: the next node gets it",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1"), wl("w3", "n2"), wl("w4", "n3")},
			load:  mem("w1", 1.0, 4.0, "w2", 1.0, 4.0, "w3", 0.0, 3.5, "w4", 0.2, 0.25),
			cfg:   func(c *balancer.Config) { c.MemCapacity["n2"] = 8 * gib },
			want:  []string{"w1 n1->n3 cpu"},
			why:   [][]string{{"n3 load 0.050 -> 0.300, 11.8 GiB free after (keeps >= 1.6 GiB)"}},
		},
		{
			name:  "no node has room: nothing moves, and the reason says so",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1"), wl("w3", "n2"), wl("w4", "n3")},
			load:  mem("w1", 1.0, 4.0, "w2", 1.0, 4.0, "w3", 0.0, 3.5, "w4", 0.2, 0.25),
			cfg:   func(c *balancer.Config) { c.MemCapacity["n2"] = 8 * gib; c.MemCapacity["n3"] = 4 * gib },
			skips: []skipWant{{"w1", "no target for workload w1 (1.00 cores, 4.0 GiB): of 2 other active nodes, 2 would keep less free than the floor/headroom after 4.0 GiB"}},
		},
		{
			name: "only active nodes are targets; down, left and draining nodes are neither sources nor targets",
			nodes: []record.Node{node("n1", record.NodeActive), node("n2", record.NodeDown), node("n3", record.NodeLeft),
				node("n4", record.NodeDraining), node("n5", record.NodeActive), node("n6", record.NodeDown)},
			ws:   []record.Workload{wl("w1", "n1"), wl("w2", "n1"), wl("w5", "n5"), wl("w6", "n6")},
			load: cpu("w1", 1.0, "w2", 1.0, "w5", 0.4, "w6", 4.0),
			want: []string{"w1 n1->n5 cpu"},
			why:  [][]string{{"n1 load 0.500 > mean 0.300"}},
		},
		{
			name:  "a draining node sheds everything movable, largest first, cooldowns and hysteresis aside",
			nodes: []record.Node{node("n1", record.NodeDraining), node("n2", record.NodeActive), node("n3", record.NodeActive)},
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1"), pinned(wl("w3", "n1")), wl("w4", "n1"), wl("w5", "n2"), wl("w6", "n3")},
			migs:  []record.Migration{done("m1", "w4", "n2", "n1", time.Minute)},
			load:  cpu("w1", 2.0, "w2", 0.5, "w3", 1.0, "w4", 0.3, "w5", 0.4, "w6", 0.2),
			want:  []string{"w1 n1->n3 drain", "w2 n1->n2 drain", "w4 n1->n2 drain"},
			why:   [][]string{{"drain: n1 is draining; workload w1 (2.00 cores, 256 MiB) to n3", "n3 load 0.050 -> 0.550"}, nil, nil},
			skips: []skipWant{{"w3", "drain: pinned: workload w3 never moves"}},
		},
		{
			name:  "the cap bounds a drain",
			nodes: []record.Node{node("n1", record.NodeDraining), node("n2", record.NodeActive)},
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1"), wl("w3", "n1")},
			load:  cpu("w1", 0.3, "w2", 0.2, "w3", 0.1),
			cfg:   func(c *balancer.Config) { c.MaxConcurrent = 2 },
			want:  []string{"w1 n1->n2 drain", "w2 n1->n2 drain"},
			skips: []skipWant{{"", "cap reached: 0 migrations in flight + 2 planned >= MaxConcurrent 2"}},
		},
		{
			name:  "a drained part of a split group joins the rest of its group",
			nodes: []record.Node{node("n1", record.NodeDraining), node("n2", record.NodeActive), node("n3", record.NodeActive)},
			ws:    []record.Workload{inGroup(wl("a", "n1"), "g"), inGroup(wl("b", "n2"), "g")},
			load:  cpu("a", 0.5, "b", 1.0),
			want:  []string{"a n1->n2 drain"},
			why:   [][]string{{"where the rest of group g runs"}},
		},
		{
			name:  "a draining node with nowhere to go says so",
			nodes: []record.Node{node("n1", record.NodeDraining), node("n2", record.NodeDown)},
			ws:    []record.Workload{wl("w1", "n1")},
			load:  cpu("w1", 0.3),
			skips: []skipWant{{"w1", "drain: no target for workload w1 (0.30 cores, 256 MiB): of 0 other active nodes, none"}},
		},
		{
			name:  "exited workloads count nowhere",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{state(wl("w1", "n1"), record.WorkloadExited), wl("w3", "n1"), wl("w4", "n2")},
			load:  cpu("w1", 4.0, "w3", 0.2, "w4", 0.2),
		},
		{
			name:  "a workload without a measurement is not moved by balancing",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1")},
			load:  cpu("w2", 2.0),
			skips: []skipWant{{"w1", "no load measurement for w1"}},
		},
		{
			name:  "no ping-pong: a workload does not go back to the node it last left",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("w1", "n1"), pinned(wl("w2", "n1")), pinned(wl("w3", "n1")), wl("w4", "n3")},
			migs:  []record.Migration{done("m1", "w1", "n2", "n1", time.Hour)},
			load:  cpu("w1", 1.0, "w2", 1.0, "w3", 1.0, "w4", 0.4),
			want:  []string{"w1 n1->n3 cpu"},
		},
		{
			// e arrived on n2 a second ago and still shows what it used while frozen; n2's
			// last report began before that. Counted, n2 would look idle and draw a from n1.
			name: "settling: a node whose figures predate its last migration is left out of cpu balancing",
			nodes: []record.Node{node("n1", record.NodeActive), measuredFrom(node("n2", record.NodeActive), 3*time.Second),
				node("n3", record.NodeActive)},
			ws:   settleWs,
			migs: []record.Migration{done("m1", "e", "n3", "n2", time.Second)},
			load: settleLoad,
			cfg:  func(c *balancer.Config) { c.NodeCooldown, c.DefaultCapacity = 0, 1 },
			skips: []skipWant{
				{"node:n2", "cpu: left out of balancing: settling: n2's last load report (from 3s ago) began before its last migration ended 1s ago"},
				{"a", "hysteresis: workload a (0.40 cores) to n3"},
			},
		},
		{
			// n2 reported after the move, but without a figure of its own for e yet: e's
			// figure is still the one its source measured.
			name: "settling: a workload that arrived after the node's last sample still carries its source's figure",
			nodes: []record.Node{node("n1", record.NodeActive), measuredFrom(node("n2", record.NodeActive), 500*time.Millisecond),
				node("n3", record.NodeActive)},
			ws:   settleWs,
			migs: []record.Migration{done("m1", "e", "n3", "n2", time.Second)},
			load: measuredSince(settleLoad, "e", 4*time.Second),
			cfg:  func(c *balancer.Config) { c.NodeCooldown, c.DefaultCapacity = 0, 1 },
			skips: []skipWant{
				{"node:n2", "settling: a workload figure counted on n2 was measured from 4s ago, before its last migration ended 1s ago"},
				{"a", "hysteresis: workload a (0.40 cores) to n3"},
			},
		},
		{
			name: "settled: the next report counts the node again",
			nodes: []record.Node{node("n1", record.NodeActive), measuredFrom(node("n2", record.NodeActive), 500*time.Millisecond),
				node("n3", record.NodeActive)},
			ws:   settleWs,
			migs: []record.Migration{done("m1", "e", "n3", "n2", time.Second)},
			load: settleLoad,
			cfg:  func(c *balancer.Config) { c.NodeCooldown, c.DefaultCapacity = 0, 1 },
			want: []string{"a n1->n2 cpu"},
		},
		{
			name:  "projected loads: each move of a plan sees the ones before it",
			nodes: active("n1", "n2", "n3", "n4"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1"), wl("w3", "n1"), wl("w4", "n1")},
			load:  cpu("w1", 1.0, "w2", 1.0, "w3", 1.0, "w4", 1.0),
			cfg:   func(c *balancer.Config) { c.NodeCooldown = 0 },
			want:  []string{"w1 n1->n2 cpu", "w2 n1->n3 cpu", "w3 n1->n4 cpu"},
			why:   [][]string{{"n1 load 1.000", "n1 load 1.000 -> 0.750"}, {"n1 load 0.750"}, {"n1 load 0.500"}},
		},
		{
			name:  "capacity: a small idle node is not the target when a bigger one ends less loaded",
			nodes: active("n1", "n2", "n3"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1")},
			load:  cpu("w1", 2.0, "w2", 2.0),
			cfg:   func(c *balancer.Config) { c.Capacity = map[string]float64{"n1": 8, "n2": 2} },
			want:  []string{"w1 n1->n3 cpu"},
			why:   [][]string{{"to n3, of the active nodes with room and out of cooldown the least loaded after the move: n3 load 0.000 -> 0.500"}},
		},
		{
			name:  "an invalid config plans nothing and says why",
			nodes: active("n1", "n2"),
			ws:    []record.Workload{wl("w1", "n1"), wl("w2", "n1")},
			load:  cpu("w1", 1.0, "w2", 1.0),
			cfg:   func(c *balancer.Config) { c.MaxConcurrent = 0 },
			skips: []skipWant{{"", "no plan: max concurrent 0: want >= 1: invalid balancer config"}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tb := buildTable(t, tc.nodes, tc.ws, tc.migs)
			cfg := testConfig(tc.nodes)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			d := balancer.Plan(tb, tc.load, t0, cfg)
			t.Logf("decision:\n%s", dump(d))
			var got []string
			for _, m := range d.Moves {
				got = append(got, moveString(m))
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("moves %q, want %q\n%s", got, tc.want, dump(d))
			}
			for i, words := range tc.why {
				for _, w := range words {
					if !strings.Contains(d.Moves[i].Reason, w) {
						t.Errorf("move %d reason %q lacks %q", i, d.Moves[i].Reason, w)
					}
				}
			}
			for _, s := range tc.skips {
				checkSkip(t, d, s.who, s.reason)
			}
			if len(tc.want) == 0 && len(tc.skips) == 0 && len(d.Skipped) > 0 {
				t.Errorf("unexpected skips:\n%s", dump(d))
			}
			for _, m := range d.Moves {
				if m.Reason == "" || m.Kind == "" || m.Group == "" {
					t.Errorf("move %s lacks a reason, kind or group", moveString(m))
				}
				if m.Kind == balancer.KindCPU && m.Score < cfg.Hysteresis {
					t.Errorf("cpu move %s scores %.4f < hysteresis", moveString(m), m.Score)
				}
			}
			if !slices.IsSortedFunc(d.Skipped, func(a, b balancer.Skip) int {
				return strings.Compare(a.Node+"\x00"+a.Workload, b.Node+"\x00"+b.Workload)
			}) {
				t.Errorf("skips not sorted by node, workload:\n%s", dump(d))
			}
		})
	}
}

// TestNodeLoads pins the load source down: workloads' measured CPU over the node's
// capacity, never the node's own report (which nodes sharing a kernel all read the same).
func TestNodeLoads(t *testing.T) {
	nodes := []record.Node{node("n1", record.NodeActive), node("n2", record.NodeActive), node("n3", record.NodeDraining),
		node("n4", record.NodeDown), node("n5", record.NodeActive)}
	ws := []record.Workload{
		wl("a", "n1"),
		state(wl("b", "n1"), record.WorkloadExited),
		state(wl("c", "n2"), record.WorkloadMigrating), // to n5, in flight
		wl("d", "n4"),
		wl("e", "n3"),
		wl("f", "n2"), // not measured
	}
	migs := []record.Migration{{ID: "m1", Workload: "c", Source: "n2", Target: "n5", Phase: record.PhaseFrozen,
		StartedAt: t0.UnixNano(), UpdatedAt: t0.UnixNano()}}
	load := map[string]balancer.WorkloadLoad{
		"a": {CPU: 2.0, MemBytes: 1 * gib},
		"b": {CPU: 3.0, MemBytes: 1 * gib},
		"c": {CPU: 1.0, MemBytes: 2 * gib},
		"d": {CPU: 1.0, MemBytes: 1 * gib},
		"e": {CPU: 0.5, MemBytes: 1 * gib},
	}
	cfg := balancer.DefaultConfig()
	cfg.DefaultCapacity = 4
	cfg.Capacity = map[string]float64{"n1": 8}
	// n5 has no budget: its memory comes from its own report (64 of 128 GiB free).
	cfg.MemCapacity = map[string]uint64{"n1": 16 * gib, "n2": 16 * gib, "n3": 16 * gib, "n4": 16 * gib}
	got := balancer.NodeLoads(buildTable(t, nodes, ws, migs), load, cfg)
	want := []balancer.NodeLoad{
		{Node: "n1", State: record.NodeActive, Cores: 8, CPU: 2.0, Load: 0.25, Workloads: 1, MemFreeBytes: 15 * gib, MemTotalBytes: 16 * gib},
		// c is counted where it is going; its memory is held here until the move is done.
		{Node: "n2", State: record.NodeActive, Cores: 4, CPU: 0, Load: 0, Workloads: 1, MemFreeBytes: 14 * gib, MemTotalBytes: 16 * gib},
		{Node: "n3", State: record.NodeDraining, Cores: 4, CPU: 0.5, Load: 0.125, Workloads: 1, MemFreeBytes: 15 * gib, MemTotalBytes: 16 * gib},
		{Node: "n4", State: record.NodeDown, Cores: 4, MemFreeBytes: 16 * gib, MemTotalBytes: 16 * gib},
		{Node: "n5", State: record.NodeActive, Cores: 4, CPU: 1.0, Load: 0.25, Workloads: 1, MemFreeBytes: 62 * gib, MemTotalBytes: 128 * gib},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("NodeLoads:\n got %+v\nwant %+v", got, want)
	}
	// Active n1 (8 cores, 0.25), n2 (4, 0), n5 (4, 0.25): mean 3/16.
	const wantImb = 1.5*0.0625*0.0625 + 0.75*0.1875*0.1875 + 0.75*0.0625*0.0625
	if imb := balancer.Imbalance(got); math.Abs(imb-wantImb) > 1e-12 {
		t.Errorf("Imbalance = %v, want %v", imb, wantImb)
	}
}

func TestValidate(t *testing.T) {
	if err := balancer.DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for name, f := range map[string]func(*balancer.Config){
		"negative threshold": func(c *balancer.Config) { c.Threshold = -0.1 },
		"NaN hysteresis":     func(c *balancer.Config) { c.Hysteresis = math.NaN() },
		"negative cooldown":  func(c *balancer.Config) { c.NodeCooldown = -time.Second },
		"no migrations":      func(c *balancer.Config) { c.MaxConcurrent = 0 },
		"headroom 1":         func(c *balancer.Config) { c.MemHeadroom = 1 },
		"zero node capacity": func(c *balancer.Config) { c.Capacity = map[string]float64{"n1": 0} },
		"infinite capacity":  func(c *balancer.Config) { c.DefaultCapacity = math.Inf(1) },
	} {
		c := balancer.DefaultConfig()
		f(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
}

func TestPlanEmptyTable(t *testing.T) {
	d := balancer.Plan(shmowner.NewTable(), nil, t0, balancer.DefaultConfig())
	if len(d.Moves) != 0 || len(d.Skipped) != 0 {
		t.Fatalf("empty table: %+v", d)
	}
}
