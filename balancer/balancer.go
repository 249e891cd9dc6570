package balancer

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// Config is the policy's knobs and the nodes' capacities.
type Config struct {
	// Threshold, in normalised load (cores used / cores), is how far a node may sit from
	// the cluster mean: a node above mean+Threshold is overloaded and sheds; a node below
	// mean-Threshold is underloaded and the most loaded nodes above the mean shed toward
	// it. At a fixed point every active node is within Threshold of the mean, so the
	// spread (most loaded - least loaded) is at most 2*Threshold unless a rule (pinned,
	// group size, room, hysteresis) blocks the move that would close it.
	Threshold float64
	// Hysteresis is the least a CPU move must reduce the imbalance by (see Imbalance:
	// the capacity-weighted sum of squared deviations of the nodes' normalised loads
	// from the mean). Moving u of load across a gap g between two equal nodes reduces it
	// by 2u(g-u): the margin forbids moves that barely help and moves of tiny workloads.
	// Too high a margin strands a big node holding only small workloads above the band
	// (in the 50-node simulation 0.01 left two 16-core nodes ~0.1 over it; 0.005 none).
	Hysteresis float64
	// WorkloadCooldown: a workload (any member of a group) whose last migration (done,
	// aborted or in flight) changed less than this ago is not moved by CPU balancing or
	// memory ushering.
	WorkloadCooldown time.Duration
	// NodeCooldown: a node takes part in at most one CPU move (as source or target) per
	// NodeCooldown: not while a migration to or from it is in flight, not within
	// NodeCooldown of the last one's end, and once per Plan. Memory ushering applies it to
	// targets only; drains ignore it. At 0 none of this applies.
	NodeCooldown time.Duration
	// MaxConcurrent caps the migrations in flight (non-terminal in the table) plus the
	// ones planned. A group counts as one migration per workload. Below 1 nothing moves.
	MaxConcurrent int
	// MemFloorBytes: an active node with less free memory than this sheds workloads
	// first (memory ushering), and no move may leave a target below it.
	MemFloorBytes uint64
	// MemHeadroom is the fraction of a target's memory that must stay free after it
	// receives a workload (the target must keep max(MemFloorBytes, MemHeadroom*total)).
	MemHeadroom float64
	// Capacity is each node's CPU capacity in cores, by node id; DefaultCapacity is used
	// for a node not in the map. A node with no capacity is neither measured nor a target.
	Capacity        map[string]float64
	DefaultCapacity float64
	// MemCapacity, if it holds a node, is the memory (bytes) that node's workloads may
	// use: its free memory is then MemCapacity minus its workloads' MemBytes. Use it when
	// nodes share one kernel (the local cluster), where every node's /proc/meminfo reads
	// the same. A node not in the map uses its own report (Node.Load.MemFreeBytes and
	// MemTotalBytes); a node with neither is not a target.
	MemCapacity map[string]uint64
}

// DefaultConfig returns the policy's defaults: one core per node until the daemon fills
// Capacity, memory from the nodes' own reports.
func DefaultConfig() Config {
	return Config{
		Threshold:        0.10,
		Hysteresis:       0.005,
		WorkloadCooldown: 5 * time.Minute,
		NodeCooldown:     30 * time.Second,
		MaxConcurrent:    4,
		MemFloorBytes:    512 << 20,
		MemHeadroom:      0.10,
		DefaultCapacity:  1,
	}
}

// Validate reports whether the policy can run with c.
func (c Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), ErrInvalidConfig)
	}
	switch {
	case !(c.Threshold >= 0) || math.IsInf(c.Threshold, 0):
		return bad("threshold %v: want a finite value >= 0", c.Threshold)
	case !(c.Hysteresis >= 0) || math.IsInf(c.Hysteresis, 0):
		return bad("hysteresis %v: want a finite value >= 0", c.Hysteresis)
	case c.WorkloadCooldown < 0 || c.NodeCooldown < 0:
		return bad("cooldowns %v, %v: want >= 0", c.WorkloadCooldown, c.NodeCooldown)
	case c.MaxConcurrent < 1:
		return bad("max concurrent %d: want >= 1", c.MaxConcurrent)
	case !(c.MemHeadroom >= 0 && c.MemHeadroom < 1):
		return bad("memory headroom %v: want 0 <= h < 1", c.MemHeadroom)
	case !(c.DefaultCapacity >= 0) || math.IsInf(c.DefaultCapacity, 0):
		return bad("default capacity %v: want a finite value >= 0", c.DefaultCapacity)
	}
	for _, id := range sortedKeys(c.Capacity) {
		if v := c.Capacity[id]; !(v > 0) || math.IsInf(v, 0) {
			return bad("capacity of node %q is %v cores: want a finite value > 0", id, v)
		}
	}
	return nil
}

