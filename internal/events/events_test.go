package events

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

// table builds a table from its records, through its snapshot document.
func table(t *testing.T, nodes []record.Node, wls []record.Workload, segs []record.Segment, migs []record.Migration) *shmowner.Table {
	t.Helper()
	b, err := json.Marshal(map[string]any{"version": shmowner.SnapshotVersion,
		"nodes": nodes, "workloads": wls, "segments": segs, "migrations": migs})
	if err != nil {
		t.Fatal(err)
	}
	tb := shmowner.NewTable()
	if err := json.Unmarshal(b, tb); err != nil {
		t.Fatal(err)
	}
	return tb
}

// line is the parts of an event the tests compare.
func line(e api.Event) string {
	return fmt.Sprintf("%s %s %s %s node=%s %s->%s %s", e.Kind, e.ID, e.Name, e.Change, e.Node, e.From, e.To, e.Detail)
}

func lines(evs []api.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = line(e)
	}
	return out
}

func node(id string, st record.NodeState) record.Node { return record.Node{ID: id, State: st} }

func wl(id, name, node string, st record.WorkloadState) record.Workload {
	return record.Workload{ID: id, Name: name, Node: node, Group: "g-" + id, State: st}
}

func seg(group string, shmid int, owner string) record.Segment {
	return record.Segment{Group: group, Shmid: shmid, Size: 4096, Owner: owner}
}

func TestDiff(t *testing.T) {
	prev := table(t,
		[]record.Node{node("n1", record.NodeActive), node("n2", record.NodeActive), node("n3", record.NodeActive), node("n4", record.NodeActive)},
		[]record.Workload{wl("w1", "db1", "n1", record.WorkloadRunning), wl("w2", "web", "n1", record.WorkloadRunning),
			wl("w3", "job", "n2", record.WorkloadRunning), wl("w4", "old", "n2", record.WorkloadExited)},
		[]record.Segment{seg("g-w1", 10, "n1"), seg("g-w1", 9, "n1"), seg("g-w4", 1, "n2")},
		[]record.Migration{{ID: "m1", Workload: "w1", Source: "n1", Target: "n2", Phase: record.PhasePrecopy},
			{ID: "m2", Workload: "w2", Source: "n1", Target: "n3", Phase: record.PhaseFrozen}})
	w1 := wl("w1", "db1", "n2", record.WorkloadRunning)
	w5 := wl("w5", "new", "n3", record.WorkloadRunning)
	cur := table(t,
		[]record.Node{node("n1", record.NodeDraining), node("n2", record.NodeDown), node("n3", record.NodeActive), node("n5", record.NodeActive)},
		[]record.Workload{w1, wl("w2", "web", "n1", record.WorkloadMigrating), {ID: "w3", Name: "job", Node: "n2", State: record.WorkloadExited, ExitStatus: 3}, w5},
		[]record.Segment{seg("g-w1", 10, "n2"), seg("g-w1", 9, "n2"), seg("g-w5", 2, "n3")},
		[]record.Migration{{ID: "m1", Workload: "w1", Source: "n1", Target: "n2", Phase: record.PhaseDone},
			{ID: "m2", Workload: "w2", Source: "n1", Target: "n3", Phase: record.PhaseAborted, Error: "target restore failed"},
			{ID: "m3", Workload: "w5", Members: []string{"w5", "w1"}, Source: "n3", Target: "n1", Phase: record.PhasePlanned, Reason: "balancer: cpu"}})
	want := []string{
		"node n1  draining node=n1 -> ",
		"node n2  down node=n2 -> ",
		"node n4  left node=n4 -> ",
		"node n5  joined node=n5 -> ",
		"migration m1 db1 done node=n1 n1->n2 ",
		"migration m2 web aborted node=n1 n1->n3 target restore failed",
		"migration m3 new planned node=n3 n3->n1 members new,db1; balancer: cpu",
		"workload w1 db1 moved node=n2 n1->n2 ",
		"workload w2 web migrating node=n1 -> ",
		"workload w3 job exited node=n2 -> status 3",
		"workload w4 old removed node=n2 -> ",
		"workload w5 new started node=n3 -> ",
		"segment g-w1/9  owner node=n2 n1->n2 ",
		"segment g-w1/10  owner node=n2 n1->n2 ",
		"segment g-w4/1  removed node=n2 -> ",
		"segment g-w5/2  created node=n3 -> 4096 bytes",
	}
	got := lines(Diff(prev, cur))
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Diff:\n got %q\nwant %q", got, want)
	}
	// The same tables give the same events, in the same order.
	for range 5 {
		if again := lines(Diff(prev, cur)); fmt.Sprint(again) != fmt.Sprint(got) {
			t.Fatalf("Diff is not stable:\n%q\n%q", again, got)
		}
	}
	if evs := Diff(cur, cur); len(evs) != 0 {
		t.Errorf("Diff of an unchanged table: %q", lines(evs))
	}
	if evs := Diff(nil, cur); evs != nil {
		t.Errorf("Diff from no table: %q, want none (the baseline)", lines(evs))
	}
}

