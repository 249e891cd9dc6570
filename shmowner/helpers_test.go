package shmowner_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// panics runs fn and returns the recovered panic value, nil if it did not panic.
func panics(fn func()) (v any) {
	defer func() { v = recover() }()
	fn()
	return nil
}

func tableJSON(t testing.TB, tb *shmowner.Table) string {
	t.Helper()
	b, err := json.Marshal(tb)
	if err != nil {
		t.Fatalf("marshal table: %v", err)
	}
	return string(b)
}

func errIs(got, want error) bool {
	if want == nil {
		return got == nil
	}
	return errors.Is(got, want)
}

// Shorthands for requests.
func regNode(id string) shmowner.RegisterNodeRequest {
	return shmowner.RegisterNodeRequest{ID: id, RaftAddr: id + ":7000", APIAddr: id + ":7001"}
}

func nodeState(id string, s record.NodeState) shmowner.SetNodeStateRequest {
	return shmowner.SetNodeStateRequest{ID: id, State: s}
}

func upsertWL(id, node, group string) shmowner.UpsertWorkloadRequest {
	return shmowner.UpsertWorkloadRequest{Workload: record.Workload{
		ID: id, Name: "name-" + id, Node: node, InitPid: 100, Pids: []int{100, 101}, Group: group,
	}}
}

func withAddr(r shmowner.UpsertWorkloadRequest, addr string) shmowner.UpsertWorkloadRequest {
	r.Workload.Addr = addr
	return r
}

func segs(node, group string, shmids ...int) shmowner.SetSegmentsRequest {
	r := shmowner.SetSegmentsRequest{Node: node, Group: group}
	for _, id := range shmids {
		r.Segments = append(r.Segments, shmowner.SegmentInfo{Shmid: id, Key: uint32(0x1000 + id), Size: 4096 * uint64(id+1), Mode: 0o600})
	}
	return r
}

// planGroup plans the move of an IPC group's members (the first is the one asked for).
func planGroup(id, target string, epoch uint64, members ...string) shmowner.PlanMigrationRequest {
	r := plan(id, members[0], target, epoch)
	r.Members = members
	return r
}

func plan(id, wl, target string, epoch uint64) shmowner.PlanMigrationRequest {
	return shmowner.PlanMigrationRequest{ID: id, Workload: wl, Target: target, Epoch: epoch, At: 1_000}
}

func phase(id string, p record.Phase, epoch uint64) shmowner.SetMigrationPhaseRequest {
	return shmowner.SetMigrationPhaseRequest{ID: id, Phase: p, Epoch: epoch, At: 2_000}
}

// walk moves migration id through every phase from precopy to done.
func walk(id string, epoch uint64) []any {
	return []any{
		phase(id, record.PhasePrecopy, epoch), phase(id, record.PhaseFrozen, epoch), phase(id, record.PhaseShipped, epoch),
		phase(id, record.PhaseRestored, epoch), phase(id, record.PhaseDone, epoch),
	}
}

// scenario is a request sequence that exercises every table: used by the round trip,
// determinism and golden snapshot tests. Every request succeeds.
func scenario() []any {
	reqs := []any{regNode("node-a"), regNode("node-b"), regNode("node-c"), regNode("node-d"), nodeState("node-d", record.NodeDraining)}
	for i, n := range []string{"node-a", "node-b", "node-c", "node-d"} {
		reqs = append(reqs, shmowner.ReportLoadRequest{ID: n, At: int64(1_700_000_000_000_000_000 + i), Load: record.LoadVector{
			CPU: 0.25 * float64(i), RunQueue: float64(i) + 0.5, MemFreeBytes: 1 << 30, MemTotalBytes: 4 << 30, Workloads: i,
		}})
	}
	for i := range 6 {
		wl := fmt.Sprintf("wl-%d", i)
		grp := fmt.Sprintf("grp-%d", i/2) // two workloads per group
		reqs = append(reqs, upsertWL(wl, "node-a", grp))
	}
	reqs = append(reqs,
		segs("node-a", "grp-0", 0, 1, 2),
		segs("node-a", "grp-1", 7),
		// grp-0 moves to node-b and back: it ends at epoch 3, owned by node-a.
		planGroup("mig-1", "node-b", 1, "wl-0", "wl-1"))
	reqs = append(reqs, walk("mig-1", 1)...)
	reqs = append(reqs, planGroup("mig-2", "node-a", 2, "wl-0", "wl-1"))
	reqs = append(reqs, walk("mig-2", 2)...)
	reqs = append(reqs,
		// grp-1 is aborted after pre-copy.
		planGroup("mig-3", "node-c", 1, "wl-2", "wl-3"),
		phase("mig-3", record.PhasePrecopy, 1),
		shmowner.SetMigrationPhaseRequest{ID: "mig-3", Phase: record.PhaseAborted, Epoch: 1, At: 3_000, Error: "criu restore: exit status 1"},
		// wl-4 (grp-2, no segments, epoch 0; its other member exited) is in flight, shipped.
		shmowner.SetWorkloadStateRequest{ID: "wl-5", State: record.WorkloadExited, ExitStatus: 3},
		plan("mig-4", "wl-4", "node-c", 0),
		shmowner.SetMigrationPhaseRequest{ID: "mig-4", Phase: record.PhaseFrozen, Epoch: 0, At: 4_000, Bytes: 1 << 20},
		shmowner.SetMigrationPhaseRequest{ID: "mig-4", Phase: record.PhaseShipped, Epoch: 0, At: 5_000, Bytes: 3 << 20},
		segs("node-a", "grp-0", 1, 2, 3), // shmid 0 gone, 3 new at epoch 1
	)
	return reqs
}
