package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
)

func TestReadJSON(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		ok         bool
	}{
		{"ok", `{"node":"n2","force":true}`, true},
		{"ok with spaces", " {\"node\":\"n2\"}\n\n", true},
		{"unknown field", `{"node":"n2","forse":true}`, false},
		{"wrong type", `{"node":2}`, false},
		{"trailing object", `{"node":"n2"} {"node":"n3"}`, false},
		{"trailing garbage", `{"node":"n2"}x`, false},
		{"trailing brace", `{"node":"n2"}}`, false},
		{"trailing bracket", `{"node":"n2"}]`, false},
		{"empty", ``, false},
		{"not json", `node=n2`, false},
		{"array", `[]`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var req api.LeaveRequest
			err := readJSON(httptest.NewRequest("POST", "/v1/leave", strings.NewReader(tt.body)), &req)
			switch {
			case tt.ok && err != nil:
				t.Fatalf("readJSON(%q): %v", tt.body, err)
			case tt.ok && req.Node != "n2":
				t.Fatalf("readJSON(%q) = %+v", tt.body, req)
			case !tt.ok && !errors.Is(err, api.ErrBadRequest):
				t.Fatalf("readJSON(%q) = %v, want api.ErrBadRequest", tt.body, err)
			}
		})
	}
	// Every request type of the API decodes from what the client sends.
	for _, v := range []any{
		&api.RunRequest{Name: "db1", Group: "g1", Args: []string{"/bin/sleep", "1"}, Env: []string{"A=B"}, Dir: "/tmp"},
		&api.StopRequest{TimeoutMS: 1500}, &api.LeaveRequest{Node: "n3", Force: true},
		&api.ApplyRequest{Type: uint8(shmowner.ProbeType), Body: json.RawMessage(`{"seq":1}`)},
		&api.JoinRequest{ID: "n2", RaftAddr: "10.0.0.2:7420", APIAddr: "10.0.0.2:7421"},
	} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out := newOf(v)
		if err := readJSON(httptest.NewRequest("POST", "/", bytes.NewReader(b)), out); err != nil {
			t.Errorf("%T %s: %v", v, b, err)
		}
		if got, _ := json.Marshal(out); !bytes.Equal(got, b) {
			t.Errorf("%T: %s decoded as %s", v, b, got)
		}
	}
}

// newOf returns a new zero value of the type *v points to.
func newOf(v any) any {
	switch v.(type) {
	case *api.RunRequest:
		return &api.RunRequest{}
	case *api.StopRequest:
		return &api.StopRequest{}
	case *api.LeaveRequest:
		return &api.LeaveRequest{}
	case *api.ApplyRequest:
		return &api.ApplyRequest{}
	case *api.JoinRequest:
		return &api.JoinRequest{}
	}
	panic(fmt.Sprintf("newOf %T", v))
}
