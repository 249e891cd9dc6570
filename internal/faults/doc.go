// Package faults injects failures into a daemon for the tests of its failure paths, as
// CRIU_FAULT does for CRIU. It is compiled in only with the build tag "faults", which the
// tests set when they build migshmd; the shipped binary has none of it: At does nothing
// and Stream returns its argument.
//
// With the tag, the environment variable Env holds comma-separated faults:
//
//	crash-at:POINT        the daemon SIGKILLs itself at POINT
//	pause-at:POINT:DUR    the daemon sleeps DUR at POINT (time for a test to strike)
//	corrupt-images        the source flips one byte early in the image stream
//
// Points on the source: planned, precopy, frozen, shipped, restored and done, each right
// after the table recorded that phase (frozen: before the dump starts; done: after the
// commit, before the target resumes), and dumped (the dump finished, the tree is stopped,
// nothing shipped yet). On the target: target-prepared (the migration opened, before
// pre-copy), target-received (the images in, before the restore), target-restored (after
// the restore, before answering) and target-resume (the move committed, before resuming
// the restored copy).
package faults

// Env names the environment variable that holds the faults.
const Env = "MIGSHMD_FAULTS"
