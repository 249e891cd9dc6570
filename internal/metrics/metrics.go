// Package metrics is a daemon's Prometheus registry: what the replicated table knows
// (migrations, node and workload load), read at every scrape so that a restarted daemon
// loses none of it, Raft's state, and what only this process sees (commit latency,
// balancer passes).
package metrics

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is where the daemon serves Prometheus metrics (plain HTTP, no
// authentication: keep it on loopback or a trusted network).
const DefaultAddr = "127.0.0.1:9641"

// Source is what the metrics read at scrape time: the replicated table and Raft's stats
// (hashicorp/raft's Stats keys). *shmowner.Store is one.
type Source interface {
	Table() *shmowner.Table
	Stats() map[string]string
}

// Metrics are a daemon's Prometheus metrics, on a registry of its own (several daemons
// may run in one process).
type Metrics struct {
	reg *prometheus.Registry

	applySeconds *prometheus.HistogramVec
	balPasses    prometheus.Counter
	balMoves     *prometheus.CounterVec
	balSkips     prometheus.Gauge
	balImbalance prometheus.Gauge
	balSpread    prometheus.Gauge
}

// Histogram buckets, in seconds.
var (
	applyBuckets  = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 15}
	phaseBuckets  = []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	frozenBuckets = []float64{.01, .025, .05, .1, .2, .3, .5, 1, 2.5, 5, 10}
)

// New builds the metrics of node over src and registers them, with the Go and process
// collectors, on a new registry.
func New(node string, src Source) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		applySeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "migshm_raft_apply_seconds",
			Help: "Time to commit a table command as this node sees it (through the leader if it does not lead, " +
				"retries through elections included), by message type and outcome (ok, error).",
			Buckets: applyBuckets,
		}, []string{"type", "outcome"}),
		balPasses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "migshm_balancer_passes_total",
			Help: "Balancer passes (not dry runs) this node ran as leader since it started.",
		}),
		balMoves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "migshm_balancer_moves_total",
			Help: "Moves the balancer started, or failed to start, as this node's leader since it started, by kind (cpu, drain, memory).",
		}, []string{"kind", "result"}),
		balSkips: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "migshm_balancer_skips",
			Help: "Workloads, nodes or passes the last balancer pass of this node left alone.",
		}),
		balImbalance: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "migshm_balancer_imbalance",
			Help: "CPU imbalance the last balancer pass of this node saw (what CPU balancing reduces).",
		}),
		balSpread: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "migshm_balancer_spread",
			Help: "Load of the most loaded minus the least loaded active node, at the last balancer pass of this node.",
		}),
	}
	// Every kind and result from the start, so rate() sees the first move.
	for _, k := range []string{"cpu", "drain", "memory"} {
		for _, r := range []string{"started", "failed"} {
			m.balMoves.WithLabelValues(k, r)
		}
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.applySeconds, m.balPasses, m.balMoves, m.balSkips, m.balImbalance, m.balSpread,
		&tableCollector{node: node, src: src},
		&raftCollector{src: src},
	)
	return m
}

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler(errLog *log.Logger) http.Handler {
	opts := promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4, Timeout: 10 * time.Second}
	if errLog != nil {
		opts.ErrorLog = errLog
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, opts))
	return mux
}

// ObserveApply records one commit of a table command (cluster.Config.OnApply).
func (m *Metrics) ObserveApply(t shmowner.MessageType, d time.Duration, err error) {
	if m == nil {
		return
	}
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.applySeconds.WithLabelValues(t.String(), outcome).Observe(d.Seconds())
}

// ObserveBalance records a balancer pass the leader ran. Dry runs move nothing and are
// not counted.
func (m *Metrics) ObserveBalance(rep *api.BalanceReport) {
	if m == nil || rep == nil || rep.DryRun {
		return
	}
	m.balPasses.Inc()
	for _, mv := range rep.Moves {
		switch {
		case mv.Started:
			m.balMoves.WithLabelValues(mv.Kind, "started").Inc()
		case mv.Error != "":
			m.balMoves.WithLabelValues(mv.Kind, "failed").Inc()
		}
	}
	m.balSkips.Set(float64(len(rep.Skipped)))
	m.balImbalance.Set(rep.Imbalance)
	m.balSpread.Set(rep.Spread)
}

