package supervisor

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// procStat is a /proc/PID/stat line; comm may hold spaces and ')'.
func procStat(pid int, comm string, state byte, utime, stime uint64) string {
	return fmt.Sprintf("%d (%s) %c 1 %d %d 0 -1 4194560 1000 0 12 0 %d %d 0 0 20 0 1 0 123456 10000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n",
		pid, comm, state, pid, pid, utime, stime)
}

func writeStat(t *testing.T, root string, pid int, text string) {
	t.Helper()
	dir := filepath.Join(root, fmt.Sprint(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCPUSampler(t *testing.T) {
	root := t.TempDir()
	t0 := time.Unix(1_700_000_000, 0)
	writeStat(t, root, 10, procStat(10, "worker (1)", 'R', 100, 0))
	writeStat(t, root, 11, procStat(11, "idle", 'S', 50, 50))
	writeStat(t, root, 12, procStat(12, "reused", 'R', 1000, 0))

	var c cpuSampler
	one := func(pids ...int) map[string][]int { return map[string][]int{"w1": pids[:2], "w2": pids[2:]} }
	got := c.sample(root, one(10, 11, 12, 99), t0)
	if got.total != 0 || len(got.cores) != 0 || got.running != 2 || !got.since.IsZero() {
		t.Fatalf("first sample: %+v; want no figures (no interval yet), 2 running", got)
	}

	// 0.5s later: pid 10 used 100 ticks (1s of CPU: 2 cores), 11 nothing, 12 was reused by
	// a process with fewer ticks (not counted), 13 is new (no previous sample).
	writeStat(t, root, 10, procStat(10, "worker (1)", 'R', 150, 50))
	writeStat(t, root, 11, procStat(11, "idle", 'S', 50, 50))
	writeStat(t, root, 12, procStat(12, "reused", 'S', 3, 0))
	writeStat(t, root, 13, procStat(13, "new", 'R', 500, 0))
	got = c.sample(root, one(10, 11, 12, 13), t0.Add(500*time.Millisecond))
	if !got.since.Equal(t0) {
		t.Fatalf("second sample: since %v, want the first sample's %v", got.since, t0)
	}
	if math.Abs(got.total-2.0) > 1e-9 || got.running != 2 || math.Abs(got.cores["w1"]-2.0) > 1e-9 || got.cores["w2"] != 0 {
		t.Fatalf("second sample: %+v; want w1 2 cores = 100 ticks / %d / 0.5s, w2 0 (12 reused), 2 running", got, clockTicks)
	}

	// 2s later: 13 used 100 ticks, 10 exited; w3 is new (just arrived): no figure yet.
	writeStat(t, root, 13, procStat(13, "new", 'S', 550, 50))
	writeStat(t, root, 14, procStat(14, "arrived", 'R', 9000, 0))
	os.RemoveAll(filepath.Join(root, "10"))
	got = c.sample(root, map[string][]int{"w1": {10, 11}, "w2": {13}, "w3": {14}}, t0.Add(2500*time.Millisecond))
	if math.Abs(got.total-0.5) > 1e-9 || got.running != 1 || got.cores["w1"] != 0 || math.Abs(got.cores["w2"]-0.5) > 1e-9 {
		t.Fatalf("third sample: %+v; want w1 0, w2 0.5, 1 running", got)
	}
	if _, ok := got.cores["w3"]; ok {
		t.Fatalf("third sample: w3 has a figure %v without a previous sample of its pids", got.cores["w3"])
	}

	// The same instant again: no interval, no load (and no division by zero).
	got = c.sample(root, map[string][]int{"w1": {11}, "w2": {13}}, t0.Add(2500*time.Millisecond))
	if got.total != 0 || !got.since.IsZero() || len(got.cores) != 0 {
		t.Fatalf("zero interval: %+v", got)
	}
}
