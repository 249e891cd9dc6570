package migration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/faults"
	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/internal/procfs"
	"github.com/migshm/migshm/internal/supervisor"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
)

// Time limits of a move. The frozen window's are migrate's (DumpTimeout, FreezeBudget):
// past them (a cut link, a hung target) the move aborts and the source resumes.
const (
	// stepTimeout bounds one request to the target outside the frozen window.
	stepTimeout = 30 * time.Second
	// abortTimeout bounds telling a target of an abort; one that misses it cleans up
	// from the table.
	abortTimeout = 5 * time.Second
	// settleTimeout bounds how long the source tries to learn or set a migration's fate
	// before it leaves the record to recovery.
	settleTimeout = 2 * time.Minute
)

// sourceRun is one migration driven by this node: of workload w and the other members
// of its IPC group, as one tree.
type sourceRun struct {
	e      *Engine
	log    *slog.Logger
	id     string
	w      record.Workload
	recs   []supervisor.Record // the group's members as they run here, w first
	root   int                 // the group init's host pid: the root of the tree that moves
	target record.Node
	remote Remote
	epoch  uint64
	dir    string
	req    api.MoveRequest
	emit   func(api.MoveEvent)
	start  time.Time

	stats       record.MigrationStats
	pc          *migrate.Precopier
	files       []migrate.FileNeed // what the tree reopens by path, as the check found it
	memory      uint64             // the tree's memory as the check found it: about what the dump writes
	twin        *migrate.PageStore // pre-copy's copies of the pages sent (deltas), closed before the dump
	carry       []string           // the files of those the target lacks: sent while frozen
	shared      bool               // the target sees this node's workload dir (one host, shared filesystem)
	groupShared bool               // the target sees the group's request dir
	frozen      bool               // the tree may be stopped by a dump
	emitMu      sync.Mutex         // events come from the migration and its target watch
	frozenAt    time.Time          // when the dump stopped the tree (zero before)
	window      steps              // the frozen window, step by step (stats.Window)
	placed      map[string]int     // the members' init pids on the target, once restored
}

// Move starts moving workload w, which runs on this node, as req asks. It returns once
// the migration is planned in the table, with a channel that receives its outcome (nil:
// done), or the error that refused it before anything changed. A planned migration
// runs on its own, whatever becomes of the caller, and reports its progress through
// emit, ending with an event "done" or "error"; emit is called from the migration's
// goroutine and must not block it.
func (e *Engine) Move(w record.Workload, req api.MoveRequest, emit func(api.MoveEvent)) (<-chan error, error) {
	started := make(chan error, 1)
	done := make(chan error, 1)
	e.goFn(func() {
		err := e.move(e.ctx, w, req, started, emit)
		if err != nil {
			e.log.Warn("migration failed", "workload", w.Name, "err", err)
		}
		done <- err
	})
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}

