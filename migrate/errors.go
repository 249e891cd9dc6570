package migrate

import (
	"errors"
	"fmt"
	"strings"

	"github.com/migshm/migshm/workload"
)

// ErrCRIUUnavailable means no working CRIU was found: the binary is missing or
// `criu check` fails on this kernel.
var ErrCRIUUnavailable = errors.New("CRIU is not available")

// CRIUError is a failed CRIU operation. CRIU's RPC error text is often empty, so the tail
// of the operation's log file comes with it.
type CRIUError struct {
	Op      string // "dump", "restore", "check"
	PID     int    // the dumped tree's root, or the restored one if known
	LogFile string // where the whole log is
	LogTail string // the last lines of that log
	Err     error
}

func (e *CRIUError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "criu %s", e.Op)
	if e.PID > 0 {
		fmt.Fprintf(&b, " of pid %d", e.PID)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	if e.LogTail != "" {
		fmt.Fprintf(&b, "\ncriu log %s ends with:\n%s", e.LogFile, e.LogTail)
	}
	return b.String()
}

func (e *CRIUError) Unwrap() error { return e.Err }

// Reason says why a workload cannot be moved.
type Reason string

// Reasons a workload is refused before anything is dumped.
const (
	// ReasonHostIPCSysV: a process has SysV shm attached in the host IPC namespace;
	// CRIU can only carry segments of a namespace it dumps whole.
	ReasonHostIPCSysV Reason = "host-ipc-sysv"
	// ReasonHostIPC: the tree shares the host's IPC namespace.
	ReasonHostIPC Reason = "host-ipc"
	// ReasonNoPidNS: the process is not inside its own PID namespace.
	ReasonNoPidNS Reason = "no-pid-namespace"
	// ReasonIPCShared: processes outside the tree share its IPC namespace; dumping would
	// silently fork every segment they share.
	ReasonIPCShared Reason = "ipc-shared-outside"
	// ReasonPidShared: processes entered the workload's PID namespace from outside
	// (setns); they are not below its init, so CRIU would not dump them.
	ReasonPidShared Reason = "pid-ns-entered-from-outside"
	// ReasonMixedIPC: processes of the tree live in different IPC namespaces.
	ReasonMixedIPC Reason = "mixed-ipc-namespaces"
	// ReasonNestedPidNS: the tree contains a nested PID namespace, which CRIU cannot dump.
	ReasonNestedPidNS Reason = "nested-pid-namespace"
	// ReasonOrphanSession: a process's session leader has exited and the process is not
	// a child of the tree's init, the one place CRIU recreates such a session.
	ReasonOrphanSession Reason = "orphaned-session"
)

// NotMovableError is a refusal: the workload cannot be moved, nothing was changed.
type NotMovableError struct {
	Pid    int
	Reason Reason
	// Procs are the processes the reason is about (the offending sharers, ...).
	Procs  []workload.Proc
	Detail string
}

func (e *NotMovableError) Error() string {
	return fmt.Sprintf("pid %d cannot be moved (%s): %s", e.Pid, e.Reason, e.Detail)
}
