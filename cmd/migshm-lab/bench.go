package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/nsutil"
	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

// benchUsage is the help text of `migshm-lab bench`.
const benchUsage = `usage: migshm-lab bench [--sizes 100,512,1024] [--rate 1gbit] [--dirty 5] [--runs 1]
                        [--prefix bench] [--keep] [--json] [--max-downtime D]
                        [--skip-baseline | --skip-migshm] [--dir /var/tmp] [--settle 3s]
                        [--group N]

Brings up two nodes on this machine (scripts/cluster up 2 --rate RATE --prefix P, one
migshmd each) and, for every size, moves the shmbench workload (half private memory,
half SysV shm, dirtying --dirty % of its pages per second) from n1 to n2 twice:

  baseline  what a user scripts by hand: criu dump (tree killed) to --dir, the images
            copied to n2 as a plain tar over one TCP connection through the throttled
            link, criu restore in n2's netns; downtime = total = dump start to restore done
  pageserver  what a CRIU-savvy user scripts: criu dump --page-server straight into a criu
            page-server waiting on n2 (no disk, no tar for the memory), then criu restore
  migshm    migshm run on n1, then migshm move --json WORKLOAD n2 (pre-copy, then freeze)
  group     with --group N, also: the same total memory as an IPC group of N shmbench
            members (migshm run --ipc-group), moved by one migshm move of one member

and prints a table per size: downtime, total time, bytes on the wire, the ratios against
the baseline of the same run, and migshm's rounds and dump/ship/restore split. Progress
goes to stderr. The cluster is torn down at the end unless --keep (with --skip-migshm
it is brought up without daemons). Needs root.

`

// benchConfig is the parsed command line of `migshm-lab bench`.
type benchConfig struct {
	Sizes        []int         `json:"sizes_mib"`
	Rate         string        `json:"rate"`
	RateBits     float64       `json:"rate_bits_per_sec"`
	Dirty        float64       `json:"dirty_pct_per_sec"`
	Runs         int           `json:"runs"`
	Prefix       string        `json:"prefix"`
	Keep         bool          `json:"-"`
	JSON         bool          `json:"-"`
	MaxDowntime  time.Duration `json:"max_downtime_ns,omitempty"`
	SkipBaseline bool          `json:"skip_baseline,omitempty"`
	SkipMigshm   bool          `json:"skip_migshm,omitempty"`
	Dir          string        `json:"images_dir"`
	Settle       time.Duration `json:"settle_ns"`
	Group        int           `json:"group,omitempty"`
	Root         string        `json:"-"`
}

// prefixRE is scripts/cluster's rule for prefixes.
var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,15}$`)

func parseBenchFlags(args []string, stderr io.Writer) (*benchConfig, error) {
	fset := flag.NewFlagSet("bench", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() {
		fmt.Fprint(stderr, benchUsage)
		fset.PrintDefaults()
	}
	sizes := fset.String("sizes", "100,512,1024", "comma-separated workload sizes in MiB (half private, half SysV shm)")
	cfg := &benchConfig{}
	fset.StringVar(&cfg.Rate, "rate", "1gbit", "tbf rate of each node's link (tc syntax: 1gbit, 100mbit, ...)")
	fset.Float64Var(&cfg.Dirty, "dirty", 5, "percent of the workload's pages it dirties per second")
	fset.IntVar(&cfg.Runs, "runs", 1, "runs per size (each one baseline, then migshm)")
	fset.StringVar(&cfg.Prefix, "prefix", "bench", "scripts/cluster prefix of the two nodes")
	fset.BoolVar(&cfg.Keep, "keep", false, "leave the cluster up at the end")
	fset.BoolVar(&cfg.JSON, "json", false, "print the results as JSON instead of tables")
	fset.DurationVar(&cfg.MaxDowntime, "max-downtime", 0, "passed to migshm move --max-downtime (0: its default)")
	fset.BoolVar(&cfg.SkipBaseline, "skip-baseline", false, "do not measure the baselines (baseline, pageserver)")
	fset.BoolVar(&cfg.SkipMigshm, "skip-migshm", false, "do not measure migshm move (the cluster runs no daemons)")
	fset.StringVar(&cfg.Dir, "dir", "/var/tmp", "where the baseline's images are dumped and copied to, as a user would (on disk)")
	fset.DurationVar(&cfg.Settle, "settle", 3*time.Second, "how long the workload dirties memory before it is moved")
	fset.IntVar(&cfg.Group, "group", 0, "also move the workload as an IPC group of this many members (0: not)")
	fset.StringVar(&cfg.Root, "root", "", "the migshm checkout (scripts/cluster, bin/); default: found from the working directory")
	if err := fset.Parse(args); err != nil {
		return nil, err
	}
	if fset.NArg() > 0 {
		return nil, fmt.Errorf("bench: unexpected arguments %q", fset.Args())
	}
	var err error
	if cfg.Sizes, err = parseSizes(*sizes); err != nil {
		return nil, err
	}
	if cfg.RateBits, err = parseRate(cfg.Rate); err != nil {
		return nil, err
	}
	switch {
	case !(cfg.Dirty >= 0 && cfg.Dirty <= 100):
		return nil, fmt.Errorf("bench: --dirty %v: want a percentage from 0 to 100", cfg.Dirty)
	case cfg.Runs < 1:
		return nil, fmt.Errorf("bench: --runs %d: want at least 1", cfg.Runs)
	case !prefixRE.MatchString(cfg.Prefix):
		return nil, fmt.Errorf("bench: --prefix %q: must match %s", cfg.Prefix, prefixRE)
	case cfg.SkipBaseline && cfg.SkipMigshm:
		return nil, errors.New("bench: --skip-baseline and --skip-migshm leave nothing to measure")
	case cfg.MaxDowntime < 0 || (cfg.MaxDowntime > 0 && cfg.MaxDowntime < time.Millisecond):
		return nil, fmt.Errorf("bench: --max-downtime %v: give at least 1ms (or 0 for migshm's default)", cfg.MaxDowntime)
	case cfg.MaxDowntime > 0 && cfg.SkipMigshm:
		return nil, errors.New("bench: --max-downtime is for migshm move, which --skip-migshm skips")
	case cfg.Group < 0 || cfg.Group == 1 || cfg.Group > 16:
		return nil, fmt.Errorf("bench: --group %d: give 2 to 16 members (or 0 for none)", cfg.Group)
	case cfg.Group > 0 && cfg.SkipMigshm:
		return nil, errors.New("bench: --group is moved by migshm, which --skip-migshm skips")
	case cfg.Settle < 0:
		return nil, fmt.Errorf("bench: --settle %v: must not be negative", cfg.Settle)
	case !filepath.IsAbs(cfg.Dir):
		return nil, fmt.Errorf("bench: --dir %q: give an absolute path", cfg.Dir)
	}
	return cfg, nil
}

// parseSizes parses "100,512,1024" (MiB). Each size must be at least 2 MiB (1 private + 1
// shm) and at most 1 TiB in all.
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		v, err := strconv.Atoi(f)
		if err != nil || v < 2 || v > 1<<20 {
			return nil, fmt.Errorf("bench: --sizes %q: %q is not a size in MiB from 2 to 1048576", s, f)
		}
		out = append(out, v)
	}
	return out, nil
}

// splitSize splits a total of MiB into private and shm halves (the odd MiB goes private).
func splitSize(total int) (private, shm int) {
	shm = total / 2
	return total - shm, shm
}

// rateRE accepts what tc's get_rate does for the rates scripts/cluster passes on: a
// number with an optional SI prefix and a unit, bit (bits/s) or bps (bytes/s).
var rateRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)([kmgt]?)(bit|bps)?$`)

