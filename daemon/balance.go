package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/balancer"
	"github.com/migshm/migshm/internal/migration"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// moveRetryAfter is how long the balancer leaves a workload alone after a move of it
// failed to start or was aborted (drains ignore cooldowns, so without it a workload that
// cannot move would be tried on every pass).
const moveRetryAfter = time.Minute

// balanceState is the leader's balancer: its newest pass and the moves that failed.
type balanceState struct {
	passOnce sync.Once
	pass     chan struct{} // one pass at a time: holds a token while a pass runs
	soon     chan struct{} // a drain has work: pass now, not at the next tick (see tableChanged)

	mu          sync.Mutex
	last        *api.BalanceReport
	lastMoves   []api.BalanceMove
	lastMovesAt int64
	lastSkips   string               // what the last pass left alone, to log the reasons only on change
	failed      map[string]moveFault // workload id -> its last failed move
}

type moveFault struct {
	at  time.Time
	err string
}

// balancerConfig builds the policy's config from this node's settings and, if t is not
// nil, the capacities the nodes report with their load (a node that reported none
// counts one core, and its memory from its own report).
func (c *Config) balancerConfig(t *shmowner.Table) balancer.Config {
	bc := balancer.DefaultConfig()
	bc.Threshold, bc.Hysteresis = c.BalanceThreshold, c.BalanceMargin
	bc.WorkloadCooldown, bc.NodeCooldown = c.WorkloadCooldown, c.NodeCooldown
	bc.MaxConcurrent, bc.MemFloorBytes = c.MaxMigrations, c.MemFloor
	if t != nil {
		bc.Capacity, bc.MemCapacity = map[string]float64{}, map[string]uint64{}
		for _, n := range t.Nodes() {
			if n.Load.Cores > 0 {
				bc.Capacity[n.ID] = n.Load.Cores
			}
			if n.Load.MemBudgetBytes > 0 {
				bc.MemCapacity[n.ID] = n.Load.MemBudgetBytes
			}
		}
	}
	return bc
}

// workloadLoads returns the workloads' last measured loads from the table.
func workloadLoads(t *shmowner.Table) map[string]balancer.WorkloadLoad {
	out := map[string]balancer.WorkloadLoad{}
	for _, w := range t.Workloads() {
		if w.Load != nil {
			out[w.ID] = balancer.WorkloadLoad{CPU: w.Load.CPU, MemBytes: w.Load.MemBytes, Since: w.Load.Since}
		}
	}
	return out
}

// balanceLoop runs a balancer pass every balance-interval while this node leads, and
// at once when a drain has work. With auto-balance off only drain moves are started.
func (d *Daemon) balanceLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.BalanceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.bal.soon:
		}
		if !d.cluster.IsLeader() {
			continue
		}
		if _, err := d.balancePass(ctx, false, !d.cfg.AutoBalance); err != nil && ctx.Err() == nil {
			d.log.Warn("balancer pass failed", "err", err)
		}
	}
}