// move runs a whole migration of w to req.Target. started receives nil once the
// migration is planned (events follow), or the error that refused it.
func (e *Engine) move(ctx context.Context, w record.Workload, req api.MoveRequest, started chan<- error, emit func(api.MoveEvent)) (err error) {
	startErr := func(err error) error {
		started <- err // exactly once: every return before the plan, or nil after it
		return err
	}
	e.mu.Lock()
	if id, busy := e.driving[w.ID]; busy {
		e.mu.Unlock()
		return startErr(fmt.Errorf("move %s: migration %s is running: %w", w.Name, id, record.ErrMigrationInFlight))
	}
	e.driving[w.ID] = "checking"
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.driving, w.ID)
		e.mu.Unlock()
	}()

	rep, files, memory, err := e.check(ctx, w, req.Target)
	if err != nil {
		return startErr(err)
	}
	if !rep.OK {
		return startErr(notMovable(rep))
	}
	table := e.table.Table()
	tn, _ := table.Node(req.Target)
	recs, err := e.group(table, w)
	if err != nil {
		return startErr(fmt.Errorf("move %s: %w", w.Name, err))
	}
	s := &sourceRun{e: e, id: newMigrationID(), w: w, recs: recs, root: recs[0].GroupPid, target: tn, files: files, memory: memory,
		remote: e.peers.Target(tn.APIAddr), epoch: table.GroupEpoch(w.Group), req: req, emit: emit, start: time.Now()}
	s.log = e.log.With("migration", s.id, "workload", w.Name, "peer", tn.ID)
	s.dir = filepath.Join(e.cfg.ImageDir, "out-"+s.id)
	members := s.journal().ids()
	pctx, cancel := context.WithTimeout(ctx, stepTimeout)
	err = e.table.Apply(pctx, shmowner.PlanMigrationType, shmowner.PlanMigrationRequest{
		ID: s.id, Workload: w.ID, Members: members, Target: tn.ID, Epoch: s.epoch, At: time.Now().UnixNano(), Reason: req.Reason})
	cancel()
	if err != nil {
		// Plan is the first write: if its outcome is unknown, recovery aborts the record
		// (this node is its source and nobody drives it), and nothing was touched.
		return startErr(fmt.Errorf("move %s: plan the migration: %w", w.Name, err))
	}
	e.mu.Lock()
	e.driving[w.ID] = s.id
	e.mu.Unlock()
	_ = startErr(nil)
	if err := e.saveJournal(s.journal()); err != nil {
		return s.fail(fmt.Errorf("write the migration journal: %w", err))
	}
	s.log.Info("migration planned", "target", tn.ID, "epoch", s.epoch, "members", len(members))
	s.event(api.MoveEvent{Event: api.EventPhase, Phase: string(record.PhasePlanned), Record: &record.Migration{
		ID: s.id, Workload: w.ID, Members: members, Source: e.self, Target: tn.ID, Phase: record.PhasePlanned,
		Epoch: s.epoch, StartedAt: s.start.UnixNano(), UpdatedAt: s.start.UnixNano()}})
	faults.At(string(record.PhasePlanned))

	err = s.run(ctx)
	if err == nil {
		return nil
	}
	return s.fail(err)
}

// group returns the records of w's IPC group's members running here, w first: what a
// move of w moves. Every running member of the group must run here, under one init.
func (e *Engine) group(table *shmowner.Table, w record.Workload) ([]supervisor.Record, error) {
	rec, running := e.wl.Running(w.ID)
	if !running {
		return nil, fmt.Errorf("not running here: %w", api.ErrNotRunning)
	}
	if rec.GroupPid == 0 {
		return nil, fmt.Errorf("it was started by a daemon without ipc group inits; restart it to make it movable: %w", api.ErrNotMovable)
	}
	recs := []supervisor.Record{rec}
	here := map[string]bool{rec.ID: true}
	for _, m := range e.wl.GroupMembers(w.Group) {
		if m.ID == rec.ID {
			continue
		}
		if m.GroupPid != rec.GroupPid || m.GroupStart != rec.GroupStart {
			return nil, fmt.Errorf("members %s and %s of ipc group %s run under different group inits: %w", rec.Name, m.Name, w.Group, api.ErrNotMovable)
		}
		recs = append(recs, m)
		here[m.ID] = true
	}
	for _, o := range table.Workloads() {
		if o.Group == w.Group && o.State != record.WorkloadExited && !here[o.ID] {
			return nil, fmt.Errorf("member %s of its ipc group %s does not run here (the table has it %s on %s); "+
				"a group moves whole: %w", o.Name, w.Group, o.State, o.Node, record.ErrGroupSplit)
		}
	}
	return recs, nil
}

// journal is what this source keeps on disk about the migration.
func (s *sourceRun) journal() journal {
	return journal{ID: s.id, Role: roleSource, Source: s.e.self, Epoch: s.epoch, Shared: s.shared,
		GroupShared: s.groupShared, Records: s.recs}
}

func (s *sourceRun) event(ev api.MoveEvent) {
	ev.At = time.Now().UnixNano()
	ev.Migration = s.id
	s.emitMu.Lock()
	defer s.emitMu.Unlock()
	s.emit(ev)
}

