package daemon

// Moving a workload between nodes: the source side.
//
// The source daemon (the node that runs the workload) drives a migration; every phase
// is a Raft entry, validated by the leader's FSM against the migration's epoch:
//
//	planned -> precopy -> frozen -> shipped -> restored -> done | aborted
//
// The commit point is the `done` entry. Two rules make "exactly one copy runs" hold
// through any crash, restart, election or network cut:
//
//   - Only the source applies `done`, and only after the target holds the restored tree
//     stopped with its segments verified. The target resumes its copy only once the
//     table says done; the source kills its stopped copy only once the table says done.
//   - The source resumes its stopped copy only once the table says aborted. An apply
//     whose outcome is unknown (a leader change) is settled by reading the record back
//     from the leader before either copy is touched.
//
// A daemon that restarts finds its part from the replicated record (recover.go): the
// source rolls a migration it no longer drives back (aborted, then resume), the target
// resumes or removes what it restored according to the record.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
)

// Defaults of a move.
const (
	// stepTimeout bounds one request to the target outside the frozen window.
	stepTimeout = 30 * time.Second
	// settleTimeout bounds how long the source tries to learn or set a migration's fate
	// before it leaves the record to recovery.
	settleTimeout = 2 * time.Minute
)

// migrator runs this node's part of migrations, as source and as target.
type migrator struct {
	d    *Daemon
	log  *slog.Logger
	criu *migrate.CRIU

	mu       sync.Mutex
	driving  map[string]string       // workload id -> migration id this process drives as source
	targets  map[string]*targetState // migration id -> this node's target side
	subs     map[string]func(MoveEvent)
	resolved map[string]bool // migrations recovery has settled here

	faults faults
}

func newMigrator(d *Daemon) *migrator {
	return &migrator{d: d, log: d.log.With("component", "migrate"), criu: &migrate.CRIU{Path: d.cfg.CRIU},
		driving: map[string]string{}, targets: map[string]*targetState{}, subs: map[string]func(MoveEvent){},
		resolved: map[string]bool{}, faults: loadFaults()}
}

func newMigrationID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "m" + hex.EncodeToString(b[:])
}

// ---- check ----------------------------------------------------------------------------

// targetCheckRequest is what the source asks the target before a move (peer API).
type targetCheckRequest struct {
	Workload    string             `json:"workload"`
	MemoryBytes uint64             `json:"memory_bytes"`
	CPUInfo     []byte             `json:"cpuinfo"`
	Files       []migrate.FileNeed `json:"files"`
}

type targetCheckResult struct {
	FreeBytes uint64    `json:"free_bytes"`
	Problems  []Problem `json:"problems"`
}