// balancePass plans on the current table and, unless dryRun, starts the moves (only
// drain moves if drainOnly), each as a migration driven by the workload's node like a
// `migshm move`. A move is started when its migration is planned in the table; the pass
// returns then, and the migration goes on (its outcome is logged, and a failure keeps
// the workload out of the next passes for moveRetryAfter). Leader only.
func (d *Daemon) balancePass(ctx context.Context, dryRun, drainOnly bool) (*api.BalanceReport, error) {
	d.bal.passOnce.Do(func() { d.bal.pass = make(chan struct{}, 1) })
	select {
	case d.bal.pass <- struct{}{}:
		defer func() { <-d.bal.pass }()
	case <-ctx.Done():
		return nil, fmt.Errorf("balance: another pass is running: %w", ctx.Err())
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	caught := d.cluster.CatchUp(cctx)
	cancel()
	if !d.cluster.IsLeader() {
		return nil, fmt.Errorf("balance: %w", record.ErrNotLeader)
	}
	if !caught {
		return nil, fmt.Errorf("balance: this leader has not applied its log yet; try again: %w", api.ErrNoLeader)
	}
	t := d.cluster.Table()
	now := time.Now()
	cfg := d.cfg.balancerConfig(t)
	load := workloadLoads(t)
	dec := balancer.Plan(t, load, now, cfg)
	rep := newBalanceReport(t, load, cfg, dec, now)
	rep.Leader, rep.DryRun, rep.Auto, rep.Interval = d.cfg.NodeID, dryRun, d.cfg.AutoBalance, d.cfg.BalanceInterval.String()

	d.bal.mu.Lock()
	rep.Moves, rep.Skipped = holdMoves(rep.Moves, rep.Skipped, d.bal.failed, now, drainOnly)
	d.bal.mu.Unlock()
	if dryRun {
		return rep, nil
	}

	// Start one migration per group on its node: it moves every member of the group
	// (the balancer plans a group's moves together, to one target). A refused group's
	// other members are not started either.
	failedGroup := map[string]bool{}
	startedGroup := map[string]bool{}
	for i := range rep.Moves {
		mv := &rep.Moves[i]
		if failedGroup[mv.Group] {
			mv.Error = "not started: an earlier member of its group could not move"
			continue
		}
		if startedGroup[mv.Group] {
			mv.Started = true // by the migration of its group
			continue
		}
		if err := d.startBalanceMove(ctx, t, *mv); err != nil {
			mv.Error = err.Error()
			failedGroup[mv.Group] = true
			d.moveFailed(mv.Workload, err)
			d.log.Warn("balancer: move refused", "workload", mv.Name, "from", mv.From, "to", mv.To, "kind", mv.Kind, "err", err)
			continue
		}
		mv.Started = true
		startedGroup[mv.Group] = true
		d.log.Info("balancer: moving", "workload", mv.Name, "from", mv.From, "to", mv.To, "kind", mv.Kind, "reason", mv.Reason)
	}
	d.recordPass(rep)
	d.metrics.ObserveBalance(rep)
	return rep, nil
}

// holdMoves takes out of moves those this pass must not start and adds them to skipped
// with the reason: a workload whose last move failed less than moveRetryAfter ago, every
// move but drains when drainOnly (auto-balance off), and the rest of a group one of
// whose moves is held (a group moves together or not at all).
func holdMoves(moves []api.BalanceMove, skipped []api.BalanceSkip, failed map[string]moveFault, now time.Time, drainOnly bool) ([]api.BalanceMove, []api.BalanceSkip) {
	kept := []api.BalanceMove{}
	held := map[string]string{} // group on its source -> why its first held move was held
	for _, mv := range moves {
		unit := mv.Group + "\x00" + mv.From
		why := held[unit]
		if f, ok := failed[mv.Workload]; why == "" && ok && now.Sub(f.at) < moveRetryAfter {
			why = fmt.Sprintf("its last move failed %s ago (%s); tried again after %s", ago(now.Sub(f.at)), f.err, moveRetryAfter)
		}
		if why == "" && drainOnly && mv.Kind != string(balancer.KindDrain) {
			why = fmt.Sprintf("would move to %s (%s: %s), but auto-balance is off: `migshm balance` moves it", mv.To, mv.Kind, mv.Reason)
		}
		if why != "" {
			held[unit] = why
			skipped = append(skipped, api.BalanceSkip{Workload: mv.Workload, Name: mv.Name, Node: mv.From, Reason: why})
			continue
		}
		kept = append(kept, mv)
	}
	return kept, skipped
}

// newBalanceReport turns a decision into the API's report.
func newBalanceReport(t *shmowner.Table, load map[string]balancer.WorkloadLoad, cfg balancer.Config, dec balancer.Decision, now time.Time) *api.BalanceReport {
	nls := balancer.NodeLoads(t, load, cfg)
	rep := &api.BalanceReport{At: now.UnixNano(), Threshold: cfg.Threshold, Imbalance: balancer.Imbalance(nls),
		Nodes: []api.NodeLoad{}, Moves: []api.BalanceMove{}, Skipped: []api.BalanceSkip{}}
	lo, hi := math.Inf(1), math.Inf(-1)
	var used, cores float64
	for _, n := range nls {
		rep.Nodes = append(rep.Nodes, api.NodeLoad{Node: n.Node, State: string(n.State), Cores: n.Cores, CPU: n.CPU,
			Load: n.Load, Workloads: n.Workloads, MemFreeBytes: n.MemFreeBytes, MemTotalBytes: n.MemTotalBytes,
			Settling: n.Settling})
		if n.State == record.NodeActive && n.Cores > 0 {
			lo, hi = min(lo, n.Load), max(hi, n.Load)
			used, cores = used+n.CPU, cores+n.Cores
		}
	}
	if cores > 0 {
		rep.Mean, rep.Spread = used/cores, hi-lo
	}
	for _, m := range t.Migrations() {
		if !m.Phase.Terminal() {
			rep.InFlight++
		}
	}
	name := func(id string) string {
		if w, ok := t.Workload(id); ok {
			return w.Name
		}
		return ""
	}
	for _, m := range dec.Moves {
		rep.Moves = append(rep.Moves, api.BalanceMove{Workload: m.Workload, Name: name(m.Workload), Group: m.Group,
			From: m.From, To: m.To, Kind: string(m.Kind), Reason: m.Reason, Score: m.Score})
	}
	for _, s := range dec.Skipped {
		rep.Skipped = append(rep.Skipped, api.BalanceSkip{Workload: s.Workload, Name: name(s.Workload), Node: s.Node, Reason: s.Reason})
	}
	return rep
}

// startBalanceMove starts mv as a migration driven by the workload's node and returns
// once it is planned in the table (nil) or refused (the error). The migration's progress
// is read to its end in the background; its outcome is logged.
func (d *Daemon) startBalanceMove(ctx context.Context, t *shmowner.Table, mv api.BalanceMove) error {
	w, ok := t.Workload(mv.Workload)
	if !ok {
		return fmt.Errorf("workload %s: %w", mv.Workload, record.ErrUnknownWorkload)
	}
	// The policy's reasons start with their rule's kind ("drain: n1 is draining; ...").
	reason := mv.Reason
	if !strings.HasPrefix(reason, mv.Kind+":") {
		reason = mv.Kind + ": " + reason
	}
	req := api.MoveRequest{Workload: w.ID, Target: mv.To, Reason: "balancer: " + reason}
	if err := migration.Validate(t, w, req); err != nil {
		return err
	}
	if w.Node == d.cfg.NodeID {
		done, err := d.engine.Move(w, req, func(api.MoveEvent) {})
		if err != nil {
			return err
		}
		d.goFn(func() { d.moveEnded(mv, <-done) })
		return nil
	}
	n, ok := t.Node(w.Node)
	if !ok {
		return fmt.Errorf("node %s of workload %s: %w", w.Node, w.Name, record.ErrUnknownNode)
	}
	// The stream lives as long as the migration, but a source that does not answer
	// (a cut link) must not hold the pass: the answer must start within startTimeout.
	sctx, cancel := context.WithCancel(d.ctx)
	timer := time.AfterFunc(startTimeout, cancel)
	stop := context.AfterFunc(ctx, cancel)
	resp, err := d.peers.Forward(n.APIAddr).Open(sctx, http.MethodPost, "/v1/migrations", req)
	timer.Stop()
	stop()
	if err != nil {
		cancel()
		return err
	}
	d.goFn(func() {
		defer cancel()
		defer resp.Body.Close()
		d.moveEnded(mv, readMoveOutcome(bufio.NewScanner(resp.Body)))
	})
	return nil
}

// startTimeout bounds how long a balancer move may take to start: the source's checks
// (CRIU and cpuinfo on both nodes) and the plan's commit.
const startTimeout = time.Minute

// readMoveOutcome reads a move's event stream to its end: nil if it ended done.
func readMoveOutcome(sc *bufio.Scanner) error {
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev api.MoveEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		switch ev.Event {
		case api.EventDone:
			return nil
		case api.EventError:
			return fmt.Errorf("%s: %w", ev.Error, api.ErrMigrationFailed)
		}
	}
	return fmt.Errorf("the source's progress stream ended without an outcome (see `migshm migrations`): %w", api.ErrUnreachable)
}

