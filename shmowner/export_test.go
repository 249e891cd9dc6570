package shmowner

import "github.com/migshm/migshm/shmowner/record"

// SetReplicas plants replicas on a segment of f's table: no command sets them yet (the
// DSM milestone will), and the tests need some to show that they are kept or cleared.
func SetReplicas(f *FSM, id record.SegmentID, replicas []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.t.segments[id]
	s.Replicas = replicas
	f.t.segments[id] = s
}

// PutWorkload writes a workload record straight into t, to show that a copy of a table
// shares nothing with the FSM's.
func PutWorkload(t *Table, id string, w record.Workload) { t.workloads[id] = w }