// phase records a forward phase change.
func (s *sourceRun) phase(ctx context.Context, p record.Phase) error {
	cctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	st := s.stats
	st.TotalNS = int64(time.Since(s.start))
	if err := s.e.table.Apply(cctx, shmowner.SetMigrationPhaseType, shmowner.SetMigrationPhaseRequest{
		ID: s.id, Phase: p, Epoch: s.epoch, At: time.Now().UnixNano(),
		Bytes: s.stats.PrecopyBytes + s.stats.FinalBytes, Stats: &st}); err != nil {
		// A retry after an answer lost on the way is refused: the first one counted.
		if rec, ok := s.e.leaderRecord(cctx, s.id); !errors.Is(err, record.ErrBadTransition) || !ok || rec.Phase != p {
			return fmt.Errorf("record phase %s: %w", p, err)
		}
	}
	s.event(api.MoveEvent{Event: api.EventPhase, Phase: string(p)})
	faults.At(string(p))
	return nil
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
	wdir := s.e.wl.Dir(s.w.ID)
	req := PrepareRequest{Records: s.recs, Dir: wdir, Token: newMigrationID(), Files: s.files}
	if !s.req.NoPrecopy {
		req.ReserveBytes = s.memory
	}
	tokens := map[string]string{wdir: req.Token}
	if gdir := s.recs[0].GroupDir; gdir != "" {
		req.GroupToken = newMigrationID()
		tokens[gdir] = req.GroupToken
	}
	prep, err := func() (PrepareResult, error) {
		for dir, tok := range tokens {
			file := filepath.Join(dir, ".migration-"+s.id)
			defer os.Remove(file)
			if err := os.WriteFile(file, []byte(tok), 0o600); err != nil {
				return PrepareResult{}, fmt.Errorf("write %s: %w", file, err)
			}
		}
		cctx, cancel := context.WithTimeout(ctx, stepTimeout)
		defer cancel()
		return s.remote.Prepare(cctx, s.id, req)
	}()
	if err != nil {
		return fmt.Errorf("prepare %s: %w", s.target.ID, err)
	}
	s.shared, s.groupShared, s.carry = prep.Shared, prep.GroupShared, prep.Carry
	if s.shared || s.groupShared {
		// Recovery must know which dirs are not this node's alone.
		if err := s.e.saveJournal(s.journal()); err != nil {
			return fmt.Errorf("write the migration journal: %w", err)
		}
	}

	if !s.req.NoPrecopy {
		defer s.closeTwin()
		// While the workload runs a silent target only makes the move wait: say so.
		pctx, stop := context.WithCancelCause(ctx)
		watched := s.watch(pctx, nil)
		err := s.precopy(ctx)
		stop(nil)
		<-watched
		if err != nil {
			return err
		}
	}
	return s.freezeAndMove(ctx)
}

// errStalled is the cause of a frozen window cut short: the target stopped answering,
// or it would last longer than --max-freeze.
var errStalled = errors.New("the frozen window was cut short")

// watch starts watchTarget on ctx and returns a channel closed when it returned.
func (s *sourceRun) watch(ctx context.Context, abort context.CancelCauseFunc) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.watchTarget(ctx, abort)
	}()
	return done
}

// watchTarget asks the target every quarter of the progress timeout whether it still
// holds the migration, until ctx ends. A target silent for half the timeout is
// reported stalled (and answering again when it is back). With abort (the frozen
// window), silence for the whole timeout cuts the window short: the move aborts and the
// workload resumes here, instead of waiting out the size-based bound on a cut link.
func (s *sourceRun) watchTarget(ctx context.Context, abort context.CancelCauseFunc) {
	limit := s.e.cfg.ProgressTimeout
	tick := time.NewTicker(max(limit/4, 10*time.Millisecond))
	defer tick.Stop()
	lastOK, stalled := time.Now(), false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pctx, cancel := context.WithTimeout(ctx, limit/2)
		err := s.remote.Ping(pctx, s.id)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if stalled {
				s.log.Info("target answers again", "after", time.Since(lastOK).Round(time.Millisecond))
				s.event(api.MoveEvent{Event: api.EventAnswering})
			}
			lastOK, stalled = time.Now(), false
			continue
		}
		quiet := time.Since(lastOK)
		if !stalled && quiet >= limit/2 {
			stalled = true
			what := "the move waits for it"
			if abort != nil {
				what = fmt.Sprintf("the workload is frozen: the move aborts if it stays silent for %v", limit)
			}
			msg := fmt.Sprintf("%s has not answered for %v (%v); %s", s.target.ID, quiet.Round(time.Millisecond), err, what)
			s.log.Warn("target stalled", "quiet", quiet.Round(time.Millisecond), "err", err)
			s.event(api.MoveEvent{Event: api.EventStalled, Error: msg})
		}
		if abort != nil && quiet >= limit {
			abort(fmt.Errorf("%w: %s did not answer for %v while the workload was frozen (progress-timeout %v): %v",
				errStalled, s.target.ID, quiet.Round(time.Millisecond), limit, err))
			return
		}
	}
}

