package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/migration"
)

// FuzzRequestBodies feeds the strict decoder of every local and peer API request body
// what a client or a peer could send: it must not panic, must refuse with bad_request,
// and what it accepts must encode back to a body that decodes to the same request.
func FuzzRequestBodies(f *testing.F) {
	for _, s := range []string{
		`{"workload":"db1","target":"n2","max_downtime_ms":100,"max_freeze_ms":5000}`,
		`{"name":"c","argv":["/bin/sh","-c","x"],"ipc_group":"g","env":["A=1"]}`,
		`{"type":3,"body":{"id":"n1"}}`, `{"workload":"w1","target":"n2","files":[{"path":"/tmp/a","kind":"fd","size":3}]}`,
		`{"records":[{"id":"w1","group_dir":"/run/migshm/groups/g-1"}],"dir":"/d","token":"t"}`,
		`{"segments":[{"key":1,"shmid":2,"size":4096}]}`, `{}`, `[]`, `null`, `{"workload":"x"} {}`, `{"nope":1}`,
	} {
		f.Add([]byte(s))
	}
	targets := []func() any{
		func() any { return &api.MoveRequest{} }, func() any { return &api.RunRequest{} },
		func() any { return &api.CheckRequest{} }, func() any { return &api.StopRequest{} },
		func() any { return &api.ApplyRequest{} }, func() any { return &api.JoinRequest{} },
		func() any { return &migration.TargetCheckRequest{} }, func() any { return &migration.PrepareRequest{} },
		func() any { return &migration.RestoreRequest{} },
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, mk := range targets {
			v := mk()
			err := readJSON(httptest.NewRequest("POST", "/", bytes.NewReader(body)), v)
			if err != nil {
				if !errors.Is(err, api.ErrBadRequest) {
					t.Fatalf("%T from %q: %v, not a bad_request", v, body, err)
				}
				continue
			}
			again, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%T from %q does not encode: %v", v, body, err)
			}
			w := mk()
			if err := readJSON(httptest.NewRequest("POST", "/", bytes.NewReader(again)), w); err != nil {
				t.Fatalf("%T: %q, re-encoded from %q, is refused: %v", v, again, body, err)
			}
			// Compared encoded: a raw JSON field (ApplyRequest.Body) comes back compacted.
			if twice, _ := json.Marshal(w); !bytes.Equal(again, twice) {
				t.Fatalf("%T from %q: %s, after a round trip %s", v, body, again, twice)
			}
		}
	})
}