func (c Config) cores(node string) float64 {
	if v, ok := c.Capacity[node]; ok {
		return v
	}
	return c.DefaultCapacity
}

// WorkloadLoad is what one workload uses, as the daemon measures it from its processes.
type WorkloadLoad struct {
	CPU      float64 // cores used (1.0 = one core busy)
	MemBytes uint64  // resident memory, shm included
	Since    int64   // unix nanos: when the interval of the CPU figure began; 0 if unknown
}

// Kind says which rule planned a move.
type Kind string

// Move kinds, in the order Plan considers them.
const (
	KindMemory Kind = "memory" // memory ushering: the source is below the free-memory floor
	KindDrain  Kind = "drain"  // the source is draining
	KindCPU    Kind = "cpu"    // CPU balancing
)

// Move is one planned migration. The moves of one group share Group, To and Reason and
// are adjacent in Decision.Moves.
type Move struct {
	Workload string
	Group    string
	From, To string
	Kind     Kind
	Reason   string  // why, with the numbers
	Score    float64 // reduction of Imbalance this move (its unit) brings; <= 0 for a drain or ushering move that costs balance
}

// Skip says why something that looked movable (a workload on a node that should shed, or
// such a node) was not moved. A workload skip has Workload, Group and Node set; a node
// skip only Node; a skip with neither is about the whole plan (the cap).
type Skip struct {
	Workload string // empty for a node or plan skip
	Group    string
	Node     string
	Reason   string
}

// Decision is the result of Plan: the moves in the order they should be committed, and
// the skips sorted by node then workload.
type Decision struct {
	Moves   []Move
	Skipped []Skip
}

// NodeLoad is a node's load as the balancer counts it.
type NodeLoad struct {
	Node          string
	State         record.NodeState
	Cores         float64 // capacity (Config.Capacity or DefaultCapacity)
	CPU           float64 // cores used by the workloads counted on it
	Load          float64 // CPU / Cores; 0 when Cores is 0
	Workloads     int     // workloads counted on it
	MemFreeBytes  uint64  // as the balancer counts it (MemCapacity minus workloads, or the node's report minus inbound migrations)
	MemTotalBytes uint64
	// Settling: its last load report began before its last migration ended, so CPU
	// balancing leaves it out until the next one.
	Settling bool
}

// NodeLoads returns every node's load as Plan counts it, sorted by node id. The source is
// explicit: a node's CPU is the sum of WorkloadLoad.CPU of the running workloads the table
// places on it, plus the workloads migrating to it (counted at their target, not their
// source), divided by its capacity. Node.Load.CPU and RunQueue are not used: on a local
// cluster every node shares one kernel, and the per-workload figures are exactly what a
// move carries, so a projected load is exact. Workloads on down or left nodes and exited
// workloads count nowhere; a workload missing from load counts as zero.
func NodeLoads(t *shmowner.Table, load map[string]WorkloadLoad, cfg Config) []NodeLoad {
	p := newPlanner(t, load, time.Time{}, cfg)
	out := make([]NodeLoad, 0, len(p.nodes))
	for _, n := range p.nodes {
		nl := NodeLoad{Node: n.id, State: n.state, Cores: n.cores, CPU: n.used, Workloads: n.count,
			MemFreeBytes: uint64(max(n.memFree, 0)), MemTotalBytes: uint64(max(n.memTotal, 0)), Settling: !n.settled()}
		if n.cores > 0 {
			nl.Load = n.used / n.cores
		}
		out = append(out, nl)
	}
	return out
}

// Imbalance is the quantity CPU balancing reduces: over the active nodes with a capacity,
// the sum of (Cores/meanCores) * (Load - mean)^2, where mean is total CPU / total cores.
// On equal nodes it is the plain sum of squared deviations of the normalised loads; the
// weights make equal normalised load the minimum on unequal nodes too.
func Imbalance(nodes []NodeLoad) float64 {
	return imbalance(len(nodes), func(i int) (float64, float64, bool) {
		n := nodes[i]
		return n.Cores, n.CPU, n.State == record.NodeActive && n.Cores > 0
	})
}

