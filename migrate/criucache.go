package migrate

import (
	"context"
	"sync"
	"time"
)

// CheckTTL is how long CachedCheck keeps what CRIU said, working or not: `criu check`
// takes about a second, and a CRIU installed, fixed or broken meanwhile is noticed
// within it.
const CheckTTL = time.Minute

// criuCache is what a CRIU remembers of this machine, as runc keeps CRIU's version next
// to CRIU.
type criuCache struct {
	mu        sync.Mutex
	caps      *Capabilities
	err       error
	checkedAt time.Time
	cpuinfo   []byte

	// Tests replace these; nil means the real thing.
	now     func() time.Time
	check   func(ctx context.Context, path string) (*Capabilities, error)
	cpuDump func(ctx context.Context) ([]byte, error)
}

// CachedCheck finds the criu binary (FindCRIU of Path) and returns what Check says of it,
// asking CRIU again only once the last answer, a failure included, is CheckTTL old.
// Callers wait for one another.
func (c *CRIU) CachedCheck(ctx context.Context) (*Capabilities, error) {
	cc := &c.cache
	cc.mu.Lock()
	defer cc.mu.Unlock()
	now := time.Now
	if cc.now != nil {
		now = cc.now
	}
	if (cc.caps != nil || cc.err != nil) && now().Sub(cc.checkedAt) < CheckTTL {
		return cc.caps, cc.err
	}
	path, err := FindCRIU(c.Path)
	if err == nil {
		if cc.check != nil {
			cc.caps, err = cc.check(ctx, path)
		} else {
			cc.caps, err = (&CRIU{Path: path}).Check(ctx)
		}
	}
	if err != nil {
		cc.caps = nil
	}
	cc.err, cc.checkedAt = err, now()
	return cc.caps, err
}

// CPUInfo returns CPUInfoDump's description of this node's CPU, asking CRIU only until
// it once succeeded: the CPU does not change while the process runs.
func (c *CRIU) CPUInfo(ctx context.Context) ([]byte, error) {
	cc := &c.cache
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.cpuinfo != nil {
		return cc.cpuinfo, nil
	}
	dump := c.CPUInfoDump
	if cc.cpuDump != nil {
		dump = cc.cpuDump
	}
	img, err := dump(ctx)
	if err == nil {
		cc.cpuinfo = img
	}
	return img, err
}
