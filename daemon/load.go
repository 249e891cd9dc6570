package daemon

import (
	"context"
	"time"

	"github.com/migshm/migshm/shmowner"
)

// loadLoop reports this node's load every LoadInterval.
func (d *Daemon) loadLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.LoadInterval)
	defer t.Stop()
	// The first report goes out as soon as this node is in the table (checked every
	// 200ms), so `migshm nodes` never shows a fresh node without a load.
	soon := time.NewTicker(200 * time.Millisecond)
	defer soon.Stop()
	reported := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-soon.C:
			if reported {
				continue
			}
		}
		if _, ok := d.cluster.Table().Node(d.cfg.NodeID); !ok || !d.cluster.IsMember() {
			continue
		}
		reported = true
		now := time.Now()
		lv, loads := d.sup.Load(now)
		cctx, cancel := context.WithTimeout(ctx, d.cfg.LoadInterval)
		err := d.cluster.Apply(cctx, shmowner.ReportLoadType, shmowner.ReportLoadRequest{ID: d.cfg.NodeID, Load: lv,
			At: now.UnixNano(), Workloads: loads})
		cancel()
		if err != nil && ctx.Err() == nil {
			d.log.Debug("load report failed", "err", err)
		}
	}
}