// imbalance computes Imbalance over n nodes given by at (cores, cores used, counted).
func imbalance(n int, at func(i int) (cores, used float64, ok bool)) float64 {
	var used, cores float64
	k := 0
	for i := range n {
		c, u, ok := at(i)
		if !ok {
			continue
		}
		used, cores, k = used+u, cores+c, k+1
	}
	if k == 0 {
		return 0
	}
	mean, kbar := used/cores, cores/float64(k)
	var s float64
	for i := range n {
		c, u, ok := at(i)
		if !ok {
			continue
		}
		d := u/c - mean
		s += c / kbar * d * d
	}
	return s
}

// Plan decides which workloads should move where now. It is pure and deterministic: the
// same table, loads, time and config give the same decision.
//
// Rules, in order of priority, each bounded by MaxConcurrent (in-flight migrations plus
// planned ones):
//  1. Memory ushering: an active node below MemFloorBytes free sheds units until it is
//     above the floor, the smallest unit that covers the deficit first (else the largest).
//  2. Drain: a draining node sheds every movable unit, largest CPU first, each to the
//     least loaded active node with room; cooldowns and hysteresis do not apply.
//  3. CPU: while some active node is above mean+Threshold (or below mean-Threshold), the
//     most loaded source (above mean+Threshold, or above the mean when a node is under
//     the band) moves the unit that reduces Imbalance most to the least loaded active
//     node with room, if the reduction is at least Hysteresis.
//
// "Least loaded" counts the unit being placed (least loaded after the move), which on
// equal nodes is the least loaded node and on unequal ones keeps a big unit off a small
// idle node. Ties break by current load, then node id.
//
// A unit is a workload's IPC group (the workloads of the group on one node): it moves as a
// whole, to one target, or not at all. Never moved: pinned units, units with a member in
// flight; split groups move only off a draining node. Targets are active nodes only, with
// room (free memory after the move >= max(MemFloorBytes, MemHeadroom*total)); down and
// left nodes are neither sources nor targets. Every planned move updates the projected
// loads the next decision uses. No ping-pong: besides the cooldowns, ushering and CPU
// balancing never send a workload back to the node its last completed migration left.
func Plan(t *shmowner.Table, load map[string]WorkloadLoad, now time.Time, cfg Config) Decision {
	if err := cfg.Validate(); err != nil {
		return Decision{Skipped: []Skip{{Reason: "no plan: " + err.Error()}}}
	}
	p := newPlanner(t, load, now, cfg)
	p.usher()
	p.drain()
	p.balance()
	return p.decision()
}

// node is a node's projected state during one Plan.
type node struct {
	id       string
	state    record.NodeState
	cores    float64
	used     float64 // cores
	count    int
	memTotal int64
	memFree  int64
	memKnown bool
	busy     bool  // a migration to or from it is in flight
	lastMove int64 // unix nanos: the latest end of a finished migration to or from it
	since    int64 // unix nanos: start of the interval its last load report covers (0: none)
	oldest   int64 // unix nanos: the earliest Since of the figures counted on it (0: none known)
	inPlan   bool  // source or target of a move of this plan
	units    []*unit
	addrNet  netip.Prefix // where it serves addresses of their own (invalid: nowhere)
}

func (n *node) load() float64 {
	if n.cores <= 0 {
		return 0
	}
	return n.used / n.cores
}

// counted reports whether the node's workloads are counted at all.
func (n *node) counted() bool {
	return n.state == record.NodeActive || n.state == record.NodeDraining
}

// balanced reports whether the node takes part in the mean and the imbalance.
func (n *node) balanced() bool { return n.state == record.NodeActive && n.cores > 0 }

// settled reports whether the node's CPU figures describe its current placement: its
// last load report, and every workload figure counted on it, cover intervals that began
// after its last migration ended. Until
// then the figures are stale (a workload that just arrived still shows what it used
// while frozen, the others what they got before it came or left), and CPU balancing
// leaves the node out.
func (n *node) settled() bool {
	return n.lastMove == 0 || (n.since >= n.lastMove && (n.oldest == 0 || n.oldest >= n.lastMove))
}

// cpuCounted reports whether CPU balancing counts the node: in the mean, the imbalance
// and as a source or target.
func (n *node) cpuCounted() bool { return n.balanced() && n.settled() }

