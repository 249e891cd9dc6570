package record

import "errors"

// Sentinels. Apply wraps them with context (errors.Is works on the ApplyFuture's
// response); Store translates raft's leadership errors into ErrNotLeader.
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
	// ErrExists: the command would create a record whose id is already taken.
	ErrExists = errors.New("already exists")
	// ErrInvalid: the command is well formed but its content is not (empty id, unknown state).
	ErrInvalid = errors.New("invalid command")
)

// codes maps every sentinel to a stable wire code, so that peers and the CLI can carry
// rule violations across the wire and map them back (errors.Is keeps working).
var codes = []struct {
	code string
	err  error
}{
	{"not_leader", ErrNotLeader},
	{"unknown_node", ErrUnknownNode},
	{"unknown_workload", ErrUnknownWorkload},
	{"unknown_migration", ErrUnknownMigration},
	{"stale_epoch", ErrStaleEpoch},
	{"migration_in_flight", ErrMigrationInFlight},
	{"bad_transition", ErrBadTransition},
	{"same_node", ErrSameNode},
	{"node_not_active", ErrNodeNotActive},
	{"not_owner", ErrNotOwner},
	{"exists", ErrExists},
	{"invalid", ErrInvalid},
}

// ErrorCode returns the wire code of the sentinel err wraps, or "" if none.
func ErrorCode(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ""
}

// ErrorFromCode rebuilds an error received over the wire: msg is the original text and
// the result wraps the sentinel named by code (or none for an unknown code).
func ErrorFromCode(code, msg string) error {
	for _, c := range codes {
		if c.code == code {
			return &wireError{msg: msg, err: c.err}
		}
	}
	return errors.New(msg)
}

type wireError struct {
	msg string
	err error
}

func (e *wireError) Error() string {
	if e.msg == "" {
		return e.err.Error()
	}
	return e.msg
}

func (e *wireError) Unwrap() error { return e.err }
