package migration

import (
	"errors"
	"testing"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

func TestValidate(t *testing.T) {
	table := shmownertest.Table(t,
		shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: "n1:1", APIAddr: "n1:2"},
		shmowner.RegisterNodeRequest{ID: "n2", RaftAddr: "n2:1", APIAddr: "n2:2"})
	running := record.Workload{ID: "w1", Name: "db1", Node: "n1", State: record.WorkloadRunning}
	for _, tt := range []struct {
		name string
		w    func(w *record.Workload)
		req  api.MoveRequest
		want error // nil: valid
	}{
		{"valid", nil, api.MoveRequest{Target: "n2"}, nil},
		{"tuned", nil, api.MoveRequest{Target: "n2", MaxDowntimeMS: 50, MaxRounds: 100}, nil},
		{"no target", nil, api.MoveRequest{}, api.ErrBadRequest},
		{"unknown target", nil, api.MoveRequest{Target: "n9"}, record.ErrUnknownNode},
		{"exited", func(w *record.Workload) { w.State = record.WorkloadExited }, api.MoveRequest{Target: "n2"}, api.ErrNotRunning},
		{"same node", nil, api.MoveRequest{Target: "n1"}, record.ErrSameNode},
		{"pinned", func(w *record.Workload) { w.Pinned = true }, api.MoveRequest{Target: "n2"}, api.ErrNotMovable},
		{"negative downtime", nil, api.MoveRequest{Target: "n2", MaxDowntimeMS: -1}, api.ErrBadRequest},
		{"negative rounds", nil, api.MoveRequest{Target: "n2", MaxRounds: -1}, api.ErrBadRequest},
		{"too many rounds", nil, api.MoveRequest{Target: "n2", MaxRounds: 101}, api.ErrBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := running
			if tt.w != nil {
				tt.w(&w)
			}
			err := Validate(table, w, tt.req)
			if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("Validate = %v, want %v", err, tt.want)
			}
		})
	}
}
