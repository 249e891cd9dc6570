// Package migrate owns everything CRIU and images, and nothing of Raft or of the daemon:
//
//   - CRIU through go-criu's swrk RPC (CRIU: Check and CachedCheck, Dump, Restore,
//     CPUInfoDump, CPUInfoCheck and CPUInfo), finding the binary (FindCRIU), and
//     CRIUError with the tail of CRIU's log.
//   - Whether a workload can move, before anything is dumped: Preflight (its tree, and
//     who else shares its namespaces), Inspect (what it holds that CRIU cannot carry,
//     the memory and the files the target needs), TreeMemory, and CheckFiles on the
//     target.
//   - Pre-copy: Precopier reads a running tree's memory round after round and sends
//     what changed as a page stream (ReadPages into a PageStore); PrecopyPolicy says
//     when to stop.
//   - The checksummed image stream that carries an images directory between nodes
//     (WriteImages, ReadImages; PagesImage files travel page by page, as hashes for the
//     pages the target holds), and StreamReader to send it, or a pre-copy round, as a
//     request body.
//   - The frozen window's budget (DumpTimeout, FreezeBudget), resuming a tree CRIU left
//     stopped (Resume, ResumeTree), and checking restored segments against the dumped
//     ones (CompareSegments, VerifySegments).
//
// The source and target halves of a migration (phases, the peer protocol, recovery) are
// the daemon's; they call this package.
package migrate
