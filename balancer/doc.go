// Package balancer is pure placement policy: given a snapshot of the ownership table, each
// workload's measured load and the time, Plan returns which workloads should move where,
// with the reason for each move and for each workload it left alone. No goroutines, no
// I/O, no logging, no clock of its own, no map-order output, so every decision is a table
// test and the same inputs always give the same decision.
//
// # Load source
//
// A node's CPU load is the sum of WorkloadLoad.CPU (cores, measured by the daemon from its
// workloads' processes) of the running workloads the table places on it, plus the
// workloads migrating to it, divided by its capacity in cores (Config.Capacity, else
// Config.DefaultCapacity). The nodes' own reports (Node.Load.CPU, RunQueue) are not read:
// the nodes of a local cluster share one kernel, and per-workload figures are exactly what
// a move carries, so the load after a planned move is known. Free memory comes from
// Config.MemCapacity minus the workloads' MemBytes when the node has a budget there (nodes
// sharing a kernel), else from the node's own report. NodeLoads shows the result.
//
// # Policy
//
// Units: the workloads of one IPC group on one node move together, to one target, or not
// at all. Rules, in order, all under MaxConcurrent (migrations in flight plus planned):
// memory ushering (a node below MemFloorBytes free sheds first), drains (a draining node
// sheds everything movable), CPU balancing (a node outside mean±Threshold triggers a move
// from the most loaded node to the least loaded one, if it reduces Imbalance by at least
// Hysteresis). Targets are active nodes that keep max(MemFloorBytes, MemHeadroom*total)
// free. Pinned units and units with a member in flight never move; split groups move only
// off a draining node. Cooldowns per workload and per node, and the rule that balancing
// never returns a workload to the node its last migration left, keep it from ping-pong.
//
// Convergence: every CPU move lowers Imbalance by at least Hysteresis and nothing else
// lowers it, so without failures, drains or ushering a run makes at most
// Imbalance/Hysteresis CPU moves; the simulation test measures far fewer (about the greedy
// lower bound).
package balancer
