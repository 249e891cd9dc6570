package record

import "errors"

// Sentinels of the table's rules. Apply wraps them with context (errors.Is works on the
// ApplyFuture's response); Store translates raft's leadership errors into ErrNotLeader.
// Their wire codes are api's.
var (
	// ErrNotLeader: the write was sent to a node that is not (or no longer) the leader.
	ErrNotLeader = errors.New("not the raft leader")
	// ErrUnknownNode: the command names a node that is not registered.
	ErrUnknownNode = errors.New("unknown node")
	// ErrUnknownWorkload: the command names a workload that is not in the table.
	ErrUnknownWorkload = errors.New("unknown workload")
	// ErrUnknownMigration: the command names a migration that is not in the table.
	ErrUnknownMigration = errors.New("unknown migration")
	// ErrStaleEpoch: the command carries an epoch that is not the current one.
	ErrStaleEpoch = errors.New("stale epoch")
	// ErrMigrationInFlight: the workload already has a migration that is neither done nor aborted.
	ErrMigrationInFlight = errors.New("migration already in flight")
	// ErrBadTransition: a migration phase (or workload state) may not move that way.
	ErrBadTransition = errors.New("bad transition")
	// ErrSameNode: a migration's source and target are the same node.
	ErrSameNode = errors.New("source and target are the same node")
	// ErrNodeNotActive: the migration target is draining, down or has left.
	ErrNodeNotActive = errors.New("node not active")
	// ErrNotOwner: a node reported segments of a group whose owner copy it does not hold.
	ErrNotOwner = errors.New("not the owner")
	// ErrGroupSplit: a migration would leave members of its IPC group behind.
	ErrGroupSplit = errors.New("ipc group split")
	// ErrExists: the command would create a record whose id is already taken.
	ErrExists = errors.New("already exists")
	// ErrAddressTaken: a workload asks for an address another IPC group holds.
	ErrAddressTaken = errors.New("address taken")
	// ErrInvalid: the command is well formed but its content is not (empty id, unknown state).
	ErrInvalid = errors.New("invalid command")
)
