// Package migrate owns everything CRIU and images: CRIU through go-criu (swrk), the
// checks that say whether a workload can be moved and why not, the checksummed image
// stream that carries an images directory between nodes (WriteImages, ReadImages), and
// (in the Migration milestone) the source and target halves of a migration. It knows
// nothing of Raft.
package migrate
