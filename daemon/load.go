package daemon

import (
	"context"
	"math"
	"runtime"
	"time"

	"github.com/migshm/migshm/internal/procfs"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on every Linux port
// migshm runs on).
const clockTicks = 100

// cpuSampler turns cumulative CPU times of this node's workload processes into loads.
// The source is explicit: what runs in this node's workloads, not /proc/loadavg, because
// the nodes of a local cluster share one kernel and would all read the same host load.
type cpuSampler struct {
	last   map[int]uint64 // pid -> utime+stime ticks at the previous sample
	lastAt time.Time
}

// cpuSample is what one sample measured.
type cpuSample struct {
	cores    map[string]float64 // by workload: cores used since the previous sample, for workloads measured over it
	total    float64            // cores used by all the pids
	running  int                // pids runnable now
	interval bool               // there was a previous sample to measure against
}

// sample measures the CPU each workload's pids (by workload id) used since the previous
// call, in cores (1.0 = one core busy). A workload none of whose pids was seen at the
// previous sample (it just started, or just arrived by migration) has no figure yet;
// a pid whose ticks went down was reused by another process and counts nothing.
func (c *cpuSampler) sample(procRoot string, workloads map[string][]int, now time.Time) cpuSample {
	out := cpuSample{cores: map[string]float64{}}
	dt := 0.0
	if !c.lastAt.IsZero() {
		dt = now.Sub(c.lastAt).Seconds()
	}
	out.interval = dt > 0
	cur := make(map[int]uint64)
	for id, pids := range workloads {
		var used uint64
		seen := false
		for _, pid := range pids {
			ticks, state, err := readCPU(procRoot, pid)
			if err != nil {
				continue
			}
			cur[pid] = ticks
			if state == 'R' {
				out.running++
			}
			if prev, ok := c.last[pid]; ok {
				seen = true
				if ticks >= prev {
					used += ticks - prev
				}
			}
		}
		if out.interval && seen {
			cores := float64(used) / clockTicks / dt
			out.cores[id] = cores
			out.total += cores
		}
	}
	c.last, c.lastAt = cur, now
	return out
}

// readCPU returns utime+stime (fields 14 and 15 of /proc/PID/stat) and the state.
func readCPU(procRoot string, pid int) (uint64, byte, error) {
	st, err := procfs.ReadStat(procRoot, pid)
	return st.CPUTicks(), st.State, err
}

// readMeminfo returns MemAvailable and MemTotal in bytes.
func readMeminfo(path string) (avail, total uint64, err error) {
	m, err := procfs.ReadMeminfo(path)
	return m.MemAvailable, m.MemTotal, err
}

// loadVector measures this node's load and its workloads' loads. CPU: what the
// workloads' processes used (see cpuSampler), over the cores this node offers
// (capacity-cores, default its CPUs). Memory: each workload's anonymous resident memory
// plus its segments (migrate.TreeMemory); the node's free memory is its mem-capacity
// minus that when mem-capacity is set (nodes sharing one host), else the host's
// MemAvailable.
func (s *supervisor) loadVector(now time.Time) (record.LoadVector, map[string]record.WorkloadLoad) {
	procs, _, _ := workload.ReadAll("/proc")
	trees := map[string]*workload.Tree{}
	pids := map[string][]int{}
	n := 0
	for _, l := range s.snapshot() {
		if l.isExited() || l.moved.Load() {
			continue
		}
		n++
		if tree, err := workload.FindTree(procs, l.rec.InitPid); err == nil {
			trees[l.rec.ID], pids[l.rec.ID] = tree, tree.Pids()
		}
	}
	cpu := s.cpu.sample("/proc", pids, now)
	capacity := s.d.cfg.CapacityCores
	if capacity <= 0 {
		capacity = float64(runtime.NumCPU())
	}
	loads := make(map[string]record.WorkloadLoad, len(trees))
	var mem uint64
	for id, tree := range trees {
		m, err := migrate.TreeMemory("/proc", tree)
		if err != nil {
			continue // it exited between the reads
		}
		mem += m
		if c, ok := cpu.cores[id]; ok {
			loads[id] = record.WorkloadLoad{CPU: math.Round(c*1000) / 1000, MemBytes: m}
		}
	}
	lv := record.LoadVector{CPU: cpu.total / capacity, RunQueue: float64(cpu.running), Workloads: n, Cores: capacity}
	if budget := s.d.cfg.MemCapacity; budget > 0 {
		lv.MemTotalBytes, lv.MemBudgetBytes = budget, budget
		lv.MemFreeBytes = budget - min(mem, budget)
	} else {
		lv.MemFreeBytes, lv.MemTotalBytes, _ = readMeminfo("/proc/meminfo")
	}
	return lv, loads
}

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
		if _, ok := d.store.Table().Node(d.cfg.NodeID); !ok || !d.isMember() {
			continue
		}
		reported = true
		now := time.Now()
		lv, loads := d.sup.loadVector(now)
		cctx, cancel := context.WithTimeout(ctx, d.cfg.LoadInterval)
		err := d.apply(cctx, shmowner.ReportLoadType, shmowner.ReportLoadRequest{ID: d.cfg.NodeID, Load: lv,
			At: now.UnixNano(), Workloads: loads})
		cancel()
		if err != nil && ctx.Err() == nil {
			d.log.Debug("load report failed", "err", err)
		}
	}
}