// check finds every reason the workload (running on this node) cannot move to target
// now. It changes nothing. An error means the check itself could not run.
func (m *migrator) check(ctx context.Context, w record.Workload, target string) (rep CheckReport, err error) {
	rep = CheckReport{Workload: w.ID, Name: w.Name, Source: m.d.cfg.NodeID, Target: target, Problems: []Problem{}}
	add := func(reason, format string, args ...any) {
		rep.Problems = append(rep.Problems, Problem{Reason: reason, Detail: fmt.Sprintf(format, args...)})
	}
	defer func() { rep.OK = len(rep.Problems) == 0 }()
	table := m.d.store.Table()
	tn, ok := table.Node(target)
	switch {
	case !ok:
		return rep, fmt.Errorf("no node %q (see `migshm nodes`): %w", target, record.ErrUnknownNode)
	case target == m.d.cfg.NodeID:
		return rep, fmt.Errorf("workload %s already runs on %s: %w", w.Name, target, record.ErrSameNode)
	case tn.State != record.NodeActive:
		add("target-state", "node %s is %s; only an active node takes workloads", target, tn.State)
		return rep, nil
	}
	if mg, ok := table.ActiveMigration(w.ID); ok {
		add("migration-in-flight", "migration %s of %s (%s -> %s) is in phase %s; wait for it (`migshm migrations`)",
			mg.ID, w.Name, mg.Source, mg.Target, mg.Phase)
		return rep, nil
	}
	l := m.d.sup.get(w.ID)
	if l == nil || l.isExited() {
		return rep, fmt.Errorf("workload %s is not running on %s: %w", w.Name, m.d.cfg.NodeID, ErrNotRunning)
	}
	if _, err := m.criu.CachedCheck(ctx); err != nil {
		add("criu-source", "CRIU does not work on %s: %v", m.d.cfg.NodeID, err)
	}
	tree, err := migrate.Preflight{}.Check(l.rec.InitPid)
	var nm *migrate.NotMovableError
	switch {
	case errors.As(err, &nm):
		add(string(nm.Reason), "%s", nm.Detail)
		return rep, nil
	case err != nil:
		return rep, fmt.Errorf("check %s: %w", w.Name, err)
	}
	rep.Processes = len(tree.Procs)
	// The daemon ships the workload's own files (logs) itself; everything else the tree
	// reopens by path must already be on the target.
	in, err := migrate.Inspect("/proc", tree, filepath.Join(m.d.cfg.WorkloadDir, w.ID))
	if err != nil {
		return rep, fmt.Errorf("check %s: %w", w.Name, err)
	}
	rep.Segments = len(in.Segments)
	for _, b := range in.Blockers {
		add(b.Reason, "%s", b.Detail)
	}
	// The target holds the images (in tmpfs) and the restored memory at once.
	mem := in.MemoryBytes * 2
	rep.MemoryBytes = mem
	req := targetCheckRequest{Workload: w.ID, MemoryBytes: mem, Files: in.Files}
	if req.CPUInfo, err = m.criu.CPUInfo(ctx); err != nil {
		add("criu-source", "CRIU cannot describe this node's CPU: %v", err)
	}
	var res targetCheckResult
	cctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	if err := m.d.forwardTo(cctx, tn.APIAddr, http.MethodPost, "/peer/v1/migrations/target-check", req, &res); err != nil {
		add("target-unreachable", "node %s does not answer: %v", target, err)
		return rep, nil
	}
	rep.TargetFree = res.FreeBytes
	rep.Problems = append(rep.Problems, res.Problems...)
	return rep, nil
}

