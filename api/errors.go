package api

import (
	"errors"
	"net/http"

	"github.com/migshm/migshm/shmowner/record"
)

// Sentinels of the API. Table rule violations use record's sentinels; both travel the
// wire as a code (see Code) and come back as errors that errors.Is matches.
var (
	// ErrBadRequest: the request is malformed or names something that cannot work.
	ErrBadRequest = errors.New("bad request")
	// ErrNoLeader: the cluster has no leader (no quorum) within the request's deadline.
	ErrNoLeader = errors.New("no raft leader")
	// ErrForbidden: the caller may not use this API (the local socket is root only; a
	// peer may only join under its certificate's name).
	ErrForbidden = errors.New("forbidden")
	// ErrNotRunning: the workload has exited; it cannot be stopped or moved.
	ErrNotRunning = errors.New("workload not running")
	// ErrStillRunning: the workload runs; stop it first.
	ErrStillRunning = errors.New("workload still running")
	// ErrUnreachable: the node that must serve the request does not answer.
	ErrUnreachable = errors.New("node unreachable")
	// ErrNotReady: the daemon is starting and has not joined the cluster yet.
	ErrNotReady = errors.New("daemon not ready")
	// ErrNotMovable: a check found why the workload cannot move to that node; nothing
	// was changed.
	ErrNotMovable = errors.New("workload cannot be moved")
	// ErrMigrationFailed: a migration was aborted; the workload runs on its source node.
	ErrMigrationFailed = errors.New("migration failed")
)

// codes maps every sentinel, the API's and the table's, to a stable wire code and an
// HTTP status, so that peers and the CLI carry errors across the wire and map them back
// (errors.Is keeps working).
var codes = []struct {
	code   string
	err    error
	status int
}{
	{"bad_request", ErrBadRequest, http.StatusBadRequest},
	{"no_leader", ErrNoLeader, http.StatusServiceUnavailable},
	{"forbidden", ErrForbidden, http.StatusForbidden},
	{"not_running", ErrNotRunning, http.StatusConflict},
	{"still_running", ErrStillRunning, http.StatusConflict},
	{"unreachable", ErrUnreachable, http.StatusBadGateway},
	{"not_ready", ErrNotReady, http.StatusServiceUnavailable},
	{"not_movable", ErrNotMovable, http.StatusConflict},
	{"migration_failed", ErrMigrationFailed, http.StatusBadGateway},

	{"not_leader", record.ErrNotLeader, http.StatusServiceUnavailable},
	{"unknown_node", record.ErrUnknownNode, http.StatusNotFound},
	{"unknown_workload", record.ErrUnknownWorkload, http.StatusNotFound},
	{"unknown_migration", record.ErrUnknownMigration, http.StatusNotFound},
	{"stale_epoch", record.ErrStaleEpoch, http.StatusConflict},
	{"migration_in_flight", record.ErrMigrationInFlight, http.StatusConflict},
	{"bad_transition", record.ErrBadTransition, http.StatusConflict},
	{"same_node", record.ErrSameNode, http.StatusConflict},
	{"node_not_active", record.ErrNodeNotActive, http.StatusConflict},
	{"not_owner", record.ErrNotOwner, http.StatusConflict},
	{"group_split", record.ErrGroupSplit, http.StatusConflict},
	{"exists", record.ErrExists, http.StatusConflict},
	{"address_taken", record.ErrAddressTaken, http.StatusConflict},
	{"invalid", record.ErrInvalid, http.StatusBadRequest},
}

// Code returns the wire code and HTTP status of err: the code of the sentinel it wraps,
// or "internal" (500) for an error that wraps none.
func Code(err error) (string, int) {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code, c.status
		}
	}
	return "internal", http.StatusInternalServerError
}

// Error is the JSON form of a failed call: the body of every error answer is
// {"error": Error}.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ErrorBody is the JSON body of an error answer.
type ErrorBody struct {
	Error Error `json:"error"`
}

// Err rebuilds an error received over the wire: its message is the original text (the
// sentinel's if it is empty) and errors.Is matches the sentinel its code names (none for
// an unknown code).
func (e Error) Err() error {
	for _, c := range codes {
		if c.code == e.Code {
			return &codedError{msg: e.Message, err: c.err}
		}
	}
	return errors.New(e.Message)
}

type codedError struct {
	msg string
	err error
}

func (e *codedError) Error() string {
	if e.msg == "" {
		return e.err.Error()
	}
	return e.msg
}
func (e *codedError) Unwrap() error { return e.err }
