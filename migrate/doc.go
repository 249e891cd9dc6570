// Package migrate owns everything CRIU and images: the Checkpointer seam and its go-criu
// (swrk) implementation, the checks that say whether a workload can be moved and why not,
// and (in later milestones) the image stream and the source and target halves of a
// migration. It knows nothing of Raft.
package migrate