// handlePeerTargetCheck answers a source's check on this node (the candidate target).
func (d *Daemon) handlePeerTargetCheck(r *http.Request) (any, error) {
	var req targetCheckRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	m := d.mig
	res := targetCheckResult{Problems: []Problem{}}
	add := func(reason, format string, args ...any) {
		res.Problems = append(res.Problems, Problem{Reason: reason, Detail: fmt.Sprintf(format, args...)})
	}
	if _, err := m.criu.CachedCheck(r.Context()); err != nil {
		add("criu-target", "CRIU does not work on %s: %v", d.cfg.NodeID, err)
	} else if len(req.CPUInfo) > 0 {
		if err := m.criu.CPUInfoCheck(r.Context(), req.CPUInfo); errors.Is(err, migrate.ErrCPUIncompatible) {
			add("cpu", "the CPU of %s lacks features the workload may use: %v", d.cfg.NodeID, err)
		} else if err != nil {
			add("criu-target", "CRIU on %s cannot compare the CPUs: %v", d.cfg.NodeID, err)
		}
	}
	free, _, err := readMeminfo("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	res.FreeBytes = free
	// Keep a margin: the images and the pre-copied pages live in tmpfs next to the
	// restored memory for a while.
	if need := req.MemoryBytes; need > free {
		add("target-memory", "node %s has %s available; moving this workload needs about %s (its memory, and its images while it restores)",
			d.cfg.NodeID, humanBytes(free), humanBytes(need))
	}
	for _, p := range migrate.CheckFiles("/", req.Files) {
		add("file-"+p.Reason, "%s", p.Detail)
	}
	if l := d.sup.get(req.Workload); l != nil && !l.isExited() {
		add("target-has-workload", "node %s still runs a copy of %s", d.cfg.NodeID, req.Workload)
	}
	return res, nil
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// notMovable turns a failed check into an error that lists every problem.
func notMovable(rep CheckReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s cannot move to %s:", rep.Name, rep.Target)
	for _, p := range rep.Problems {
		fmt.Fprintf(&b, "\n  - %s: %s", p.Reason, p.Detail)
	}
	return fmt.Errorf("%s: %w", b.String(), ErrNotMovable)
}

// ---- HTTP -----------------------------------------------------------------------------

// handleCheck serves POST /v1/migrations/check, forwarding to the workload's node.
func (d *Daemon) handleCheck(r *http.Request) (any, error) {
	var req CheckRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	w, err := resolve(d.readTable(r), req.Workload)
	if err != nil {
		return nil, err
	}
	if w.State == record.WorkloadExited {
		return nil, fmt.Errorf("workload %s exited; there is nothing to move: %w", w.Name, ErrNotRunning)
	}
	addr, err := d.workloadNodeAddr(r, w)
	if err != nil {
		return nil, err
	}
	if addr != "" {
		req.Workload = w.ID
		var out CheckReport
		return out, d.forwardTo(r.Context(), addr, http.MethodPost, "/v1/migrations/check", req, &out)
	}
	return d.mig.check(r.Context(), w, req.Target)
}

// handleMove serves POST /v1/migrations: the workload's node runs the migration and
// streams its progress as MoveEvents (NDJSON); another node forwards the request there
// and relays the stream. A request refused before the migration starts gets a plain
// JSON error. The migration does not depend on the caller: if the client goes away it
// goes on (see `migshm migrations`).
func (d *Daemon) handleMove(w http.ResponseWriter, r *http.Request) {
	var req MoveRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, d.log, err)
		return
	}
	table := d.readTable(r)
	wl, err := resolve(table, req.Workload)
	if err == nil {
		err = d.mig.validate(table, wl, req)
	}
	if err != nil {
		writeError(w, d.log, err)
		return
	}
	addr, err := d.workloadNodeAddr(r, wl)
	if err != nil {
		writeError(w, d.log, err)
		return
	}
	if addr != "" {
		req.Workload = wl.ID
		c := newPeerClient(addr, d.peerTr)
		c.header = http.Header{forwardedHeader: {d.cfg.NodeID}}
		resp, err := c.send(r.Context(), http.MethodPost, "/v1/migrations", req)
		if err != nil {
			writeError(w, d.log, err)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", "application/x-ndjson")
		copyFlush(w, resp.Body)
		return
	}

	events := make(chan MoveEvent, 256)
	started := make(chan error, 1)
	gone := make(chan struct{}) // the handler returned: nobody reads events any more
	defer close(gone)
	d.goFn(func() {
		err := d.mig.move(d.bgCtx(), wl, req, started, func(ev MoveEvent) {
			if ev.Event == EventDone || ev.Event == EventError {
				// The outcome must reach a client that is still there.
				select {
				case events <- ev:
				case <-gone:
				}
				return
			}
			select {
			case events <- ev:
			default: // a slow client misses a progress line, never the outcome
			}
		})
		if err != nil {
			d.log.Warn("migration failed", "workload", wl.Name, "err", err)
		}
		close(events)
	})
	if err := <-started; err != nil {
		writeError(w, d.log, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	for ev := range events {
		if err := enc.Encode(ev); err != nil {
			return
		}
		if fl != nil {
			fl.Flush()
		}
	}
}

// validate refuses what is wrong with a move request before anything runs.
func (m *migrator) validate(table *shmowner.Table, w record.Workload, req MoveRequest) error {
	if req.Target == "" {
		return fmt.Errorf("move: no target node given: %w", ErrBadRequest)
	}
	if _, ok := table.Node(req.Target); !ok {
		return fmt.Errorf("move: no node %q (see `migshm nodes`): %w", req.Target, record.ErrUnknownNode)
	}
	if w.State == record.WorkloadExited {
		return fmt.Errorf("move: workload %s exited (status %d); there is nothing to move: %w", w.Name, w.ExitStatus, ErrNotRunning)
	}
	if w.Node == req.Target {
		return fmt.Errorf("move: workload %s already runs on %s: %w", w.Name, w.Node, record.ErrSameNode)
	}
	if w.Pinned {
		return fmt.Errorf("move: workload %s is pinned to %s; `migshm unpin %s` first: %w", w.Name, w.Node, w.Name, ErrNotMovable)
	}
	if req.MaxDowntimeMS < 0 || req.MaxRounds < 0 {
		return fmt.Errorf("move: max downtime and max rounds must not be negative: %w", ErrBadRequest)
	}
	if req.MaxRounds > 100 {
		return fmt.Errorf("move: max rounds %d: at most 100: %w", req.MaxRounds, ErrBadRequest)
	}
	return nil
}

// ---- the source side --------------------------------------------------------------------

// sourceRun is one migration driven by this node.
type sourceRun struct {
	m      *migrator
	log    *slog.Logger
	id     string
	w      record.Workload
	l      *localWL
	target record.Node
	epoch  uint64
	dir    string
	req    MoveRequest
	emit   func(MoveEvent)
	start  time.Time

	stats  record.MigrationStats
	pc     *migrate.Precopier
	shared bool // the target sees this node's workload dir (one host, shared filesystem)
	frozen bool // the tree may be stopped by a dump
}

// move runs a whole migration of w (running here) to req.Target. started receives nil
// once the migration is planned (events follow), or the error that refused it.
func (m *migrator) move(ctx context.Context, w record.Workload, req MoveRequest, started chan<- error, emit func(MoveEvent)) (err error) {
	startErr := func(err error) error {
		started <- err // exactly once: every return before the plan, or nil after it
		return err
	}
	m.mu.Lock()
	if id, busy := m.driving[w.ID]; busy {
		m.mu.Unlock()
		return startErr(fmt.Errorf("move %s: migration %s is running: %w", w.Name, id, record.ErrMigrationInFlight))
	}
	m.driving[w.ID] = "checking"
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.driving, w.ID)
		m.mu.Unlock()
	}()

	rep, err := m.check(ctx, w, req.Target)
	if err != nil {
		return startErr(err)
	}
	if !rep.OK {
		return startErr(notMovable(rep))
	}
	table := m.d.store.Table()
	tn, _ := table.Node(req.Target)
	s := &sourceRun{m: m, id: newMigrationID(), w: w, l: m.d.sup.get(w.ID), target: tn,
		epoch: table.GroupEpoch(w.Group), req: req, emit: emit, start: time.Now()}
	if s.l == nil {
		return startErr(fmt.Errorf("move %s: not running here: %w", w.Name, ErrNotRunning))
	}
	s.log = m.log.With("migration", s.id, "workload", w.Name, "peer", tn.ID)
	s.dir = filepath.Join(m.d.cfg.ImageDir, "out-"+s.id)
	pctx, cancel := context.WithTimeout(ctx, stepTimeout)
	err = m.d.apply(pctx, shmowner.PlanMigrationType, shmowner.PlanMigrationRequest{
		ID: s.id, Workload: w.ID, Target: tn.ID, Epoch: s.epoch, At: time.Now().UnixNano(), Reason: req.Reason})
	cancel()
	if err != nil {
		// Plan is the first write: if its outcome is unknown, recovery aborts the record
		// (this node is its source and nobody drives it), and nothing was touched.
		return startErr(fmt.Errorf("move %s: plan the migration: %w", w.Name, err))
	}
	m.mu.Lock()
	m.driving[w.ID] = s.id
	m.mu.Unlock()
	_ = startErr(nil)
	if err := m.saveJournal(journal{ID: s.id, Role: roleSource, Source: m.d.cfg.NodeID, Epoch: s.epoch, Record: s.l.rec}); err != nil {
		return s.fail(fmt.Errorf("write the migration journal: %w", err))
	}
	s.log.Info("migration planned", "target", tn.ID, "epoch", s.epoch)
	s.event(MoveEvent{Event: EventPhase, Phase: string(record.PhasePlanned), Record: &record.Migration{
		ID: s.id, Workload: w.ID, Source: m.d.cfg.NodeID, Target: tn.ID, Phase: record.PhasePlanned,
		Epoch: s.epoch, StartedAt: s.start.UnixNano(), UpdatedAt: s.start.UnixNano()}})
	m.faults.at(string(record.PhasePlanned))

	err = s.run(ctx)
	if err == nil {
		return nil
	}
	return s.fail(err)
}

func (s *sourceRun) event(ev MoveEvent) {
	ev.At = time.Now().UnixNano()
	ev.Migration = s.id
	s.emit(ev)
}

// phase records a forward phase change.
func (s *sourceRun) phase(ctx context.Context, p record.Phase) error {
	cctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	st := s.stats
	st.TotalNS = int64(time.Since(s.start))
	if err := s.m.d.apply(cctx, shmowner.SetMigrationPhaseType, shmowner.SetMigrationPhaseRequest{
		ID: s.id, Phase: p, Epoch: s.epoch, At: time.Now().UnixNano(),
		Bytes: s.stats.PrecopyBytes + s.stats.FinalBytes, Stats: &st}); err != nil {
		return fmt.Errorf("record phase %s: %w", p, err)
	}
	s.event(MoveEvent{Event: EventPhase, Phase: string(p)})
	s.m.faults.at(string(p))
	return nil
}

// peer sends a JSON request to the target's migration endpoint.
func (s *sourceRun) peer(ctx context.Context, path string, in, out any) error {
	return s.m.d.forwardTo(ctx, s.target.APIAddr, http.MethodPost, "/peer/v1/migrations/"+s.id+path, in, out)
}

// run does everything up to the commit and after it. An error means the migration did
// not commit: the caller rolls back.
func (s *sourceRun) run(ctx context.Context) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", s.dir, err)
	}
	defer os.RemoveAll(s.dir)

	// The target learns the migration and says whether it sees this node's workload dir
	// (a token file only this node wrote), so neither side copies files onto themselves
	// nor removes files the other uses.
	token := newMigrationID()
	wdir := filepath.Join(s.m.d.cfg.WorkloadDir, s.w.ID)
	tokenFile := filepath.Join(wdir, ".migration-"+s.id)
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", tokenFile, err)
	}
	var prep prepareResult
	cctx, cancel := context.WithTimeout(ctx, stepTimeout)
	err := s.peer(cctx, "/prepare", prepareRequest{Record: s.l.rec, Dir: wdir, Token: token}, &prep)
	cancel()
	os.Remove(tokenFile)
	if err != nil {
		return fmt.Errorf("prepare %s: %w", s.target.ID, err)
	}
	s.shared = prep.Shared
	if s.shared {
		// Recovery must know the workload dir is not this node's alone.
		if err := s.m.saveJournal(journal{ID: s.id, Role: roleSource, Source: s.m.d.cfg.NodeID, Epoch: s.epoch,
			Shared: true, Record: s.l.rec}); err != nil {
			return fmt.Errorf("write the migration journal: %w", err)
		}
	}

	if !s.req.NoPrecopy {
		if err := s.precopy(ctx); err != nil {
			return err
		}
	}
	return s.freezeAndMove(ctx)
}