// unit is what moves: the workloads of one IPC group on one node.
type unit struct {
	group      string
	node       *node
	ws         []record.Workload // sorted by id
	cpu        float64
	mem        int64
	unmeasured []string
	block      string          // why it never moves (pinned, in flight); "" if it may
	split      []string        // the other nodes the group runs on, sorted; nil if whole
	last       int64           // unix nanos of the latest migration activity of a member
	left       map[string]bool // nodes a member left in its last completed migration
	addr       netip.Addr      // the group's address of its own, if it has one
}

func (u *unit) String() string {
	if len(u.ws) == 1 {
		return "workload " + u.ws[0].ID
	}
	ids := make([]string, len(u.ws))
	for i, w := range u.ws {
		ids[i] = w.ID
	}
	return fmt.Sprintf("group %s (%s) together", u.group, strings.Join(ids, ", "))
}

type planner struct {
	cfg      Config
	now      int64
	nodes    []*node // sorted by id
	inflight int
	moves    []Move
	skips    map[string]Skip
	capNoted bool
}

func newPlanner(t *shmowner.Table, load map[string]WorkloadLoad, now time.Time, cfg Config) *planner {
	p := &planner{cfg: cfg, now: now.UnixNano(), skips: map[string]Skip{}}
	byID := map[string]*node{}
	for _, tn := range t.Nodes() {
		n := &node{id: tn.ID, state: tn.State, cores: cfg.cores(tn.ID), since: tn.Load.Since}
		n.addrNet, _ = netip.ParsePrefix(tn.AddrNet)
		if mc, ok := cfg.MemCapacity[tn.ID]; ok {
			n.memTotal, n.memFree, n.memKnown = int64(mc), int64(mc), mc > 0
		} else {
			n.memTotal, n.memFree = int64(tn.Load.MemTotalBytes), int64(tn.Load.MemFreeBytes)
			n.memKnown = tn.Load.MemTotalBytes > 0
		}
		p.nodes = append(p.nodes, n)
		byID[n.id] = n
	}

	inflight := map[string]record.Migration{} // by workload
	lastAct := map[string]int64{}             // by workload
	lastDone := map[string]record.Migration{} // by workload
	for _, m := range t.Migrations() {
		at := max(m.StartedAt, m.UpdatedAt)
		for _, id := range m.Moves() { // a group's members move together
			lastAct[id] = max(lastAct[id], at)
		}
		if !m.Phase.Terminal() {
			p.inflight++
			for _, id := range m.Moves() {
				inflight[id] = m
			}
			for _, id := range []string{m.Source, m.Target} {
				if n := byID[id]; n != nil {
					n.busy = true
				}
			}
			continue
		}
		for _, id := range []string{m.Source, m.Target} {
			if n := byID[id]; n != nil {
				n.lastMove = max(n.lastMove, at)
			}
		}
		if m.Phase == record.PhaseDone {
			for _, id := range m.Moves() {
				if prev, ok := lastDone[id]; !ok || m.UpdatedAt >= prev.UpdatedAt {
					lastDone[id] = m
				}
			}
		}
	}

	groups := map[string][]record.Workload{}
	for _, w := range t.Workloads() {
		n := byID[w.Node]
		if w.State == record.WorkloadExited || n == nil {
			continue
		}
		groups[w.Group] = append(groups[w.Group], w)
		wl := load[w.ID]
		mem := int64(wl.MemBytes)
		// Memory counts where it is held: on its node against a budget (a node's own
		// report already includes it) and, while it migrates, also on the target, as a
		// reservation against either figure. CPU counts where it is going.
		if _, budget := cfg.MemCapacity[n.id]; budget && n.counted() {
			n.memFree -= mem
		}
		at := n
		if m, ok := inflight[w.ID]; ok && w.State == record.WorkloadMigrating && byID[m.Target] != nil {
			at = byID[m.Target]
			if at.counted() {
				at.memFree -= mem
			}
		}
		if at.counted() {
			at.used += wl.CPU
			at.count++
			// A figure measured elsewhere or before a move (the workload that just
			// arrived, before its new node measured it) keeps the node unsettled.
			if wl.Since > 0 && (at.oldest == 0 || wl.Since < at.oldest) {
				at.oldest = wl.Since
			}
		}
	}

	for _, g := range sortedKeys(groups) {
		parts := map[string][]record.Workload{}
		for _, w := range groups[g] {
			parts[w.Node] = append(parts[w.Node], w)
		}
		nodeIDs := sortedKeys(parts)
		for _, nid := range nodeIDs {
			n := byID[nid]
			if !n.counted() {
				continue
			}
			u := &unit{group: g, node: n, ws: parts[nid], left: map[string]bool{}}
			if len(nodeIDs) > 1 {
				u.split = slices.DeleteFunc(slices.Clone(nodeIDs), func(s string) bool { return s == nid })
			}
			for _, w := range u.ws {
				wl, ok := load[w.ID]
				u.cpu += wl.CPU
				u.mem += int64(wl.MemBytes)
				if !ok {
					u.unmeasured = append(u.unmeasured, w.ID)
				}
				u.last = max(u.last, lastAct[w.ID])
				if a, err := netip.ParsePrefix(w.Addr); err == nil { // ADDR/PREFIX
					u.addr = a.Addr() // the members of a group share it
				}
				if m, ok := lastDone[w.ID]; ok {
					u.left[m.Source] = true
				}
				switch {
				case u.block != "":
				case w.Pinned && len(u.ws) == 1:
					u.block = fmt.Sprintf("pinned: workload %s never moves", w.ID)
				case w.Pinned:
					u.block = fmt.Sprintf("pinned: workload %s of group %s is pinned, and a group moves whole", w.ID, g)
				case w.State == record.WorkloadMigrating:
					u.block = fmt.Sprintf("in flight: workload %s of group %s is migrating (migration %s)", w.ID, g, inflight[w.ID].ID)
				}
			}
			n.units = append(n.units, u)
		}
	}
	return p
}

