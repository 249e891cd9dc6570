// Package shmowner owns the replicated ownership table: a hashicorp/raft FSM, stored in
// raft-boltdb/v2 (bbolt), whose tables are nodes (addresses, state, last load report),
// workloads, SysV segments (which node holds each segment's owner copy, the replicas, the
// epoch that fences every ownership change) and migrations.
//
// Every change is a log entry: a type byte followed by a JSON body (see Encode and the
// MessageType constants, each registered once with its request type and apply method;
// CheckCommand tells whether an entry would decode). Apply is deterministic: it reads no clock (times travel in the
// commands), does no I/O and never lets map iteration order reach its output. A rule
// violation (stale epoch, unknown node, migration already in flight, ...) is the
// ApplyFuture's response, an error wrapping one of the sentinels of package record; an entry
// that cannot be decoded panics, so that replicas never diverge. Keys are cluster-wide ids,
// never a node-local shmid or pid: a segment is named by SegmentID{Group, Shmid}, where
// Group is the id of the IPC namespace the segment lives in.
//
// Store wires the FSM to a real raft with bbolt log/stable stores and file snapshots;
// RaftConfig is the recommended raft configuration (see its comment on log compaction).
package shmowner