// precopy sends the workload's memory to the target while it runs, round after round,
// until what changed in the last round would ship within the downtime aimed for.
func (s *sourceRun) precopy(ctx context.Context) error {
	if err := s.phase(ctx, record.PhasePrecopy); err != nil {
		return err
	}
	policy := migrate.PrecopyPolicy{MaxDowntime: time.Duration(s.req.MaxDowntimeMS) * time.Millisecond, MaxRounds: s.req.MaxRounds}
	initPid := s.l.rec.InitPid
	s.pc = migrate.NewPrecopier("/proc", func() ([]int, error) { return treePids(initPid) })
	var rate float64 // best bytes/s seen on the wire
	var prevChanged int64
	for round := 1; ; round++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		st, err := s.precopyRound(ctx)
		if err != nil {
			return fmt.Errorf("pre-copy round %d: %w", round, err)
		}
		s.stats.Rounds = round
		s.stats.PrecopyBytes += uint64(st.SentBytes)
		r := 0.0
		if st.Duration > 0 {
			r = float64(st.SentBytes) / st.Duration.Seconds()
		}
		rate = max(rate, r)
		s.event(MoveEvent{Event: EventRound, Phase: string(record.PhasePrecopy), Round: &RoundInfo{
			Round: round, Pages: st.Pages, ChangedPages: st.Changed, SentBytes: st.SentBytes,
			DurationNS: int64(st.Duration), RateBPS: r}})
		s.log.Info("pre-copy round", "round", round, "pages", st.Pages, "changed", st.Changed,
			"sent_bytes", st.SentBytes, "took", st.Duration)
		if why, last := policy.Last(migrate.PrecopyRound{Round: round, Changed: st.Changed, PrevChanged: prevChanged, Rate: rate}); last {
			s.log.Info("pre-copy done", "rounds", round, "why", why)
			return nil
		}
		prevChanged = st.Changed
	}
}