// capLeft returns how many more migrations may be planned; at zero it notes why, once.
func (p *planner) capLeft() int {
	left := p.cfg.MaxConcurrent - p.inflight - len(p.moves)
	if left <= 0 && !p.capNoted {
		p.capNoted = true
		p.skips["cap"] = Skip{Reason: fmt.Sprintf("cap reached: %d migrations in flight + %d planned >= MaxConcurrent %d",
			p.inflight, len(p.moves), p.cfg.MaxConcurrent)}
	}
	return left
}

// fits reports whether u's migrations fit under the cap, noting why not.
func (p *planner) fits(u *unit) bool {
	left := p.capLeft()
	if len(u.ws) <= left {
		return true
	}
	if left > 0 {
		p.skipUnit(u, fmt.Sprintf("cap: %s needs %d migrations, %d left under MaxConcurrent %d (%d in flight, %d planned)",
			u, len(u.ws), left, p.cfg.MaxConcurrent, p.inflight, len(p.moves)))
	}
	return false
}

func (p *planner) skipUnit(u *unit, reason string) {
	for _, w := range u.ws {
		p.skips["w\x00"+w.ID] = Skip{Workload: w.ID, Group: u.group, Node: u.node.id, Reason: reason}
	}
}

func (p *planner) skipNode(n *node, reason string) {
	p.skips["n\x00"+n.id] = Skip{Node: n.id, Reason: reason}
}

// movable returns why u may not move under rule k, "" if it may.
func (p *planner) movable(u *unit, k Kind) string {
	switch {
	case u.block != "":
		return u.block
	case u.split != nil && k != KindDrain:
		return fmt.Sprintf("group split: group %s also runs on %s; the balancer moves a group only whole (except off a draining node)",
			u.group, strings.Join(u.split, ", "))
	case len(u.unmeasured) > 0 && k != KindDrain:
		return fmt.Sprintf("no load measurement for %s", strings.Join(u.unmeasured, ", "))
	case k != KindDrain && u.last > 0 && p.now-u.last < int64(p.cfg.WorkloadCooldown):
		return fmt.Sprintf("workload cooldown: last migration of %s %s ago < %s", u, ago(p.now-u.last), p.cfg.WorkloadCooldown)
	}
	return ""
}

// cooling reports whether n may not take part in a CPU move now (nodeCooling says why).
func (p *planner) cooling(n *node) bool {
	return !n.settled() || (p.cfg.NodeCooldown > 0 && (n.inPlan || n.busy || (n.lastMove > 0 && p.now-n.lastMove < int64(p.cfg.NodeCooldown))))
}

// nodeCooling returns why n may not take part in a CPU move now, "" if it may.
func (p *planner) nodeCooling(n *node) string {
	if !p.cooling(n) {
		return ""
	}
	switch {
	case n.inPlan:
		return fmt.Sprintf("node cooldown: %s is already in a move of this plan (NodeCooldown %s)", n.id, p.cfg.NodeCooldown)
	case n.busy:
		return fmt.Sprintf("node cooldown: a migration to or from %s is in flight", n.id)
	case n.lastMove > 0 && p.now-n.lastMove < int64(p.cfg.NodeCooldown):
		return fmt.Sprintf("node cooldown: last migration of %s ended %s ago < %s", n.id, ago(p.now-n.lastMove), p.cfg.NodeCooldown)
	case !n.settled():
		return p.settling(n)
	}
	return ""
}

