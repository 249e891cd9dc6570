// Package retention decides which old records the leader prunes from the ownership
// table: migrations that ended and workloads that exited, beyond a count or an age.
// It only chooses; the choice goes through the log as one Prune entry, so every node
// removes the same records.
package retention

import (
	"cmp"
	"slices"
	"time"

	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// Policy says how much history the table keeps. A zero count keeps none beyond the age;
// a zero age keeps records of any age within the count.
type Policy struct {
	Migrations int           // ended migrations kept, newest first
	Exited     int           // exited workloads kept, newest first
	MaxAge     time.Duration // records that ended longer ago than this go, whatever the count
	// Batch caps the ids of one Prune entry, so that one entry stays small.
	Batch int
}

// DefaultPolicy keeps a week of history, at most 1000 migrations and 1000 exited
// workloads.
func DefaultPolicy() Policy {
	return Policy{Migrations: 1000, Exited: 1000, MaxAge: 7 * 24 * time.Hour, Batch: 500}
}

// Plan returns the records of t that p says go, oldest first, at most p.Batch of them
// (more are left for the next call), and false if there are none. A migration whose
// source or target is down is kept whatever its age: that node may come back with a
// journal of it and needs its outcome to know whether to resume its copy or drop it.
func Plan(t *shmowner.Table, p Policy, now time.Time) (shmowner.PruneRequest, bool) {
	var req shmowner.PruneRequest
	up := func(id string) bool {
		n, ok := t.Node(id)
		return !ok || n.State != record.NodeDown // a node that left keeps no journal here
	}
	var ended []record.Migration
	for _, m := range t.Migrations() {
		if m.Phase.Terminal() && up(m.Source) && up(m.Target) {
			ended = append(ended, m)
		}
	}
	for _, m := range expired(ended, p.Migrations, p.MaxAge, now, func(m record.Migration) int64 { return m.UpdatedAt }) {
		req.Migrations = append(req.Migrations, m.ID)
	}
	var exited []record.Workload
	for _, w := range t.Workloads() {
		if w.State == record.WorkloadExited {
			if _, busy := t.ActiveMigration(w.ID); !busy {
				exited = append(exited, w)
			}
		}
	}
	for _, w := range expired(exited, p.Exited, p.MaxAge, now, func(w record.Workload) int64 { return w.ExitedAt }) {
		req.Workloads = append(req.Workloads, w.ID)
	}
	if p.Batch > 0 {
		req.Migrations = req.Migrations[:min(len(req.Migrations), p.Batch)]
		req.Workloads = req.Workloads[:min(len(req.Workloads), p.Batch-len(req.Migrations))]
	}
	return req, len(req.Migrations)+len(req.Workloads) > 0
}

// expired returns, oldest first, the records beyond the newest keep and those older
// than maxAge. A record without a time (0) is the oldest but is never too old.
func expired[R any](rs []R, keep int, maxAge time.Duration, now time.Time, at func(R) int64) []R {
	slices.SortStableFunc(rs, func(a, b R) int { return cmp.Compare(at(a), at(b)) })
	n := max(len(rs)-max(keep, 0), 0) // the oldest n go by count
	out := rs[:n:n]
	if maxAge > 0 {
		cutoff := now.Add(-maxAge).UnixNano()
		for _, r := range rs[n:] {
			if t := at(r); t != 0 && t < cutoff {
				out = append(out, r)
			}
		}
	}
	return out
}
