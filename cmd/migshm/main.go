// Command migshm is the migshm command-line tool.
//
// `migshm doctor` checks that this machine can checkpoint and restore workloads, and
// `migshm check PID` says from /proc whether the workload of a process could be moved
// with its SysV shared memory, and why not; neither needs a daemon. Every other command
// talks to the local migshmd over its unix socket (--socket): run, ps, stop, logs and rm
// manage workloads; move moves one to another node, showing its progress, `check
// WORKLOAD NODE` says whether that could work, and migrations lists the moves; drain and
// undrain empty a node and take it back, pin and unpin keep a workload where it is, and
// balance runs (or, with --dry-run, plans) a pass of the leader's balancer; nodes,
// segments, status and leave show and change the cluster. tls makes its certificates.
package main

import (
	"fmt"
	"os"

	"github.com/migshm/migshm/workload"
)

func main() {
	workload.MaybeRunInit()
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "migshm: %v\n", err)
		os.Exit(1)
	}
}
