package shmowner_test

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

// base is the table every Apply case starts from:
//
//	node-a, node-b active; node-c draining; node-d down
//	w1 on node-a in grp-1 (segments 0 and 1, epoch 1); w2 on node-a in grp-2 (no segments)
//	w3 and w4 on node-a share grp-3 (segment 5, epoch 1)
func base() []any {
	return []any{
		regNode("node-a"), regNode("node-b"), regNode("node-c"), regNode("node-d"),
		nodeState("node-c", record.NodeDraining), nodeState("node-d", record.NodeDown),
		upsertWL("w1", "node-a", "grp-1"), upsertWL("w2", "node-a", "grp-2"),
		upsertWL("w3", "node-a", "grp-3"), upsertWL("w4", "node-a", "grp-3"),
		segs("node-a", "grp-1", 0, 1), segs("node-a", "grp-3", 5),
	}
}

func wantNode(t *testing.T, tb *shmowner.Table, id string) record.Node {
	t.Helper()
	n, ok := tb.Node(id)
	if !ok {
		t.Fatalf("node %s missing", id)
	}
	return n
}

func wantWorkload(t *testing.T, tb *shmowner.Table, id string) record.Workload {
	t.Helper()
	w, ok := tb.Workload(id)
	if !ok {
		t.Fatalf("workload %s missing", id)
	}
	return w
}

func wantMigration(t *testing.T, tb *shmowner.Table, id string) record.Migration {
	t.Helper()
	m, ok := tb.Migration(id)
	if !ok {
		t.Fatalf("migration %s missing", id)
	}
	return m
}

func wantSegment(t *testing.T, tb *shmowner.Table, group string, shmid int) record.Segment {
	t.Helper()
	s, ok := tb.Segment(record.SegmentID{Group: group, Shmid: shmid})
	if !ok {
		t.Fatalf("segment %s/%d missing", group, shmid)
	}
	return s
}

