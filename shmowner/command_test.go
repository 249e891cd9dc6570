package shmowner

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// applyPanic applies the entry to a fresh FSM and returns the FSM's response and the
// panic value (nil if it did not panic).
func applyPanic(data []byte) (resp, panicked any) {
	defer func() { panicked = recover() }()
	return NewFSM().Apply(&raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: data}), nil
}

// wrongKindBodies returns, for each top-level field of request type rt, a body whose
// value for that field has a JSON type the field cannot take.
func wrongKindBodies(rt reflect.Type) map[string]string {
	out := map[string]string{}
	for f := range rt.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		k := f.Type.Kind()
		if k == reflect.Pointer {
			k = f.Type.Elem().Kind()
		}
		switch k {
		case reflect.Interface:
			continue // takes anything
		case reflect.String:
			out[name] = fmt.Sprintf(`{%q:1}`, name)
		default:
			out[name] = fmt.Sprintf(`{%q:"x"}`, name)
		}
	}
	return out
}

// TestCheckCommand covers every registered message type, from the registry itself:
// a body that CheckCommand accepts never stops the FSM, and one it refuses is exactly
// one Apply would panic on (or skip, for a no-op). Unknown types are refused; Apply
// panics on them unless they are ignorable, and then skips them.
func TestCheckCommand(t *testing.T) {
	for _, typ := range slices.Sorted(maps.Keys(commands)) {
		c := commands[typ]
		t.Run(typ.String(), func(t *testing.T) {
			if got, ok := TypeOf(reflect.New(c.req).Elem().Interface()); !ok || got != typ {
				t.Errorf("TypeOf(%s{}) = %v %v", c.req, got, ok)
			}
			if got, ok := TypeOf(reflect.New(c.req).Interface()); !ok || got != typ {
				t.Errorf("TypeOf(&%s{}) = %v %v", c.req, got, ok)
			}
			zero, err := json.Marshal(reflect.New(c.req).Interface())
			if err != nil {
				t.Fatal(err)
			}
			for _, body := range []string{string(zero), `{}`, `{"from_a_newer_node":1}`} {
				if err := CheckCommand(typ, []byte(body)); err != nil {
					t.Errorf("CheckCommand(%s) = %v, want nil", body, err)
				}
				resp, p := applyPanic(append([]byte{byte(typ)}, body...))
				if p != nil {
					t.Errorf("Apply(%s) panicked: %v", body, p)
				}
				if _, isErr := resp.(error); resp != nil && !isErr {
					t.Errorf("Apply(%s) = %T %v, want nil or an error", body, resp, resp)
				}
			}

			bad := map[string]string{
				"not json":      `{not json`,
				"not an object": `"x"`,
				"an array":      `[]`,
				"trailing data": string(zero) + ` {}`,
				"truncated":     string(zero[:len(zero)-1]),
			}
			for field, body := range wrongKindBodies(c.req) {
				bad["wrong type for "+field] = body
			}
			if len(bad) <= 5 {
				t.Fatalf("%s has no field to get wrong", c.req)
			}
			for _, name := range slices.Sorted(maps.Keys(bad)) {
				body := bad[name]
				if err := CheckCommand(typ, []byte(body)); err == nil {
					t.Errorf("%s: CheckCommand(%s) = nil, want an error", name, body)
				}
				resp, p := applyPanic(append([]byte{byte(typ)}, body...))
				switch {
				case c.apply == nil && (p != nil || resp != nil):
					t.Errorf("%s: Apply of a no-op = %v, panic %v; want it skipped", name, resp, p)
				case c.apply != nil && !strings.Contains(fmt.Sprint(p), "decode "+typ.String()):
					t.Errorf("%s: Apply(%s) panicked with %v, want a decode panic", name, body, p)
				}
			}
		})
	}

	t.Run("unknown types", func(t *testing.T) {
		for i := range 256 {
			typ := MessageType(i)
			if _, known := commands[typ]; known {
				continue
			}
			if err := CheckCommand(typ, []byte(`{}`)); err == nil {
				t.Errorf("CheckCommand of unknown type %d = nil", i)
			}
			resp, p := applyPanic([]byte{byte(typ), '{', '}'})
			if typ.ignorable() {
				if p != nil || resp != nil {
					t.Errorf("unknown ignorable type %d: Apply = %v, panic %v; want it skipped", i, resp, p)
				}
			} else if !strings.Contains(fmt.Sprint(p), fmt.Sprintf("unknown message type %d", i)) {
				t.Errorf("unknown type %d: Apply panicked with %v, want an unknown type panic", i, p)
			}
		}
		if typ, ok := TypeOf(struct{ ID string }{}); ok {
			t.Errorf("TypeOf of a type that is no request = %v", typ)
		}
		if typ, ok := TypeOf(nil); ok {
			t.Errorf("TypeOf(nil) = %v", typ)
		}
	})
}
