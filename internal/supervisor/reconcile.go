package supervisor

import (
	"context"
	"slices"
	"time"

	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
)

// reconcile brings the table in line with what runs here: registers workloads the table
// lacks, records exits, member pids and the segments of every group this node runs.
// It is level-triggered, so a write lost to a leader change is simply made again.
func (s *Supervisor) reconcile(ctx context.Context) {
	if !s.table.IsMember() {
		return
	}
	table := s.table.Table()
	if _, ok := table.Node(s.cfg.Self); !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	locals := s.snapshot()
	procs, _, err := workload.ReadAll("/proc")
	if err != nil {
		s.log.Warn("read /proc", "err", err)
		return
	}
	type groupInfo struct{ livePid int }
	groups := map[string]*groupInfo{}
	for _, l := range locals {
		if l.moved.Load() {
			continue
		}
		g := groups[l.rec.Group]
		if g == nil {
			g = &groupInfo{}
			groups[l.rec.Group] = g
		}
		tw, inTable := table.Workload(l.rec.ID)
		if inTable && tw.Node != s.cfg.Self {
			continue // it moved away (Migration milestone)
		}
		exited := l.isExited()
		if exited {
			if !inTable {
				continue // never registered, or removed
			}
			if tw.State != record.WorkloadExited {
				s.try(ctx, "record exit", l.rec.Name, func() error { return s.recordExit(ctx, l) })
			}
			continue
		}
		want := l.rec.workload()
		if tree, err := workload.FindSubtree(procs, l.rec.InitPid); err == nil {
			want.Pids = tree.Pids()
		}
		g.livePid = l.rec.InitPid
		if inTable && tw.State == record.WorkloadMigrating {
			continue
		}
		if !inTable || tw.State != record.WorkloadRunning || !slices.Equal(tw.Pids, want.Pids) {
			want.Pinned = tw.Pinned
			s.try(ctx, "register workload", l.rec.Name, func() error {
				return s.table.Apply(ctx, shmowner.UpsertWorkloadType, shmowner.UpsertWorkloadRequest{Workload: want})
			})
		}
	}
	for group, g := range groups {
		var have []shmowner.SegmentInfo
		if g.livePid != 0 {
			segs, err := workload.Segments(g.livePid)
			if err != nil {
				continue // it exited between the scans
			}
			for _, sg := range segs {
				have = append(have, shmowner.SegmentInfo{Shmid: sg.Shmid, Key: sg.Key, Size: sg.Size, Mode: sg.Mode})
			}
		}
		var known []shmowner.SegmentInfo
		for _, sg := range table.GroupSegments(group) {
			if sg.Owner != s.cfg.Self {
				known = nil
				break
			}
			known = append(known, shmowner.SegmentInfo{Shmid: sg.Shmid, Key: sg.Key, Size: sg.Size, Mode: sg.Mode})
		}
		if slices.Equal(have, known) {
			continue
		}
		if g.livePid == 0 && len(known) == 0 {
			continue
		}
		s.try(ctx, "report segments", group, func() error {
			return s.table.Apply(ctx, shmowner.SetSegmentsType, shmowner.SetSegmentsRequest{
				Node: s.cfg.Self, Group: group, Segments: have})
		})
	}
}

func (s *Supervisor) try(ctx context.Context, what, name string, fn func() error) {
	if err := fn(); err != nil && ctx.Err() == nil {
		s.log.Warn(what+" failed; will retry", "workload", name, "err", err)
	}
}
