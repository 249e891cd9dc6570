// Package workload starts and inspects migshm workloads: process trees that CRIU can
// checkpoint together with their SysV shared memory.
//
// A workload runs under a small init (the daemon's own binary re-executed as
// "migshm-init": MaybeRunInit, first thing in main) that is PID 1 of a fresh PID
// namespace and also owns a fresh IPC and UTS namespace; the init is a session leader
// inside its PID namespace, has stdin on /dev/null and stdout/stderr on append-only
// files, starts the user's command, forwards signals to it, reaps every orphan, and exits
// with the command's status, which it records (ReadExitStatus). That is the shape CRIU
// can dump with all of its segments (see shared/PLATFORM.md). Start launches one
// (Spec, Process); Attach takes over an init that is already a child, as a restored one.
//
// It reads processes from /proc (through internal/procfs): ReadProc and ReadAll (pids,
// namespaces, SysV attachments), FindTree (a workload's whole tree, from any of its
// pids), StartTime and WatchProcess (follow an init that is not a child, with a pidfd).
// It lists the SysV segments of a workload's IPC namespace (Segments, ParseSysVShm) and
// digests their contents (DigestSegments, QuickDigestSegments). The readers take the proc
// root as a parameter so that fixtures under testdata/proc drive their unit tests.
package workload