// settling says why an unsettled node's CPU figures are not used.
func (p *planner) settling(n *node) string {
	if n.since >= n.lastMove {
		return fmt.Sprintf("settling: a workload figure counted on %s was measured from %s ago, before its last migration ended %s ago "+
			"(a workload that just arrived is measured there an interval later); waiting for its next report",
			n.id, ago(p.now-n.oldest), ago(p.now-n.lastMove))
	}
	from := "no interval yet"
	if n.since > 0 {
		from = "from " + ago(p.now-n.since) + " ago"
	}
	return fmt.Sprintf("settling: %s's last load report (%s) began before its last migration ended %s ago; waiting for its next report",
		n.id, from, ago(p.now-n.lastMove))
}

// need returns the free memory a target must keep after receiving.
func (p *planner) need(n *node) int64 {
	return max(int64(p.cfg.MemFloorBytes), int64(math.Ceil(p.cfg.MemHeadroom*float64(n.memTotal))))
}

// targets returns the nodes CPU balancing counts, least loaded first (ties by id).
func (p *planner) targets() []*node {
	var out []*node
	for _, n := range p.nodes {
		if n.cpuCounted() {
			out = append(out, n)
		}
	}
	slices.SortStableFunc(out, func(a, b *node) int { return cmp.Compare(a.load(), b.load()) })
	return out
}

// pickTarget returns the node that may receive u under rule k and is least loaded once it
// has u (on equal nodes: the least loaded; ties by current load, then id), or nil and why
// no node may. A drained part of a split group prefers the nodes where the rest runs.
func (p *planner) pickTarget(u *unit, k Kind) (*node, string) {
	if k == KindDrain && u.split != nil {
		rest := func(n *node) bool { return slices.Contains(u.split, n.id) }
		if n, _ := p.scanTargets(u, k, rest); n != nil {
			return n, ""
		}
	}
	return p.scanTargets(u, k, nil)
}

func (p *planner) scanTargets(u *unit, k Kind, only func(*node) bool) (*node, string) {
	var best *node
	var bestAfter float64
	var total, cooling, noRoom, noMem, back, noNet int
	for _, n := range p.nodes {
		if !n.balanced() || n == u.node || (only != nil && !only(n)) {
			continue
		}
		total++
		switch {
		case u.addr.IsValid() && !(n.addrNet.IsValid() && n.addrNet.Contains(u.addr)):
			noNet++
		case k != KindDrain && p.cooling(n):
			cooling++
		case k != KindDrain && u.left[n.id]:
			back++
		case !n.memKnown:
			noMem++
		case n.memFree-u.mem < p.need(n):
			noRoom++
		default:
			after := (n.used + u.cpu) / n.cores
			if best == nil || after < bestAfter || (after == bestAfter && n.load() < best.load()) {
				best, bestAfter = n, after
			}
		}
	}
	if best != nil {
		return best, ""
	}
	var why []string
	if noNet > 0 {
		why = append(why, fmt.Sprintf("%d not on the network of its address %s (ip-parent)", noNet, u.addr))
	}
	if cooling > 0 {
		why = append(why, fmt.Sprintf("%d in node cooldown", cooling))
	}
	if back > 0 {
		why = append(why, fmt.Sprintf("%d it left in its last migration (no ping-pong)", back))
	}
	if noMem > 0 {
		why = append(why, fmt.Sprintf("%d without a memory figure", noMem))
	}
	if noRoom > 0 {
		why = append(why, fmt.Sprintf("%d would keep less free than the floor/headroom after %s", noRoom, bytes(u.mem)))
	}
	if len(why) == 0 {
		why = append(why, "none")
	}
	return nil, fmt.Sprintf("no target for %s (%.2f cores, %s): of %d other active nodes, %s",
		u, u.cpu, bytes(u.mem), total, strings.Join(why, ", "))
}

// gain returns the reduction of the imbalance if x cores move from a to b.
func (p *planner) gain(a, b *node, x float64) float64 {
	at := func(i int) (float64, float64, bool) {
		n := p.nodes[i]
		used := n.used
		if n == a {
			used -= x
		}
		if n == b {
			used += x
		}
		return n.cores, used, n.cpuCounted()
	}
	now := func(i int) (float64, float64, bool) {
		n := p.nodes[i]
		return n.cores, n.used, n.cpuCounted()
	}
	return imbalance(len(p.nodes), now) - imbalance(len(p.nodes), at)
}