// Listen binds the metrics address, with an error naming the setting.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics-addr %s: %w (choose another with --metrics-addr or MIGSHMD_METRICS_ADDR, "+
			"or set it to \"\" to serve no metrics)", addr, err)
	}
	return ln, nil
}

// Descriptions of the metrics read from the table and from Raft at scrape time.
var (
	descMigrations = prometheus.NewDesc("migshm_migrations_total",
		"Migrations this node drove as source that ended, from the replicated table, by outcome (done, aborted) "+
			"and initiator (user, balancer).",
		[]string{"outcome", "initiator"}, nil)
	descMigrationsInFlight = prometheus.NewDesc("migshm_migrations_in_flight",
		"Migrations this node drives as source that are not done or aborted yet, by initiator (user, balancer).",
		[]string{"initiator"}, nil)
	descPhaseSeconds = prometheus.NewDesc("migshm_migration_phase_seconds",
		"Duration of the phases of the migrations this node drove to done: final dump, shipping the final images, "+
			"restore on the target, and total from plan to done. A phase with no figure is not counted.",
		[]string{"phase"}, nil)
	descFrozenSeconds = prometheus.NewDesc("migshm_migration_frozen_seconds",
		"Downtime of the migrations this node drove to done: from the freeze to the resume on the target.",
		nil, nil)
	descMigrationBytes = prometheus.NewDesc("migshm_migration_bytes_total",
		"Bytes shipped by the migrations this node drove as source, by stage: precopy (while the workload ran) "+
			"and final (while it was frozen).",
		[]string{"stage"}, nil)

	descNodeCPU = prometheus.NewDesc("migshm_node_cpu_load",
		"CPU load the node last reported, normalised: 0..1 per core, averaged over its cores.", []string{"node"}, nil)
	descNodeCores = prometheus.NewDesc("migshm_node_cores",
		"CPU capacity the node declares (capacity-cores), as last reported.", []string{"node"}, nil)
	descNodeMemFree = prometheus.NewDesc("migshm_node_mem_free_bytes",
		"Free memory the node last reported.", []string{"node"}, nil)
	descNodeWorkloads = prometheus.NewDesc("migshm_node_workloads",
		"Workloads the node last reported running.", []string{"node"}, nil)
	descNodeUp = prometheus.NewDesc("migshm_node_up",
		"1 if the table has the node active or draining, else 0 (down or left).", []string{"node"}, nil)
	descNodeDraining = prometheus.NewDesc("migshm_node_draining",
		"1 if the node is draining (its workloads are being moved off), else 0.", []string{"node"}, nil)
	descWorkloadCPU = prometheus.NewDesc("migshm_workload_cpu_cores",
		"Cores a workload running on this node used over the last load interval (1 = one core busy).",
		[]string{"workload", "name"}, nil)
	descWorkloadMem = prometheus.NewDesc("migshm_workload_mem_bytes",
		"Memory of a workload running on this node: anonymous resident memory of its processes plus its shared memory segments.",
		[]string{"workload", "name"}, nil)
	descWorkloadAddr = prometheus.NewDesc("migshm_workload_address_info",
		"1 for each workload running on this node with an address of its own (migshm run --ip), labelled with it.",
		[]string{"workload", "name", "addr"}, nil)
	descAddressesHeld = prometheus.NewDesc("migshm_addresses_held",
		"Addresses of their own that running workloads hold, cluster-wide, from the replicated table.", nil, nil)

	descRaftState = prometheus.NewDesc("migshm_raft_state",
		"1 for this node's current Raft state (leader, follower, candidate, shutdown), 0 for the others.",
		[]string{"state"}, nil)
	descRaftTerm = prometheus.NewDesc("migshm_raft_term",
		"This node's current Raft term.", nil, nil)
	descRaftCommit = prometheus.NewDesc("migshm_raft_commit_index",
		"The highest log index this node knows to be committed.", nil, nil)
	descRaftApplied = prometheus.NewDesc("migshm_raft_applied_index",
		"The highest log index this node applied to its table.", nil, nil)
	descRaftLastContact = prometheus.NewDesc("migshm_raft_last_contact_seconds",
		"Time since this node last heard from the leader (0 on the leader; absent if it never did).", nil, nil)
	descRaftPeers = prometheus.NewDesc("migshm_raft_peers",
		"Other voters in this node's latest Raft configuration (0 if this node is not a voter).", nil, nil)
)

