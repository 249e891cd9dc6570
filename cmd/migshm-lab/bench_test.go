package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner/record"
)

func TestParseSizes(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{"100,512,1024", []int{100, 512, 1024}, false},
		{" 64 , 2", []int{64, 2}, false},
		{"512", []int{512}, false},
		{"", nil, true},
		{"100,", nil, true},
		{"1", nil, true},
		{"0", nil, true},
		{"-5", nil, true},
		{"1.5", nil, true},
		{"1gb", nil, true},
		{"1048577", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSizes(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseSizes(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseSizes(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestSplitSize(t *testing.T) {
	for _, tt := range []struct{ total, priv, shm int }{
		{100, 50, 50}, {512, 256, 256}, {1024, 512, 512}, {101, 51, 50}, {2, 1, 1},
	} {
		p, s := splitSize(tt.total)
		if p != tt.priv || s != tt.shm || p+s != tt.total {
			t.Errorf("splitSize(%d) = %d, %d; want %d, %d", tt.total, p, s, tt.priv, tt.shm)
		}
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{"1gbit", 1e9, false},
		{"1Gbit", 1e9, false},
		{"100mbit", 1e8, false},
		{"2.5gbit", 2.5e9, false},
		{"125mbps", 1e9, false}, // tc: bps is bytes per second
		{"1000bit", 1000, false},
		{"1000000", 1e6, false}, // tc: a bare number is bits per second
		{"1g", 0, true},         // a prefix without a unit: tc refuses it
		{"fast", 0, true},
		{"", 0, true},
		{"0bit", 0, true},
		{"-1gbit", 0, true},
		{"1 gbit", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseRate(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseRate(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseRate(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseBenchFlags(t *testing.T) {
	cfg, err := parseBenchFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := benchConfig{Sizes: []int{100, 512, 1024}, Rate: "1gbit", RateBits: 1e9, Dirty: 5, Runs: 1,
		Prefix: "bench", Dir: "/var/tmp", Settle: 3 * time.Second}
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("defaults = %+v, want %+v", *cfg, want)
	}

	cfg, err = parseBenchFlags([]string{"--sizes", "64", "--rate", "100mbit", "--dirty", "2.5", "--runs", "3",
		"--prefix", "b2", "--keep", "--json", "--max-downtime", "150ms", "--skip-baseline", "--group", "3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want = benchConfig{Sizes: []int{64}, Rate: "100mbit", RateBits: 1e8, Dirty: 2.5, Runs: 3, Prefix: "b2",
		Keep: true, JSON: true, MaxDowntime: 150 * time.Millisecond, SkipBaseline: true, Dir: "/var/tmp",
		Settle: 3 * time.Second, Group: 3}
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("parsed = %+v, want %+v", *cfg, want)
	}

	for _, bad := range [][]string{
		{"--skip-baseline", "--skip-migshm"},
		{"--runs", "0"},
		{"--dirty", "101"},
		{"--dirty", "-1"},
		{"--prefix", "Bad_Prefix"},
		{"--prefix", "a-very-long-prefix-name"},
		{"--rate", "1g"},
		{"--sizes", "abc"},
		{"--max-downtime", "10us"},
		{"--max-downtime", "-1s"},
		{"--skip-migshm", "--max-downtime", "100ms"},
		{"--dir", "var/tmp"},
		{"--settle", "-1s"},
		{"--group", "1"},
		{"--group", "17"},
		{"--skip-migshm", "--group", "3"},
		{"extra"},
		{"--no-such-flag"},
	} {
		if _, err := parseBenchFlags(bad, io.Discard); err == nil {
			t.Errorf("parseBenchFlags(%q) succeeded, want an error", bad)
		}
	}
}

func TestRatios(t *testing.T) {
	base := &measurement{Method: "baseline", DowntimeNS: 5e9, TotalNS: 5e9, WireBytes: 500e6}
	mig := &measurement{Method: "migshm", DowntimeNS: 250e6, TotalNS: 8e9, WireBytes: 600e6}
	got := compare(base, mig)
	want := &ratios{Downtime: 20, Total: 0.625, Wire: 1.2}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("compare = %+v, want %+v", got, want)
	}
	if compare(nil, mig) != nil || compare(base, nil) != nil {
		t.Error("compare with a side missing should be nil")
	}
	// A zero on either side gives an unknown (0) ratio, never Inf or NaN (JSON refuses those).
	got = compare(&measurement{DowntimeNS: 5e9}, &measurement{})
	if *got != (ratios{}) {
		t.Errorf("compare with zeros = %+v, want all 0", got)
	}
	if _, err := json.Marshal(got); err != nil {
		t.Error(err)
	}
}

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		in   []int64
		want int64
	}{
		{nil, 0}, {[]int64{7}, 7}, {[]int64{3, 1, 2}, 2}, {[]int64{4, 1, 3, 2}, 2}, {[]int64{10, 20}, 15},
	} {
		in := append([]int64(nil), tt.in...)
		if got := median(in); got != tt.want {
			t.Errorf("median(%v) = %d, want %d", tt.in, got, tt.want)
		}
		if !reflect.DeepEqual(in, tt.in) && tt.in != nil {
			t.Errorf("median modified its input: %v -> %v", tt.in, in)
		}
	}
}

func TestSummarize(t *testing.T) {
	s := sizeResult{TotalMiB: 100, Runs: []benchRun{
		{Run: 1, Baseline: &measurement{Method: "baseline", DowntimeNS: 3e9, WireBytes: 100e6, ShipNS: 1e9},
			Migshm: &measurement{Method: "migshm", DowntimeNS: 300e6, Rounds: 3}},
		{Run: 2, Baseline: &measurement{Method: "baseline", DowntimeNS: 1e9, WireBytes: 100e6, ShipNS: 1e9},
			Migshm: &measurement{Method: "migshm", DowntimeNS: 100e6, Rounds: 5}},
		{Run: 3, Baseline: &measurement{Method: "baseline", DowntimeNS: 2e9, WireBytes: 100e6, ShipNS: 1e9},
			Migshm: &measurement{Method: "migshm", DowntimeNS: 200e6, Rounds: 4}},
	}}
	s.summarize(nil, 0)
	if s.Median == nil || s.Median.Run != 0 {
		t.Fatalf("median = %+v", s.Median)
	}
	if s.Median.Baseline.DowntimeNS != 2e9 || s.Median.Migshm.DowntimeNS != 200e6 || s.Median.Migshm.Rounds != 4 {
		t.Errorf("median rows = %+v / %+v", s.Median.Baseline, s.Median.Migshm)
	}
	if s.Median.Ratios == nil || s.Median.Ratios.Downtime != 10 {
		t.Errorf("median ratios = %+v, want downtime 10", s.Median.Ratios)
	}
	if s.Median.Baseline.CopyBPS != 100e6 {
		t.Errorf("median copy rate = %v, want 1e8", s.Median.Baseline.CopyBPS)
	}
	one := sizeResult{Runs: s.Runs[:1]}
	one.summarize(nil, 0)
	if one.Median != nil {
		t.Error("a single run has no median row")
	}
}

func TestFormatting(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{fmtDur(0), "-"},
		{fmtDur(-5), "-"},
		{fmtDur(int64(312400 * time.Microsecond)), "312ms"},
		{fmtDur(int64(999600 * time.Microsecond)), "1000ms"},
		{fmtDur(int64(5123 * time.Millisecond)), "5.12s"},
		{fmtMB(0), "-"},
		{fmtMB(537_149_440), "537.1"},
		{fmtRatio(0), "-"},
		{fmtRatio(0.625), "0.62x"},
		{fmtRatio(12.34), "12.3x"},
		{fmtRatio(153.2), "153x"},
		{fmtRate(0), "-"},
		{fmtRate(116.8e6), "116.8 MB/s"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestThrottleNote(t *testing.T) {
	for _, tt := range []struct {
		bps            float64
		want, wantAlso string
		wantNoWarning  bool
	}{
		{117e6, "117.0 MB/s = 94% of the tbf rate (125.0 MB/s)", "", true},
		{400e6, "320%", "not throttled", false},
		{20e6, "16%", "far below", false},
		{0, "no copy measured", "", true},
	} {
		got := throttleNote(1e9, tt.bps)
		if !strings.Contains(got, tt.want) || !strings.Contains(got, tt.wantAlso) {
			t.Errorf("throttleNote(1e9, %v) = %q, want it to contain %q and %q", tt.bps, got, tt.want, tt.wantAlso)
		}
		if tt.wantNoWarning == strings.Contains(got, "WARNING") {
			t.Errorf("throttleNote(1e9, %v) = %q: warning wrong", tt.bps, got)
		}
	}
}

func TestWriteTables(t *testing.T) {
	cfg := benchConfig{Sizes: []int{512}, Rate: "1gbit", RateBits: 1e9, Dirty: 5, Runs: 1, Dir: "/var/tmp",
		Settle: 3 * time.Second}
	base := &measurement{Method: "baseline", DowntimeNS: 6_200e6, TotalNS: 6_200e6, WireBytes: 540e6,
		DumpNS: 900e6, ShipNS: 4_700e6, RestoreNS: 600e6, CopyBPS: rate(540e6, 4_700e6)}
	mig := &measurement{Method: "migshm", DowntimeNS: 310e6, TotalNS: 7_900e6, WireBytes: 610e6, Rounds: 4,
		FinalBytes: 12.5e6, DumpNS: 150e6, ShipNS: 40e6, RestoreNS: 120e6}
	ps := &measurement{Method: "pageserver", DowntimeNS: 3_100e6, TotalNS: 3_100e6, WireBytes: 541e6,
		DumpNS: 2_500e6, ShipNS: 10e6, RestoreNS: 590e6}
	small := &measurement{Method: "migshm", DowntimeNS: 200e6}
	run := benchRun{Run: 1, Baseline: base, PageServer: ps, Migshm: mig}
	run.compare(small, cfg.RateBits)
	rep := &benchReport{Config: cfg, Small: small, THPAnon: "madvise", THPShmem: "never", Sizes: []sizeResult{{TotalMiB: 512, PrivateMiB: 256, ShmMiB: 256,
		Runs: []benchRun{run}}}}
	var buf bytes.Buffer
	if err := writeTables(&buf, rep); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	lines := strings.Split(out, "\n")
	if lines[0] != "512 MiB: 256 MiB private + 256 MiB SysV shm, dirtying 5% of its pages/s, link 1gbit" {
		t.Errorf("title = %q", lines[0])
	}
	wantRows := [][]string{
		{"run", "method", "downtime", "total", "wire", "MB", "downtime", "x", "vs", "ps", "x", "total", "x", "wire", "x", "rounds", "final", "MB", "dump", "ship", "restore"},
		{"1", "baseline", "6.20s", "6.20s", "540.0", "-", "-", "-", "-", "-", "540.0", "900ms", "4.70s", "600ms"},
		{"1", "pageserver", "3.10s", "3.10s", "541.0", "-", "-", "-", "-", "-", "541.0", "2.50s", "10ms", "590ms"},
		{"1", "migshm", "310ms", "7.90s", "610.0", "20.0x", "10.0x", "0.78x", "1.13x", "4", "12.5", "150ms", "40ms", "120ms"},
	}
	for i, want := range wantRows {
		if got := strings.Fields(lines[1+i]); !reflect.DeepEqual(got, want) {
			t.Errorf("row %d = %q, want fields %q", i, lines[1+i], want)
		}
	}
	// The columns line up (tabwriter, right-aligned): every row is as long as the header.
	if len(lines[2]) != len(lines[1]) || len(lines[3]) != len(lines[1]) || len(lines[4]) != len(lines[1]) {
		t.Errorf("rows not aligned:\n%s\n%s\n%s\n%s", lines[1], lines[2], lines[3], lines[4])
	}
	for _, want := range []string{
		"run 1 baseline copy: 540.0 MB in 4.70s: 114.9 MB/s = 92% of the tbf rate (125.0 MB/s)",
		"criu dump (tree killed) in n1's netns to /var/tmp",
		"criu page-server waiting in n2's netns",
		"machine: transparent huge pages madvise for private memory, never for shm (SysV segments)",
		// 12.5 MB at the baseline's 114.9 MB/s is 109 ms; + 200 ms = 309 ms; 310/309.
		"run 1 physical limit: final 12.5 MB at 114.9 MB/s = 109ms, + the 4 MiB move's downtime 200ms = 309ms; migshm's downtime is 1.00x of it",
		"(--max-downtime: its default)",
		"moved after it dirtied memory for 3s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// With a median row, and a run where migshm is missing.
	rep.Sizes[0].Runs = append(rep.Sizes[0].Runs, benchRun{Run: 2, Baseline: base})
	rep.Sizes[0].summarize(rep.Small, cfg.RateBits)
	buf.Reset()
	if err := writeTables(&buf, rep); err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if f := strings.Fields(l); len(f) == 14 && (f[0] == "median" || f[0] >= "0" && f[0] <= "9") && (f[1] == "baseline" || f[1] == "migshm") {
			rows = append(rows, f[0]+" "+f[1])
		}
	}
	want := []string{"1 baseline", "1 migshm", "2 baseline", "median baseline", "median migshm"}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("rows %q, want %q:\n%s", rows, want, buf.String())
	}
}

func TestReportJSON(t *testing.T) {
	base := &measurement{Method: "baseline", DowntimeNS: 2e9, TotalNS: 2e9, WireBytes: 100e6}
	mig := fromSummary(&api.MigrationStats{Rounds: 3, PrecopyBytes: 90e6, FinalBytes: 20e6, WorkloadBytes: 105e6,
		FrozenNS: 200e6, DumpNS: 80e6, ShipNS: 30e6, RestoreNS: 70e6, TotalNS: 3e9}, 3100*time.Millisecond)
	rep := benchReport{Config: benchConfig{Sizes: []int{100}, MaxDowntime: 100 * time.Millisecond},
		Sizes: []sizeResult{{TotalMiB: 100, Runs: []benchRun{{Run: 1, Baseline: base, Migshm: &mig, Ratios: compare(base, &mig)}}}}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Config map[string]any `json:"config"`
		Sizes  []struct {
			Runs []struct {
				Migshm measurement `json:"migshm"`
				Ratios ratios      `json:"ratios"`
			} `json:"runs"`
		} `json:"sizes"`
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	r := back.Sizes[0].Runs[0]
	if r.Migshm.WireBytes != 110e6 || r.Migshm.DowntimeNS != 200e6 || r.Migshm.Rounds != 3 || r.Migshm.WallNS != 3.1e9 {
		t.Errorf("migshm = %+v", r.Migshm)
	}
	if r.Ratios.Downtime != 10 || r.Ratios.Wire != 1.1 {
		t.Errorf("ratios = %+v", r.Ratios)
	}
	if back.Config["max_downtime_ns"] != float64(100e6) {
		t.Errorf("config = %v", back.Config)
	}
	if _, ok := back.Config["Keep"]; ok {
		t.Error("config has Keep")
	}
}

func TestParseMoveStream(t *testing.T) {
	lines := func(evs ...api.MoveEvent) string {
		var b strings.Builder
		for _, ev := range evs {
			j, _ := json.Marshal(ev)
			b.Write(j)
			b.WriteByte('\n')
		}
		return b.String()
	}
	planned := api.MoveEvent{Event: api.EventPhase, Migration: "m1", Phase: "planned"}
	round := api.MoveEvent{Event: api.EventRound, Migration: "m1", Round: &api.RoundInfo{Round: 1, Pages: 10}}
	done := api.MoveEvent{Event: api.EventDone, Migration: "m1", Phase: "done",
		Summary: &api.MigrationStats{Rounds: 1, FrozenNS: 5e6, PrecopyBytes: 40960}}
	failed := api.MoveEvent{Event: api.EventError, Migration: "m1", Error: "dump w1: criu failed", Code: "unreachable"}

	tests := []struct {
		name    string
		in      string
		seen    int
		wantErr string
	}{
		{"done", lines(planned, round, done), 3, ""},
		{"blank lines", "\n" + lines(planned) + "\n\n" + lines(done), 2, ""},
		{"error", lines(planned, failed), 2, "migration m1 failed: dump w1: criu failed (code unreachable)"},
		{"cut", lines(planned, round), 2, `ended after event "round"`},
		{"empty", "", 0, "no events"},
		{"garbage", lines(planned) + "<html>\n", 1, "move stream: line \"<html>\""},
		{"done without summary", lines(api.MoveEvent{Event: api.EventDone, Migration: "m1"}), 1, "without a summary"},
		{"stops at done", lines(done) + "trailing garbage\n", 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var seen []api.MoveEvent
			last, err := parseMoveStream(strings.NewReader(tt.in), func(ev api.MoveEvent) { seen = append(seen, ev) })
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("error %v", err)
				}
				if last.Summary == nil || last.Summary.FrozenNS != 5e6 {
					t.Errorf("last = %+v", last)
				}
			} else if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if len(seen) != tt.seen {
				t.Errorf("saw %d events, want %d", len(seen), tt.seen)
			}
		})
	}
}

func TestDescribeEvent(t *testing.T) {
	for _, tt := range []struct {
		ev   api.MoveEvent
		want string
	}{
		{api.MoveEvent{Event: api.EventPhase, Phase: "frozen"}, "phase frozen"},
		{api.MoveEvent{Event: api.EventRound, Round: &api.RoundInfo{Round: 2, Pages: 100, ChangedPages: 7,
			SentBytes: 28672, DurationNS: 15e6, RateBPS: 1.9e6}},
			"round 2: 100 pages read, 7 changed, 0 as deltas, 0.0 MB sent in 15ms (1.9 MB/s)"},
		{api.MoveEvent{Event: api.EventDone, Summary: &api.MigrationStats{FrozenNS: 250e6, TotalNS: 4e9, Rounds: 3}},
			"done: frozen 250ms, total 4.00s, 3 rounds"},
		{api.MoveEvent{Event: api.EventError, Error: "boom"}, "error: boom"},
		{api.MoveEvent{Event: api.EventRound}, ""},
		{api.MoveEvent{Event: "other"}, ""},
	} {
		if got := describeEvent(tt.ev); got != tt.want {
			t.Errorf("describeEvent(%+v) = %q, want %q", tt.ev, got, tt.want)
		}
	}
}

func TestParseEnv(t *testing.T) {
	in := "# written by scripts/cluster up\nPREFIX=bench\nNODES=2\nRATE=1gbit\n\nNODE1_SOCKET=/run/migshm-cluster/bench-n1.sock\nX=a=b\n"
	env, err := parseEnv(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"PREFIX": "bench", "NODES": "2", "RATE": "1gbit",
		"NODE1_SOCKET": "/run/migshm-cluster/bench-n1.sock", "X": "a=b"}
	if !reflect.DeepEqual(env, want) {
		t.Errorf("parseEnv = %v, want %v", env, want)
	}
	if _, err := parseEnv(strings.NewReader("no equals sign\n")); err == nil {
		t.Error("parseEnv accepted a line without =")
	}
}

func TestCheckMoved(t *testing.T) {
	ws := []api.Workload{{Name: "other", Node: "n1", State: "running"}, {Name: "bench-100-1", Node: "n2", State: "running"}}
	if err := checkMoved(ws, "bench-100-1", "n2"); err != nil {
		t.Error(err)
	}
	if err := checkMoved(ws, "bench-100-1", "n3"); err == nil {
		t.Error("wrong node accepted")
	}
	if err := checkMoved([]api.Workload{{Name: "b", Node: "n2", State: "migrating"}}, "b", "n2"); err == nil {
		t.Error("a migrating workload accepted")
	}
	if err := checkMoved(ws, "gone", "n2"); err == nil {
		t.Error("a missing workload accepted")
	}
}

func TestCountTicks(t *testing.T) {
	out := []byte("shmbench ready private_mib=1 shm_mib=1 dirty_pct=5\nshmbench tick=1 dirtied=3\nshmbench tick=2 dirtied=3\n")
	if got := countTicks(out); got != 2 {
		t.Errorf("countTicks = %d, want 2", got)
	}
}

func TestFindRoot(t *testing.T) {
	root := t.TempDir()
	mustWrite := func(path, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(filepath.Join(root, "go.mod"), "module github.com/migshm/migshm\n\ngo 1.26\n")
	mustWrite(filepath.Join(root, "scripts", "cluster"), "#!/bin/sh\n")
	deep := filepath.Join(root, "cmd", "migshm-lab")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	mustWrite(filepath.Join(other, "go.mod"), "module example.com/other\n")
	mustWrite(filepath.Join(other, "scripts", "cluster"), "")

	if got, err := findRoot(filepath.Join(other, "scripts"), deep); err != nil || got != root {
		t.Errorf("findRoot = %q, %v; want %q", got, err, root)
	}
	if got, err := findRoot(filepath.Join(root, "bin")); err != nil || got != root { // need not exist
		t.Errorf("findRoot(bin) = %q, %v; want %q", got, err, root)
	}
	if _, err := findRoot(other); err == nil {
		t.Error("findRoot accepted another module")
	}
}

// TestWindowMedianAndPrint: the frozen window's median is taken step by step (and part
// by part), in the first run's order, and printed with each step's parts under it.
func TestWindowMedianAndPrint(t *testing.T) {
	win := func(dump, ship, crit int64) []record.WindowStep {
		return []record.WindowStep{
			{Step: "dump", NS: dump, Parts: []record.WindowStep{{Step: "criu: collect memory (its figure)", NS: crit}}},
			{Step: "ship images", NS: ship},
		}
	}
	got := medianSteps([][]record.WindowStep{win(300e6, 20e6, 100e6), win(100e6, 40e6, 50e6), win(200e6, 30e6, 70e6)})
	want := win(200e6, 30e6, 70e6)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("median window %+v, want %+v", got, want)
	}
	var buf bytes.Buffer
	writeWindow(&buf, "window:", got)
	out := buf.String()
	for _, line := range []string{"  window:", "    dump", "200ms", "      criu: collect memory (its figure)", "70ms", "    ship images", "30ms"} {
		if !strings.Contains(out, line) {
			t.Errorf("printed window lacks %q:\n%s", line, out)
		}
	}
	if medianSteps(nil) != nil {
		t.Error("no windows: want none")
	}
}