func (p *planner) mean() (float64, int) {
	var used, cores float64
	k := 0
	for _, n := range p.nodes {
		if n.cpuCounted() {
			used, cores, k = used+n.used, cores+n.cores, k+1
		}
	}
	if cores == 0 {
		return 0, 0
	}
	return used / cores, k
}

// move plans u to b and updates the projection.
func (p *planner) move(u *unit, b *node, k Kind, reason string) {
	a := u.node
	score := p.gain(a, b, u.cpu)
	a.used -= u.cpu
	b.used += u.cpu
	a.count -= len(u.ws)
	b.count += len(u.ws)
	a.memFree += u.mem
	b.memFree -= u.mem
	a.inPlan, b.inPlan = true, true
	a.units = slices.DeleteFunc(a.units, func(x *unit) bool { return x == u })
	u.node = b
	delete(p.skips, "n\x00"+a.id)
	for _, w := range u.ws {
		delete(p.skips, "w\x00"+w.ID)
		p.moves = append(p.moves, Move{Workload: w.ID, Group: u.group, From: a.id, To: b.id, Kind: k, Reason: reason, Score: score})
	}
}

// after describes a target after receiving u.
func (p *planner) after(u *unit, b *node) string {
	return fmt.Sprintf("%s load %.3f -> %.3f, %s free after (keeps >= %s)",
		b.id, b.load(), (b.used+u.cpu)/b.cores, bytes(b.memFree-u.mem), bytes(p.need(b)))
}

// usher moves units off active nodes below the free-memory floor.
func (p *planner) usher() {
	floor := int64(p.cfg.MemFloorBytes)
	var low []*node
	for _, n := range p.nodes {
		if n.state == record.NodeActive && n.memKnown && n.memFree < floor {
			low = append(low, n)
		}
	}
	slices.SortStableFunc(low, func(a, b *node) int { return cmp.Compare(a.memFree, b.memFree) })
	for _, a := range low {
		for a.memFree < floor {
			if p.capLeft() <= 0 {
				return
			}
			deficit := floor - a.memFree
			var cover, rest []*unit
			for _, u := range a.units {
				if why := p.movable(u, KindMemory); why != "" {
					p.skipUnit(u, why)
					continue
				}
				if u.mem <= 0 {
					continue
				}
				if u.mem >= deficit {
					cover = append(cover, u)
				} else {
					rest = append(rest, u)
				}
			}
			// The cheapest move that ends the shortage first; else the biggest relief.
			slices.SortStableFunc(cover, func(x, y *unit) int {
				return cmp.Or(cmp.Compare(x.mem, y.mem), cmp.Compare(x.cpu, y.cpu))
			})
			slices.SortStableFunc(rest, func(x, y *unit) int { return cmp.Compare(y.mem, x.mem) })
			moved := false
			for _, u := range append(cover, rest...) {
				if !p.fits(u) {
					continue
				}
				b, why := p.pickTarget(u, KindMemory)
				if b == nil {
					p.skipUnit(u, why)
					continue
				}
				p.move(u, b, KindMemory, fmt.Sprintf(
					"memory: %s has %s free < floor %s; %s (%s) to %s, of the active nodes with room and out of cooldown the least loaded after the move: %s",
					a.id, bytes(a.memFree), bytes(floor), u, bytes(u.mem), b.id, p.after(u, b)))
				moved = true
				break
			}
			if !moved {
				if len(cover)+len(rest) == 0 {
					p.skipNode(a, fmt.Sprintf("memory: %s has %s free < floor %s, but nothing on it can move", a.id, bytes(a.memFree), bytes(floor)))
				}
				break
			}
		}
	}
}