// tableCollector reads migrations, nodes and workloads from the replicated table.
type tableCollector struct {
	node string // this node's id
	src  Source
}

func (c *tableCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMigrations, descMigrationsInFlight, descPhaseSeconds, descFrozenSeconds, descMigrationBytes,
		descNodeCPU, descNodeCores, descNodeMemFree, descNodeWorkloads, descNodeUp, descNodeDraining,
		descWorkloadCPU, descWorkloadMem, descWorkloadAddr, descAddressesHeld} {
		ch <- d
	}
}

func (c *tableCollector) Collect(ch chan<- prometheus.Metric) {
	t := c.src.Table()
	if t == nil {
		return
	}
	c.collectMigrations(ch, t)
	for _, n := range t.Nodes() {
		up, draining := 0.0, 0.0
		switch n.State {
		case record.NodeActive:
			up = 1
		case record.NodeDraining:
			up, draining = 1, 1
		}
		ch <- prometheus.MustNewConstMetric(descNodeUp, prometheus.GaugeValue, up, n.ID)
		ch <- prometheus.MustNewConstMetric(descNodeDraining, prometheus.GaugeValue, draining, n.ID)
		if n.LoadAt == 0 {
			continue // never reported: no figures rather than zeros
		}
		ch <- prometheus.MustNewConstMetric(descNodeCPU, prometheus.GaugeValue, n.Load.CPU, n.ID)
		ch <- prometheus.MustNewConstMetric(descNodeCores, prometheus.GaugeValue, n.Load.Cores, n.ID)
		ch <- prometheus.MustNewConstMetric(descNodeMemFree, prometheus.GaugeValue, float64(n.Load.MemFreeBytes), n.ID)
		ch <- prometheus.MustNewConstMetric(descNodeWorkloads, prometheus.GaugeValue, float64(n.Load.Workloads), n.ID)
	}
	held := map[string]bool{}
	for _, w := range t.Workloads() {
		if w.Addr != "" && w.State != record.WorkloadExited {
			held[w.Addr] = true
			if w.Node == c.node {
				ch <- prometheus.MustNewConstMetric(descWorkloadAddr, prometheus.GaugeValue, 1, w.ID, w.Name, w.Addr)
			}
		}
		if w.Node != c.node || w.State != record.WorkloadRunning || w.Load == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descWorkloadCPU, prometheus.GaugeValue, w.Load.CPU, w.ID, w.Name)
		ch <- prometheus.MustNewConstMetric(descWorkloadMem, prometheus.GaugeValue, float64(w.Load.MemBytes), w.ID, w.Name)
	}
	ch <- prometheus.MustNewConstMetric(descAddressesHeld, prometheus.GaugeValue, float64(len(held)))
}

// constHistogram accumulates observations for prometheus.MustNewConstHistogram.
type constHistogram struct {
	bounds []float64
	counts []uint64 // cumulative: counts[i] observations <= bounds[i]
	count  uint64
	sum    float64
}

func newConstHistogram(bounds []float64) *constHistogram {
	return &constHistogram{bounds: bounds, counts: make([]uint64, len(bounds))}
}

// observeNS adds a duration in nanoseconds; 0 (not measured) is left out.
func (h *constHistogram) observeNS(ns int64) {
	if ns <= 0 {
		return
	}
	v := float64(ns) / 1e9
	h.count++
	h.sum += v
	for i, b := range h.bounds {
		if v <= b {
			h.counts[i]++
		}
	}
}

func (h *constHistogram) metric(desc *prometheus.Desc, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.bounds))
	for i, b := range h.bounds {
		buckets[b] = h.counts[i]
	}
	return prometheus.MustNewConstHistogram(desc, h.count, h.sum, buckets, labels...)
}

