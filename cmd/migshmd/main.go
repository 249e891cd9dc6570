// Command migshmd is the migshm node daemon.
//
// In this first milestone the binary only acts as the init of migshm workloads (the
// daemon re-executes itself as "migshm-init" to start a workload in its own namespaces);
// the daemon proper (Raft ownership table, local and peer APIs) comes with the Cluster
// milestone, and until then migshmd refuses to start rather than pretend to run.
package main

import (
	"fmt"
	"os"

	"github.com/migshm/migshm/workload"
)

func main() {
	workload.MaybeRunInit()
	fmt.Fprintln(os.Stderr, "migshmd: the node daemon is not built yet (Cluster milestone); "+
		"use `migshm doctor` and `migshm check` on a node, and scripts/demo for a local move")
	os.Exit(2)
}
