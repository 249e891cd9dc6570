package daemon

import (
	"os"
	"strings"
	"syscall"
	"time"
)

// EnvFaults names the environment variable that injects faults into a daemon, for
// tests of the failure paths (as CRIU_FAULT does for CRIU). Never set it in production.
// It holds comma-separated faults:
//
//	crash-at:POINT        the daemon SIGKILLs itself at POINT
//	pause-at:POINT:DUR    the daemon sleeps DUR at POINT (time for a test to strike)
//	corrupt-images        the source flips one byte in the middle of the image stream
//
// Points: planned, precopy, frozen (after the dump), shipped, restored, done (after the
// commit, before the target resumes) on the source; target-prepared (the migration
// opened, before pre-copy), target-received (the images in, before the restore) and
// target-restored (after the restore, before answering) and target-resume (the move
// committed, before resuming the restored copy) on the target.
const EnvFaults = "MIGSHMD_FAULTS"

type faults struct {
	crash   map[string]bool
	pause   map[string]time.Duration
	corrupt bool
}

func loadFaults() faults {
	f := faults{crash: map[string]bool{}, pause: map[string]time.Duration{}}
	for _, s := range strings.Split(os.Getenv(EnvFaults), ",") {
		parts := strings.Split(strings.TrimSpace(s), ":")
		switch {
		case len(parts) == 2 && parts[0] == "crash-at":
			f.crash[parts[1]] = true
		case len(parts) == 3 && parts[0] == "pause-at":
			if d, err := time.ParseDuration(parts[2]); err == nil {
				f.pause[parts[1]] = d
			}
		case len(parts) == 1 && parts[0] == "corrupt-images":
			f.corrupt = true
		}
	}
	return f
}

// at runs the faults injected at point.
func (f faults) at(point string) {
	if d := f.pause[point]; d > 0 {
		time.Sleep(d)
	}
	if f.crash[point] {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns
	}
}

// corruptWriter flips one byte at offset at of what passes through it.
type corruptWriter struct {
	w   interface{ Write([]byte) (int, error) }
	at  int64
	off int64
}

func (c *corruptWriter) Write(p []byte) (int, error) {
	if c.off <= c.at && c.at < c.off+int64(len(p)) {
		q := append([]byte(nil), p...)
		q[c.at-c.off] ^= 0x5a
		p = q
	}
	c.off += int64(len(p))
	return c.w.Write(p)
}
