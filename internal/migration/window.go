package migration

import (
	"time"

	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/shmowner/record"
)

// steps times a sequence of steps back to back: each mark ends the step begun at the
// previous one, so the steps add up to the whole span (the frozen window on the
// source, the restore on the target).
type steps struct {
	last time.Time
	list []record.WindowStep
}

// start begins the first step at at.
func (s *steps) start(at time.Time) {
	s.last, s.list = at, nil
}

// mark ends the current step, named step, now.
func (s *steps) mark(step string) { s.markParts(step, nil) }

// markParts is mark with the parts the tool doing the step reported.
func (s *steps) markParts(step string, parts []record.WindowStep) {
	now := time.Now()
	s.list = append(s.list, record.WindowStep{Step: step, NS: int64(now.Sub(s.last)), Parts: parts})
	s.last = now
}

// total is the sum of the steps so far.
func (s *steps) total() time.Duration {
	var d time.Duration
	for _, st := range s.list {
		d += time.Duration(st.NS)
	}
	return d
}

// dumpParts divides the dump step (frozenFor: from the freeze to Dump's return) by
// CRIU's own figures.
func dumpParts(d *migrate.DumpResult, frozenFor time.Duration) []record.WindowStep {
	if d.Frozen <= 0 {
		return nil
	}
	rest := d.Frozen - d.Memdump - d.Memwrite
	return []record.WindowStep{
		{Step: "criu: collect memory (its figure)", NS: int64(d.Memdump)},
		{Step: "criu: write memory (its figure)", NS: int64(d.Memwrite)},
		{Step: "criu: the rest while frozen (state, shm)", NS: int64(max(rest, 0))},
		{Step: "after criu: exit, image sizes", NS: int64(max(frozenFor-d.Frozen, 0))},
	}
}
