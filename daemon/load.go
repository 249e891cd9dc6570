package daemon

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/workload"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on every Linux port
// migshm runs on).
const clockTicks = 100

// cpuSampler turns cumulative CPU times of this node's workload processes into a load.
// The source is explicit: what runs in this node's workloads, not /proc/loadavg, because
// the nodes of a local cluster share one kernel and would all read the same host load.
type cpuSampler struct {
	last   map[int]uint64 // pid -> utime+stime ticks at the previous sample
	lastAt time.Time
}

// sample returns the CPU used by pids since the previous call, in cores (1.0 = one core
// busy), and how many of them are runnable now.
func (c *cpuSampler) sample(procRoot string, pids []int, now time.Time) (cores float64, running int) {
	cur := make(map[int]uint64, len(pids))
	var used uint64
	for _, pid := range pids {
		ticks, state, err := readCPU(procRoot, pid)
		if err != nil {
			continue
		}
		cur[pid] = ticks
		if state == 'R' {
			running++
		}
		if prev, ok := c.last[pid]; ok && ticks >= prev {
			used += ticks - prev
		}
	}
	if !c.lastAt.IsZero() {
		if dt := now.Sub(c.lastAt).Seconds(); dt > 0 {
			cores = float64(used) / clockTicks / dt
		}
	}
	c.last, c.lastAt = cur, now
	return cores, running
}

// readCPU returns utime+stime (fields 14 and 15 of /proc/PID/stat) and the state.
func readCPU(procRoot string, pid int) (uint64, byte, error) {
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("pid %d: bad stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("pid %d: short stat", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("pid %d: bad cpu times", pid)
	}
	return ut + st, f[0][0], nil
}

// readMeminfo returns MemAvailable and MemTotal in bytes.
func readMeminfo(path string) (avail, total uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, err := strconv.ParseUint(fs[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "MemAvailable":
			avail = n * 1024
		case "MemTotal":
			total = n * 1024
		}
	}
	if total == 0 {
		return 0, 0, fmt.Errorf("%s: no MemTotal", path)
	}
	return avail, total, sc.Err()
}

// loadVector measures this node's load: CPU and runnable tasks of its workloads,
// normalised by the cores of the machine, plus free memory.
func (s *supervisor) loadVector(now time.Time) shmowner.LoadVector {
	var pids []int
	n := 0
	procs, _, _ := workload.ReadAll("/proc")
	for _, l := range s.snapshot() {
		if l.isExited() {
			continue
		}
		n++
		if tree, err := workload.FindTree(procs, l.rec.InitPid); err == nil {
			for _, p := range tree.Procs {
				pids = append(pids, p.Pid)
			}
		}
	}
	cores, running := s.cpu.sample("/proc", pids, now)
	lv := shmowner.LoadVector{CPU: cores / float64(runtime.NumCPU()), RunQueue: float64(running), Workloads: n}
	lv.MemFreeBytes, lv.MemTotalBytes, _ = readMeminfo("/proc/meminfo")
	return lv
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
		lv := d.sup.loadVector(now)
		cctx, cancel := context.WithTimeout(ctx, d.cfg.LoadInterval)
		err := d.apply(cctx, shmowner.ReportLoadType, shmowner.ReportLoadRequest{ID: d.cfg.NodeID, Load: lv, At: now.UnixNano()})
		cancel()
		if err != nil && ctx.Err() == nil {
			d.log.Debug("load report failed", "err", err)
		}
	}
}