// precopyRound streams one round of pages to the target.
func (s *sourceRun) precopyRound(ctx context.Context) (migrate.RoundStats, error) {
	body := s.pc.NewRoundReader(ctx)
	var ack pagesResult
	err := s.m.d.peerStream(ctx, s.target.APIAddr, "/peer/v1/migrations/"+s.id+"/pages", body, &ack)
	body.Close()
	st, rerr := body.Result()
	// The target's answer says why first: a sender's write error is mostly the
	// consequence of the target giving up on the request (a full disk, say).
	if err != nil {
		return st, err
	}
	if rerr != nil {
		return st, rerr
	}
	s.pc.Commit()
	return st, nil
}

// freezeAndMove is the frozen window: dump with the tree left stopped, ship, restore
// (stopped) on the target, commit, then resume the target's copy and remove this one.
func (s *sourceRun) freezeAndMove(ctx context.Context) error {
	if err := s.phase(ctx, record.PhaseFrozen); err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, migrate.DumpTimeout)
	defer cancel()
	images := filepath.Join(s.dir, "images")
	s.frozen = true
	t0 := time.Now()
	dump, err := s.m.criu.Dump(fctx, migrate.DumpOptions{Pid: s.l.rec.InitPid, ImagesDir: images,
		WorkDir: filepath.Join(s.dir, "work"), LeaveStopped: true})
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	s.m.faults.at("dumped")
	// The tree stopped at about dump end - frozen; downtime counts from there.
	frozenAt := time.Now().Add(-dump.Frozen)
	if dump.Frozen <= 0 {
		frozenAt = t0
	}
	s.stats.DumpNS = int64(time.Since(t0))
	s.stats.WorkloadBytes = uint64(dump.ImageBytes)
	cancel()
	fctx, cancel = context.WithTimeout(ctx, migrate.FreezeBudget(dump.ImageBytes))
	defer cancel()
	digests, err := workload.QuickDigestSegments(s.l.rec.InitPid)
	if err != nil {
		return fmt.Errorf("digest segments at the freeze: %w", err)
	}

	t1 := time.Now()
	if !s.shared {
		if err := s.shipFiles(fctx); err != nil {
			return err
		}
	}
	var wire atomic.Int64
	pr, pw := io.Pipe()
	go func() {
		opts := migrate.StreamOptions{Paged: migrate.PagesImage}
		if s.pc != nil {
			opts.Held = s.pc.Held
		}
		var out io.Writer = countingWriter{pw, &wire}
		if s.m.faults.corrupt {
			out = &corruptWriter{w: out, at: 2000} // inside the first files' data
		}
		_, err := migrate.WriteImages(fctx, out, images, opts)
		pw.CloseWithError(err)
	}()
	var ack imagesResult
	err = s.m.d.peerStream(fctx, s.target.APIAddr, "/peer/v1/migrations/"+s.id+"/images", pr, &ack)
	pr.CloseWithError(errors.New("request ended"))
	s.stats.FinalBytes += uint64(wire.Load())
	if err != nil {
		return fmt.Errorf("ship images: %w", err)
	}
	s.stats.ShipNS = int64(time.Since(t1))
	if err := s.phase(ctx, record.PhaseShipped); err != nil {
		return err
	}

	t2 := time.Now()
	var rst restoreResult
	if err := s.peer(fctx, "/restore", restoreRequest{Segments: digests}, &rst); err != nil {
		return fmt.Errorf("restore on %s: %w", s.target.ID, err)
	}
	s.stats.RestoreNS = int64(time.Since(t2))
	if err := s.phase(ctx, record.PhaseRestored); err != nil {
		return err
	}

	// The commit. From here on nothing rolls back.
	s.stats.FrozenNS = int64(time.Since(frozenAt))
	if err := s.commit(); err != nil {
		return err
	}
	s.finish(frozenAt)
	return nil
}

