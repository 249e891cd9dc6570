package events

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
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

func TestWatch(t *testing.T) {
	tables := []*shmowner.Table{
		table(t, []record.Node{node("n1", record.NodeActive)}, nil, nil, nil),
		nil, // skipped
		table(t, []record.Node{node("n1", record.NodeDown)}, nil, nil, nil),
	}
	var reads atomic.Int32
	get := func() *shmowner.Table {
		i := int(reads.Add(1)) - 1
		return tables[min(i, len(tables)-1)]
	}
	l := NewLog(10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); Watch(ctx, get, time.Millisecond, l) }()
	deadline := time.Now().Add(10 * time.Second)
	var got []api.Event
	for len(got) == 0 && time.Now().Before(deadline) {
		var changed <-chan struct{}
		if got, changed = l.Follow(0); len(got) == 0 {
			select {
			case <-changed:
			case <-time.After(time.Second):
			}
		}
	}
	cancel()
	<-done
	if len(got) != 1 || line(got[0]) != "node n1  down node=n1 -> " || got[0].At == 0 || got[0].Seq != 1 {
		t.Fatalf("Watch logged %+v, want n1 down, stamped", got)
	}
	time.Sleep(5 * time.Millisecond)
	if n := len(l.Since(0)); n != 1 {
		t.Errorf("an unchanged table logged more events: %d", n)
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
