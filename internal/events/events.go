// Package events turns the table's changes into a stream of api.Events: Diff compares
// two tables, Log keeps the newest events for the API to list and follow, and
// Log.Record feeds it from the FSM, one applied entry at a time.
package events

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// Diff returns what changed from prev to cur, without At and Seq: nodes first, then
// migrations, workloads and segments, each sorted by id. A nil prev (or cur) gives no
// events: the first table is the baseline.
func Diff(prev, cur *shmowner.Table) []api.Event {
	if prev == nil || cur == nil {
		return nil
	}
	var out []api.Event
	out = append(out, diffNodes(prev, cur)...)
	out = append(out, diffMigrations(prev, cur)...)
	out = append(out, diffWorkloads(prev, cur)...)
	return append(out, diffSegments(prev, cur)...)
}

func diffNodes(prev, cur *shmowner.Table) []api.Event {
	var out []api.Event
	ev := func(n record.Node, change string) api.Event {
		return api.Event{Kind: api.EventKindNode, ID: n.ID, Node: n.ID, Change: change}
	}
	for _, n := range cur.Nodes() {
		p, ok := prev.Node(n.ID)
		switch {
		case !ok:
			out = append(out, ev(n, "joined"))
			if n.State != record.NodeActive {
				out = append(out, ev(n, string(n.State)))
			}
		case p.State != n.State:
			out = append(out, ev(n, string(n.State)))
		}
	}
	for _, p := range prev.Nodes() {
		if _, ok := cur.Node(p.ID); !ok && p.State != record.NodeLeft {
			out = append(out, ev(p, string(record.NodeLeft)))
		}
	}
	slices.SortStableFunc(out, byID)
	return out
}

func diffMigrations(prev, cur *shmowner.Table) []api.Event {
	var out []api.Event
	for _, m := range cur.Migrations() {
		p, ok := prev.Migration(m.ID)
		if ok && p.Phase == m.Phase {
			continue
		}
		ev := api.Event{Kind: api.EventKindMigration, ID: m.ID, Name: workloadName(cur, prev, m.Workload),
			Change: string(m.Phase), Node: m.Source, From: m.Source, To: m.Target}
		var detail []string
		if !ok { // a new migration: say what it moves and why
			if len(m.Members) > 1 {
				names := make([]string, len(m.Members))
				for i, id := range m.Members {
					names[i] = workloadName(cur, prev, id)
				}
				detail = append(detail, "members "+strings.Join(names, ","))
			}
			if m.Reason != "" {
				detail = append(detail, m.Reason)
			}
		}
		if m.Phase == record.PhaseAborted && m.Error != "" {
			detail = append(detail, m.Error)
		}
		ev.Detail = strings.Join(detail, "; ")
		out = append(out, ev)
	}
	return out
}

// workloadName is the name of workload id in cur, else in prev, else the id.
func workloadName(cur, prev *shmowner.Table, id string) string {
	for _, t := range []*shmowner.Table{cur, prev} {
		if w, ok := t.Workload(id); ok && w.Name != "" {
			return w.Name
		}
	}
	return id
}

func diffWorkloads(prev, cur *shmowner.Table) []api.Event {
	var out []api.Event
	ev := func(w record.Workload, change string) api.Event {
		return api.Event{Kind: api.EventKindWorkload, ID: w.ID, Name: w.Name, Node: w.Node, Change: change}
	}
	exited := func(w record.Workload) api.Event {
		e := ev(w, "exited")
		e.Detail = fmt.Sprintf("status %d", w.ExitStatus)
		return e
	}
	for _, w := range cur.Workloads() {
		p, ok := prev.Workload(w.ID)
		if !ok {
			out = append(out, ev(w, "started"))
			if w.State == record.WorkloadExited {
				out = append(out, exited(w))
			}
			continue
		}
		if p.Node != w.Node {
			e := ev(w, "moved")
			e.From, e.To = p.Node, w.Node
			out = append(out, e)
		}
		if p.State != w.State {
			switch w.State {
			case record.WorkloadExited:
				out = append(out, exited(w))
			case record.WorkloadMigrating:
				out = append(out, ev(w, "migrating"))
			case record.WorkloadRunning:
				if p.Node == w.Node { // back from a migration that did not move it
					out = append(out, ev(w, "running"))
				}
			}
		}
	}
	for _, p := range prev.Workloads() {
		if _, ok := cur.Workload(p.ID); !ok {
			out = append(out, ev(p, "removed"))
		}
	}
	slices.SortStableFunc(out, byID)
	return out
}

