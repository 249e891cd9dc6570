// Package record holds the records of the replicated ownership table (nodes, workloads,
// SysV segments, migrations, their states and phases) and the sentinels of the table's
// rules with their wire codes. It imports no Raft: the API, the CLI and the daemon's
// parts share these types without linking the store (package shmowner) that keeps them.
package record
