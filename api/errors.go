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

var apiCodes = []struct {
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
}

// Code returns the wire code and HTTP status of err: the code of the sentinel it wraps,
// or "internal" (500) for an error that wraps none.
func Code(err error) (string, int) {
	for _, c := range apiCodes {
		if errors.Is(err, c.err) {
			return c.code, c.status
		}
	}
	code := record.ErrorCode(err)
	switch code {
	case "":
		return "internal", http.StatusInternalServerError
	case "unknown_node", "unknown_workload", "unknown_migration":
		return code, http.StatusNotFound
	case "not_leader":
		return code, http.StatusServiceUnavailable
	case "invalid":
		return code, http.StatusBadRequest
	default:
		return code, http.StatusConflict
	}
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

// NewError returns the wire form of err.
func NewError(err error) Error {
	code, _ := Code(err)
	return Error{Code: code, Message: err.Error()}
}

// Err rebuilds an error received over the wire: its message is the original text and
// errors.Is matches the sentinel its code names (none for an unknown code).
func (e Error) Err() error {
	for _, c := range apiCodes {
		if c.code == e.Code {
			return &codedError{msg: e.Message, err: c.err}
		}
	}
	return record.ErrorFromCode(e.Code, e.Message)
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