// commit applies done; if its outcome is unknown it reads it back. An error means the
// migration did not commit.
func (s *sourceRun) commit() error {
	st := s.stats
	st.TotalNS = int64(time.Since(s.start))
	phase, err := s.m.settle(s.id, s.epoch, record.PhaseDone, "", &st)
	if err != nil {
		return err
	}
	if phase != record.PhaseDone {
		return fmt.Errorf("the migration was %s before it could commit", phase)
	}
	s.event(MoveEvent{Event: EventPhase, Phase: string(record.PhaseDone)})
	s.m.faults.at(string(record.PhaseDone))
	return nil
}

// finish runs after the commit: resume the target's copy, remove this one.
func (s *sourceRun) finish(frozenAt time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	if err := s.peer(ctx, "/resume", struct{}{}, nil); err != nil {
		// The target resumes it by itself from the record (recovery).
		s.log.Warn("target did not confirm the resume; it resumes from the record when it can", "err", err)
	}
	s.stats.FrozenNS = int64(time.Since(frozenAt))
	s.m.d.sup.release(s.w.ID, !s.shared)
	os.Remove(s.m.sourceJournalPath(s.id))
	s.m.markResolved(s.id)
	s.stats.TotalNS = int64(time.Since(s.start))
	if err := s.m.d.apply(ctx, shmowner.SetMigrationStatsType, shmowner.SetMigrationStatsRequest{ID: s.id, Stats: s.stats}); err != nil {
		s.log.Warn("record migration figures", "err", err)
	}
	s.log.Info("migration done", "downtime", time.Duration(s.stats.FrozenNS), "total", time.Duration(s.stats.TotalNS),
		"precopy_bytes", s.stats.PrecopyBytes, "final_bytes", s.stats.FinalBytes, "rounds", s.stats.Rounds)
	rec, _ := s.m.d.store.Table().Migration(s.id) // this node's copy may lag the commit
	st := s.stats
	rec.Phase, rec.Stats = record.PhaseDone, &st
	s.event(MoveEvent{Event: EventDone, Phase: string(record.PhaseDone), Record: &rec, Summary: &st})
}

