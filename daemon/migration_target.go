package daemon

// Moving a workload between nodes: the target side, and recovery of both sides from
// the replicated record after a crash.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/migshm/migshm/internal/atomicfile"
	"github.com/migshm/migshm/internal/pki"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

// journalDir (under the data dir) keeps one file per migration this node is the target
// of, until the migration's outcome is carried out: the restored tree's pid outlives a
// daemon crash only there.
const journalDir = "migrations"

// journal is what a node keeps on disk about a migration in flight, until its outcome
// is carried out. A target's (ID.json) names the restored tree; a source's
// (out-ID.json) names the tree it may have stopped, which a restarted daemon may no
// longer find through the shared workload dir.
type journal struct {
	ID     string `json:"id"`
	Role   string `json:"role"` // "source" or "target"
	Source string `json:"source"`
	Epoch  uint64 `json:"epoch"`
	Shared bool   `json:"shared"` // the workload dir is the source's too
	// Record is the workload: on a target as it will run there (pid set once
	// restored), on a source as it runs there.
	Record localRecord `json:"record"`
}

const (
	roleSource = "source"
	roleTarget = "target"
)

// prepareRequest opens a migration on the target.
type prepareRequest struct {
	Record localRecord `json:"record"` // the source's record of the workload
	Dir    string      `json:"dir"`    // the source's workload dir of it
	Token  string      `json:"token"`  // content of Dir/.migration-ID, if the target can read it the dir is shared
}

type prepareResult struct {
	Shared bool `json:"shared"`
}

type pagesResult struct {
	Pages int64 `json:"pages"`
}

type imagesResult struct {
	Files    int   `json:"files"`
	Bytes    int64 `json:"bytes"`
	RefPages int64 `json:"ref_pages"`
}

type restoreRequest struct {
	Segments []workload.Segment `json:"segments"` // digests at the freeze
}

type restoreResult struct {
	Pid       int   `json:"pid"`
	RestoreNS int64 `json:"restore_ns"`
}

// targetState is this node's side of one incoming migration.
type targetState struct {
	mu    sync.Mutex
	j     journal
	dir   string
	store *migrate.PageStore
	proc  *workload.Process // the restored init while it is our child and not yet adopted
}

func (m *migrator) journalPath(id string) string {
	return filepath.Join(m.d.cfg.DataDir, journalDir, id+".json")
}

func (m *migrator) sourceJournalPath(id string) string {
	return filepath.Join(m.d.cfg.DataDir, journalDir, "out-"+id+".json")
}

func (m *migrator) saveJournal(j journal) error {
	if err := os.MkdirAll(filepath.Join(m.d.cfg.DataDir, journalDir), 0o700); err != nil {
		return err
	}
	path := m.journalPath(j.ID)
	if j.Role == roleSource {
		path = m.sourceJournalPath(j.ID)
	}
	return atomicfile.Write(path, mustJSON(j), 0o600)
}

// incoming checks that the caller is the source of migration id with this node as its
// target, and returns the migration's record.
func (d *Daemon) incoming(r *http.Request, id string) (record.Migration, error) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	d.catchUp(ctx)
	mg, ok := d.store.Table().Migration(id)
	if !ok {
		return mg, fmt.Errorf("migration %s: %w", id, record.ErrUnknownMigration)
	}
	if mg.Target != d.cfg.NodeID {
		return mg, fmt.Errorf("migration %s goes to %s, not to %s: %w", id, mg.Target, d.cfg.NodeID, ErrBadRequest)
	}
	if r.TLS != nil {
		if peer := pki.PeerName(*r.TLS); peer != mg.Source {
			return mg, fmt.Errorf("migration %s is driven by %s, not by %s: %w", id, mg.Source, peer, ErrForbidden)
		}
	}
	return mg, nil
}

func (m *migrator) target(id string) (*targetState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.targets[id]
	if t == nil {
		return nil, fmt.Errorf("migration %s is not open on %s (prepare it first, or it was aborted): %w",
			id, m.d.cfg.NodeID, record.ErrUnknownMigration)
	}
	return t, nil
}

