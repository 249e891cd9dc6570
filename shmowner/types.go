package shmowner

import (
	"cmp"
	"slices"

	"github.com/migshm/migshm/shmowner/record"
)

// Table is the whole replicated state. A *Table returned by FSM.Table is a deep copy owned
// by the caller; its getters return copies too. Its JSON form is the versioned snapshot
// document.
type Table struct {
	nodes      map[string]record.Node
	workloads  map[string]record.Workload
	segments   map[record.SegmentID]record.Segment
	migrations map[string]record.Migration
	pruned     map[string]record.Pruned     // by source node
	revoked    map[string]record.Revocation // by serial
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{
		nodes:      map[string]record.Node{},
		workloads:  map[string]record.Workload{},
		segments:   map[record.SegmentID]record.Segment{},
		migrations: map[string]record.Migration{},
		pruned:     map[string]record.Pruned{},
		revoked:    map[string]record.Revocation{},
	}
}

// clone returns a deep copy of t.
func (t *Table) clone() *Table {
	c := NewTable()
	for k, v := range t.nodes {
		c.nodes[k] = v
	}
	for k, v := range t.workloads {
		c.workloads[k] = v.Clone()
	}
	for k, v := range t.segments {
		c.segments[k] = v.Clone()
	}
	for k, v := range t.migrations {
		c.migrations[k] = v.Clone()
	}
	for k, v := range t.pruned {
		c.pruned[k] = v.Clone()
	}
	for k, v := range t.revoked {
		c.revoked[k] = v
	}
	return c
}

// Nodes returns all nodes sorted by ID.
func (t *Table) Nodes() []record.Node {
	return sorted(t.nodes, func(n record.Node) record.Node { return n },
		func(a, b record.Node) int { return cmp.Compare(a.ID, b.ID) })
}

// Workloads returns all workloads sorted by ID.
func (t *Table) Workloads() []record.Workload {
	return sorted(t.workloads, record.Workload.Clone, func(a, b record.Workload) int { return cmp.Compare(a.ID, b.ID) })
}

// Segments returns all segments sorted by (Group, Shmid).
func (t *Table) Segments() []record.Segment {
	return sorted(t.segments, record.Segment.Clone,
		func(a, b record.Segment) int { return record.CompareSegmentIDs(a.ID(), b.ID()) })
}

// GroupSegments returns the segments of one IPC group sorted by Shmid.
func (t *Table) GroupSegments(group string) []record.Segment {
	var out []record.Segment
	for id, s := range t.segments {
		if id.Group == group {
			out = append(out, s.Clone())
		}
	}
	slices.SortFunc(out, func(a, b record.Segment) int { return cmp.Compare(a.Shmid, b.Shmid) })
	return out
}

// GroupEpoch returns the current epoch of an IPC group: the highest epoch of its
// segments, 0 if it has none. PlanMigration must carry it.
func (t *Table) GroupEpoch(group string) uint64 {
	var e uint64
	for id, s := range t.segments {
		if id.Group == group {
			e = max(e, s.Epoch)
		}
	}
	return e
}

// Migrations returns all migrations sorted by ID.
func (t *Table) Migrations() []record.Migration {
	return sorted(t.migrations, record.Migration.Clone, func(a, b record.Migration) int { return cmp.Compare(a.ID, b.ID) })
}

// Pruned returns, per source node sorted by node, the totals of the migrations
// retention removed.
func (t *Table) Pruned() []record.Pruned {
	return sorted(t.pruned, record.Pruned.Clone, func(a, b record.Pruned) int { return cmp.Compare(a.Node, b.Node) })
}

// Revocations returns the denylist sorted by serial.
func (t *Table) Revocations() []record.Revocation {
	return sorted(t.revoked, func(r record.Revocation) record.Revocation { return r },
		func(a, b record.Revocation) int { return cmp.Compare(a.Serial, b.Serial) })
}

// Revoked reports whether the certificate with serial (lower-case hex) is revoked.
func (t *Table) Revoked(serial string) bool {
	_, ok := t.revoked[serial]
	return ok
}

// sorted returns copies (clone) of the values of m, in the order of compare: the
// getters' results never depend on map order.
func sorted[K comparable, V any](m map[K]V, clone func(V) V, compare func(a, b V) int) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, clone(v))
	}
	slices.SortFunc(out, compare)
	return out
}

// Node returns the node with the given id.
func (t *Table) Node(id string) (record.Node, bool) {
	n, ok := t.nodes[id]
	return n, ok
}

// Workload returns the workload with the given id.
func (t *Table) Workload(id string) (record.Workload, bool) {
	w, ok := t.workloads[id]
	return w.Clone(), ok
}

// Segment returns the segment with the given id.
func (t *Table) Segment(id record.SegmentID) (record.Segment, bool) {
	s, ok := t.segments[id]
	return s.Clone(), ok
}

// Migration returns the migration with the given id.
func (t *Table) Migration(id string) (record.Migration, bool) {
	m, ok := t.migrations[id]
	return m.Clone(), ok
}

// ActiveMigration returns the migration of the workload that is neither done nor
// aborted, if any. There is at most one.
func (t *Table) ActiveMigration(workload string) (record.Migration, bool) {
	for _, m := range t.migrations {
		if !m.Phase.Terminal() && m.MovesWorkload(workload) {
			return m.Clone(), true
		}
	}
	return record.Migration{}, false
}

// groupMigration returns the migration in flight that moves members of group, if any.
func (t *Table) groupMigration(group string) (record.Migration, bool) {
	for _, m := range t.migrations {
		if m.Phase.Terminal() {
			continue
		}
		if w, ok := t.workloads[m.Workload]; ok && w.Group == group {
			return m.Clone(), true
		}
	}
	return record.Migration{}, false
}