func diffSegments(prev, cur *shmowner.Table) []api.Event {
	var out []api.Event
	ev := func(s record.Segment, change string) api.Event {
		return api.Event{Kind: api.EventKindSegment, ID: s.ID().String(), Node: s.Owner, Change: change}
	}
	for _, s := range cur.Segments() {
		p, ok := prev.Segment(s.ID())
		switch {
		case !ok:
			e := ev(s, "created")
			e.Detail = fmt.Sprintf("%d bytes", s.Size)
			out = append(out, e)
		case p.Owner != s.Owner:
			e := ev(s, "owner")
			e.From, e.To = p.Owner, s.Owner
			out = append(out, e)
		}
	}
	for _, p := range prev.Segments() {
		if _, ok := cur.Segment(p.ID()); !ok {
			out = append(out, ev(p, "removed"))
		}
	}
	// Sort by segment id (group, then shmid as a number), not by its string.
	slices.SortStableFunc(out, func(a, b api.Event) int {
		ia, _ := record.ParseSegmentID(a.ID)
		ib, _ := record.ParseSegmentID(b.ID)
		return record.CompareSegmentIDs(ia, ib)
	})
	return out
}

func byID(a, b api.Event) int { return strings.Compare(a.ID, b.ID) }

// Log keeps the newest events, numbered from 1, for listing and following. It is safe
// for concurrent use.
type Log struct {
	mu      sync.Mutex
	buf     []api.Event // a ring of at most cap(buf) events
	start   int         // index in buf of the oldest event
	last    uint64      // Seq of the newest event, 0 if none yet
	changed chan struct{}
	done    chan struct{} // closed by Close
	once    sync.Once
}

// NewLog returns a Log that keeps the newest n events (n < 1: 1).
func NewLog(n int) *Log {
	return &Log{buf: make([]api.Event, 0, max(n, 1)), changed: make(chan struct{}), done: make(chan struct{})}
}

// Append numbers evs and adds them, dropping the oldest beyond the Log's size, and wakes
// the followers.
func (l *Log) Append(evs ...api.Event) {
	if len(evs) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range evs {
		l.last++
		ev.Seq = l.last
		if len(l.buf) < cap(l.buf) {
			l.buf = append(l.buf, ev)
			continue
		}
		l.buf[l.start] = ev
		l.start = (l.start + 1) % len(l.buf)
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// Since returns the events kept whose Seq is greater than seq, oldest first. Events
// dropped from the ring are missing: a caller sees the gap in Seq.
func (l *Log) Since(seq uint64) []api.Event {
	evs, _ := l.Follow(seq)
	return evs
}

// Follow is Since, with a channel closed at the next Append: a follower that found
// nothing new waits on it, then asks again. Taken together, under one lock, so no
// event falls between the two.
func (l *Log) Follow(seq uint64) ([]api.Event, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []api.Event
	for i := range l.buf {
		if ev := l.buf[(l.start+i)%len(l.buf)]; ev.Seq > seq {
			out = append(out, ev)
		}
	}
	return out, l.changed
}

// Close tells the followers to stop following (Done): the daemon is going away.
// Appending and listing still work.
func (l *Log) Close() { l.once.Do(func() { close(l.done) }) }

// Done is closed by Close.
func (l *Log) Done() <-chan struct{} { return l.done }

// Record appends to l what changed from prev to cur, stamped with at: the shape of
// shmowner.StoreConfig.OnChange, so a node's log gets every entry's changes as its FSM
// applies them (and, after a restart, those of the entries it replays). It returns
// the events appended.
func (l *Log) Record(prev, cur *shmowner.Table, at time.Time) []api.Event {
	evs := Diff(prev, cur)
	for i := range evs {
		evs[i].At = at.UnixNano()
	}
	l.Append(evs...)
	return evs
}
