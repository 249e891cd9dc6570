package balancer_test

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/migshm/migshm/balancer"
	"github.com/migshm/migshm/shmowner"
)

// shuffled returns a copy of t whose snapshot lists were shuffled before decoding, and a
// copy of load filled in a random order.
func shuffled(tb testing.TB, rng *rand.Rand, t *shmowner.Table, load map[string]balancer.WorkloadLoad) (*shmowner.Table, map[string]balancer.WorkloadLoad) {
	tb.Helper()
	b, err := json.Marshal(t)
	if err != nil {
		tb.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		tb.Fatal(err)
	}
	for _, v := range doc {
		if list, ok := v.([]any); ok {
			rng.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })
		}
	}
	if b, err = json.Marshal(doc); err != nil {
		tb.Fatal(err)
	}
	out := shmowner.NewTable()
	if err := json.Unmarshal(b, out); err != nil {
		tb.Fatal(err)
	}
	ids := make([]string, 0, len(load))
	for id := range load {
		ids = append(ids, id)
	}
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	l := make(map[string]balancer.WorkloadLoad, len(load))
	for _, id := range ids {
		l[id] = load[id]
	}
	return out, l
}

// TestPlanDeterministic: the same state in any order gives the same decision, moves,
// reasons, scores and skips alike; on the skewed start and mid-way through a run (with
// migrations in the table, a drain and failed nodes).
func TestPlanDeterministic(t *testing.T) {
	for _, stop := range []int{0, 25} {
		p := simParams{seed: 7, nodes: 50, workloads: 500, hot: 5, pinned: 0.05, memStarve: true, failures: 5, drain: true,
			maxRounds: 2000, stopAfter: stop}
		w := newWorld(t, p)
		if stop > 0 {
			w.run()
		}
		base := w.fsm.Table()
		want := balancer.Plan(base, w.load, w.now, w.cfg)
		if len(want.Moves) == 0 || len(want.Skipped) == 0 {
			t.Fatalf("round %d: want a decision with moves and skips to compare, got %d and %d", stop, len(want.Moves), len(want.Skipped))
		}
		rng := rand.New(rand.NewPCG(uint64(stop), 1))
		for i := range 10 {
			tb, load := shuffled(t, rng, base, w.load)
			if got := balancer.Plan(tb, load, w.now, w.cfg); !reflect.DeepEqual(got, want) {
				t.Fatalf("round %d, shuffle %d: decision differs\n got:\n%s\nwant:\n%s", stop, i, dump(got), dump(want))
			}
		}
		t.Logf("round %d: %d moves, %d skips, identical over 10 shuffles", stop, len(want.Moves), len(want.Skipped))
	}
}