// cut returns, for an err of a frozen window ctx that was cut short, the reason it was
// (what failed then, a shipment or a restore, failed of it); else err.
func cut(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); err != nil && cause != nil && errors.Is(cause, errStalled) {
		return cause
	}
	return err
}

// precopy sends the workload's memory to the target while it runs, round after round,
// until what changed in the last round would ship within the downtime aimed for.
func (s *sourceRun) precopy(ctx context.Context) error {
	if err := s.phase(ctx, record.PhasePrecopy); err != nil {
		return err
	}
	policy := migrate.PrecopyPolicy{MaxDowntime: time.Duration(s.req.MaxDowntimeMS) * time.Millisecond, MaxRounds: s.req.MaxRounds}
	root := s.root
	s.pc = migrate.NewPrecopier("/proc", func() ([]int, error) { return treePids(root) })
	// Later rounds send a page that changed in a few words as those words: the twin
	// keeps what the target holds, up to a quarter more than the tree's memory, and no
	// more than this node has available beyond twinMargin.
	if twin, err := migrate.OpenPageStore(filepath.Join(s.dir, "twin")); err != nil {
		s.log.Warn("pre-copy without deltas: no room for a copy of the pages sent", "err", err)
	} else {
		s.twin = twin
		s.pc.KeepTwin(twin, twinPages(s.memory, availableMemory()))
	}
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
		s.event(api.MoveEvent{Event: api.EventRound, Phase: string(record.PhasePrecopy), Round: &api.RoundInfo{
			Round: round, Pages: st.Pages, ChangedPages: st.Changed, DeltaPages: st.Deltas, SentBytes: st.SentBytes,
			DurationNS: int64(st.Duration), RateBPS: r}})
		s.log.Info("pre-copy round", "round", round, "pages", st.Pages, "changed", st.Changed, "deltas", st.Deltas,
			"sent_bytes", st.SentBytes, "took", st.Duration)
		if why, last := policy.Last(migrate.PrecopyRound{Round: round, Changed: st.Changed, PrevChanged: prevChanged, Rate: rate}); last {
			s.log.Info("pre-copy done", "rounds", round, "why", why)
			return nil
		}
		prevChanged = st.Changed
	}
}

// twinMargin is the memory pre-copy's twin leaves available on the source.
const twinMargin = 512 << 20

// twinPages is how many pages the twin may hold: 1.25x the tree's memory, within what is
// available beyond twinMargin (a smaller twin only sends more pages whole).
func twinPages(tree, available uint64) int {
	limit := tree / migrate.PageSize * 5 / 4
	if available > twinMargin {
		return int(min(limit, (available-twinMargin)/migrate.PageSize))
	}
	return 0
}

// availableMemory is MemAvailable, or 0 if it cannot be read.
func availableMemory() uint64 {
	mi, err := procfs.ReadMeminfo("/proc/meminfo")
	if err != nil {
		return 0
	}
	return mi.MemAvailable
}

// closeTwin drops pre-copy's copies of the pages sent.
func (s *sourceRun) closeTwin() {
	if s.twin != nil {
		s.twin.Close()
		s.twin = nil
	}
}

// precopyRound streams one round of pages to the target.
func (s *sourceRun) precopyRound(ctx context.Context) (migrate.RoundStats, error) {
	body := s.pc.NewRoundReader(ctx)
	_, err := s.remote.Pages(ctx, s.id, body)
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
	// The frozen window ends early when the target stops answering or --max-freeze is up.
	wctx, abort := context.WithCancelCause(ctx)
	if s.req.MaxFreezeMS > 0 {
		d := time.Duration(s.req.MaxFreezeMS) * time.Millisecond
		var stop context.CancelFunc
		wctx, stop = context.WithTimeoutCause(wctx, d, fmt.Errorf("%w: the workload would stay frozen longer than --max-freeze %v", errStalled, d))
		defer stop()
	}
	watched := s.watch(wctx, abort)
	defer func() { abort(nil); <-watched }()
	return cut(wctx, s.frozenWindow(ctx, wctx))
}