// fail rolls a migration that did not commit back: the record says aborted, the target
// removes what it made, and the source tree runs again. If the record turns out to be
// done (a commit whose answer was lost), the move is finished instead.
func (s *sourceRun) fail(cause error) error {
	s.log.Warn("migration failed; rolling back", "err", cause)
	st := s.stats
	st.TotalNS = int64(time.Since(s.start))
	phase, err := s.m.settle(s.id, s.epoch, record.PhaseAborted, cause.Error(), &st)
	if err != nil {
		// Neither outcome could be recorded: leave both copies as they are (the source
		// stopped, the target's stopped too); recovery settles it once the cluster has a
		// leader again.
		s.event(MoveEvent{Event: EventError, Error: fmt.Sprintf("migration %s failed (%v) and its outcome could not be recorded (%v); "+
			"the workload stays stopped on %s until the cluster settles it", s.id, cause, err, s.m.d.cfg.NodeID), Code: "no_leader"})
		return err
	}
	if phase == record.PhaseDone {
		s.finish(time.Now().Add(-time.Duration(s.stats.FrozenNS)))
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	if err := s.peer(ctx, "/abort", struct{}{}, nil); err != nil && !errors.Is(err, record.ErrUnknownMigration) {
		s.log.Warn("target did not confirm the abort; it cleans up from the record", "err", err)
	}
	if s.frozen {
		if err := migrate.ResumeTree(s.l.rec.InitPid); err != nil {
			s.log.Error("resume the source tree after an abort", "err", err)
		}
	}
	os.Remove(s.m.sourceJournalPath(s.id))
	s.m.markResolved(s.id)
	rec, _ := s.m.d.store.Table().Migration(s.id) // this node's copy may lag the abort
	rec.Phase, rec.Error = record.PhaseAborted, cause.Error()
	err = fmt.Errorf("migration %s of %s to %s aborted; the workload runs on %s as before: %v: %w",
		s.id, s.w.Name, s.target.ID, s.m.d.cfg.NodeID, cause, ErrMigrationFailed)
	code, _ := codeOf(cause)
	if code == "internal" {
		code = "migration_failed"
	}
	// The event carries the cause; the client says "aborted, runs on the source" itself.
	s.event(MoveEvent{Event: EventError, Phase: string(record.PhaseAborted), Record: &rec, Error: cause.Error(), Code: code})
	return err
}

// settle drives migration id to the terminal phase want (done or aborted) and returns
// the terminal phase it has: want, or the other one if that was recorded first. It
// keeps trying through elections; an error means it could not find out in time.
func (m *migrator) settle(id string, epoch uint64, want record.Phase, reason string, st *record.MigrationStats) (record.Phase, error) {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	var last error
	for {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		err := m.d.apply(actx, shmowner.SetMigrationPhaseType, shmowner.SetMigrationPhaseRequest{
			ID: id, Phase: want, Epoch: epoch, At: time.Now().UnixNano(), Error: reason, Stats: st})
		acancel()
		if err == nil {
			return want, nil
		}
		last = err
		// Refused, or unknown: the leader's record tells.
		if rec, ok := m.leaderRecord(ctx, id); ok && rec.Phase.Terminal() {
			return rec.Phase, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("settle migration %s as %s: %w", id, want, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// leaderRecord returns the migration as the leader has committed it: this node's
// table once it caught up with the leader's commit index.
func (m *migrator) leaderRecord(ctx context.Context, id string) (record.Migration, bool) {
	if !m.d.catchUp(ctx) {
		return record.Migration{}, false
	}
	return m.d.store.Table().Migration(id)
}

func (m *migrator) markResolved(id string) {
	m.mu.Lock()
	m.resolved[id] = true
	m.mu.Unlock()
}

// shipFiles copies the workload's log files to the target (separate filesystems only).
func (s *sourceRun) shipFiles(ctx context.Context) error {
	for _, name := range []string{stdoutFile, stderrFile} {
		f, err := os.Open(s.m.d.sup.path(s.w.ID, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		err = s.m.d.peerStream(ctx, s.target.APIAddr, "/peer/v1/migrations/"+s.id+"/files?name="+name, f, nil)
		f.Close()
		if err != nil {
			return fmt.Errorf("ship %s: %w", name, err)
		}
	}
	return nil
}

// treePids returns the host pids of the workload tree rooted at initPid.
func treePids(initPid int) ([]int, error) {
	procs, _, err := workload.ReadAll("/proc")
	if err != nil {
		return nil, err
	}
	tree, err := workload.FindTree(procs, initPid)
	if err != nil {
		return nil, err
	}
	return tree.Pids(), nil
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// peerStream POSTs a raw body (a page or image stream) to a peer and decodes the JSON
// answer into out (if not nil).
func (d *Daemon) peerStream(ctx context.Context, addr, path string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	c := newPeerClient(addr, d.peerTr)
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.dialError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error wireError `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
			return fmt.Errorf("POST %s at %s: HTTP %d: %s", path, addr, resp.StatusCode, strings.TrimSpace(string(b)))
		}
		return fromWire(e.Error)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
