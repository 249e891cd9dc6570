package cluster

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// TestCheckDecodes: a forwarded command's body is refused before it enters the log
// exactly when the FSM could not decode it (and would panic on every node).
func TestCheckDecodes(t *testing.T) {
	valid := map[shmowner.MessageType]any{
		shmowner.RegisterNodeType:     shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: "a:1", APIAddr: "a:2"},
		shmowner.RemoveNodeType:       shmowner.RemoveNodeRequest{ID: "n1"},
		shmowner.SetNodeStateType:     shmowner.SetNodeStateRequest{ID: "n1", State: record.NodeDraining},
		shmowner.ReportLoadType:       shmowner.ReportLoadRequest{ID: "n1", Load: record.LoadVector{CPU: 0.5}, At: 1},
		shmowner.UpsertWorkloadType:   shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w1", Node: "n1", Group: "g"}},
		shmowner.RemoveWorkloadType:   shmowner.RemoveWorkloadRequest{ID: "w1"},
		shmowner.SetWorkloadStateType: shmowner.SetWorkloadStateRequest{ID: "w1", State: record.WorkloadExited},
		shmowner.SetSegmentsType: shmowner.SetSegmentsRequest{Node: "n1", Group: "g",
			Segments: []shmowner.SegmentInfo{{Shmid: 1, Key: 2, Size: 4096, Mode: 0o600}}},
		shmowner.PlanMigrationType:     shmowner.PlanMigrationRequest{ID: "m1", Workload: "w1", Target: "n2", Epoch: 1},
		shmowner.SetMigrationPhaseType: shmowner.SetMigrationPhaseRequest{ID: "m1", Phase: record.PhasePrecopy, Epoch: 1},
		shmowner.ProbeType:             shmowner.ProbeRequest{Seq: 7},
		shmowner.SetMigrationStatsType: shmowner.SetMigrationStatsRequest{ID: "m1"},
		shmowner.SetWorkloadPinnedType: shmowner.SetWorkloadPinnedRequest{ID: "w1", Pinned: true},
	}
	// Bodies the FSM cannot decode, for each type: a field of the wrong JSON type.
	wrongType := map[shmowner.MessageType]string{
		shmowner.RegisterNodeType:      `{"id":1}`,
		shmowner.RemoveNodeType:        `{"id":true}`,
		shmowner.SetNodeStateType:      `{"state":3}`,
		shmowner.ReportLoadType:        `{"load":{"cpu":"high"}}`,
		shmowner.UpsertWorkloadType:    `{"workload":{"pids":"1,2"}}`,
		shmowner.RemoveWorkloadType:    `{"id":[]}`,
		shmowner.SetWorkloadStateType:  `{"exit_status":"0"}`,
		shmowner.SetSegmentsType:       `{"segments":[{"shmid":-1,"key":-1}]}`,
		shmowner.PlanMigrationType:     `{"epoch":-1}`,
		shmowner.SetMigrationPhaseType: `{"bytes":1.5}`,
		shmowner.ProbeType:             `{"seq":"x"}`,
		shmowner.SetMigrationStatsType: `{"stats":{"rounds":"2"}}`,
		shmowner.SetWorkloadPinnedType: `{"pinned":"yes"}`,
	}
	for typ, body := range valid {
		t.Run(typ.String(), func(t *testing.T) {
			b, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			cases := []struct {
				name string
				body string
				ok   bool
			}{
				{"valid", string(b), true},
				{"empty object", `{}`, true},
				{"unknown field", `{"from_a_newer_node":1}`, true}, // the FSM ignores them too
				{"wrong type", wrongType[typ], false},
				{"trailing data", string(b) + ` {}`, false},
				{"not an object", `"x"`, false},
				{"truncated", string(b[:len(b)-1]), false},
			}
			for _, c := range cases {
				err := checkDecodes(typ, []byte(c.body))
				if c.ok != (err == nil) || (err != nil && !errors.Is(err, api.ErrBadRequest)) {
					t.Errorf("%s: checkDecodes(%s) = %v, want ok=%v (api.ErrBadRequest otherwise)", c.name, c.body, err, c.ok)
				}
				if typ == shmowner.ProbeType {
					continue // the FSM skips probes without decoding them
				}
				if panicked := fsmPanics(typ, []byte(c.body)); panicked == (err == nil) {
					t.Errorf("%s: checkDecodes(%s) = %v but the FSM panics: %v", c.name, c.body, err, panicked)
				}
			}
		})
	}
}

// fsmPanics reports whether applying the entry to a fresh FSM panics.
func fsmPanics(typ shmowner.MessageType, body []byte) (panicked bool) {
	defer func() { panicked = recover() != nil }()
	shmowner.NewFSM().Apply(&raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: append([]byte{byte(typ)}, body...)})
	return false
}