// frozenWindow is freezeAndMove's frozen part, on wctx (cut short by the watch).
func (s *sourceRun) frozenWindow(ctx, wctx context.Context) error {
	fctx, cancel := context.WithTimeout(wctx, migrate.DumpTimeout)
	defer cancel()
	images := filepath.Join(s.dir, "images")
	// The dump writes about the tree's memory into fresh files: the twin's pages, freed
	// just now, are what the kernel hands out first (see migrate.Reserve for why).
	s.closeTwin()
	s.frozen = true
	t0 := time.Now()
	dump, err := s.e.criu.Dump(fctx, migrate.DumpOptions{Pid: s.root, ImagesDir: images,
		WorkDir: filepath.Join(s.dir, "work"), LeaveStopped: true, OwnNetwork: s.recs[0].Addr != ""})
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	faults.At("dumped")
	// The tree stopped at about dump end - frozen; downtime counts from there.
	frozenAt := time.Now().Add(-dump.Frozen)
	if dump.Frozen <= 0 {
		frozenAt = t0
	}
	s.frozenAt = frozenAt
	s.stats.DumpNS = int64(time.Since(t0))
	s.stats.WorkloadBytes = uint64(dump.ImageBytes)
	s.window.start(frozenAt)
	s.window.markParts("dump", dumpParts(dump, time.Since(frozenAt)))
	cancel()
	fctx, cancel = context.WithTimeout(wctx, migrate.FreezeBudget(dump.ImageBytes))
	defer cancel()
	// The segments' digests (which the target checks its restored copy against) are
	// taken beside the shipping: the frozen tree's segments do not change.
	type digested struct {
		segs []workload.Segment
		err  error
		took time.Duration
	}
	digests := make(chan digested, 1)
	go func() {
		t := time.Now()
		segs, err := workload.QuickDigestSegments(s.root)
		digests <- digested{segs, err, time.Since(t)}
	}()

	t1 := time.Now()
	if !s.shared {
		if err := s.shipFiles(fctx); err != nil {
			return err
		}
	}
	if err := s.carryFiles(fctx); err != nil {
		return err
	}
	s.window.mark("logs and carried files")
	opts := migrate.StreamOptions{Paged: migrate.PagesImage}
	if s.pc != nil {
		opts.Held = s.pc.Held
	}
	body := migrate.NewImageReader(fctx, images, opts)
	shipped, err := s.remote.Images(fctx, s.id, faults.Stream(body))
	body.Close()
	s.stats.FinalBytes += uint64(body.Bytes())
	if err != nil {
		return fmt.Errorf("ship images: %w", err)
	}
	s.stats.ShipNS = int64(time.Since(t1))
	s.window.markParts("ship images", shipped.Parts)
	if err := s.phase(ctx, record.PhaseShipped); err != nil {
		return err
	}
	s.window.mark("record shipped")
	d := <-digests
	if d.err != nil {
		return fmt.Errorf("digest segments at the freeze: %w", d.err)
	}
	s.window.markParts("segment digests (what is left once shipped)", []record.WindowStep{
		{Step: "digests, run beside the shipping", NS: int64(d.took)}})

	t2 := time.Now()
	res, err := s.remote.Restore(fctx, s.id, RestoreRequest{Segments: d.segs})
	if err != nil {
		return fmt.Errorf("restore on %s: %w", s.target.ID, err)
	}
	s.placed = res.Members
	s.stats.RestoreNS = int64(time.Since(t2))
	s.window.markParts("restore on the target", res.Parts)
	if err := s.phase(ctx, record.PhaseRestored); err != nil {
		return err
	}
	s.window.mark("record restored")

	// The commit. From here on nothing rolls back; a target gone silent is not
	// committed to (it could not resume the workload).
	if err := wctx.Err(); err != nil {
		return err
	}
	s.stats.FrozenNS = int64(time.Since(frozenAt))
	if err := s.commit(); err != nil {
		return err
	}
	s.window.mark("commit")
	s.finish(frozenAt)
	return nil
}