// moveEnded logs the outcome of a balancer move.
func (d *Daemon) moveEnded(mv api.BalanceMove, err error) {
	if err != nil {
		d.moveFailed(mv.Workload, err)
		d.log.Warn("balancer: move failed", "workload", mv.Name, "from", mv.From, "to", mv.To, "err", err)
		return
	}
	d.bal.mu.Lock()
	delete(d.bal.failed, mv.Workload)
	d.bal.mu.Unlock()
	d.log.Info("balancer: moved", "workload", mv.Name, "from", mv.From, "to", mv.To, "kind", mv.Kind)
}

func (d *Daemon) moveFailed(workload string, err error) {
	d.bal.mu.Lock()
	defer d.bal.mu.Unlock()
	if d.bal.failed == nil {
		d.bal.failed = map[string]moveFault{}
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	d.bal.failed[workload] = moveFault{at: time.Now(), err: msg}
}

// recordPass keeps rep as the newest pass and logs what it left alone when that changed.
func (d *Daemon) recordPass(rep *api.BalanceReport) {
	var started []api.BalanceMove
	for _, m := range rep.Moves {
		if m.Started {
			started = append(started, m)
		}
	}
	// Reasons carry loads that change every pass: log them again only when what is left
	// alone changes, not each time a figure does.
	var reasons, items []string
	for _, s := range rep.Skipped {
		reasons = append(reasons, s.Node+" "+s.Name+": "+s.Reason)
		items = append(items, s.Node+"/"+s.Workload)
	}
	slices.Sort(reasons)
	slices.Sort(items)
	key := strings.Join(items, " ")

	d.bal.mu.Lock()
	d.bal.last = rep
	if len(started) > 0 {
		d.bal.lastMoves, d.bal.lastMovesAt = started, rep.At
	}
	changed := key != d.bal.lastSkips
	d.bal.lastSkips = key
	d.bal.mu.Unlock()
	if changed && len(reasons) > 0 {
		d.log.Info("balancer: left alone", "count", len(reasons), "why", reasons)
	}
}

// lastBalance returns the newest pass with the last moves it started, or a dry run if
// this leader has not run a pass yet.
func (d *Daemon) lastBalance(ctx context.Context) (*api.BalanceReport, error) {
	d.bal.mu.Lock()
	last := d.bal.last
	var out api.BalanceReport
	if last != nil {
		out = *last
		out.LastMoves, out.LastMovesAt = d.bal.lastMoves, d.bal.lastMovesAt
	}
	d.bal.mu.Unlock()
	if last == nil || !d.cluster.IsLeader() {
		return d.balancePass(ctx, true, false)
	}
	return &out, nil
}

func ago(d time.Duration) string { return d.Round(time.Second).String() }

// tableChanged sees each change the FSM applies (shmowner.StoreConfig.OnChange): it logs
// its events and, when a node starts draining or a migration off a draining node ends,
// asks for a balancer pass now, so a drain does not wait out balance-interval before
// each batch of moves. It runs on raft's FSM goroutine and never blocks.
func (d *Daemon) tableChanged(prev, cur *shmowner.Table, at time.Time) {
	if revs := cur.Revocations(); len(revs) != len(prev.Revocations()) || d.revoked.Load() == nil {
		m := make(map[string]bool, len(revs))
		for _, r := range revs {
			m[r.Serial] = true
		}
		d.revoked.Store(&m)
	}
	evs := d.events.Record(prev, cur, at)
	if !slices.ContainsFunc(evs, func(ev api.Event) bool { return drainWork(ev, cur) }) {
		return
	}
	select {
	case d.bal.soon <- struct{}{}:
	default: // a pass is asked for already
	}
}

// drainWork reports whether ev gives a draining node's workloads something to do.
func drainWork(ev api.Event, cur *shmowner.Table) bool {
	switch {
	case ev.Kind == api.EventKindNode && ev.Change == string(record.NodeDraining):
		return true
	case ev.Kind == api.EventKindMigration && (ev.Change == string(record.PhaseDone) || ev.Change == string(record.PhaseAborted)):
		n, ok := cur.Node(ev.From)
		return ok && n.State == record.NodeDraining
	}
	return false
}
