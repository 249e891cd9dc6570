package daemon

import (
	"context"
	"maps"
	"math"
	"time"

	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
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
	var rep loadReporter
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
		changed, full := rep.changed(loads)
		cctx, cancel := context.WithTimeout(ctx, d.cfg.LoadInterval)
		err := d.cluster.Apply(cctx, shmowner.ReportLoadType, shmowner.ReportLoadRequest{ID: d.cfg.NodeID, Load: lv,
			At: now.UnixNano(), Workloads: changed, Refresh: true})
		cancel()
		rep.done(changed, full, err == nil)
		if err != nil && ctx.Err() == nil {
			d.log.Debug("load report failed", "err", err)
		}
	}
}

// Thresholds of loadReporter: a workload's figures are sent again when they moved by
// more than these, or every fullReportEvery reports.
const (
	reportCPUDelta   = 0.05     // cores
	reportMemDelta   = 16 << 20 // bytes, or a twentieth of the figure if more
	fullReportEvery  = 12       // a minute at the default load-interval
	reportMemDivisor = 20
)

// loadReporter bounds the Raft log volume of load reports: each report carries only
// the workloads whose figures changed beyond the thresholds since the table last got
// them (the others are refreshed in place, ReportLoadRequest.Refresh), and all of them
// every fullReportEvery reports and after a failed one.
type loadReporter struct {
	sent map[string]record.WorkloadLoad // what the table has from this node
	n    int
}

// changed returns the figures of loads to send now, and whether that is all of them.
func (r *loadReporter) changed(loads map[string]record.WorkloadLoad) (map[string]record.WorkloadLoad, bool) {
	r.n++
	if r.sent == nil || r.n%fullReportEvery == 0 {
		return loads, true
	}
	for id := range r.sent {
		if _, ok := loads[id]; !ok {
			delete(r.sent, id) // gone or moved away: if it comes back, it is new
		}
	}
	out := map[string]record.WorkloadLoad{}
	for id, l := range loads {
		s, ok := r.sent[id]
		memDelta := max(uint64(reportMemDelta), s.MemBytes/reportMemDivisor)
		if !ok || math.Abs(l.CPU-s.CPU) > reportCPUDelta || absDiff(l.MemBytes, s.MemBytes) > memDelta {
			out[id] = l
		}
	}
	return out, false
}

// done records the outcome of sending changed: a failed report makes the next one
// full, since what the table holds is then unknown.
func (r *loadReporter) done(changed map[string]record.WorkloadLoad, full, ok bool) {
	switch {
	case !ok:
		r.sent = nil
	case full:
		r.sent = maps.Clone(changed)
	default:
		maps.Copy(r.sent, changed)
	}
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}