func (c *tableCollector) collectMigrations(ch chan<- prometheus.Metric, t *shmowner.Table) {
	outcomes := []string{"done", "aborted"}
	initiators := []string{"user", "balancer"}
	counts := map[[2]string]uint64{}
	phases := []string{"dump", "ship", "restore", "total"}
	phaseH := map[string]*constHistogram{}
	for _, p := range phases {
		phaseH[p] = newConstHistogram(phaseBuckets)
	}
	frozen := newConstHistogram(frozenBuckets)
	var precopy, final uint64
	for _, p := range t.Pruned() { // retention's: still counted in the totals
		if p.Node != c.node {
			continue
		}
		for k, v := range p.Ended {
			if outcome, initiator, ok := strings.Cut(k, "/"); ok {
				counts[[2]string{outcome, initiator}] += v
			}
		}
		precopy += p.PrecopyBytes
		final += p.FinalBytes
	}
	for _, m := range t.Migrations() {
		if m.Source != c.node {
			continue
		}
		initiator := m.Initiator()
		outcome := "in_flight"
		switch m.Phase {
		case record.PhaseDone:
			outcome = "done"
		case record.PhaseAborted:
			outcome = "aborted"
		}
		counts[[2]string{outcome, initiator}]++
		st := m.Stats
		if st == nil {
			continue
		}
		precopy += st.PrecopyBytes
		final += st.FinalBytes
		if m.Phase != record.PhaseDone {
			continue
		}
		phaseH["dump"].observeNS(st.DumpNS)
		phaseH["ship"].observeNS(st.ShipNS)
		phaseH["restore"].observeNS(st.RestoreNS)
		phaseH["total"].observeNS(st.TotalNS)
		frozen.observeNS(st.FrozenNS)
	}
	for _, i := range initiators {
		for _, o := range outcomes {
			ch <- prometheus.MustNewConstMetric(descMigrations, prometheus.CounterValue, float64(counts[[2]string{o, i}]), o, i)
		}
		ch <- prometheus.MustNewConstMetric(descMigrationsInFlight, prometheus.GaugeValue, float64(counts[[2]string{"in_flight", i}]), i)
	}
	for _, p := range phases {
		ch <- phaseH[p].metric(descPhaseSeconds, p)
	}
	ch <- frozen.metric(descFrozenSeconds)
	ch <- prometheus.MustNewConstMetric(descMigrationBytes, prometheus.CounterValue, float64(precopy), "precopy")
	ch <- prometheus.MustNewConstMetric(descMigrationBytes, prometheus.CounterValue, float64(final), "final")
}

// raftCollector reads this node's Raft state from raft's Stats.
type raftCollector struct {
	src Source
}

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftState, descRaftTerm, descRaftCommit, descRaftApplied,
		descRaftLastContact, descRaftPeers} {
		ch <- d
	}
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Stats()
	state := strings.ToLower(st["state"])
	for _, s := range []string{"leader", "follower", "candidate", "shutdown"} {
		v := 0.0
		if s == state {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descRaftState, prometheus.GaugeValue, v, s)
	}
	for _, g := range []struct {
		desc *prometheus.Desc
		key  string
	}{
		{descRaftTerm, "term"}, {descRaftCommit, "commit_index"}, {descRaftApplied, "applied_index"},
		{descRaftPeers, "num_peers"},
	} {
		if v, err := strconv.ParseUint(st[g.key], 10, 64); err == nil {
			ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(v))
		}
	}
	if lc, ok := parseLastContact(st["last_contact"]); ok {
		ch <- prometheus.MustNewConstMetric(descRaftLastContact, prometheus.GaugeValue, lc.Seconds())
	}
}

// parseLastContact reads raft's last_contact stat: "0" on the leader, "never", or a
// duration. It reports false for "never" and anything it cannot read.
func parseLastContact(s string) (time.Duration, bool) {
	switch s {
	case "0":
		return 0, true
	case "", "never":
		return 0, false
	}
	d, err := time.ParseDuration(s)
	return d, err == nil
}