func TestApply(t *testing.T) {
	inFlight := []any{plan("m1", "w1", "node-b", 1)}
	done := append(append([]any{}, inFlight...), walk("m1", 1)...)

	cases := []struct {
		name  string
		setup []any
		cmd   any
		want  error
		check func(t *testing.T, tb *shmowner.Table)
	}{
		// RegisterNode
		{name: "register new node", cmd: regNode("node-e"), check: func(t *testing.T, tb *shmowner.Table) {
			n := wantNode(t, tb, "node-e")
			if n != (record.Node{ID: "node-e", RaftAddr: "node-e:7000", APIAddr: "node-e:7001", State: record.NodeActive}) {
				t.Errorf("node = %+v", n)
			}
		}},
		{
			name:  "re-register keeps load, updates addresses, becomes active",
			setup: []any{shmowner.ReportLoadRequest{ID: "node-d", At: 5, Load: record.LoadVector{CPU: 0.5}}},
			cmd:   shmowner.RegisterNodeRequest{ID: "node-d", RaftAddr: "new:1", APIAddr: "new:2"},
			check: func(t *testing.T, tb *shmowner.Table) {
				n := wantNode(t, tb, "node-d")
				if n.State != record.NodeActive || n.RaftAddr != "new:1" || n.APIAddr != "new:2" || n.Load.CPU != 0.5 || n.LoadAt != 5 {
					t.Errorf("node = %+v", n)
				}
			},
		},
		{name: "register empty id", cmd: shmowner.RegisterNodeRequest{}, want: record.ErrInvalid},
		{name: "register with the network of its own addresses",
			cmd: shmowner.RegisterNodeRequest{ID: "node-e", AddrNet: "10.213.0.0/24"},
			check: func(t *testing.T, tb *shmowner.Table) {
				if n := wantNode(t, tb, "node-e"); n.AddrNet != "10.213.0.0/24" {
					t.Errorf("node = %+v", n)
				}
			}},
		{name: "register with an address, not a network", cmd: shmowner.RegisterNodeRequest{ID: "node-e", AddrNet: "10.213.0.7/24"}, want: record.ErrInvalid},
		{name: "register with an IPv6 network", cmd: shmowner.RegisterNodeRequest{ID: "node-e", AddrNet: "fd00::/64"}, want: record.ErrInvalid},
		{name: "register with garbage for a network", cmd: shmowner.RegisterNodeRequest{ID: "node-e", AddrNet: "eth0"}, want: record.ErrInvalid},

		// RemoveNode
		{name: "remove node", cmd: shmowner.RemoveNodeRequest{ID: "node-d"}, check: func(t *testing.T, tb *shmowner.Table) {
			if _, ok := tb.Node("node-d"); ok {
				t.Error("node-d still there")
			}
		}},
		{name: "remove unknown node", cmd: shmowner.RemoveNodeRequest{ID: "nope"}, want: record.ErrUnknownNode},

		// SetNodeState
		{name: "set node state", cmd: nodeState("node-a", record.NodeDraining), check: func(t *testing.T, tb *shmowner.Table) {
			if s := wantNode(t, tb, "node-a").State; s != record.NodeDraining {
				t.Errorf("state = %s", s)
			}
		}},
		{name: "set state of unknown node", cmd: nodeState("nope", record.NodeDown), want: record.ErrUnknownNode},
		{name: "set bogus node state", cmd: nodeState("node-a", "sleepy"), want: record.ErrInvalid},

		// ReportLoad
		{
			name: "report load",
			cmd:  shmowner.ReportLoadRequest{ID: "node-b", At: 42, Load: record.LoadVector{CPU: 0.75, RunQueue: 2, MemFreeBytes: 10, MemTotalBytes: 20, Workloads: 3}},
			check: func(t *testing.T, tb *shmowner.Table) {
				n := wantNode(t, tb, "node-b")
				if n.LoadAt != 42 || n.Load != (record.LoadVector{CPU: 0.75, RunQueue: 2, MemFreeBytes: 10, MemTotalBytes: 20, Workloads: 3}) {
					t.Errorf("node = %+v", n)
				}
			},
		},
		{
			name:  "older load report is ignored",
			setup: []any{shmowner.ReportLoadRequest{ID: "node-b", At: 42, Load: record.LoadVector{CPU: 0.75}}},
			cmd:   shmowner.ReportLoadRequest{ID: "node-b", At: 41, Load: record.LoadVector{CPU: 0.1}},
			check: func(t *testing.T, tb *shmowner.Table) {
				if n := wantNode(t, tb, "node-b"); n.LoadAt != 42 || n.Load.CPU != 0.75 {
					t.Errorf("node = %+v", n)
				}
			},
		},
		{name: "report load of unknown node", cmd: shmowner.ReportLoadRequest{ID: "nope", At: 1}, want: record.ErrUnknownNode},

		// Own addresses
		{name: "upsert workload with an address", cmd: withAddr(upsertWL("w9", "node-b", "grp-9"), "10.0.0.50/24"),
			check: func(t *testing.T, tb *shmowner.Table) {
				if a := wantWorkload(t, tb, "w9").Addr; a != "10.0.0.50/24" {
					t.Errorf("addr = %q", a)
				}
			}},
		{name: "address another group holds", setup: []any{withAddr(upsertWL("w9", "node-b", "grp-9"), "10.0.0.50/24")},
			cmd: withAddr(upsertWL("w8", "node-c", "grp-8"), "10.0.0.50/16"), want: record.ErrAddressTaken},
		{name: "address of an exited workload is free",
			setup: []any{withAddr(upsertWL("w9", "node-b", "grp-9"), "10.0.0.50/24"),
				shmowner.SetWorkloadStateRequest{ID: "w9", State: record.WorkloadExited}},
			cmd: withAddr(upsertWL("w8", "node-c", "grp-8"), "10.0.0.50/24")},
		{name: "members of a group share its address", setup: []any{withAddr(upsertWL("w9", "node-b", "grp-9"), "10.0.0.50/24")},
			cmd: withAddr(upsertWL("w8", "node-b", "grp-9"), "10.0.0.50/24")},
		{name: "member with another address", setup: []any{withAddr(upsertWL("w9", "node-b", "grp-9"), "10.0.0.50/24")},
			cmd: withAddr(upsertWL("w8", "node-b", "grp-9"), "10.0.0.51/24"), want: record.ErrInvalid},
		{name: "member without the group's address", setup: []any{withAddr(upsertWL("w9", "node-b", "grp-9"), "10.0.0.50/24")},
			cmd: upsertWL("w8", "node-b", "grp-9"), want: record.ErrInvalid},
		{name: "malformed address", cmd: withAddr(upsertWL("w9", "node-b", "grp-9"), "10.0.0.50"), want: record.ErrInvalid},

		// UpsertWorkload
		{name: "upsert new workload defaults to running", cmd: upsertWL("w9", "node-b", "grp-9"), check: func(t *testing.T, tb *shmowner.Table) {
			w := wantWorkload(t, tb, "w9")
			if w.State != record.WorkloadRunning || w.Node != "node-b" || w.Group != "grp-9" || !slices.Equal(w.Pids, []int{100, 101}) {
				t.Errorf("workload = %+v", w)
			}
		}},
		{name: "upsert on unknown node", cmd: upsertWL("w9", "nope", "grp-9"), want: record.ErrUnknownNode},
		{name: "upsert without group", cmd: upsertWL("w9", "node-a", ""), want: record.ErrInvalid},
		{name: "upsert without id", cmd: upsertWL("", "node-a", "grp-9"), want: record.ErrInvalid},
		{
			name: "upsert as migrating",
			cmd:  shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w9", Node: "node-a", Group: "g", State: record.WorkloadMigrating}},
			want: record.ErrInvalid,
		},
		{
			name: "upsert with another workload's name",
			cmd:  shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w9", Name: "name-w1", Node: "node-a", Group: "g"}},
			want: record.ErrExists,
		},
		{name: "upsert keeps its own name", cmd: upsertWL("w1", "node-a", "grp-1"), check: func(t *testing.T, tb *shmowner.Table) {
			if w := wantWorkload(t, tb, "w1"); w.Name != "name-w1" || w.Node != "node-a" {
				t.Errorf("workload = %+v", w)
			}
		}},
		// A node that moved a workload away a moment ago reports what it last saw: stale.
		{name: "upsert from another node than the workload's", cmd: upsertWL("w1", "node-b", "grp-1"), want: record.ErrNotOwner},
		{name: "upsert from the source after the move", setup: done, cmd: upsertWL("w1", "node-a", "grp-1"), want: record.ErrNotOwner},
		{name: "exit reported by the source after the move", setup: done,
			cmd: shmowner.SetWorkloadStateRequest{ID: "w1", Node: "node-a", State: record.WorkloadExited}, want: record.ErrNotOwner},
		{name: "exit reported by the workload's node", setup: done,
			cmd: shmowner.SetWorkloadStateRequest{ID: "w1", Node: "node-b", State: record.WorkloadExited}, check: func(t *testing.T, tb *shmowner.Table) {
				if w := wantWorkload(t, tb, "w1"); w.State != record.WorkloadExited {
					t.Errorf("workload = %+v", w)
				}
			}},
		{name: "probe changes nothing", cmd: shmowner.ProbeRequest{Seq: 7}, check: func(t *testing.T, tb *shmowner.Table) {
			if n := len(tb.Workloads()); n != 4 {
				t.Errorf("%d workloads after a probe, want 4", n)
			}
		}},
		{name: "upsert while migrating", setup: inFlight, cmd: upsertWL("w1", "node-a", "grp-1"), want: record.ErrMigrationInFlight},
		{name: "upsert moving the last workload out of a group drops its segments", cmd: upsertWL("w1", "node-a", "grp-9"), check: func(t *testing.T, tb *shmowner.Table) {
			if s := tb.GroupSegments("grp-1"); len(s) != 0 {
				t.Errorf("grp-1 segments = %+v", s)
			}
		}},

		// RemoveWorkload
		{name: "remove last workload of a group drops its segments", cmd: shmowner.RemoveWorkloadRequest{ID: "w1"}, check: func(t *testing.T, tb *shmowner.Table) {
			if _, ok := tb.Workload("w1"); ok {
				t.Error("w1 still there")
			}
			if s := tb.GroupSegments("grp-1"); len(s) != 0 {
				t.Errorf("grp-1 segments = %+v", s)
			}
			if len(tb.GroupSegments("grp-3")) != 1 {
				t.Error("grp-3 segments dropped")
			}
		}},
		{name: "remove a workload sharing its group keeps the segments", cmd: shmowner.RemoveWorkloadRequest{ID: "w3"}, check: func(t *testing.T, tb *shmowner.Table) {
			if len(tb.GroupSegments("grp-3")) != 1 {
				t.Error("grp-3 segments dropped")
			}
		}},
		{name: "remove unknown workload", cmd: shmowner.RemoveWorkloadRequest{ID: "nope"}, want: record.ErrUnknownWorkload},
		{name: "remove migrating workload", setup: inFlight, cmd: shmowner.RemoveWorkloadRequest{ID: "w1"}, want: record.ErrMigrationInFlight},

		// SetWorkloadState
		{name: "workload exits", cmd: shmowner.SetWorkloadStateRequest{ID: "w2", State: record.WorkloadExited, ExitStatus: 7, At: 99}, check: func(t *testing.T, tb *shmowner.Table) {
			if w := wantWorkload(t, tb, "w2"); w.State != record.WorkloadExited || w.ExitStatus != 7 || w.ExitedAt != 99 {
				t.Errorf("workload = %+v", w)
			}
		}},
		{name: "workload exits while migrating", setup: inFlight, cmd: shmowner.SetWorkloadStateRequest{ID: "w1", State: record.WorkloadExited}},
		{name: "workload set running while migrating", setup: inFlight, cmd: shmowner.SetWorkloadStateRequest{ID: "w1", State: record.WorkloadRunning}, want: record.ErrMigrationInFlight},
		{name: "workload set migrating directly", cmd: shmowner.SetWorkloadStateRequest{ID: "w1", State: record.WorkloadMigrating}, want: record.ErrBadTransition},
		{name: "workload bogus state", cmd: shmowner.SetWorkloadStateRequest{ID: "w1", State: "zombie"}, want: record.ErrInvalid},
		{name: "state of unknown workload", cmd: shmowner.SetWorkloadStateRequest{ID: "nope", State: record.WorkloadExited}, want: record.ErrUnknownWorkload},

		// SetSegments
		{name: "segments of a new group belong to the reporter at epoch 1", cmd: segs("node-a", "grp-2", 3, 4), check: func(t *testing.T, tb *shmowner.Table) {
			got := tb.GroupSegments("grp-2")
			want := []record.Segment{
				{Group: "grp-2", Shmid: 3, Key: 0x1003, Size: 4 * 4096, Mode: 0o600, Owner: "node-a", Epoch: 1},
				{Group: "grp-2", Shmid: 4, Key: 0x1004, Size: 5 * 4096, Mode: 0o600, Owner: "node-a", Epoch: 1},
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("segments = %+v, want %+v", got, want)
			}
			if e := tb.GroupEpoch("grp-2"); e != 1 {
				t.Errorf("epoch = %d", e)
			}
		}},
		{
			name:  "replacing segments keeps owner and epoch of those that stay",
			setup: done, // grp-1 now owned by node-b at epoch 2
			cmd: shmowner.SetSegmentsRequest{Node: "node-b", Group: "grp-1", Segments: []shmowner.SegmentInfo{
				{Shmid: 1, Key: 0x1001, Size: 1 << 20, Mode: 0o640}, {Shmid: 9, Key: 0x1009, Size: 4096, Mode: 0o600},
			}},
			check: func(t *testing.T, tb *shmowner.Table) {
				if _, ok := tb.Segment(record.SegmentID{Group: "grp-1", Shmid: 0}); ok {
					t.Error("segment 0 not removed")
				}
				if s := wantSegment(t, tb, "grp-1", 1); s.Owner != "node-b" || s.Epoch != 2 || s.Size != 1<<20 || s.Mode != 0o640 {
					t.Errorf("segment 1 = %+v", s)
				}
				if s := wantSegment(t, tb, "grp-1", 9); s.Owner != "node-b" || s.Epoch != 1 {
					t.Errorf("segment 9 = %+v", s)
				}
				if e := tb.GroupEpoch("grp-1"); e != 2 {
					t.Errorf("group epoch = %d", e)
				}
			},
		},
		{name: "empty segment list removes all", cmd: shmowner.SetSegmentsRequest{Node: "node-a", Group: "grp-1"}, check: func(t *testing.T, tb *shmowner.Table) {
			if s := tb.GroupSegments("grp-1"); len(s) != 0 {
				t.Errorf("segments = %+v", s)
			}
		}},
		{name: "segments from a node that is not the owner", cmd: segs("node-b", "grp-1", 0), want: record.ErrNotOwner},
		{name: "segments from the former owner after a migration", setup: done, cmd: segs("node-a", "grp-1", 0, 1), want: record.ErrNotOwner},
		{name: "segments from an unknown node", cmd: segs("nope", "grp-9", 0), want: record.ErrUnknownNode},
		{name: "repeated shmid", cmd: segs("node-a", "grp-9", 1, 1), want: record.ErrInvalid},
		{name: "segments without group", cmd: segs("node-a", "", 1), want: record.ErrInvalid},

		// PlanMigration
		{name: "plan migration", cmd: plan("m1", "w1", "node-b", 1), check: func(t *testing.T, tb *shmowner.Table) {
			m := wantMigration(t, tb, "m1")
			want := record.Migration{ID: "m1", Workload: "w1", Source: "node-a", Target: "node-b", Phase: record.PhasePlanned, Epoch: 1, StartedAt: 1000, UpdatedAt: 1000}
			if !reflect.DeepEqual(m, want) {
				t.Errorf("migration = %+v, want %+v", m, want)
			}
			if w := wantWorkload(t, tb, "w1"); w.State != record.WorkloadMigrating || w.Node != "node-a" {
				t.Errorf("workload = %+v", w)
			}
			if a, ok := tb.ActiveMigration("w1"); !ok || a.ID != "m1" {
				t.Errorf("active migration = %+v %v", a, ok)
			}
		}},
		{name: "plan migration of a group without segments carries epoch 0", cmd: plan("m1", "w2", "node-b", 0)},
		{name: "plan with stale epoch", cmd: plan("m1", "w1", "node-b", 0), want: record.ErrStaleEpoch},
		{name: "plan with future epoch", cmd: plan("m1", "w1", "node-b", 2), want: record.ErrStaleEpoch},
		{name: "plan with the epoch from before the last move", setup: done, cmd: plan("m2", "w1", "node-a", 1), want: record.ErrStaleEpoch},
		{name: "plan again after done with the new epoch", setup: done, cmd: plan("m2", "w1", "node-a", 2)},
		{name: "plan while in flight", setup: inFlight, cmd: plan("m2", "w1", "node-c", 1), want: record.ErrMigrationInFlight},
		{name: "plan after abort", setup: append(append([]any{}, inFlight...), phase("m1", record.PhaseAborted, 1)), cmd: plan("m2", "w1", "node-b", 1)},
		{name: "plan to the same node", cmd: plan("m1", "w1", "node-a", 1), want: record.ErrSameNode},
		{name: "plan to a draining node", cmd: plan("m1", "w1", "node-c", 1), want: record.ErrNodeNotActive},
		{name: "plan to a down node", cmd: plan("m1", "w1", "node-d", 1), want: record.ErrNodeNotActive},
		{name: "plan to a node that left", setup: []any{nodeState("node-b", record.NodeLeft)}, cmd: plan("m1", "w1", "node-b", 1), want: record.ErrNodeNotActive},
		{name: "plan to an unknown node", cmd: plan("m1", "w1", "nope", 1), want: record.ErrUnknownNode},
		{name: "plan of an unknown workload", cmd: plan("m1", "nope", "node-b", 0), want: record.ErrUnknownWorkload},
		{name: "plan of an exited workload", setup: []any{shmowner.SetWorkloadStateRequest{ID: "w2", State: record.WorkloadExited}}, cmd: plan("m1", "w2", "node-b", 0), want: record.ErrBadTransition},
		{name: "plan with a taken id", setup: inFlight, cmd: plan("m1", "w2", "node-b", 0), want: record.ErrExists},
		{name: "plan without id", cmd: plan("", "w2", "node-b", 0), want: record.ErrInvalid},

		// PlanMigration of a group: its members move as one.
		{name: "plan a group move", cmd: shmowner.PlanMigrationRequest{ID: "g1", Workload: "w3", Members: []string{"w3", "w4"}, Target: "node-b", Epoch: 1, At: 1000}, check: func(t *testing.T, tb *shmowner.Table) {
			for _, id := range []string{"w3", "w4"} {
				if w := wantWorkload(t, tb, id); w.State != record.WorkloadMigrating {
					t.Errorf("%s = %+v", id, w)
				}
				if a, ok := tb.ActiveMigration(id); !ok || a.ID != "g1" {
					t.Errorf("active migration of %s = %+v %v", id, a, ok)
				}
			}
		}},
		{name: "plan a group move that leaves a member behind", cmd: plan("g1", "w3", "node-b", 1), want: record.ErrGroupSplit},
		{name: "plan a group move of an exited member's group", setup: []any{shmowner.SetWorkloadStateRequest{ID: "w4", State: record.WorkloadExited}},
			cmd: plan("g1", "w3", "node-b", 1)},
		{name: "plan a group move naming another group's workload",
			cmd:  shmowner.PlanMigrationRequest{ID: "g1", Workload: "w3", Members: []string{"w3", "w4", "w1"}, Target: "node-b", Epoch: 1},
			want: record.ErrInvalid},
		{name: "plan a group move naming a member twice",
			cmd:  shmowner.PlanMigrationRequest{ID: "g1", Workload: "w3", Members: []string{"w3", "w3", "w4"}, Target: "node-b", Epoch: 1},
			want: record.ErrInvalid},
		{name: "plan a group move whose members do not start with the workload",
			cmd:  shmowner.PlanMigrationRequest{ID: "g1", Workload: "w3", Members: []string{"w4", "w3"}, Target: "node-b", Epoch: 1},
			want: record.ErrInvalid},
		{name: "plan a group move naming an unknown member",
			cmd:  shmowner.PlanMigrationRequest{ID: "g1", Workload: "w3", Members: []string{"w3", "w4", "w8"}, Target: "node-b", Epoch: 1},
			want: record.ErrUnknownWorkload},
		{name: "no new member joins a moving group", setup: []any{shmowner.PlanMigrationRequest{ID: "g1", Workload: "w3", Members: []string{"w3", "w4"}, Target: "node-b", Epoch: 1, At: 1000}},
			cmd: upsertWL("w9", "node-a", "grp-3"), want: record.ErrMigrationInFlight},
		{name: "a member of a moving group cannot be moved on its own", setup: []any{shmowner.PlanMigrationRequest{ID: "g1", Workload: "w3", Members: []string{"w3", "w4"}, Target: "node-b", Epoch: 1, At: 1000}},
			cmd: plan("g2", "w4", "node-c", 1), want: record.ErrMigrationInFlight},
		{name: "done moves every member", setup: []any{shmowner.PlanMigrationRequest{ID: "g1", Workload: "w3", Members: []string{"w3", "w4"}, Target: "node-b", Epoch: 1, At: 1000},
			phase("g1", record.PhaseFrozen, 1), phase("g1", record.PhaseRestored, 1)},
			cmd: shmowner.SetMigrationPhaseRequest{ID: "g1", Phase: record.PhaseDone, Epoch: 1, Placed: map[string]int{"w3": 900, "w4": 901}},
			check: func(t *testing.T, tb *shmowner.Table) {
				for i, id := range []string{"w3", "w4"} {
					// The table names the inits the target restored from the commit on.
					if w := wantWorkload(t, tb, id); w.Node != "node-b" || w.State != record.WorkloadRunning ||
						w.InitPid != 900+i || !slices.Equal(w.Pids, []int{900 + i}) {
						t.Errorf("%s = %+v", id, w)
					}
				}
				if s := wantSegment(t, tb, "grp-3", 5); s.Owner != "node-b" || s.Epoch != 2 {
					t.Errorf("segment = %+v", s)
				}
			}},
		{name: "abort puts every member back", setup: []any{shmowner.PlanMigrationRequest{ID: "g1", Workload: "w3", Members: []string{"w3", "w4"}, Target: "node-b", Epoch: 1, At: 1000}},
			cmd: phase("g1", record.PhaseAborted, 1), check: func(t *testing.T, tb *shmowner.Table) {
				for _, id := range []string{"w3", "w4"} {
					if w := wantWorkload(t, tb, id); w.Node != "node-a" || w.State != record.WorkloadRunning {
						t.Errorf("%s = %+v", id, w)
					}
				}
			}},

		// SetMigrationPhase
		{name: "phase precopy", setup: inFlight, cmd: phase("m1", record.PhasePrecopy, 1), check: func(t *testing.T, tb *shmowner.Table) {
			if m := wantMigration(t, tb, "m1"); m.Phase != record.PhasePrecopy || m.UpdatedAt != 2000 || m.StartedAt != 1000 {
				t.Errorf("migration = %+v", m)
			}
		}},
		{name: "phase skips precopy", setup: inFlight, cmd: phase("m1", record.PhaseFrozen, 1)},
		{name: "phase records bytes and keeps them", setup: append(append([]any{}, inFlight...),
			shmowner.SetMigrationPhaseRequest{ID: "m1", Phase: record.PhasePrecopy, Epoch: 1, Bytes: 123}),
			cmd: phase("m1", record.PhaseFrozen, 1), check: func(t *testing.T, tb *shmowner.Table) {
				if m := wantMigration(t, tb, "m1"); m.Bytes != 123 {
					t.Errorf("bytes = %d", m.Bytes)
				}
			}},
		{name: "phase done straight from planned", setup: inFlight, cmd: phase("m1", record.PhaseDone, 1), want: record.ErrBadTransition},
		{name: "phase done from shipped", setup: append(append([]any{}, inFlight...), phase("m1", record.PhaseShipped, 1)), cmd: phase("m1", record.PhaseDone, 1), want: record.ErrBadTransition},
		{name: "phase backwards", setup: append(append([]any{}, inFlight...), phase("m1", record.PhaseFrozen, 1)), cmd: phase("m1", record.PhasePrecopy, 1), want: record.ErrBadTransition},
		{name: "phase repeated", setup: inFlight, cmd: phase("m1", record.PhasePlanned, 1), want: record.ErrBadTransition},
		{name: "phase bogus", setup: inFlight, cmd: phase("m1", "teleported", 1), want: record.ErrBadTransition},
		{name: "phase after done", setup: done, cmd: phase("m1", record.PhaseAborted, 1), want: record.ErrBadTransition},
		{name: "phase after abort", setup: append(append([]any{}, inFlight...), phase("m1", record.PhaseAborted, 1)), cmd: phase("m1", record.PhasePrecopy, 1), want: record.ErrBadTransition},
		{name: "phase with stale epoch", setup: inFlight, cmd: phase("m1", record.PhasePrecopy, 0), want: record.ErrStaleEpoch},
		{name: "phase of unknown migration", cmd: phase("nope", record.PhasePrecopy, 0), want: record.ErrUnknownMigration},
		{
			name:  "done moves the workload and the owner copies, bumps epochs, clears replicas",
			setup: append(append([]any{}, inFlight...), phase("m1", record.PhaseRestored, 1)),
			cmd:   phase("m1", record.PhaseDone, 1),
			check: func(t *testing.T, tb *shmowner.Table) {
				if w := wantWorkload(t, tb, "w1"); w.Node != "node-b" || w.State != record.WorkloadRunning {
					t.Errorf("workload = %+v", w)
				}
				for _, s := range tb.GroupSegments("grp-1") {
					if s.Owner != "node-b" || s.Epoch != 2 || s.Replicas != nil {
						t.Errorf("segment = %+v", s)
					}
				}
				if s := wantSegment(t, tb, "grp-3", 5); s.Owner != "node-a" || s.Epoch != 1 {
					t.Errorf("other group's segment changed: %+v", s)
				}
				if m := wantMigration(t, tb, "m1"); m.Phase != record.PhaseDone {
					t.Errorf("migration = %+v", m)
				}
				if _, ok := tb.ActiveMigration("w1"); ok {
					t.Error("migration still active")
				}
			},
		},
		{
			name:  "abort puts the workload back to running on the source",
			setup: append(append([]any{}, inFlight...), phase("m1", record.PhaseShipped, 1)),
			cmd:   shmowner.SetMigrationPhaseRequest{ID: "m1", Phase: record.PhaseAborted, Epoch: 1, At: 9, Error: "restore failed"},
			check: func(t *testing.T, tb *shmowner.Table) {
				if w := wantWorkload(t, tb, "w1"); w.Node != "node-a" || w.State != record.WorkloadRunning {
					t.Errorf("workload = %+v", w)
				}
				if m := wantMigration(t, tb, "m1"); m.Phase != record.PhaseAborted || m.Error != "restore failed" || m.UpdatedAt != 9 {
					t.Errorf("migration = %+v", m)
				}
				for _, s := range tb.GroupSegments("grp-1") {
					if s.Owner != "node-a" || s.Epoch != 1 {
						t.Errorf("segment = %+v", s)
					}
				}
			},
		},
		{
			name:  "abort of a workload that exited keeps it exited",
			setup: append(append([]any{}, inFlight...), shmowner.SetWorkloadStateRequest{ID: "w1", State: record.WorkloadExited, ExitStatus: 9}),
			cmd:   phase("m1", record.PhaseAborted, 1),
			check: func(t *testing.T, tb *shmowner.Table) {
				if w := wantWorkload(t, tb, "w1"); w.State != record.WorkloadExited || w.ExitStatus != 9 {
					t.Errorf("workload = %+v", w)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := shmowner.NewFSM()
			shmownertest.MustApply(t, f, base()...)
			shmownertest.MustApply(t, f, tc.setup...)
			before := tableJSON(t, f.Table())
			err := shmownertest.Apply(t, f, tc.cmd)
			if !errIs(err, tc.want) {
				t.Fatalf("apply %T: got %v, want %v", tc.cmd, err, tc.want)
			}
			if err != nil {
				if after := tableJSON(t, f.Table()); after != before {
					t.Errorf("rejected command changed the table:\nbefore %s\nafter  %s", before, after)
				}
				if code, _ := api.Code(err); code == "internal" {
					t.Errorf("error %v has no wire code", err)
				}
			}
			if tc.check != nil {
				tc.check(t, f.Table())
			}
		})
	}
}

func TestApplyDoneClearsReplicas(t *testing.T) {
	f := shmowner.NewFSM()
	shmownertest.MustApply(t, f, base()...)
	shmownertest.MustApply(t, f, plan("m1", "w1", "node-b", 1))
	// No command sets replicas yet (the DSM milestone will); plant one directly.
	shmowner.SetReplicas(f, record.SegmentID{Group: "grp-1", Shmid: 0}, []string{"node-b", "node-c"})
	shmownertest.MustApply(t, f, walk("m1", 1)...)
	if got := wantSegment(t, f.Table(), "grp-1", 0); got.Replicas != nil || got.Owner != "node-b" || got.Epoch != 2 {
		t.Errorf("segment = %+v", got)
	}
}

func TestSetSegmentsKeepsReplicas(t *testing.T) {
	f := shmowner.NewFSM()
	shmownertest.MustApply(t, f, base()...)
	shmowner.SetReplicas(f, record.SegmentID{Group: "grp-1", Shmid: 0}, []string{"node-b"})
	shmownertest.MustApply(t, f, segs("node-a", "grp-1", 0, 1, 2))
	if got := wantSegment(t, f.Table(), "grp-1", 0); !slices.Equal(got.Replicas, []string{"node-b"}) {
		t.Errorf("segment = %+v", got)
	}
}

func TestPhaseTransitions(t *testing.T) {
	all := []record.Phase{record.PhasePlanned, record.PhasePrecopy, record.PhaseFrozen, record.PhaseShipped, record.PhaseRestored, record.PhaseDone, record.PhaseAborted, "bogus"}
	allowed := map[record.Phase][]record.Phase{
		record.PhasePlanned:  {record.PhasePrecopy, record.PhaseFrozen, record.PhaseShipped, record.PhaseRestored, record.PhaseAborted},
		record.PhasePrecopy:  {record.PhaseFrozen, record.PhaseShipped, record.PhaseRestored, record.PhaseAborted},
		record.PhaseFrozen:   {record.PhaseShipped, record.PhaseRestored, record.PhaseAborted},
		record.PhaseShipped:  {record.PhaseRestored, record.PhaseAborted},
		record.PhaseRestored: {record.PhaseDone, record.PhaseAborted},
	}
	for _, from := range all {
		for _, to := range all {
			want := slices.Contains(allowed[from], to)
			if got := from.CanMoveTo(to); got != want {
				t.Errorf("%s -> %s: got %v, want %v", from, to, got, want)
			}
		}
	}
}

func mustEncode(t testing.TB, typ shmowner.MessageType, body any) []byte {
	t.Helper()
	b, err := shmowner.Encode(typ, body)
	if err != nil {
		t.Fatalf("encode %s: %v", typ, err)
	}
	return b
}

func TestApplyUnknownAndUndecodable(t *testing.T) {
	log := func(data []byte) *raft.Log { return &raft.Log{Type: raft.LogCommand, Data: data} }
	t.Run("unknown type with the ignore flag is skipped", func(t *testing.T) {
		f := shmowner.NewFSM()
		shmownertest.MustApply(t, f, base()...)
		before := tableJSON(t, f.Table())
		for _, typ := range []shmowner.MessageType{shmowner.IgnoreUnknownFlag, shmowner.IgnoreUnknownFlag | 1, shmowner.IgnoreUnknownFlag | 77} {
			var resp any
			if p := panics(func() { resp = f.Apply(log(mustEncode(t, typ, map[string]int{"x": 1}))) }); p != nil {
				t.Fatalf("type %d panicked: %v", typ, p)
			}
			if resp != nil {
				t.Errorf("type %d: response %v, want nil", typ, resp)
			}
		}
		if after := tableJSON(t, f.Table()); after != before {
			t.Errorf("ignored command changed the table")
		}
	})
	for _, tc := range []struct {
		name, want string
		data       []byte
	}{
		{"unknown type without the flag panics", "unknown message type 77", mustEncode(t, 77, struct{}{})},
		{"type 0 panics", "unknown message type 0", mustEncode(t, 0, struct{}{})},
		{"undecodable body panics", "decode RegisterNode", append([]byte{byte(shmowner.RegisterNodeType)}, "{not json"...)},
		{"body of the wrong shape panics", "decode PlanMigration", append([]byte{byte(shmowner.PlanMigrationType)}, `{"epoch":"one"}`...)},
		{"empty entry panics", "empty log entry", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := shmowner.NewFSM()
			p := panics(func() { f.Apply(log(tc.data)) })
			if p == nil {
				t.Fatal("did not panic")
			}
			if !strings.Contains(fmt.Sprint(p), tc.want) {
				t.Errorf("panic %q does not mention %q", p, tc.want)
			}
		})
	}
}

