// Package balancer is pure placement policy: given a snapshot of the ownership table and
// the nodes' load vectors it returns which workload should move where (and when a
// segment's owner copy should follow its users), with the reason for each move. No
// goroutines, no I/O, no logging, so every decision is a table test. It is built in the
// "Automatic balancing" milestone.
package balancer
