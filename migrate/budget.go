package migrate

import "time"

// The time a move may keep a workload frozen, and how long it waits for a tree to run.
const (
	// DumpTimeout bounds a dump: freezing the tree and writing its images.
	DumpTimeout = 30 * time.Second
	// slowLink is the slowest link FreezeBudget allows for, in bytes per second.
	slowLink = 20 << 20
	// ResumeTimeout is how long ResumeTree waits for a tree to run again.
	ResumeTimeout = 10 * time.Second
)

// FreezeBudget is how long shipping imageBytes of images and restoring them may take
// once the dump is done: DumpTimeout plus the whole seconds they take at 20 MiB/s. Past
// it (a cut link, a hung target) a move gives up and the source resumes its tree.
func FreezeBudget(imageBytes int64) time.Duration {
	return DumpTimeout + time.Duration(imageBytes/slowLink)*time.Second
}

// ResumeTree is Resume of the tree rooted at initPid, read in this process's /proc,
// waiting up to ResumeTimeout.
func ResumeTree(initPid int) error {
	return Resume("/proc", initPid, ResumeTimeout)
}
