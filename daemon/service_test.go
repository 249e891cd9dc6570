package daemon

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

func upsert(id, name, node string, initPid int, pids ...int) shmowner.UpsertWorkloadRequest {
	return shmowner.UpsertWorkloadRequest{Workload: record.Workload{
		ID: id, Name: name, Node: node, InitPid: initPid, Pids: append([]int{initPid}, pids...), Group: id}}
}

func TestResolve(t *testing.T) {
	table := shmownertest.Table(t,
		shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: "n1:7420", APIAddr: "n1:7421"},
		shmowner.RegisterNodeRequest{ID: "n2", RaftAddr: "n2:7420", APIAddr: "n2:7421"},
		upsert("wabc0001", "db1", "n1", 100, 101, 123),
		upsert("wabc0002", "web", "n1", 200, 201),
		upsert("wxyz0003", "123", "n2", 300),
	)
	tests := []struct {
		ref     string
		wantID  string
		wantErr error
	}{
		{"wabc0001", "wabc0001", nil},         // id
		{"web", "wabc0002", nil},              // name
		{"wxy", "wxyz0003", nil},              // unique id prefix of 3
		{"wabc000", "", api.ErrBadRequest},    // prefix of two
		{"wab", "", api.ErrBadRequest},        // prefix of two
		{"wa", "", record.ErrUnknownWorkload}, // too short for a prefix
		{"w", "", record.ErrUnknownWorkload},
		{"100", "wabc0001", nil}, // init pid
		{"201", "wabc0002", nil}, // member pid
		{"300", "wxyz0003", nil}, // init pid on another node
		{"123", "wxyz0003", nil}, // a name wins over a member pid
		{"999", "", record.ErrUnknownWorkload},
		{"0", "", record.ErrUnknownWorkload},
		{"-100", "", record.ErrUnknownWorkload},
		{"nope", "", record.ErrUnknownWorkload},
		{"db", "", record.ErrUnknownWorkload}, // names are not matched by prefix
		{"", "", api.ErrBadRequest},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.ref), func(t *testing.T) {
			w, err := resolve(table, tt.ref)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("resolve(%q) = %s, %v; want %v", tt.ref, w.ID, err, tt.wantErr)
				}
				if tt.ref != "" && !strings.Contains(err.Error(), tt.ref) {
					t.Errorf("error %q does not name %q", err, tt.ref)
				}
				return
			}
			if err != nil || w.ID != tt.wantID {
				t.Fatalf("resolve(%q) = %q, %v; want %q", tt.ref, w.ID, err, tt.wantID)
			}
		})
	}
}

// TestResolveStalePid: an exited workload keeps its pids in the table; the kernel reuses
// them. A host pid must name the live workload that has it now, not the dead one.
func TestResolveStalePid(t *testing.T) {
	table := shmownertest.Table(t,
		shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: "n1:7420", APIAddr: "n1:7421"},
		upsert("w0000001", "old", "n1", 400, 500),
		shmowner.SetWorkloadStateRequest{ID: "w0000001", State: record.WorkloadExited, ExitStatus: 0},
		upsert("w9990002", "new", "n1", 500),
	)
	w, err := resolve(table, "500")
	if err != nil {
		t.Fatal(err)
	}
	if w.ID != "w9990002" {
		t.Errorf("resolve(\"500\") = %s (%s, %s), the exited workload that once had pid 500, "+
			"not w9990002, the running one whose init is pid 500 now", w.ID, w.Name, w.State)
	}
}
