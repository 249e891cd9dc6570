// Package shmowner owns the replicated ownership table: a hashicorp/raft FSM, stored in
// raft-boltdb/v2 (bbolt), whose tables are nodes, workloads, SysV segments (which node
// holds each segment's owner copy, the replicas, the epoch that fences every ownership
// change) and migrations. Apply is deterministic; keys are cluster-wide ids, never a
// node-local shmid or pid. It is built in the "Cluster" milestone.
package shmowner