func TestEncode(t *testing.T) {
	b, err := shmowner.Encode(shmowner.RemoveNodeType, shmowner.RemoveNodeRequest{ID: "n"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "\x02" + `{"id":"n"}`; string(b) != want {
		t.Errorf("Encode = %q, want %q", b, want)
	}
	if _, err := shmowner.Encode(shmowner.RemoveNodeType, func() {}); err == nil {
		t.Error("Encode of a func did not fail")
	}
	if s := shmowner.SetMigrationPhaseType.String(); s != "SetMigrationPhase" {
		t.Errorf("String = %q", s)
	}
	if s := shmowner.MessageType(200).String(); s != "MessageType(200)" {
		t.Errorf("String = %q", s)
	}
}

func TestDeterminism(t *testing.T) {
	// Two FSMs fed the same entries end with byte-identical tables and responses,
	// including the rejected commands' error texts.
	cmds := scenario()
	cmds = append(cmds,
		plan("mig-x", "wl-4", "node-b", 0),      // in flight
		segs("node-b", "grp-0", 1),              // not owner
		plan("mig-y", "wl-1", "node-a", 3),      // same node
		phase("mig-4", record.PhaseRestored, 7), // stale epoch
		upsertWL("wl-9", "node-z", "grp-9"),     // unknown node
		shmowner.RemoveWorkloadRequest{ID: "wl-3"},
	)
	run := func() (string, []string) {
		f := shmowner.NewFSM()
		var resps []string
		for _, c := range cmds {
			resps = append(resps, fmt.Sprint(shmownertest.Apply(t, f, c)))
		}
		return tableJSON(t, f.Table()), resps
	}
	t1, r1 := run()
	for range 5 {
		t2, r2 := run()
		if t1 != t2 {
			t.Fatalf("tables differ:\n%s\n%s", t1, t2)
		}
		if !slices.Equal(r1, r2) {
			t.Fatalf("responses differ:\n%q\n%q", r1, r2)
		}
	}
}

func TestTableCopies(t *testing.T) {
	f := shmowner.NewFSM()
	shmownertest.MustApply(t, f, base()...)
	tb := f.Table()
	w := wantWorkload(t, tb, "w1")
	w.Pids[0] = -1
	tb.Workloads()[0].Pids[0] = -1
	tb.Segments()[0].Epoch = 99
	shmowner.PutWorkload(tb, "w1", record.Workload{})
	if got := wantWorkload(t, f.Table(), "w1"); got.Pids[0] != 100 {
		t.Errorf("FSM table shares memory with a copy: %+v", got)
	}
	if got := wantWorkload(t, tb, "w1"); got.ID != "" {
		t.Errorf("copy = %+v", got)
	}
	if got := wantSegment(t, f.Table(), "grp-1", 0); got.Epoch != 1 {
		t.Errorf("segment = %+v", got)
	}
}
