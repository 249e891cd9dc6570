package shmowner_test

import (
	"encoding/json"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

// FuzzCommand: the FSM panics, by design, on a log entry it cannot decode, which would
// stop every node. Entries come from typed requests (Store.Apply encodes them) or,
// forwarded by another node, from bytes: those enter the log only if they are JSON and
// pass CheckCommand (cluster.ApplyForwarded). Whatever passes must apply, to an empty
// table and to a busy one, with an answer (nil or a rule violation) and no panic.
func FuzzCommand(f *testing.F) {
	for _, req := range scenario() {
		b := shmownertest.Entry(f, req)
		f.Add(b[0], b[1:])
	}
	f.Add(byte(0), []byte(`{}`))
	f.Add(byte(200), []byte(`{"id":"x"}`))
	f.Add(byte(1), []byte(`{"id":"n1","raft_addr":"","api_addr":"a:1","extra":[1,2]}`))
	busy := func(t *testing.T) *shmowner.FSM {
		fsm := shmowner.NewFSM()
		shmownertest.MustApply(t, fsm, scenario()...)
		return fsm
	}
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		mt := shmowner.MessageType(typ)
		if mt == 0 || len(body) == 0 || !json.Valid(body) || shmowner.CheckCommand(mt, body) != nil {
			return // refused before the log
		}
		entry := append([]byte{typ}, body...)
		for _, fsm := range []*shmowner.FSM{shmowner.NewFSM(), busy(t)} {
			resp := fsm.Apply(&raft.Log{Index: fsm.AppliedIndex() + 1, Term: 1, Type: raft.LogCommand, Data: entry})
			if _, isErr := resp.(error); resp != nil && !isErr {
				t.Fatalf("type %d body %q: answer %T %v, neither nil nor an error", typ, body, resp, resp)
			}
		}
	})
}
