// Package shmownertest builds shmowner tables for tests the way raft does: each request
// (a shmowner.RegisterNodeRequest, PlanMigrationRequest, ...) becomes a log entry, its
// message type found from its Go type, and a real FSM applies it. A table built so
// holds only what the FSM's rules allow.
package shmownertest

import (
	"testing"

	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/shmowner"
)

// Table returns the table a new FSM holds once it applied reqs in order. A rule
// violation fails the test.
func Table(tb testing.TB, reqs ...any) *shmowner.Table {
	tb.Helper()
	f := shmowner.NewFSM()
	MustApply(tb, f, reqs...)
	return f.Table()
}

// MustApply applies reqs to f in order; a rule violation fails the test.
func MustApply(tb testing.TB, f *shmowner.FSM, reqs ...any) {
	tb.Helper()
	for i, req := range reqs {
		if err := Apply(tb, f, req); err != nil {
			tb.Fatalf("request %d (%T %+v): %v", i, req, req, err)
		}
	}
}

// Apply applies req to f as the next log entry and returns the rule violation the FSM
// answered, nil if none. An entry the FSM cannot decode panics, as it would under raft.
func Apply(tb testing.TB, f *shmowner.FSM, req any) error {
	tb.Helper()
	l := &raft.Log{Index: f.AppliedIndex() + 1, Term: 1, Type: raft.LogCommand, Data: Entry(tb, req)}
	switch resp := f.Apply(l).(type) {
	case nil:
		return nil
	case error:
		return resp
	default:
		tb.Fatalf("apply %T: response %T %v is neither nil nor an error", req, resp, resp)
		return nil
	}
}

// Entry returns the log entry of req: its message type byte and its JSON body. A value
// of no registered request type fails the test.
func Entry(tb testing.TB, req any) []byte {
	tb.Helper()
	b, err := shmowner.Encode(Type(tb, req), req)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// Type returns the message type of req; a value of no registered request type fails
// the test.
func Type(tb testing.TB, req any) shmowner.MessageType {
	tb.Helper()
	t, ok := shmowner.TypeOf(req)
	if !ok {
		tb.Fatalf("%T is not a registered shmowner request type", req)
	}
	return t
}