// parseRate returns a tc rate ("1gbit", "100mbit", "125mbps", "1000000") in bits per
// second. As in tc, a bare number is bits per second and "bps" means bytes per second.
func parseRate(s string) (float64, error) {
	m := rateRE.FindStringSubmatch(strings.ToLower(s))
	if m == nil || (m[2] != "" && m[3] == "") {
		return 0, fmt.Errorf("bench: --rate %q: want a tc rate such as 1gbit, 100mbit or 125mbps", s)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("bench: --rate %q: want a positive rate", s)
	}
	v *= map[string]float64{"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m[2]]
	if m[3] == "bps" {
		v *= 8
	}
	return v, nil
}

// measurement is one move of the workload, by one method.
type measurement struct {
	Method     string `json:"method"` // "baseline" or "migshm"
	DowntimeNS int64  `json:"downtime_ns"`
	TotalNS    int64  `json:"total_ns"`
	WireBytes  int64  `json:"wire_bytes"` // payload bytes sent from n1 to n2
	// ImageBytes is the size of the checkpoint images (migshm: its workload_bytes).
	ImageBytes int64 `json:"image_bytes"`
	DumpNS     int64 `json:"dump_ns"`
	ShipNS     int64 `json:"ship_ns"` // baseline: the tar copy
	RestoreNS  int64 `json:"restore_ns"`
	// migshm only.
	Rounds       int   `json:"rounds,omitempty"`
	PrecopyBytes int64 `json:"precopy_bytes,omitempty"`
	FinalBytes   int64 `json:"final_bytes,omitempty"`
	WallNS       int64 `json:"wall_ns,omitempty"` // the `migshm move` command, start to exit
	// Window is the frozen window step by step (the migration record's).
	Window []record.WindowStep `json:"window,omitempty"`
	// baseline only.
	CopyBPS      float64 `json:"copy_bytes_per_sec,omitempty"` // WireBytes / ShipNS
	CRIUFrozenNS int64   `json:"criu_frozen_ns,omitempty"`     // CRIU's own frozen time of the dump
}

// frozenBytes is what crossed the link while the workload was frozen.
func (m *measurement) frozenBytes() int64 {
	if m.scripted() {
		return m.WireBytes
	}
	return m.FinalBytes
}

// scripted reports whether m is one of the hand-scripted CRIU moves (no pre-copy).
func (m *measurement) scripted() bool { return m.Method == "baseline" || m.Method == "pageserver" }

// fromSummary turns the summary of a `migshm move` into a measurement.
func fromSummary(s *api.MigrationStats, wall time.Duration) measurement {
	return measurement{
		Method:       "migshm",
		DowntimeNS:   s.FrozenNS,
		TotalNS:      s.TotalNS,
		WireBytes:    int64(s.PrecopyBytes + s.FinalBytes),
		ImageBytes:   int64(s.WorkloadBytes),
		DumpNS:       s.DumpNS,
		ShipNS:       s.ShipNS,
		RestoreNS:    s.RestoreNS,
		Rounds:       s.Rounds,
		PrecopyBytes: int64(s.PrecopyBytes),
		FinalBytes:   int64(s.FinalBytes),
		WallNS:       wall.Nanoseconds(),
		Window:       s.Window,
	}
}

// ratios compares migshm with the baseline of the same run. A ratio is 0 when either side
// is missing or zero.
type ratios struct {
	Downtime float64 `json:"downtime"` // baseline / migshm: how many times shorter
	Total    float64 `json:"total"`    // baseline / migshm
	Wire     float64 `json:"wire"`     // migshm / baseline: how many times the bytes
}

func ratio(num, den int64) float64 {
	if num <= 0 || den <= 0 {
		return 0
	}
	return float64(num) / float64(den)
}

func compare(base, mig *measurement) *ratios {
	if base == nil || mig == nil {
		return nil
	}
	return &ratios{
		Downtime: ratio(base.DowntimeNS, mig.DowntimeNS),
		Total:    ratio(base.TotalNS, mig.TotalNS),
		Wire:     ratio(mig.WireBytes, base.WireBytes),
	}
}

// benchRun is one run at one size: the baselines and migshm, measured back to back.
type benchRun struct {
	Run      int          `json:"run"`
	Baseline *measurement `json:"baseline,omitempty"`
	// PageServer is the stronger baseline: criu dump --page-server into criu page-server.
	PageServer *measurement `json:"pageserver,omitempty"`
	Migshm     *measurement `json:"migshm,omitempty"`
	Ratios     *ratios      `json:"ratios,omitempty"`
	// PSRatios are migshm's against the page-server baseline.
	PSRatios *ratios `json:"pageserver_ratios,omitempty"`
	// Limit is the physical-limit estimate for migshm's move (benchReport.Small).
	Limit *physicalLimit `json:"limit,omitempty"`
	// Group is the same memory moved as an IPC group (--group); GroupRatios against the
	// same baseline.
	Group       *measurement `json:"group,omitempty"`
	GroupRatios *ratios      `json:"group_ratios,omitempty"`
}

// compare fills in the ratios of the run's measurements, and the limit given the
// small workload's move.
func (r *benchRun) compare(small *measurement, rateBits float64) {
	r.Limit = limit(small, r.Baseline, r.Migshm, rateBits)
	r.Ratios = compare(r.Baseline, r.Migshm)
	r.PSRatios = compare(r.PageServer, r.Migshm)
	r.GroupRatios = compare(r.Baseline, r.Group)
}

// sizeResult holds every run at one size and, with more than one run, the medians.
type sizeResult struct {
	TotalMiB   int        `json:"total_mib"`
	PrivateMiB int        `json:"private_mib"`
	ShmMiB     int        `json:"shm_mib"`
	Runs       []benchRun `json:"runs"`
	Median     *benchRun  `json:"median,omitempty"` // Run 0; only with 2 or more runs
}

// benchReport is the whole result; --json prints it.
type benchReport struct {
	Config  benchConfig `json:"config"`
	CRIU    string      `json:"criu,omitempty"`
	Started time.Time   `json:"started"`
	// THPAnon and THPShmem are the machine's transparent huge page settings (the
	// bracketed word of /sys/kernel/mm/transparent_hugepage/{enabled,shmem_enabled}):
	// SysV segments use huge pages only with shmem_enabled within_size or always, and
	// CRIU's dump and restore of them are then several times faster.
	THPAnon  string `json:"thp_anon,omitempty"`
	THPShmem string `json:"thp_shmem,omitempty"`
	// Small is a migshm move of a 4 MiB shmbench, measured first: the fixed part of any
	// move's downtime, in the physical-limit estimate (limit).
	Small *measurement `json:"small,omitempty"`
	Sizes []sizeResult `json:"sizes"`
}

// thpSetting returns the chosen word of a transparent huge page setting ("" if unknown).
func thpSetting(name string) string {
	b, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/" + name)
	s := string(b)
	if i := strings.IndexByte(s, '['); i >= 0 {
		if j := strings.IndexByte(s[i:], ']'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return ""
}

// smallMiB is the size of the workload whose downtime is the fixed part of the limit.
const smallMiB = 4

// physicalLimit is what no move can beat by much: the bytes that must cross the link
// while frozen (migshm's last round: its final bytes) at the link's measured rate, plus
// the downtime of a workload too small to have memory worth mentioning. It is 0 when a
// part is missing.
type physicalLimit struct {
	FinalNS int64   `json:"final_ns"` // final bytes over the link rate
	FixedNS int64   `json:"fixed_ns"` // the small workload's downtime, same run
	LinkBPS float64 `json:"link_bytes_per_sec"`
	NS      int64   `json:"ns"`
	// Ratio is migshm's downtime over the limit (1 would be at the limit).
	Ratio float64 `json:"ratio"`
}

// limit estimates the physical limit for mig. The link rate is the baseline's copy
// rate when it was measured, else the configured rate.
func limit(small, base, mig *measurement, rateBits float64) *physicalLimit {
	if small == nil || mig == nil || small.DowntimeNS <= 0 {
		return nil
	}
	bps := rateBits / 8
	if base != nil && base.CopyBPS > 0 {
		bps = base.CopyBPS
	}
	if bps <= 0 {
		return nil
	}
	l := &physicalLimit{FinalNS: int64(float64(mig.FinalBytes) / bps * 1e9), FixedNS: small.DowntimeNS, LinkBPS: bps}
	l.NS = l.FinalNS + l.FixedNS
	l.Ratio = ratio(mig.DowntimeNS, l.NS)
	return l
}

// summarize fills in the medians of a size with two or more runs (small and rateBits:
// as for benchRun.compare).
func (s *sizeResult) summarize(small *measurement, rateBits float64) {
	if len(s.Runs) < 2 {
		s.Median = nil
		return
	}
	var bases, servers, migs, groups []measurement
	for _, r := range s.Runs {
		if r.Baseline != nil {
			bases = append(bases, *r.Baseline)
		}
		if r.PageServer != nil {
			servers = append(servers, *r.PageServer)
		}
		if r.Migshm != nil {
			migs = append(migs, *r.Migshm)
		}
		if r.Group != nil {
			groups = append(groups, *r.Group)
		}
	}
	med := &benchRun{Baseline: medianOf(bases), PageServer: medianOf(servers), Migshm: medianOf(migs), Group: medianOf(groups)}
	med.compare(small, rateBits)
	s.Median = med
}

// medianOf returns the field-by-field median of ms (nil if ms is empty).
func medianOf(ms []measurement) *measurement {
	if len(ms) == 0 {
		return nil
	}
	i64 := func(f func(measurement) int64) int64 {
		v := make([]int64, len(ms))
		for i, m := range ms {
			v[i] = f(m)
		}
		return median(v)
	}
	out := measurement{
		Method:       ms[0].Method,
		DowntimeNS:   i64(func(m measurement) int64 { return m.DowntimeNS }),
		TotalNS:      i64(func(m measurement) int64 { return m.TotalNS }),
		WireBytes:    i64(func(m measurement) int64 { return m.WireBytes }),
		ImageBytes:   i64(func(m measurement) int64 { return m.ImageBytes }),
		DumpNS:       i64(func(m measurement) int64 { return m.DumpNS }),
		ShipNS:       i64(func(m measurement) int64 { return m.ShipNS }),
		RestoreNS:    i64(func(m measurement) int64 { return m.RestoreNS }),
		Rounds:       int(i64(func(m measurement) int64 { return int64(m.Rounds) })),
		PrecopyBytes: i64(func(m measurement) int64 { return m.PrecopyBytes }),
		FinalBytes:   i64(func(m measurement) int64 { return m.FinalBytes }),
		WallNS:       i64(func(m measurement) int64 { return m.WallNS }),
		CRIUFrozenNS: i64(func(m measurement) int64 { return m.CRIUFrozenNS }),
	}
	out.CopyBPS = rate(out.WireBytes, out.ShipNS)
	windows := make([][]record.WindowStep, len(ms))
	for i, m := range ms {
		windows[i] = m.Window
	}
	out.Window = medianSteps(windows)
	return &out
}

// medianSteps returns the step-by-step median of windows: the steps (and parts) of the
// first in its order, each with the median of its time where it appears.
func medianSteps(windows [][]record.WindowStep) []record.WindowStep {
	if len(windows) == 0 || len(windows[0]) == 0 {
		return nil
	}
	var out []record.WindowStep
	for _, st := range windows[0] {
		var ns []int64
		var parts [][]record.WindowStep
		for _, w := range windows {
			if i := slices.IndexFunc(w, func(x record.WindowStep) bool { return x.Step == st.Step }); i >= 0 {
				ns = append(ns, w[i].NS)
				parts = append(parts, w[i].Parts)
			}
		}
		out = append(out, record.WindowStep{Step: st.Step, NS: median(ns), Parts: medianSteps(parts)})
	}
	return out
}

// writeWindow prints a frozen window step by step, each step's parts indented under it.
func writeWindow(w io.Writer, title string, steps []record.WindowStep) {
	if len(steps) == 0 {
		return
	}
	fmt.Fprintf(w, "  %s\n", title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	var walk func(steps []record.WindowStep, indent string)
	walk = func(steps []record.WindowStep, indent string) {
		for _, st := range steps {
			fmt.Fprintf(tw, "    %s%s\t%s\n", indent, st.Step, fmtDur(st.NS))
			walk(st.Parts, indent+"  ")
		}
	}
	walk(steps, "")
	tw.Flush()
}

// median of v (the mean of the middle two for an even count); v is not modified.
func median(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// rate is bytes per second, 0 if unknown.
func rate(bytes, ns int64) float64 {
	if bytes <= 0 || ns <= 0 {
		return 0
	}
	return float64(bytes) / (float64(ns) / 1e9)
}

// fmtDur prints a duration in ns for the table: "-" if unknown, ms under a second.
func fmtDur(ns int64) string {
	switch {
	case ns <= 0:
		return "-"
	case ns < int64(time.Second):
		return fmt.Sprintf("%dms", (ns+int64(time.Millisecond)/2)/int64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", float64(ns)/1e9)
	}
}

// fmtMB prints bytes in MB (10^6 bytes).
func fmtMB(b int64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(b)/1e6)
}

// fmtRatio prints a ratio as "12.3x" ("-" if unknown).
func fmtRatio(r float64) string {
	switch {
	case r <= 0 || math.IsNaN(r) || math.IsInf(r, 0):
		return "-"
	case r >= 100:
		return fmt.Sprintf("%.0fx", r)
	case r >= 10:
		return fmt.Sprintf("%.1fx", r)
	default:
		return fmt.Sprintf("%.2fx", r)
	}
}

// fmtRate prints bytes per second as MB/s.
func fmtRate(bps float64) string {
	if bps <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MB/s", bps/1e6)
}

// throttleNote says how a measured copy rate compares with the link's tbf rate, and
// warns when it cannot be the throttled link (faster than the rate) or is far below it.
func throttleNote(rateBits, bps float64) string {
	limit := rateBits / 8
	if bps <= 0 || limit <= 0 {
		return "no copy measured"
	}
	s := fmt.Sprintf("%s = %.0f%% of the tbf rate (%s)", fmtRate(bps), 100*bps/limit, fmtRate(limit))
	switch {
	case bps > 1.05*limit:
		s += "; WARNING: faster than the rate, the link is not throttled"
	case bps < 0.5*limit:
		s += "; WARNING: far below the rate (a busy machine, or the disk, limits the copy)"
	}
	return s
}

// writeTables prints one table per size, then a legend.
func writeTables(w io.Writer, rep *benchReport) error {
	cfg := rep.Config
	for i, s := range rep.Sizes {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%d MiB: %d MiB private + %d MiB SysV shm, dirtying %g%% of its pages/s, link %s\n",
			s.TotalMiB, s.PrivateMiB, s.ShmMiB, cfg.Dirty, cfg.Rate)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "run\tmethod\tdowntime\ttotal\twire MB\tdowntime x\tvs ps x\ttotal x\twire x\trounds\tfinal MB\tdump\tship\trestore\t")
		rows := slices.Clone(s.Runs)
		if s.Median != nil {
			rows = append(rows, *s.Median)
		}
		for _, r := range rows {
			label := strconv.Itoa(r.Run)
			if r.Run == 0 {
				label = "median"
			}
			for _, row := range []struct {
				m      *measurement
				rs, ps *ratios
			}{{r.Baseline, nil, nil}, {r.PageServer, nil, nil}, {r.Migshm, r.Ratios, r.PSRatios}, {r.Group, r.GroupRatios, nil}} {
				m := row.m
				if m == nil {
					continue
				}
				dx, px, tx, wx, rounds := "-", "-", "-", "-", "-"
				if !m.scripted() {
					rounds = strconv.Itoa(m.Rounds)
					if row.rs != nil {
						dx, tx, wx = fmtRatio(row.rs.Downtime), fmtRatio(row.rs.Total), fmtRatio(row.rs.Wire)
					}
					if row.ps != nil {
						px = fmtRatio(row.ps.Downtime)
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", label, m.Method,
					fmtDur(m.DowntimeNS), fmtDur(m.TotalNS), fmtMB(m.WireBytes), dx, px, tx, wx, rounds,
					fmtMB(m.frozenBytes()), fmtDur(m.DumpNS), fmtDur(m.ShipNS), fmtDur(m.RestoreNS))
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, r := range s.Runs {
			if r.Baseline != nil {
				fmt.Fprintf(w, "  run %d baseline copy: %s MB in %s: %s\n", r.Run, fmtMB(r.Baseline.WireBytes),
					fmtDur(r.Baseline.ShipNS), throttleNote(cfg.RateBits, r.Baseline.CopyBPS))
			}
		}
		for _, r := range rows {
			if l := r.Limit; l != nil {
				label := fmt.Sprintf("run %d", r.Run)
				if r.Run == 0 {
					label = "median"
				}
				fmt.Fprintf(w, "  %s physical limit: final %s MB at %s = %s, + the %d MiB move's downtime %s = %s; migshm's downtime is %s of it\n",
					label, fmtMB(r.Migshm.FinalBytes), fmtRate(l.LinkBPS), fmtDur(l.FinalNS), smallMiB, fmtDur(l.FixedNS),
					fmtDur(l.NS), fmtRatio(l.Ratio))
			}
		}
		switch {
		case s.Median != nil && s.Median.Migshm != nil:
			writeWindow(w, fmt.Sprintf("migshm's frozen window, step by step (median of %d runs; parts as CRIU and the target report them):",
				len(s.Runs)), s.Median.Migshm.Window)
		case len(s.Runs) == 1 && s.Runs[0].Migshm != nil:
			writeWindow(w, "migshm's frozen window, step by step (parts as CRIU and the target report them):", s.Runs[0].Migshm.Window)
		}
	}
	if rep.THPAnon != "" || rep.THPShmem != "" {
		fmt.Fprintf(w, "\nmachine: transparent huge pages %s for private memory, %s for shm (SysV segments)\n", rep.THPAnon, rep.THPShmem)
	}
	fmt.Fprintf(w, "\n%s", legend(cfg))
	return nil
}

// legend explains the columns and both methods.
func legend(cfg benchConfig) string {
	md := "its default"
	if cfg.MaxDowntime > 0 {
		md = cfg.MaxDowntime.String()
	}
	return fmt.Sprintf(`downtime  the workload runs nowhere. baseline: from the start of criu dump until criu restore
          returns with the tree running on n2; migshm: its frozen_ns (freeze on n1 to resume on n2)
total     baseline: = downtime; migshm: the move from plan to done, pre-copy included (total_ns)
wire MB   payload bytes sent from n1 to n2 (10^6 bytes; TCP/IP headers not counted). migshm:
          precopy_bytes + final_bytes
x         downtime x, total x = baseline / migshm (above 1: migshm is that many times shorter);
          wire x = migshm / baseline bytes; vs ps x = pageserver downtime / migshm downtime.
          Against the baselines measured in the same run.
final MB  bytes sent while the workload was frozen (baseline: all of them; migshm: final_bytes)
dump, ship, restore  the frozen steps. baseline: criu dump, the tar copy, criu restore; migshm:
          dump_ns, ship_ns, restore_ns
baseline  criu dump (tree killed) in n1's netns to %s (disk; page cache, no fsync), the images
          sent as an uncompressed tar over one TCP connection n1 -> n2 through the throttled link
          into a directory on n2, criu restore in n2's netns from that copy
pageserver  what a CRIU-savvy user scripts: criu page-server waiting in n2's netns, criu dump
          --page-server (tree killed) sends the memory straight to it through the throttled
          link, the other images (small) sent as the baseline's tar, criu restore on n2;
          wire MB = the page images it wrote + the tar
migshm    migshm run on n1, then migshm move --json WORKLOAD n2 (--max-downtime: %s)
group of N  (--group N) the same memory as N members of one IPC group, 1/N each, moved by one
          migshm move of one member (one dump of the group's tree)
workload  testdata/shmbench, moved after it dirtied memory for %v
limit     the physical limit: migshm's final MB over the link rate (the baseline's copy rate,
          else --rate) plus the downtime of a %d MiB shmbench moved by migshm first in this run
`, cfg.Dir, md, cfg.Settle, smallMiB)
}

// parseMoveStream reads the NDJSON stream of `migshm move --json` (one api.MoveEvent
// per line), calls on for every event, and returns the last one: the "done" event with
// its summary, or an error for an "error" event, garbage, or a stream that ends before
// either.
func parseMoveStream(r io.Reader, on func(api.MoveEvent)) (api.MoveEvent, error) {
	var last api.MoveEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var ev api.MoveEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			return last, fmt.Errorf("move stream: line %q: %w", truncate(string(line), 200), err)
		}
		last = ev
		if on != nil {
			on(ev)
		}
		switch ev.Event {
		case api.EventDone:
			if ev.Summary == nil {
				return ev, fmt.Errorf("move stream: migration %s done without a summary", ev.Migration)
			}
			return ev, nil
		case api.EventError:
			msg := ev.Error
			if ev.Code != "" {
				msg += " (code " + ev.Code + ")"
			}
			return ev, fmt.Errorf("migration %s failed: %s", ev.Migration, msg)
		}
	}
	if err := sc.Err(); err != nil {
		return last, fmt.Errorf("move stream: %w", err)
	}
	if last.Event == "" {
		return last, errors.New("move stream: no events")
	}
	return last, fmt.Errorf("move stream ended after event %q (phase %q) without done or error", last.Event, last.Phase)
}

// describeEvent is a progress line for one move event ("" for events not worth one).
func describeEvent(ev api.MoveEvent) string {
	switch ev.Event {
	case api.EventPhase:
		return "phase " + ev.Phase
	case api.EventRound:
		if r := ev.Round; r != nil {
			return fmt.Sprintf("round %d: %d pages read, %d changed, %d as deltas, %s MB sent in %s (%s)", r.Round, r.Pages,
				r.ChangedPages, r.DeltaPages, fmtMB(r.SentBytes), fmtDur(r.DurationNS), fmtRate(r.RateBPS))
		}
	case api.EventDone:
		if s := ev.Summary; s != nil {
			return fmt.Sprintf("done: frozen %s, total %s, %d rounds", fmtDur(s.FrozenNS), fmtDur(s.TotalNS), s.Rounds)
		}
	case api.EventError:
		return "error: " + ev.Error
	}
	return ""
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// parseEnv reads the KEY=VALUE lines of a scripts/cluster state file.
func parseEnv(r io.Reader) (map[string]string, error) {
	env := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("state file: bad line %q", line)
		}
		env[k] = v
	}
	return env, sc.Err()
}

// countTicks counts shmbench's once-a-second "shmbench tick=" lines in its output.
func countTicks(out []byte) int { return bytes.Count(out, []byte("shmbench tick=")) }

// findRoot finds the migshm checkout (scripts/cluster and a go.mod of the module) at or
// above one of the start directories.
func findRoot(starts ...string) (string, error) {
	for _, s := range starts {
		for d := s; d != ""; d = filepath.Dir(d) {
			if isRoot(d) {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("cannot find the migshm checkout (scripts/cluster, go.mod) above %s: run from the repository or give --root",
		strings.Join(starts, " or "))
}

func isRoot(d string) bool {
	mod, err := os.ReadFile(filepath.Join(d, "go.mod"))
	if err != nil || !bytes.Contains(mod, []byte("module github.com/migshm/migshm\n")) {
		return false
	}
	st, err := os.Stat(filepath.Join(d, "scripts", "cluster"))
	return err == nil && st.Mode().IsRegular()
}

// ---- the run ----

// clusterNode is what the bench needs of one node of scripts/cluster.
type clusterNode struct {
	ID, NetNSPath, Addr, Socket string
}

// bench holds the state of one `migshm-lab bench`.
type bench struct {
	cfg    *benchConfig
	start  time.Time
	root   string
	work   string // private dir under cfg.Dir: built programs, baseline images
	bins   testwork.Bins
	criu   *migrate.CRIU
	migshm string // bin/migshm
	nodes  [2]clusterNode
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

// benchMain is `migshm-lab bench`.
func benchMain(args []string) error {
	cfg, err := parseBenchFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("bench: must run as root (namespaces, CRIU)")
	}
	// File descriptors this process inherited without O_CLOEXEC (a shell's or a job
	// runner's) would otherwise reach scripts/cluster, the daemons it starts and their
	// workloads, and CRIU refuses to dump an fd whose mount it cannot see from the
	// daemon's mount namespace ("Can't lookup mount=N for fd=10").
	if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("bench: mark inherited fds close-on-exec: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	rep, err := runBench(ctx, cfg)
	if rep != nil && len(rep.Sizes) > 0 {
		// What was measured is printed even if a later step failed.
		var perr error
		if cfg.JSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			perr = enc.Encode(rep)
		} else {
			perr = writeTables(os.Stdout, rep)
		}
		err = errors.Join(err, perr)
	}
	return err
}

func runBench(ctx context.Context, cfg *benchConfig) (rep *benchReport, err error) {
	b := &bench{cfg: cfg, start: time.Now()}
	rep = &benchReport{Config: *cfg, Started: b.start.UTC(),
		THPAnon: thpSetting("enabled"), THPShmem: thpSetting("shmem_enabled")}
	if b.root = cfg.Root; b.root == "" {
		var starts []string
		if wd, err := os.Getwd(); err == nil {
			starts = append(starts, wd)
		}
		if exe, err := os.Executable(); err == nil {
			starts = append(starts, filepath.Dir(exe))
		}
		if b.root, err = findRoot(starts...); err != nil {
			return nil, err
		}
	} else if b.root, err = filepath.Abs(b.root); err != nil || !isRoot(b.root) {
		return nil, fmt.Errorf("bench: --root %s is not a migshm checkout", cfg.Root)
	}
	b.migshm = filepath.Join(b.root, "bin", "migshm")

	if !cfg.SkipBaseline {
		path, err := migrate.FindCRIU("")
		if err != nil {
			return nil, err
		}
		b.criu = &migrate.CRIU{Path: path}
		caps, err := b.criu.Check(ctx)
		if err != nil {
			return nil, err
		}
		rep.CRIU = caps.Version + " at " + caps.Path
		b.logf("CRIU %s", rep.CRIU)
	}

	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	if b.work, err = os.MkdirTemp(cfg.Dir, "migshm-bench-"); err != nil {
		return nil, err
	}
	defer os.RemoveAll(b.work)
	// The daemons run the workload from here, on either node: world-traversable.
	if err := os.Chmod(b.work, 0o755); err != nil {
		return nil, err
	}
	if b.bins, err = testwork.BuildAll(filepath.Join(b.work, "bin")); err != nil {
		return nil, fmt.Errorf("build test workloads: %w", err)
	}
	b.logf("built %s", b.bins.ShmBench)

	if err := b.clusterUp(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if cfg.Keep {
			b.logf("--keep: the cluster stays up; remove it with: %s down --prefix %s",
				filepath.Join(b.root, "scripts", "cluster"), cfg.Prefix)
			return
		}
		err = errors.Join(err, b.clusterDown())
	}()

	// A failed move is reported with the rest: the other sizes and runs still tell something.
	var errs []error
	if !cfg.SkipMigshm {
		priv, shm := splitSize(smallMiB)
		tag := fmt.Sprintf("%d MiB (the limit's fixed part)", smallMiB)
		m, err := b.moveWithMigshm(ctx, tag, sizeResult{TotalMiB: smallMiB, PrivateMiB: priv, ShmMiB: shm}, 0, 1)
		if err != nil {
			b.logf("%s: migshm failed: %v", tag, err)
			errs = append(errs, fmt.Errorf("%s: migshm: %w", tag, err))
		}
		rep.Small = m
	}
	for _, total := range cfg.Sizes {
		priv, shm := splitSize(total)
		sr := sizeResult{TotalMiB: total, PrivateMiB: priv, ShmMiB: shm}
		for runNo := 1; runNo <= cfg.Runs && ctx.Err() == nil; runNo++ {
			r := benchRun{Run: runNo}
			tag := fmt.Sprintf("%d MiB run %d/%d", total, runNo, cfg.Runs)
			if !cfg.SkipBaseline {
				for _, method := range []string{"baseline", "pageserver"} {
					m, err := b.scripted(ctx, method, tag, sr, runNo)
					if err != nil {
						b.logf("%s: %s failed: %v", tag, method, err)
						errs = append(errs, fmt.Errorf("%s: %s: %w", tag, method, err))
					}
					if method == "baseline" {
						r.Baseline = m
					} else {
						r.PageServer = m
					}
				}
			}
			if !cfg.SkipMigshm && ctx.Err() == nil {
				m, err := b.moveWithMigshm(ctx, tag, sr, runNo, 1)
				if err != nil {
					b.logf("%s: migshm failed: %v", tag, err)
					errs = append(errs, fmt.Errorf("%s: migshm: %w", tag, err))
				}
				r.Migshm = m
			}
			if cfg.Group > 0 && ctx.Err() == nil {
				m, err := b.moveWithMigshm(ctx, tag, sr, runNo, cfg.Group)
				if err != nil {
					b.logf("%s: migshm group failed: %v", tag, err)
					errs = append(errs, fmt.Errorf("%s: migshm group: %w", tag, err))
				}
				r.Group = m
			}
			r.compare(rep.Small, cfg.RateBits)
			if r.Baseline != nil || r.PageServer != nil || r.Migshm != nil || r.Group != nil {
				sr.Runs = append(sr.Runs, r)
			}
		}
		sr.summarize(rep.Small, cfg.RateBits)
		if len(sr.Runs) > 0 {
			rep.Sizes = append(rep.Sizes, sr)
		}
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("interrupted: %w", ctx.Err()))
			break
		}
	}
	return rep, errors.Join(errs...)
}

// clusterUp runs scripts/cluster up 2 and reads its state file.
func (b *bench) clusterUp(ctx context.Context) error {
	args := []string{"up", "2", "--rate", b.cfg.Rate, "--prefix", b.cfg.Prefix}
	if b.cfg.SkipMigshm {
		args = append(args, "--no-daemons")
	}
	b.logf("scripts/cluster %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, filepath.Join(b.root, "scripts", "cluster"), args...)
	cmd.Dir = b.root
	// The bench moves the workload itself: the balancer must not move it too.
	cmd.Env = append(os.Environ(), "MIGSHM_CLUSTER_DAEMON_ARGS=--auto-balance=false")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		// up removes what it made when it fails.
		return fmt.Errorf("scripts/cluster %s: %w", strings.Join(args, " "), err)
	}
	f, err := os.Open(filepath.Join("/run/migshm-cluster", b.cfg.Prefix+".env"))
	if err != nil {
		return errors.Join(err, b.clusterDown())
	}
	env, err := parseEnv(f)
	f.Close()
	if err != nil {
		return errors.Join(err, b.clusterDown())
	}
	for i := range b.nodes {
		n := clusterNode{
			ID:        fmt.Sprintf("n%d", i+1),
			NetNSPath: env[fmt.Sprintf("NODE%d_NETNS_PATH", i+1)],
			Addr:      env[fmt.Sprintf("NODE%d_ADDR", i+1)],
			Socket:    env[fmt.Sprintf("NODE%d_SOCKET", i+1)],
		}
		if n.NetNSPath == "" || n.Addr == "" || (n.Socket == "" && !b.cfg.SkipMigshm) {
			return errors.Join(fmt.Errorf("state file of prefix %s lacks node %d's netns, address or socket", b.cfg.Prefix, i+1),
				b.clusterDown())
		}
		b.nodes[i] = n
	}
	return nil
}

func (b *bench) clusterDown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b.logf("scripts/cluster down --prefix %s", b.cfg.Prefix)
	cmd := exec.CommandContext(ctx, filepath.Join(b.root, "scripts", "cluster"), "down", "--prefix", b.cfg.Prefix)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("scripts/cluster down --prefix %s: %w", b.cfg.Prefix, err)
	}
	return nil
}

func (b *bench) shmbenchArgs(s sizeResult) []string {
	return []string{b.bins.ShmBench, "--private-mib", strconv.Itoa(s.PrivateMiB), "--shm-mib", strconv.Itoa(s.ShmMiB),
		"--dirty-pct-per-sec", strconv.FormatFloat(b.cfg.Dirty, 'g', -1, 64)}
}

// memberArgs is shmbench as member i of a group of n sharing s's memory: 1/n of each
// part (at least 1 MiB), a segment of its own key.
func (b *bench) memberArgs(s sizeResult, i, n int) []string {
	part := sizeResult{PrivateMiB: max(s.PrivateMiB/n, 1), ShmMiB: max(s.ShmMiB/n, 1)}
	return append(b.shmbenchArgs(part), "--key", strconv.Itoa(0x4d494755+i))
}

// scripted moves the workload the way a user would script it without migshm, as
// method "baseline" (criu dump to a directory, the images copied as a tar, criu restore)
// or "pageserver" (criu dump --page-server straight into a criu page-server on n2, so
// the memory never touches n1's disk nor a tar; the few other images copied as a tar;
// criu restore).
func (b *bench) scripted(ctx context.Context, method, tag string, s sizeResult, runNo int) (*measurement, error) {
	dir := filepath.Join(b.work, fmt.Sprintf("%s-%d-%d", method, s.TotalMiB, runNo))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// The images go right away: their dirty page cache would otherwise be written back
	// while migshm is measured.
	defer os.RemoveAll(dir)
	stdout := filepath.Join(dir, "shmbench.out")
	b.logf("%s: %s: starting shmbench in %s", tag, method, b.nodes[0].NetNSPath)
	proc, err := workload.Start(workload.Spec{
		Args: b.shmbenchArgs(s), Stdout: stdout, Stderr: filepath.Join(dir, "shmbench.err"),
		NetNS: b.nodes[0].NetNSPath, Hostname: "shmbench",
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		if proc != nil {
			_ = proc.Kill()
			_, _ = proc.Wait()
		}
	}()
	readFile := func(context.Context) ([]byte, error) { return os.ReadFile(stdout) }
	if err := b.waitReady(ctx, readFile); err != nil {
		return nil, errors.Join(err, fileTail(filepath.Join(dir, "shmbench.err")))
	}

	src, dst := filepath.Join(dir, "images"), filepath.Join(dir, "n2-images")
	opts := migrate.DumpOptions{Pid: proc.Pid, ImagesDir: src, WorkDir: filepath.Join(dir, "dump-work"), NetNS: b.nodes[0].NetNSPath}
	var served func() (int64, error)
	if method == "pageserver" {
		// Started before the clock: a user has it waiting on n2 before the dump.
		if opts.PageServer, served, err = b.startPageServer(ctx, dst, b.nodes[1]); err != nil {
			return nil, err
		}
		b.logf("%s: %s: criu page-server listening at %s; criu dump --page-server", tag, method, opts.PageServer)
	} else {
		b.logf("%s: %s: criu dump to %s", tag, method, src)
	}
	t0 := time.Now()
	dump, err := b.criu.Dump(ctx, opts)
	var pageBytes int64
	if served != nil {
		var serr error
		pageBytes, serr = served()
		err = errors.Join(err, serr)
	}
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	b.logf("%s: %s: dumped %s MB of images in %s (CRIU: frozen %s; %s MB through the page server); copying the rest to n2",
		tag, method, fmtMB(dump.ImageBytes+pageBytes), fmtDur(t1.Sub(t0).Nanoseconds()), fmtDur(dump.Frozen.Nanoseconds()), fmtMB(pageBytes))
	wire, err := copyImages(ctx, src, dst, b.nodes[0], b.nodes[1])
	if err != nil {
		return nil, err
	}
	t2 := time.Now()
	b.logf("%s: %s: copied %s MB in %s (%s); criu restore in %s", tag, method, fmtMB(wire), fmtDur(t2.Sub(t1).Nanoseconds()),
		fmtRate(rate(wire, t2.Sub(t1).Nanoseconds())), b.nodes[1].NetNSPath)
	wire += pageBytes
	res, err := b.criu.Restore(ctx, migrate.RestoreOptions{ImagesDir: dst, WorkDir: filepath.Join(dir, "restore-work"),
		NetNS: b.nodes[1].NetNSPath})
	if err != nil {
		return nil, err
	}
	t3 := time.Now()
	// The dumped tree was killed by CRIU: reap its init. The restored one is our child now.
	_, _ = proc.Wait()
	proc = workload.Attach(res.Pid)

	m := &measurement{
		Method:       method,
		DowntimeNS:   t3.Sub(t0).Nanoseconds(),
		TotalNS:      t3.Sub(t0).Nanoseconds(),
		WireBytes:    wire,
		ImageBytes:   dump.ImageBytes + pageBytes,
		DumpNS:       t1.Sub(t0).Nanoseconds(),
		ShipNS:       t2.Sub(t1).Nanoseconds(),
		RestoreNS:    t3.Sub(t2).Nanoseconds(),
		CopyBPS:      rate(wire-pageBytes, t2.Sub(t1).Nanoseconds()),
		CRIUFrozenNS: dump.Frozen.Nanoseconds(),
	}
	b.logf("%s: %s: restored as pid %d after %s down", tag, method, res.Pid, fmtDur(m.DowntimeNS))
	if err := b.waitTicking(ctx, readFile); err != nil {
		return m, fmt.Errorf("restored workload: %w", err)
	}
	return m, nil
}

// startPageServer starts `criu page-server` in node to's netns, writing into dir, and
// returns once it listens: its address, and a function that waits for it to end (it
// serves one dump) and returns the size of the page images it wrote.
func (b *bench) startPageServer(ctx context.Context, dir string, to clusterNode) (string, func() (int64, error), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	var port int
	if err := nsutil.Do(nsutil.Net, to.NetNSPath, func() error {
		ln, err := net.Listen("tcp", net.JoinHostPort(to.Addr, "0"))
		if err != nil {
			return err
		}
		port = ln.Addr().(*net.TCPAddr).Port
		return ln.Close()
	}); err != nil {
		return "", nil, fmt.Errorf("page server: find a free port on n2: %w", err)
	}
	ready, w, err := os.Pipe()
	if err != nil {
		return "", nil, err
	}
	defer ready.Close()
	log := filepath.Join(dir, "..", "page-server.log")
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+to.NetNSPath, b.criu.Path, "page-server",
		"--images-dir", dir, "--address", to.Addr, "--port", strconv.Itoa(port), "--status-fd", "3",
		"--log-file", log, "-v4")
	cmd.ExtraFiles = []*os.File{w}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Start()
	w.Close()
	if err != nil {
		return "", nil, fmt.Errorf("page server: %w", err)
	}
	wait := func() (int64, error) {
		if err := cmd.Wait(); err != nil {
			return 0, errors.Join(fmt.Errorf("criu page-server: %w: %s", err, bytes.TrimSpace(out.Bytes())), fileTail(log))
		}
		n, err := dirSize(dir)
		return n, err
	}
	// CRIU writes a byte to the status fd once it listens, and closes it on failure.
	ready.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := ready.Read(make([]byte, 1)); err != nil {
		cmd.Process.Kill()
		_, werr := wait()
		return "", nil, fmt.Errorf("criu page-server did not start: %w", errors.Join(err, werr))
	}
	return net.JoinHostPort(to.Addr, strconv.Itoa(port)), wait, nil
}

// dirSize is the total size of the regular files in dir.
func dirSize(dir string) (int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
	}
	return n, nil
}

// waitReady waits for shmbench's ready line, then lets it dirty memory for cfg.Settle.
func (b *bench) waitReady(ctx context.Context, read func(context.Context) ([]byte, error)) error {
	err := poll(ctx, 2*time.Minute, func() error {
		out, err := read(ctx)
		if err != nil {
			return err
		}
		if !bytes.Contains(out, []byte("shmbench ready")) {
			return errors.New("no ready line from shmbench yet")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("workload did not start: %w", err)
	}
	return sleepCtx(ctx, b.cfg.Settle)
}

// waitTicking waits until the moved workload prints a new tick line: it runs.
func (b *bench) waitTicking(ctx context.Context, read func(context.Context) ([]byte, error)) error {
	out, err := read(ctx)
	if err != nil {
		return err
	}
	before := countTicks(out)
	return poll(ctx, 10*time.Second, func() error {
		out, err := read(ctx)
		if err != nil {
			return err
		}
		if countTicks(out) <= before {
			return fmt.Errorf("no new tick line after the move (still %d)", before)
		}
		return nil
	})
}

// copyImages sends every file of src, as an uncompressed tar over one TCP connection
// from n1's netns to a receiver in n2's netns, which writes them to dst. It returns the
// bytes sent over the connection.
func copyImages(ctx context.Context, src, dst string, from, to clusterNode) (int64, error) {
	var ln net.Listener
	if err := nsutil.Do(nsutil.Net, to.NetNSPath, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(to.Addr, "0"))
		return err
	}); err != nil {
		return 0, fmt.Errorf("listen on n2: %w", err)
	}
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	recvDone := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			recvDone <- err
			return
		}
		defer conn.Close()
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		defer stop()
		recvDone <- untar(conn, dst)
	}()

	var conn net.Conn
	err := nsutil.Do(nsutil.Net, from.NetNSPath, func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", ln.Addr().String())
		return err
	})
	if err != nil {
		ln.Close()
		return 0, errors.Join(fmt.Errorf("connect from n1 to n2: %w", err), <-recvDone)
	}
	defer conn.Close()
	stopConn := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopConn()
	cw := &countWriter{w: conn}
	sendErr := sendTar(cw, src)
	if sendErr == nil {
		sendErr = conn.(*net.TCPConn).CloseWrite()
	} else {
		conn.Close()
	}
	if err := errors.Join(sendErr, <-recvDone); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err() // the closed connections are only the consequence
		}
		return cw.n, fmt.Errorf("copy images to n2: %w", err)
	}
	return cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// sendTar writes the regular files of the flat directory src as a tar stream.