// openTarget checks an incoming request of an open migration and returns its state.
func (d *Daemon) openTarget(r *http.Request) (string, *targetState, error) {
	id := r.PathValue("id")
	if _, err := d.incoming(r, id); err != nil {
		return id, nil, err
	}
	t, err := d.mig.target(id)
	return id, t, err
}

func (d *Daemon) handlePeerPrepare(r *http.Request) (any, error) {
	id := r.PathValue("id")
	var req prepareRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	mg, err := d.incoming(r, id)
	if err != nil {
		return nil, err
	}
	if mg.Phase.Terminal() {
		return nil, fmt.Errorf("migration %s is %s: %w", id, mg.Phase, record.ErrBadTransition)
	}
	if req.Record.ID != mg.Workload {
		return nil, fmt.Errorf("migration %s moves %s, not %s: %w", id, mg.Workload, req.Record.ID, ErrBadRequest)
	}
	m := d.mig
	dir := filepath.Join(d.cfg.ImageDir, "in-"+id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	store, err := migrate.OpenPageStore(filepath.Join(dir, "pages"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	shared := false
	if want := filepath.Join(d.cfg.WorkloadDir, req.Record.ID); want == req.Dir && req.Token != "" {
		b, err := os.ReadFile(filepath.Join(want, ".migration-"+id))
		shared = err == nil && string(b) == req.Token
	}
	rec := req.Record
	rec.Node = d.cfg.NodeID
	rec.InitPid, rec.InitStart = 0, 0
	j := journal{ID: id, Role: roleTarget, Source: mg.Source, Epoch: mg.Epoch, Shared: shared, Record: rec}
	if err := m.saveJournal(j); err != nil {
		store.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	if !shared {
		if err := os.MkdirAll(filepath.Join(d.cfg.WorkloadDir, rec.ID), 0o700); err != nil {
			return nil, err
		}
	}
	m.mu.Lock()
	if old := m.targets[id]; old != nil {
		m.mu.Unlock()
		store.Close()
		return nil, fmt.Errorf("migration %s is already open here: %w", id, record.ErrExists)
	}
	m.targets[id] = &targetState{j: j, dir: dir, store: store}
	m.mu.Unlock()
	m.log.Info("incoming migration", "migration", id, "workload", rec.Name, "peer", mg.Source, "shared_dir", shared)
	m.faults.at("target-prepared")
	return prepareResult{Shared: shared}, nil
}

func (d *Daemon) handlePeerPages(r *http.Request) (any, error) {
	id, t, err := d.openTarget(r)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	store := t.store
	t.mu.Unlock()
	if store == nil {
		return nil, fmt.Errorf("migration %s: pre-copy pages after the images: %w", id, record.ErrBadTransition)
	}
	n, err := migrate.ReadPages(r.Context(), r.Body, store)
	if err != nil {
		return nil, fmt.Errorf("pre-copy pages: %w", err)
	}
	return pagesResult{Pages: n}, nil
}

func (d *Daemon) handlePeerFiles(r *http.Request) (any, error) {
	_, t, err := d.openTarget(r)
	if err != nil {
		return nil, err
	}
	name := r.URL.Query().Get("name")
	if name != stdoutFile && name != stderrFile {
		return nil, fmt.Errorf("files: %q is not a workload file: %w", name, ErrBadRequest)
	}
	if t.j.Shared {
		return struct{}{}, nil // the very same file
	}
	path := filepath.Join(d.cfg.WorkloadDir, t.j.Record.ID, name)
	tmp := path + ".migrating"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := f.ReadFrom(r.Body); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("receive %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return struct{}{}, os.Rename(tmp, path)
}

func (d *Daemon) handlePeerImages(r *http.Request) (any, error) {
	_, t, err := d.openTarget(r)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	store := t.store
	t.mu.Unlock()
	st, err := migrate.ReadImages(r.Context(), r.Body, filepath.Join(t.dir, "images"), migrate.StreamOptions{Pages: store})
	if err != nil {
		return nil, fmt.Errorf("receive images: %w", err)
	}
	// The pages now live in the images; the store is not needed any more.
	t.mu.Lock()
	if t.store != nil {
		t.store.Close()
		t.store = nil
	}
	t.mu.Unlock()
	d.mig.faults.at("target-received")
	return imagesResult{Files: st.Files, Bytes: st.Bytes, RefPages: st.RefPages}, nil
}

// handlePeerRestore restores the shipped tree stopped, after checking its segments
// against the digests taken at the freeze. It runs only once the table commits done.
func (d *Daemon) handlePeerRestore(r *http.Request) (any, error) {
	id := r.PathValue("id")
	var req restoreRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	mg, err := d.incoming(r, id)
	if err != nil {
		return nil, err
	}
	if mg.Phase.Terminal() {
		return nil, fmt.Errorf("migration %s is %s: %w", id, mg.Phase, record.ErrBadTransition)
	}
	m := d.mig
	t, err := m.target(id)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.proc != nil {
		return nil, fmt.Errorf("migration %s is already restored here: %w", id, record.ErrExists)
	}
	if _, err := m.criu.CachedCheck(r.Context()); err != nil {
		return nil, err
	}
	start := time.Now()
	res, err := m.criu.Restore(r.Context(), migrate.RestoreOptions{
		ImagesDir: filepath.Join(t.dir, "images"), WorkDir: filepath.Join(t.dir, "work"),
		LeaveStopped: true, BeforeResume: migrate.VerifySegments(req.Segments)})
	if err != nil {
		return nil, fmt.Errorf("restore on %s: %w", d.cfg.NodeID, err)
	}
	t.proc = workload.Attach(res.Pid)
	st, err := workload.StartTime("/proc", res.Pid)
	if err == nil {
		t.j.Record.InitPid, t.j.Record.InitStart = res.Pid, st
		err = m.saveJournal(t.j)
	}
	if err != nil {
		_ = t.proc.Kill()
		_, _ = t.proc.Wait()
		t.proc = nil
		return nil, fmt.Errorf("restore on %s: record the restored tree: %w", d.cfg.NodeID, err)
	}
	m.log.Info("restored, stopped until the commit", "migration", id, "pid", res.Pid, "took", time.Since(start))
	m.faults.at("target-restored")
	return restoreResult{Pid: res.Pid, RestoreNS: int64(time.Since(start))}, nil
}

// handlePeerResume resumes the restored tree once the table says the move is done.
func (d *Daemon) handlePeerResume(r *http.Request) (any, error) {
	id := r.PathValue("id")
	mg, err := d.incoming(r, id)
	if err != nil {
		return nil, err
	}
	if mg.Phase != record.PhaseDone {
		return nil, fmt.Errorf("migration %s is %s, not done: the restored copy stays stopped: %w", id, mg.Phase, record.ErrBadTransition)
	}
	d.mig.faults.at("target-resume")
	return struct{}{}, d.mig.resumeTarget(id)
}

// handlePeerAbort removes what this node made for a migration the table aborted.
func (d *Daemon) handlePeerAbort(r *http.Request) (any, error) {
	id := r.PathValue("id")
	mg, err := d.incoming(r, id)
	if err != nil {
		return nil, err
	}
	if mg.Phase != record.PhaseAborted {
		return nil, fmt.Errorf("migration %s is %s, not aborted: %w", id, mg.Phase, record.ErrBadTransition)
	}
	return struct{}{}, d.mig.abortTarget(id)
}

// loadTarget returns the target state of id: the open one, or one rebuilt from the
// journal after a restart.
func (m *migrator) loadTarget(id string) (*targetState, error) {
	m.mu.Lock()
	t := m.targets[id]
	m.mu.Unlock()
	if t != nil {
		return t, nil
	}
	b, err := os.ReadFile(m.journalPath(id))
	if err != nil {
		return nil, err
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("journal of migration %s: %w", id, err)
	}
	t = &targetState{j: j, dir: filepath.Join(m.d.cfg.ImageDir, "in-"+id)}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur := m.targets[id]; cur != nil {
		return cur, nil
	}
	m.targets[id] = t
	return t, nil
}

// resumeTarget continues the restored tree of a committed migration and hands it to
// the supervisor. It is idempotent.
func (m *migrator) resumeTarget(id string) error {
	t, err := m.loadTarget(id)
	if errors.Is(err, os.ErrNotExist) {
		return nil // done before
	}
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	rec := t.j.Record
	if rec.InitPid == 0 {
		return fmt.Errorf("migration %s is done but %s never restored it: %w", id, m.d.cfg.NodeID, ErrNotRunning)
	}
	if err := m.d.sup.adopt(rec, t.proc); err != nil {
		return fmt.Errorf("adopt the restored tree of migration %s: %w", id, err)
	}
	if err := migrate.ResumeTree(rec.InitPid); err != nil {
		return fmt.Errorf("resume the restored tree of migration %s: %w", id, err)
	}
	m.log.Info("moved workload runs here", "migration", id, "workload", rec.Name, "pid", rec.InitPid)
	m.closeTarget(id, t)
	return nil
}

// abortTarget kills what this node restored for an aborted migration and removes its
// files. It is idempotent.
func (m *migrator) abortTarget(id string) error {
	t, err := m.loadTarget(id)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.proc != nil:
		_ = t.proc.Kill()
		_, _ = t.proc.Wait()
	case t.j.Record.InitPid != 0:
		// Restored by an earlier run of this daemon: no longer our child.
		if w, err := workload.WatchProcess(t.j.Record.InitPid, t.j.Record.InitStart); err == nil {
			_ = w.Signal(unix.SIGKILL)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = w.Wait(ctx)
			cancel()
			w.Close()
		}
	}
	t.proc = nil
	if !t.j.Shared {
		os.RemoveAll(filepath.Join(m.d.cfg.WorkloadDir, t.j.Record.ID))
	}
	m.log.Info("aborted migration cleaned up", "migration", id, "workload", t.j.Record.Name)
	m.closeTarget(id, t)
	return nil
}

func (m *migrator) closeTarget(id string, t *targetState) {
	if t.store != nil {
		t.store.Close()
		t.store = nil
	}
	os.RemoveAll(t.dir)
	os.Remove(m.journalPath(id))
	m.mu.Lock()
	delete(m.targets, id)
	m.resolved[id] = true
	m.mu.Unlock()
}

// ---- recovery -------------------------------------------------------------------------

// recoverLoop settles, every few seconds, this node's part of migrations nobody drives
// any more: after a crash of this daemon, of the other side or of the leader.
func (m *migrator) recoverLoop(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if m.d.isMember() {
			m.recover(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *migrator) recover(ctx context.Context) {
	table := m.d.store.Table()
	entries, _ := os.ReadDir(filepath.Join(m.d.cfg.DataDir, journalDir))
	journaled := map[string]bool{}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		if id, out := strings.CutPrefix(name, "out-"); out {
			journaled[id] = true
			m.recoverSource(ctx, table, id)
			continue
		}
		// Target side: act once the outcome is recorded; until then the source decides.
		mg, known := table.Migration(name)
		switch {
		case known && mg.Phase == record.PhaseDone:
			if err := m.resumeTarget(name); err != nil {
				m.log.Error("resume a moved workload", "migration", name, "err", err)
			}
		case known && mg.Phase == record.PhaseAborted:
			if err := m.abortTarget(name); err != nil {
				m.log.Error("clean up an aborted migration", "migration", name, "err", err)
			}
		}
	}
	// A migration planned by this node that crashed before writing its journal: nothing
	// was touched yet; only the record needs closing.
	for _, mg := range table.Migrations() {
		if mg.Source != m.d.cfg.NodeID || mg.Phase.Terminal() || journaled[mg.ID] || m.isDriving(mg) {
			continue
		}
		if _, err := m.settle(mg.ID, mg.Epoch, record.PhaseAborted,
			fmt.Sprintf("the source daemon on %s stopped during phase %s", m.d.cfg.NodeID, mg.Phase), nil); err != nil {
			m.log.Warn("cannot settle migration yet", "migration", mg.ID, "err", err)
		}
	}
}

func (m *migrator) isDriving(mg record.Migration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.driving[mg.Workload] == mg.ID
}

// recoverSource carries out the outcome of a migration this node was the source of and
// no longer drives: roll it back if it is still open, then resume the stopped tree
// (aborted) or kill it (done).
func (m *migrator) recoverSource(ctx context.Context, table *shmowner.Table, id string) {
	b, err := os.ReadFile(m.sourceJournalPath(id))
	if err != nil {
		return
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		m.log.Error("unreadable migration journal", "migration", id, "err", err)
		return
	}
	mg, known := table.Migration(id)
	if !known || m.isDriving(mg) {
		return
	}
	phase := mg.Phase
	if !phase.Terminal() {
		m.log.Warn("migration has no driver any more (this daemon restarted); rolling it back",
			"migration", id, "workload", j.Record.Name, "phase", phase)
		phase, err = m.settle(id, mg.Epoch, record.PhaseAborted,
			fmt.Sprintf("the source daemon on %s stopped during phase %s", m.d.cfg.NodeID, mg.Phase), nil)
		if err != nil {
			m.log.Warn("cannot settle migration yet", "migration", id, "err", err)
			return
		}
	}
	rec := j.Record
	w, err := workload.WatchProcess(rec.InitPid, rec.InitStart)
	alive := err == nil
	switch phase {
	case record.PhaseAborted:
		if alive {
			if err := migrate.ResumeTree(rec.InitPid); err != nil {
				m.log.Error("resume the workload after an aborted migration", "migration", id, "err", err)
				w.Close()
				return
			}
			m.log.Info("workload runs here again after an aborted migration", "migration", id, "workload", rec.Name)
		}
	case record.PhaseDone:
		if l := m.d.sup.get(rec.ID); l != nil && l.rec.InitPid == rec.InitPid {
			m.d.sup.release(rec.ID, !j.Shared)
		} else if alive {
			_ = w.Signal(unix.SIGKILL)
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = w.Wait(wctx)
			cancel()
		}
		m.log.Info("removed the stopped copy of a moved workload", "migration", id, "workload", rec.Name, "now_on", mg.Target)
	}
	if alive {
		w.Close()
	}
	os.Remove(m.sourceJournalPath(id))
	m.markResolved(id)
}

// abortOrphans is run by the leader: a migration whose source node is down cannot go on
// (its driver is gone); aborting it lets the target clean up now and the source resume
// its copy when it comes back.
func (d *Daemon) abortOrphans(ctx context.Context) {
	table := d.store.Table()
	for _, mg := range table.Migrations() {
		if mg.Phase.Terminal() {
			continue
		}
		n, ok := table.Node(mg.Source)
		if ok && n.State != record.NodeDown && n.State != record.NodeLeft {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := d.store.Apply(cctx, shmowner.SetMigrationPhaseType, shmowner.SetMigrationPhaseRequest{
			ID: mg.ID, Phase: record.PhaseAborted, Epoch: mg.Epoch, At: time.Now().UnixNano(),
			Error: fmt.Sprintf("source node %s went down during phase %s", mg.Source, mg.Phase)})
		cancel()
		if err != nil {
			d.log.Warn("abort migration of a down source", "migration", mg.ID, "err", err)
			continue
		}
		d.log.Warn("aborted migration: its source node is down", "migration", mg.ID, "peer", mg.Source, "phase", mg.Phase)
	}
}