func TestDiffNewRecords(t *testing.T) {
	prev := table(t, nil, nil, nil, nil)
	cur := table(t, []record.Node{node("n1", record.NodeDraining)},
		[]record.Workload{{ID: "w1", Name: "quick", Node: "n1", State: record.WorkloadExited}}, nil,
		[]record.Migration{{ID: "m1", Workload: "gone", Source: "n1", Target: "n2", Phase: record.PhaseAborted, Error: "boom"}})
	want := []string{
		"node n1  joined node=n1 -> ",
		"node n1  draining node=n1 -> ",
		"migration m1 gone aborted node=n1 n1->n2 boom",
		"workload w1 quick started node=n1 -> ",
		"workload w1 quick exited node=n1 -> status 0",
	}
	if got := lines(Diff(prev, cur)); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Diff:\n got %q\nwant %q", got, want)
	}
}

func evs(ids ...string) []api.Event {
	out := make([]api.Event, len(ids))
	for i, id := range ids {
		out[i] = api.Event{Kind: api.EventKindNode, ID: id}
	}
	return out
}

func seqs(evs []api.Event) string {
	s := ""
	for _, e := range evs {
		s += fmt.Sprintf("%d:%s ", e.Seq, e.ID)
	}
	return s
}

func TestLog(t *testing.T) {
	l := NewLog(3)
	if got := l.Since(0); len(got) != 0 {
		t.Fatalf("empty log: %v", got)
	}
	l.Append(evs("a", "b")...)
	l.Append()
	if got := seqs(l.Since(0)); got != "1:a 2:b " {
		t.Errorf("Since(0) = %q", got)
	}
	l.Append(evs("c", "d", "e")...)
	if got := seqs(l.Since(0)); got != "3:c 4:d 5:e " {
		t.Errorf("after overflow Since(0) = %q, want the newest three", got)
	}
	if got := seqs(l.Since(3)); got != "4:d 5:e " {
		t.Errorf("Since(3) = %q", got)
	}
	if got := l.Since(5); len(got) != 0 {
		t.Errorf("Since(newest) = %q", seqs(got))
	}
	l.Append(evs("f", "g", "h", "i", "j", "k", "l")...)
	if got := seqs(l.Since(1)); got != "10:j 11:k 12:l " {
		t.Errorf("after a long append Since(1) = %q", got)
	}
}

func TestLogFollowerWakes(t *testing.T) {
	l := NewLog(1000)
	const writers, each = 4, 50
	var wg sync.WaitGroup
	got := make(chan []uint64)
	go func() { // one follower reads everything, in order
		var seen []uint64
		var seq uint64
		for len(seen) < writers*each {
			evs, changed := l.Follow(seq)
			for _, e := range evs {
				seen = append(seen, e.Seq)
				seq = e.Seq
			}
			if len(evs) == 0 {
				select {
				case <-changed:
				case <-time.After(10 * time.Second):
					got <- seen
					return
				}
			}
		}
		got <- seen
	}()
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				l.Append(evs("x")...)
			}
		}()
	}
	wg.Wait()
	seen := <-got
	if len(seen) != writers*each {
		t.Fatalf("follower saw %d events, want %d", len(seen), writers*each)
	}
	for i, s := range seen {
		if s != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, s)
		}
	}
}

