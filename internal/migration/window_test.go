package migration

import (
	"testing"
	"time"

	"github.com/migshm/migshm/migrate"
)

// TestStepsAddUp: marks time steps back to back, so they add up to the span from start.
func TestStepsAddUp(t *testing.T) {
	var s steps
	start := time.Now().Add(-50 * time.Millisecond)
	s.start(start)
	s.mark("a")
	time.Sleep(2 * time.Millisecond)
	s.markParts("b", nil)
	span := time.Since(start)
	if len(s.list) != 2 || s.list[0].Step != "a" || s.list[1].Step != "b" {
		t.Fatalf("steps %+v", s.list)
	}
	if s.list[0].NS < int64(50*time.Millisecond) || s.list[1].NS < int64(2*time.Millisecond) {
		t.Errorf("steps %+v: a began 50ms before the first mark, b slept 2ms", s.list)
	}
	if got := s.total(); got > span || got < span-time.Millisecond {
		t.Errorf("steps add up to %v, the span is %v", got, span)
	}
}

// TestDumpParts: CRIU's figures divide the dump step; what CRIU does not cover is the
// time after it, and a CRIU without figures gives no parts.
func TestDumpParts(t *testing.T) {
	d := &migrate.DumpResult{Frozen: 300 * time.Millisecond, Memdump: 100 * time.Millisecond, Memwrite: 50 * time.Millisecond}
	p := dumpParts(d, 340*time.Millisecond)
	want := []time.Duration{100 * time.Millisecond, 50 * time.Millisecond, 150 * time.Millisecond, 40 * time.Millisecond}
	if len(p) != len(want) {
		t.Fatalf("parts %+v", p)
	}
	for i, w := range want {
		if time.Duration(p[i].NS) != w {
			t.Errorf("part %q = %v, want %v", p[i].Step, time.Duration(p[i].NS), w)
		}
	}
	if p := dumpParts(&migrate.DumpResult{}, time.Second); p != nil {
		t.Errorf("no CRIU figures: parts %+v", p)
	}
}
