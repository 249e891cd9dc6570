// Package workload starts and inspects migshm workloads: process trees that CRIU can
// checkpoint together with their SysV shared memory.
//
// A workload runs under a small init (this package's InitMain, a re-exec of the daemon's
// own binary) that is PID 1 of a fresh PID namespace and also owns a fresh IPC and UTS
// namespace; the init is a session leader inside its PID namespace, has stdin on
// /dev/null and stdout/stderr on append-only files, starts the user's command, forwards
// signals to it, reaps every orphan, and exits with the command's status. That is the
// shape CRIU can dump with all of its segments (see shared/PLATFORM.md).
//
// The /proc readers (Inspect, FindInit, ...) take the proc root as a parameter so that
// fixtures under testdata/proc drive their unit tests.
package workload
