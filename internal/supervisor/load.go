package supervisor

import (
	"math"
	"runtime"
	"time"

	"github.com/migshm/migshm/internal/procfs"
	"github.com/migshm/migshm/migrate"
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
	cores   map[string]float64 // by workload: cores used since the previous sample, for workloads measured over it
	total   float64            // cores used by all the pids
	running int                // pids runnable now
	since   time.Time          // the previous sample, where the interval began; zero if none
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
	if dt > 0 {
		out.since = c.lastAt
	}
	cur := make(map[int]uint64)
	for id, pids := range workloads {
		var used uint64
		seen := false
		for _, pid := range pids {
			st, err := procfs.ReadStat(procRoot, pid)
			if err != nil {
				continue
			}
			ticks := st.CPUTicks()
			cur[pid] = ticks
			if st.State == 'R' {
				out.running++
			}
			if prev, ok := c.last[pid]; ok {
				seen = true
				if ticks >= prev {
					used += ticks - prev
				}
			}
		}
		if dt > 0 && seen {
			cores := float64(used) / clockTicks / dt
			out.cores[id] = cores
			out.total += cores
		}
	}
	c.last, c.lastAt = cur, now
	return out
}

// Load measures this node's load and its workloads' loads. CPU: what the
// workloads' processes used (see cpuSampler), over the cores this node offers
// (capacity-cores, default its CPUs). Memory: each workload's anonymous resident memory
// plus its segments (migrate.TreeMemory); the node's free memory is its mem-capacity
// minus that when mem-capacity is set (nodes sharing one host), else the host's
// MemAvailable.
func (s *Supervisor) Load(now time.Time) (record.LoadVector, map[string]record.WorkloadLoad) {
	procs, _, _ := workload.ReadAll("/proc")
	trees := map[string]*workload.Tree{}
	pids := map[string][]int{}
	n := 0
	for _, l := range s.snapshot() {
		if l.isExited() || l.moved.Load() {
			continue
		}
		n++
		if tree, err := workload.FindSubtree(procs, l.rec.InitPid); err == nil {
			trees[l.rec.ID], pids[l.rec.ID] = tree, tree.Pids()
		}
	}
	cpu := s.cpu.sample("/proc", pids, now)
	capacity := s.cfg.CapacityCores
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
	if !cpu.since.IsZero() {
		lv.Since = cpu.since.UnixNano()
	}
	if budget := s.cfg.MemCapacity; budget > 0 {
		lv.MemTotalBytes, lv.MemBudgetBytes = budget, budget
		lv.MemFreeBytes = budget - min(mem, budget)
	} else {
		mi, _ := procfs.ReadMeminfo("/proc/meminfo")
		lv.MemFreeBytes, lv.MemTotalBytes = mi.MemAvailable, mi.MemTotal
	}
	return lv, loads
}
