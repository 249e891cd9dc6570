// Command migshm is the migshm command-line tool.
//
// This first milestone has the node-local commands: `migshm doctor` checks that this
// machine can checkpoint and restore workloads, and `migshm check PID` says whether the
// workload of a process could be moved with its SysV shared memory, and why not. The
// cluster commands (run, move, ps, nodes, segments, status) talk to migshmd and come with
// the daemon.
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
