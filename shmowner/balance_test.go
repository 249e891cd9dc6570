package shmowner_test

import (
	"errors"
	"testing"

	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

// TestWorkloadLoadAndPin: a load report records each workload's figures on the
// workloads its reporter runs, and only those; pinning has its own command; an upsert
// (a node re-registering what it saw) keeps both; a migration carries its reason.
func TestWorkloadLoadAndPin(t *testing.T) {
	f := shmowner.NewFSM()
	shmownertest.MustApply(t, f,
		shmowner.RegisterNodeRequest{ID: "n1"},
		shmowner.RegisterNodeRequest{ID: "n2"},
		shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w1", Node: "n1", Group: "g1"}},
		shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w2", Node: "n2", Group: "g2"}},
		shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w3", Node: "n1", Group: "g3", State: record.WorkloadExited}},
		shmowner.ReportLoadRequest{ID: "n1", At: 100, Load: record.LoadVector{Cores: 4, MemBudgetBytes: 1 << 30},
			Workloads: map[string]record.WorkloadLoad{
				"w1": {CPU: 0.5, MemBytes: 1 << 20},
				"w2": {CPU: 9, MemBytes: 9}, // runs on n2: not n1's to report
				"w3": {CPU: 9, MemBytes: 9}, // exited
				"w9": {CPU: 9, MemBytes: 9}, // unknown
			}},
	)
	tb := f.Table()
	if w, _ := tb.Workload("w1"); w.Load == nil || *w.Load != (record.WorkloadLoad{CPU: 0.5, MemBytes: 1 << 20, At: 100, Node: "n1"}) {
		t.Fatalf("w1 load %+v, want 0.5 cores, 1 MiB, at 100, measured by n1", w.Load)
	}
	for _, id := range []string{"w2", "w3"} {
		if w, _ := tb.Workload(id); w.Load != nil {
			t.Errorf("%s got load %+v from a node that does not run it", id, w.Load)
		}
	}
	if n, _ := tb.Node("n1"); n.Load.Cores != 4 || n.Load.MemBudgetBytes != 1<<30 {
		t.Errorf("n1 load %+v", n.Load)
	}

	shmownertest.MustApply(t, f, shmowner.SetWorkloadPinnedRequest{ID: "w1", Pinned: true})
	// Reconcile re-registers w1 without pin or load; both stay.
	shmownertest.MustApply(t, f, shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w1", Node: "n1", Group: "g1", Pids: []int{7}}})
	w, _ := f.Table().Workload("w1")
	if !w.Pinned || w.Load == nil || w.Load.CPU != 0.5 || len(w.Pids) != 1 {
		t.Fatalf("after upsert w1 = %+v, want pinned with its load and the new pids", w)
	}
	// An older report does not overwrite a newer one; a report without w1 keeps its figures.
	shmownertest.MustApply(t, f,
		shmowner.ReportLoadRequest{ID: "n1", At: 50, Workloads: map[string]record.WorkloadLoad{"w1": {CPU: 3}}},
		shmowner.ReportLoadRequest{ID: "n1", At: 200},
	)
	if w, _ := f.Table().Workload("w1"); w.Load.CPU != 0.5 {
		t.Errorf("w1 load %+v after an old report and one without it, want 0.5 kept", w.Load)
	}
	shmownertest.MustApply(t, f, shmowner.SetWorkloadPinnedRequest{ID: "w1", Pinned: false})
	if w, _ := f.Table().Workload("w1"); w.Pinned {
		t.Error("unpin did not unpin")
	}
	if err := shmownertest.Apply(t, f, shmowner.SetWorkloadPinnedRequest{ID: "nope", Pinned: true}); !errors.Is(err, record.ErrUnknownWorkload) {
		t.Errorf("pin unknown workload: %v", err)
	}

	shmownertest.MustApply(t, f, shmowner.PlanMigrationRequest{ID: "m1", Workload: "w1", Target: "n2", Epoch: f.Table().GroupEpoch("g1"),
		At: 300, Reason: "balancer: cpu: x"})
	if m, _ := f.Table().Migration("m1"); m.Reason != "balancer: cpu: x" {
		t.Errorf("migration reason %q", m.Reason)
	}
}

// TestDrainingSurvivesRegistration: a draining node whose daemon restarts registers
// again and stays draining; a down node that registers becomes active.
func TestDrainingSurvivesRegistration(t *testing.T) {
	tb := shmownertest.Table(t,
		shmowner.RegisterNodeRequest{ID: "n1", APIAddr: "a"},
		shmowner.RegisterNodeRequest{ID: "n2"},
		shmowner.SetNodeStateRequest{ID: "n1", State: record.NodeDraining},
		shmowner.SetNodeStateRequest{ID: "n2", State: record.NodeDown},
		shmowner.RegisterNodeRequest{ID: "n1", APIAddr: "b"},
		shmowner.RegisterNodeRequest{ID: "n2"},
	)
	if n, _ := tb.Node("n1"); n.State != record.NodeDraining || n.APIAddr != "b" {
		t.Errorf("n1 = %+v, want draining with the new address", n)
	}
	if n, _ := tb.Node("n2"); n.State != record.NodeActive {
		t.Errorf("n2 = %+v, want active", n)
	}
}

// TestDrainIsACordon: the Drain flag outlives the node going down. A drained node
// the leader marks down and then up again comes back draining; one undrained while
// down comes back active; a drain set while down takes effect when it is back.
func TestDrainIsACordon(t *testing.T) {
	down := func(id string) shmowner.SetNodeStateRequest {
		return shmowner.SetNodeStateRequest{ID: id, State: record.NodeDown}
	}
	up := func(id string) shmowner.SetNodeStateRequest {
		return shmowner.SetNodeStateRequest{ID: id, State: record.NodeActive}
	}
	tb := shmownertest.Table(t,
		shmowner.RegisterNodeRequest{ID: "n1"}, shmowner.RegisterNodeRequest{ID: "n2"}, shmowner.RegisterNodeRequest{ID: "n3"},
		shmowner.SetNodeDrainRequest{ID: "n1", Drain: true}, down("n1"), up("n1"),
		shmowner.SetNodeDrainRequest{ID: "n2", Drain: true}, down("n2"), shmowner.SetNodeDrainRequest{ID: "n2"}, up("n2"),
		down("n3"), shmowner.SetNodeDrainRequest{ID: "n3", Drain: true},
	)
	for id, want := range map[string]record.Node{
		"n1": {State: record.NodeDraining, Drain: true},
		"n2": {State: record.NodeActive},
		"n3": {State: record.NodeDown, Drain: true},
	} {
		if n, _ := tb.Node(id); n.State != want.State || n.Drain != want.Drain {
			t.Errorf("%s = %s drain=%v, want %s drain=%v", id, n.State, n.Drain, want.State, want.Drain)
		}
	}
	tb = shmownertest.Table(t, shmowner.RegisterNodeRequest{ID: "n1"}, shmowner.SetNodeDrainRequest{ID: "n1", Drain: true},
		down("n1"), shmowner.RegisterNodeRequest{ID: "n1"})
	if n, _ := tb.Node("n1"); n.State != record.NodeDraining {
		t.Errorf("a drained node that registers again is %s, want draining", n.State)
	}
	tb = shmownertest.Table(t, shmowner.RegisterNodeRequest{ID: "n1"}, shmowner.SetNodeDrainRequest{ID: "n1", Drain: true},
		shmowner.SetNodeDrainRequest{ID: "n1"})
	if n, _ := tb.Node("n1"); n.State != record.NodeActive || n.Drain {
		t.Errorf("undrained node = %s drain=%v, want active", n.State, n.Drain)
	}
	if err := shmownertest.Apply(t, shmowner.NewFSM(), shmowner.SetNodeDrainRequest{ID: "nope", Drain: true}); !errors.Is(err, record.ErrUnknownNode) {
		t.Errorf("drain unknown node: %v", err)
	}
}

// TestReporter: the commands a node sends about itself name it; the others name no one.
func TestReporter(t *testing.T) {
	for _, tc := range []struct {
		req  any
		want string
	}{
		{shmowner.RegisterNodeRequest{ID: "n1"}, "n1"},
		{shmowner.ReportLoadRequest{ID: "n2"}, "n2"},
		{shmowner.SetSegmentsRequest{Node: "n3", Group: "g"}, "n3"},
		{shmowner.SetWorkloadStateRequest{ID: "w1", Node: "n4"}, "n4"},
		{shmowner.SetWorkloadStateRequest{ID: "w1"}, ""},
		{shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w1", Node: "n5"}}, "n5"},
		{shmowner.PlanMigrationRequest{ID: "m1", Workload: "w1", Target: "n2"}, ""},
		{shmowner.SetNodeDrainRequest{ID: "n1", Drain: true}, ""},
		{shmowner.RemoveNodeRequest{ID: "n1"}, ""},
	} {
		e := shmownertest.Entry(t, tc.req)
		if got := shmowner.Reporter(shmowner.MessageType(e[0]), e[1:]); got != tc.want {
			t.Errorf("Reporter(%T) = %q, want %q", tc.req, got, tc.want)
		}
	}
	if got := shmowner.Reporter(shmowner.ReportLoadType, []byte(`{"id":`)); got != "" {
		t.Errorf("Reporter of a body that does not decode = %q", got)
	}
}