// TestRecordFromFSM feeds a Log from a real FSM, as the daemon does, and walks a
// migration through its phases entry after entry, faster than any poll: every phase is
// there, in order, stamped with the time its entry was appended.
func TestRecordFromFSM(t *testing.T) {
	l := NewLog(100)
	f := shmowner.NewObservedFSM(func(prev, cur *shmowner.Table, at time.Time) { l.Record(prev, cur, at) })
	base := time.Unix(1_800_000_000, 0)
	var index uint64
	apply := func(req any) error {
		index++
		e := &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: shmownertest.Entry(t, req),
			AppendedAt: base.Add(time.Duration(index) * time.Millisecond)}
		err, _ := f.Apply(e).(error)
		return err
	}
	phase := func(p record.Phase) shmowner.SetMigrationPhaseRequest {
		return shmowner.SetMigrationPhaseRequest{ID: "m1", Phase: p, At: 1}
	}
	reqs := []any{
		shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: "n1:1", APIAddr: "n1:2"},
		shmowner.RegisterNodeRequest{ID: "n2", RaftAddr: "n2:1", APIAddr: "n2:2"},
		shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w1", Name: "db", Node: "n1", InitPid: 10, Pids: []int{10}, Group: "g1"}},
		shmowner.PlanMigrationRequest{ID: "m1", Workload: "w1", Target: "n2", At: 1, Reason: "by hand"},
		phase(record.PhasePrecopy), phase(record.PhaseFrozen), phase(record.PhaseShipped),
		phase(record.PhaseRestored), phase(record.PhaseDone),
	}
	for i, req := range reqs {
		if err := apply(req); err != nil {
			t.Fatalf("request %d (%T): %v", i, req, err)
		}
	}
	// A refused entry changes nothing and logs nothing.
	if err := apply(shmowner.PlanMigrationRequest{ID: "m2", Workload: "nope", Target: "n2", At: 1}); err == nil {
		t.Fatal("a migration of an unknown workload was planned")
	}
	got := l.Since(0)
	want := []string{
		"node n1  joined node=n1 -> ",
		"node n2  joined node=n2 -> ",
		"workload w1 db started node=n1 -> ",
		"migration m1 db planned node=n1 n1->n2 by hand",
		"workload w1 db migrating node=n1 -> ",
		"migration m1 db precopy node=n1 n1->n2 ",
		"migration m1 db frozen node=n1 n1->n2 ",
		"migration m1 db shipped node=n1 n1->n2 ",
		"migration m1 db restored node=n1 n1->n2 ",
		"migration m1 db done node=n1 n1->n2 ",
		"workload w1 db moved node=n2 n1->n2 ",
	}
	if g := lines(got); !slices.Equal(g, want) {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(g, "\n"), strings.Join(want, "\n"))
	}
	// Each is stamped with its entry's AppendedAt: the planned one is entry 4.
	if at := got[3].At; at != base.Add(4*time.Millisecond).UnixNano() {
		t.Errorf("planned stamped %v, want entry 4's AppendedAt", time.Unix(0, at))
	}
	for i := 1; i < len(got); i++ {
		if got[i].At < got[i-1].At || got[i].Seq != got[i-1].Seq+1 {
			t.Errorf("event %d (at %d, seq %d) out of order after %d (at %d, seq %d)", i, got[i].At, got[i].Seq, i-1, got[i-1].At, got[i-1].Seq)
		}
	}
}

func TestLogClose(t *testing.T) {
	l := NewLog(2)
	l.Close()
	l.Close()
	select {
	case <-l.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	l.Append(evs("a")...)
	if got := seqs(l.Since(0)); got != "1:a " {
		t.Errorf("after Close Since(0) = %q", got)
	}
}