// commit applies done; if its outcome is unknown it reads it back. An error means the
// migration did not commit.
func (s *sourceRun) commit() error {
	st := s.stats
	st.TotalNS = int64(time.Since(s.start))
	phase, err := s.e.settle(s.id, s.epoch, record.PhaseDone, "", &st, s.placed)
	if err != nil {
		return err
	}
	if phase != record.PhaseDone {
		return fmt.Errorf("the migration was %s before it could commit", phase)
	}
	s.event(api.MoveEvent{Event: api.EventPhase, Phase: string(record.PhaseDone)})
	faults.At(string(record.PhaseDone))
	return nil
}

// finish runs after the commit: resume the target's copy, remove this one.
func (s *sourceRun) finish(frozenAt time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	if err := s.remote.Resume(ctx, s.id); err != nil {
		// The target resumes it by itself from the record (recovery).
		s.log.Warn("target did not confirm the resume; it resumes from the record when it can", "err", err)
	}
	s.stats.FrozenNS = int64(time.Since(frozenAt))
	if len(s.window.list) > 0 { // none if the dump never returned
		// The steps run back to back from the freeze: they are the downtime.
		s.window.mark("resume on the target")
		s.stats.Window = s.window.list
		s.stats.FrozenNS = int64(s.window.total())
	}
	s.e.wl.Release(s.w.Group, s.journal().ids(), !s.shared, !s.groupShared)
	s.e.noteLeftovers(s.w.Group, s.files)
	os.Remove(s.e.sourceJournalPath(s.id))
	s.stats.TotalNS = int64(time.Since(s.start))
	if err := s.e.table.Apply(ctx, shmowner.SetMigrationStatsType, shmowner.SetMigrationStatsRequest{ID: s.id, Stats: s.stats}); err != nil {
		s.log.Warn("record migration figures", "err", err)
	}
	s.log.Info("migration done", "downtime", time.Duration(s.stats.FrozenNS), "total", time.Duration(s.stats.TotalNS),
		"precopy_bytes", s.stats.PrecopyBytes, "final_bytes", s.stats.FinalBytes, "rounds", s.stats.Rounds)
	rec, _ := s.e.table.Table().Migration(s.id) // this node's copy may lag the commit
	st := s.stats
	rec.Phase, rec.Stats = record.PhaseDone, &st
	s.event(api.MoveEvent{Event: api.EventDone, Phase: string(record.PhaseDone), Record: &rec, Summary: &st})
}

// fail rolls a migration that did not commit back: the record says aborted, the target
// removes what it made, and the source tree runs again. If the record turns out to be
// done (a commit whose answer was lost), the move is finished instead.
func (s *sourceRun) fail(cause error) error {
	s.log.Warn("migration failed; rolling back", "err", cause)
	st := s.stats
	st.TotalNS = int64(time.Since(s.start))
	if !s.frozenAt.IsZero() {
		st.FrozenNS = int64(time.Since(s.frozenAt)) // until the abort is recorded and the tree resumes
	}
	phase, err := s.e.settle(s.id, s.epoch, record.PhaseAborted, cause.Error(), &st, nil)
	if err != nil {
		// Neither outcome could be recorded: leave both copies as they are (the source
		// stopped, the target's stopped too); recovery settles it once the cluster has a
		// leader again.
		s.event(api.MoveEvent{Event: api.EventError, Error: fmt.Sprintf("migration %s failed (%v) and its outcome could not be recorded (%v); "+
			"the workload stays stopped on %s until the cluster settles it", s.id, cause, err, s.e.self), Code: "no_leader"})
		return err
	}
	if phase == record.PhaseDone {
		s.finish(time.Now().Add(-time.Duration(s.stats.FrozenNS)))
		return nil
	}
	// The table says aborted, so the target never resumes its copy: resume ours first,
	// then tell the target, which may be cut off (it cleans up from the record then).
	if s.frozen {
		if err := resumeSource(s.root, s.recs[0].Addr != ""); err != nil {
			s.log.Error("resume the source tree after an abort", "err", err)
		}
	}
	// Not waited for: a cut-off target would hold up the answer for abortTimeout.
	s.e.goFn(func() {
		ctx, cancel := context.WithTimeout(context.Background(), abortTimeout)
		defer cancel()
		if err := s.remote.Abort(ctx, s.id); err != nil && !errors.Is(err, record.ErrUnknownMigration) {
			s.log.Warn("target did not confirm the abort; it cleans up from the record", "err", err)
		}
	})
	os.Remove(s.e.sourceJournalPath(s.id))
	rec, _ := s.e.table.Table().Migration(s.id) // this node's copy may lag the abort
	rec.Phase, rec.Error = record.PhaseAborted, cause.Error()
	err = fmt.Errorf("migration %s of %s to %s aborted; the workload runs on %s as before: %v: %w",
		s.id, s.w.Name, s.target.ID, s.e.self, cause, api.ErrMigrationFailed)
	code, _ := api.Code(cause)
	if code == "internal" {
		code = "migration_failed"
	}
	// The event carries the cause; the client says "aborted, runs on the source" itself.
	s.event(api.MoveEvent{Event: api.EventError, Phase: string(record.PhaseAborted), Record: &rec, Error: cause.Error(), Code: code})
	return err
}