func sendTar(w io.Writer, src string) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", path)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// untar writes the regular files of a tar stream into dst (created with 0700).
func untar(r io.Reader, dst string) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	tr := tar.NewReader(bufio.NewReaderSize(r, 1<<20))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg || !filepath.IsLocal(hdr.Name) {
			return fmt.Errorf("unexpected tar entry %q (type %c)", hdr.Name, hdr.Typeflag)
		}
		path := filepath.Join(dst, hdr.Name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, os.FileMode(hdr.Mode).Perm()&0o700)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
}

// moveWithMigshm starts the workload with migshm run on n1 and moves it to n2 with
// migshm move --json.
// moveWithMigshm runs the workload on n1 (as an IPC group of members shmbench members
// when members > 1) and moves it to n2 with one migshm move.
func (b *bench) moveWithMigshm(ctx context.Context, tag string, s sizeResult, runNo, members int) (*measurement, error) {
	base := fmt.Sprintf("bench-%d-%d", s.TotalMiB, runNo)
	names := []string{base}
	method := "migshm"
	if members > 1 {
		method = fmt.Sprintf("group of %d", members)
		names = nil
		for i := range members {
			names = append(names, fmt.Sprintf("%s-g%d", base, i))
		}
	}
	sock := b.nodes[0].Socket
	defer func() {
		// Stop and forget them wherever they run now, even if the bench was interrupted.
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, name := range names {
			if _, err := b.cli(cctx, sock, "stop", "--timeout", "5s", name); err != nil {
				b.logf("%s: %s: stop %s: %v", tag, method, name, err)
			}
			if _, err := b.cli(cctx, sock, "rm", name); err != nil {
				b.logf("%s: %s: rm %s: %v", tag, method, name, err)
			}
		}
	}()
	for i, name := range names {
		b.logf("%s: %s: migshm run --name %s on n1", tag, method, name)
		args := []string{"run", "--name", name, "--dir", "/", "--"}
		if members > 1 {
			args = append([]string{"run", "--name", name, "--dir", "/", "--ipc-group", base, "--"}, b.memberArgs(s, i, members)...)
		} else {
			args = append(args, b.shmbenchArgs(s)...)
		}
		if _, err := b.cli(ctx, sock, args...); err != nil {
			return nil, err
		}
	}
	name := names[0]
	logsOf := func(name string) func(ctx context.Context) ([]byte, error) {
		return func(ctx context.Context) ([]byte, error) { return b.cli(ctx, sock, "logs", name) }
	}
	for _, n := range names {
		if err := b.waitReady(ctx, logsOf(n)); err != nil {
			return nil, err
		}
	}

	moveArgs := []string{"--socket", sock, "move", "--json"}
	if b.cfg.MaxDowntime > 0 {
		moveArgs = append(moveArgs, "--max-downtime", b.cfg.MaxDowntime.String())
	}
	moveArgs = append(moveArgs, name, b.nodes[1].ID)
	b.logf("%s: %s: migshm %s", tag, method, strings.Join(moveArgs, " "))
	// A move that hangs must not hang the bench: far more than the link needs to carry the
	// workload a few times over.
	mctx, cancel := context.WithTimeout(ctx, 2*time.Minute+time.Duration(s.TotalMiB)*time.Second)
	defer cancel()
	cmd := exec.CommandContext(mctx, b.migshm, moveArgs...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	last, perr := parseMoveStream(out, func(ev api.MoveEvent) {
		if d := describeEvent(ev); d != "" {
			b.logf("%s: %s: move: %s", tag, method, d)
		}
	})
	_, _ = io.Copy(io.Discard, out)
	werr := cmd.Wait()
	wall := time.Since(t0)
	if perr != nil && last.Event == "" && werr != nil {
		// It printed nothing: its own error says why.
		return nil, fmt.Errorf("migshm move: %w: %s", werr, strings.TrimSpace(stderr.String()))
	}
	if perr != nil {
		return nil, fmt.Errorf("migshm move: %w (stderr: %s)", perr, strings.TrimSpace(stderr.String()))
	}
	if werr != nil {
		return nil, fmt.Errorf("migshm move: %w (stderr: %s)", werr, strings.TrimSpace(stderr.String()))
	}
	m := fromSummary(last.Summary, wall)
	m.Method = method

	// It must run on n2 now, and go on running.
	psOut, err := b.cli(ctx, sock, "ps", "--json")
	if err != nil {
		return &m, err
	}
	var ws []api.Workload
	if err := json.Unmarshal(psOut, &ws); err != nil {
		return &m, fmt.Errorf("migshm ps --json: %w", err)
	}
	for _, name := range names {
		if err := checkMoved(ws, name, b.nodes[1].ID); err != nil {
			return &m, err
		}
		if err := b.waitTicking(ctx, logsOf(name)); err != nil {
			return &m, fmt.Errorf("moved workload %s: %w", name, err)
		}
	}
	return &m, nil
}

// checkMoved says whether workload name runs on node according to ps --json.
func checkMoved(ws []api.Workload, name, node string) error {
	for _, w := range ws {
		if w.Name != name {
			continue
		}
		if w.Node != node || w.State != "running" {
			return fmt.Errorf("after the move, %s is %s on %s, want running on %s", name, w.State, w.Node, node)
		}
		return nil
	}
	return fmt.Errorf("after the move, migshm ps does not list %s", name)
}

// cli runs bin/migshm --socket sock ARGS and returns its stdout.
func (b *bench) cli(ctx context.Context, sock string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, b.migshm, append([]string{"--socket", sock}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("migshm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// poll calls fn until it succeeds, ctx ends or d passes; it returns fn's last error.
func poll(ctx context.Context, d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// fileTail returns the end of a file as an error, for a workload that did not start.
func fileTail(path string) error {
	b, err := os.ReadFile(path)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return fmt.Errorf("%s: %s", path, strings.TrimSpace(string(b)))
}