// drain moves every movable unit off draining nodes.
func (p *planner) drain() {
	for _, a := range p.nodes {
		if a.state != record.NodeDraining {
			continue
		}
		us := slices.Clone(a.units)
		slices.SortStableFunc(us, func(x, y *unit) int {
			return cmp.Or(cmp.Compare(y.cpu, x.cpu), cmp.Compare(y.mem, x.mem))
		})
		for _, u := range us {
			if p.capLeft() <= 0 {
				return
			}
			if why := p.movable(u, KindDrain); why != "" {
				p.skipUnit(u, "drain: "+why)
				continue
			}
			if !p.fits(u) {
				continue
			}
			b, why := p.pickTarget(u, KindDrain)
			if b == nil {
				p.skipUnit(u, "drain: "+why)
				continue
			}
			where := "of the active nodes with room the least loaded after the move"
			if slices.Contains(u.split, b.id) {
				where = "where the rest of group " + u.group + " runs"
			}
			note := ""
			if len(u.unmeasured) > 0 {
				note = fmt.Sprintf("; no load measurement for %s, counted as zero", strings.Join(u.unmeasured, ", "))
			}
			p.move(u, b, KindDrain, fmt.Sprintf("drain: %s is draining; %s (%.2f cores, %s) to %s, %s: %s%s",
				a.id, u, u.cpu, bytes(u.mem), b.id, where, p.after(u, b), note))
		}
	}
}

// balance moves units from the most loaded nodes to the least loaded ones while a node
// is out of the band mean±Threshold and a move beats the hysteresis.
func (p *planner) balance() {
	T, H := p.cfg.Threshold, p.cfg.Hysteresis
	for _, n := range p.nodes {
		if n.balanced() && !n.settled() {
			p.skipNode(n, "cpu: left out of balancing: "+p.settling(n))
		}
	}
	for p.capLeft() > 0 {
		mean, k := p.mean()
		if k < 2 {
			return
		}
		order := p.targets()
		low := order[0]
		under := low.load() < mean-T
		var sources []*node
		for _, n := range order {
			if n.load() > mean+T || (under && n.load() > mean) {
				sources = append(sources, n)
			}
		}
		slices.SortStableFunc(sources, func(x, y *node) int {
			return cmp.Or(cmp.Compare(y.load(), x.load()), cmp.Compare(x.id, y.id))
		})
		moved := false
		for _, a := range sources {
			trigger := fmt.Sprintf("cpu: %s load %.3f > mean %.3f + threshold %.3f", a.id, a.load(), mean, T)
			if a.load() <= mean+T {
				trigger = fmt.Sprintf("cpu: %s load %.3f < mean %.3f - threshold %.3f; %s (load %.3f) is above the mean",
					low.id, low.load(), mean, T, a.id, a.load())
			}
			if p.cooling(a) {
				p.skipNode(a, trigger+"; not shedding now: "+p.nodeCooling(a))
				continue
			}
			var best *unit
			var bestTo *node
			bestScore := math.Inf(-1)
			for _, u := range a.units {
				if why := p.movable(u, KindCPU); why != "" {
					p.skipUnit(u, why)
					continue
				}
				if !p.fits(u) {
					continue
				}
				b, why := p.pickTarget(u, KindCPU)
				if b == nil {
					p.skipUnit(u, why)
					continue
				}
				s := p.gain(a, b, u.cpu)
				if s <= 0 || s < H {
					p.skipUnit(u, fmt.Sprintf("hysteresis: %s (%.2f cores) to %s (%s) would reduce the imbalance by %.4f < hysteresis %.4f",
						u, u.cpu, b.id, p.after(u, b), s, H))
					continue
				}
				if s > bestScore {
					best, bestTo, bestScore = u, b, s
				}
			}
			if best == nil {
				p.skipNode(a, trigger+"; no unit on it can move (see its workloads)")
				continue
			}
			p.move(best, bestTo, KindCPU, fmt.Sprintf(
				"%s; %s (%.2f cores) to %s, of the active nodes with room and out of cooldown the least loaded after the move: %s; %s load %.3f -> %.3f; imbalance -%.4f >= hysteresis %.4f",
				trigger, best, best.cpu, bestTo.id, p.after(best, bestTo), a.id, a.load(), (a.used-best.cpu)/a.cores, bestScore, H))
			moved = true
			break
		}
		if !moved {
			return
		}
	}
}

func (p *planner) decision() Decision {
	d := Decision{Moves: p.moves}
	for _, k := range sortedKeys(p.skips) {
		d.Skipped = append(d.Skipped, p.skips[k])
	}
	slices.SortStableFunc(d.Skipped, func(a, b Skip) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.Workload, b.Workload))
	})
	return d
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func ago(ns int64) string { return time.Duration(ns).Round(time.Second).String() }

// bytes formats a byte count for a reason.
func bytes(b int64) string {
	neg := ""
	if b < 0 {
		neg, b = "-", -b
	}
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%s%.1f GiB", neg, float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%s%.0f MiB", neg, float64(b)/(1<<20))
	}
	return fmt.Sprintf("%s%d B", neg, b)
}