// settle drives migration id to the terminal phase want (done or aborted) and returns
// the terminal phase it has: want, or the other one if that was recorded first. It
// keeps trying through elections; an error means it could not find out in time.
func (e *Engine) settle(id string, epoch uint64, want record.Phase, reason string, st *record.MigrationStats, placed map[string]int) (record.Phase, error) {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	var last error
	for {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		err := e.table.Apply(actx, shmowner.SetMigrationPhaseType, shmowner.SetMigrationPhaseRequest{
			ID: id, Phase: want, Epoch: epoch, At: time.Now().UnixNano(), Error: reason, Stats: st, Placed: placed})
		acancel()
		if err == nil {
			return want, nil
		}
		last = err
		// Refused, or unknown: the leader's record tells.
		if rec, ok := e.leaderRecord(ctx, id); ok && rec.Phase.Terminal() {
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
// table once it caught up with the leader's log.
func (e *Engine) leaderRecord(ctx context.Context, id string) (record.Migration, bool) {
	if !e.table.CatchUp(ctx) {
		return record.Migration{}, false
	}
	return e.table.Table().Migration(id)
}

// shipFiles copies the members' log files to the target (separate filesystems only).
func (s *sourceRun) shipFiles(ctx context.Context) error {
	for _, rec := range s.recs {
		for _, name := range []string{supervisor.StdoutFile, supervisor.StderrFile} {
			f, err := os.Open(filepath.Join(s.e.wl.Dir(rec.ID), name))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			err = s.remote.File(ctx, s.id, rec.ID, name, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("ship %s of %s: %w", name, rec.Name, err)
			}
		}
	}
	return nil
}

// carryFiles sends the files the target lacks, as the frozen tree sees them (through
// its root, so in its own mount namespace).
func (s *sourceRun) carryFiles(ctx context.Context) error {
	for _, file := range s.carry {
		f, err := os.Open(filepath.Join("/proc", strconv.Itoa(s.root), "root", file))
		if err != nil {
			return fmt.Errorf("carry %s: %w", file, err)
		}
		var size int64
		if st, err := f.Stat(); err == nil {
			size = st.Size()
		}
		err = s.remote.Carry(ctx, s.id, file, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("carry %s to %s: %w", file, s.target.ID, err)
		}
		s.stats.FinalBytes += uint64(size) // sent while frozen
	}
	return nil
}

// resumeSource lets a tree that a dump left stopped run on here (the move aborted). One
// with its own network gets it back first: the dump left it locked, its connections in
// repair mode (ownnet.Release). It resumes even if that fails: a tree that runs cut off
// is better than one that stays stopped, and the error says why it is unreachable.
func resumeSource(root int, ownNetwork bool) error {
	var release error
	if ownNetwork {
		pids, err := treePids(root)
		if err == nil {
			err = ownnet.Release(pids)
		}
		if err != nil {
			release = fmt.Errorf("give the workload its network back: %w", err)
		}
	}
	return errors.Join(release, migrate.ResumeTree(root))
}

// treePids returns the host pids of the tree rooted at initPid.
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
