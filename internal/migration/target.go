package migration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/atomicfile"
	"github.com/migshm/migshm/internal/faults"
	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/internal/supervisor"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

// The target side. Each call names the migration and the node that made it (caller,
// from its certificate): only the migration's source may drive it, and only to this
// node, its target.

// targetState is this node's side of one incoming migration.
type targetState struct {
	mu    sync.Mutex
	j     journal
	dir   string
	store *migrate.PageStore
	// reserve is memory touched while pre-copy runs, given back as the images come.
	reserve *migrate.Reserve
	proc    *workload.Process           // the restored init while it is our child and not yet adopted
	carry   map[string]migrate.FileNeed // the files this node lacks, by path, until they came
}

// pageStore returns the store of the pre-copied pages, nil once the images came.
func (t *targetState) pageStore() *migrate.PageStore {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.store
}

// removingPrefix names image dirs set aside for removal (removeLater); a daemon that
// stopped before they were gone removes them when it starts again (Recover).
const removingPrefix = "removing-"

// removeLater renames dir aside and removes it in the background.
func (e *Engine) removeLater(dir string) {
	aside := filepath.Join(filepath.Dir(dir), removingPrefix+filepath.Base(dir))
	if err := os.Rename(dir, aside); err != nil {
		os.RemoveAll(dir)
		return
	}
	e.goFn(func() { os.RemoveAll(aside) })
}

// removeSetAside removes what removeLater set aside before this daemon stopped.
func (e *Engine) removeSetAside() {
	entries, _ := os.ReadDir(e.cfg.ImageDir)
	for _, ent := range entries {
		if strings.HasPrefix(ent.Name(), removingPrefix) {
			os.RemoveAll(filepath.Join(e.cfg.ImageDir, ent.Name()))
		}
	}
}

// maxReserve bounds what a source may make this node reserve for one migration; the
// check already refused a tree this node has no memory for.
const maxReserve = 64 << 30

// releaseReserve gives back the memory reserved for the images, and reports whether
// there was any.
func (t *targetState) releaseReserve() bool {
	t.mu.Lock()
	r := t.reserve
	t.reserve = nil
	t.mu.Unlock()
	r.Release()
	return r != nil
}

// incoming checks that caller is the source of migration id with this node as its
// target, and returns the migration's record.
func (e *Engine) incoming(ctx context.Context, caller, id string) (record.Migration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	e.table.CatchUp(ctx)
	mg, ok := e.table.Table().Migration(id)
	if !ok {
		return mg, fmt.Errorf("migration %s: %w", id, record.ErrUnknownMigration)
	}
	if mg.Target != e.self {
		return mg, fmt.Errorf("migration %s goes to %s, not to %s: %w", id, mg.Target, e.self, api.ErrBadRequest)
	}
	if caller != mg.Source {
		return mg, fmt.Errorf("migration %s is driven by %s, not by %s: %w", id, mg.Source, caller, api.ErrForbidden)
	}
	return mg, nil
}

// incomingOpen is incoming for a migration that is neither done nor aborted.
func (e *Engine) incomingOpen(ctx context.Context, caller, id string) (record.Migration, error) {
	mg, err := e.incoming(ctx, caller, id)
	if err == nil && mg.Phase.Terminal() {
		err = fmt.Errorf("migration %s is %s: %w", id, mg.Phase, record.ErrBadTransition)
	}
	return mg, err
}

// incomingSettled is incoming for a migration the table has settled as outcome.
func (e *Engine) incomingSettled(ctx context.Context, caller, id string, outcome record.Phase) error {
	mg, err := e.incoming(ctx, caller, id)
	if err == nil && mg.Phase != outcome {
		err = fmt.Errorf("migration %s is %s, not %s: %w", id, mg.Phase, outcome, record.ErrBadTransition)
	}
	return err
}

func (e *Engine) target(id string) (*targetState, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.targets[id]
	if t == nil {
		return nil, fmt.Errorf("migration %s is not open on %s (prepare it first, or it was aborted): %w",
			id, e.self, record.ErrUnknownMigration)
	}
	return t, nil
}

// Ping answers a source watching its target (see watchTarget): this node holds
// migration id, opened by caller. It reads nothing of the table, so it answers at once
// whatever Raft is doing.
func (e *Engine) Ping(caller, id string) error {
	t, err := e.target(id)
	if err != nil {
		return err
	}
	if t.j.Source != caller {
		return fmt.Errorf("migration %s comes from %s, not %s: %w", id, t.j.Source, caller, record.ErrNotOwner)
	}
	return nil
}

// open checks an incoming request of an open migration and returns its state.
func (e *Engine) open(ctx context.Context, caller, id string) (*targetState, error) {
	if _, err := e.incoming(ctx, caller, id); err != nil {
		return nil, err
	}
	return e.target(id)
}

// Prepare opens migration id on this node: a directory for its images and pre-copied
// pages, and its journal.
func (e *Engine) Prepare(ctx context.Context, caller, id string, req PrepareRequest) (PrepareResult, error) {
	mg, err := e.incomingOpen(ctx, caller, id)
	if err != nil {
		return PrepareResult{}, err
	}
	if err := sameMembers(mg, req.Records); err != nil {
		return PrepareResult{}, fmt.Errorf("migration %s: %w", id, err)
	}
	if p := e.targetNetwork(req.Records[0].Addr); p != "" {
		return PrepareResult{}, fmt.Errorf("migration %s: %s: %w", id, p, api.ErrNotMovable)
	}
	dir := filepath.Join(e.cfg.ImageDir, "in-"+id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return PrepareResult{}, err
	}
	store, err := migrate.OpenPageStore(filepath.Join(dir, "pages"))
	if err != nil {
		os.RemoveAll(dir)
		return PrepareResult{}, err
	}
	shared := false
	if want := filepath.Join(e.cfg.WorkloadDir, req.Records[0].ID); want == req.Dir {
		shared = hasToken(want, id, req.Token)
	}
	gdir := req.Records[0].GroupDir
	groupShared := hasToken(gdir, id, req.GroupToken)
	recs := make([]supervisor.Record, len(req.Records))
	for i, rec := range req.Records {
		rec.Node = e.self
		rec.InitPid, rec.InitStart, rec.GroupPid, rec.GroupStart = 0, 0, 0, 0
		recs[i] = rec
	}
	j := journal{ID: id, Role: roleTarget, Source: mg.Source, Epoch: mg.Epoch, Shared: shared, GroupShared: groupShared, Records: recs}
	problems, carry := migrate.CheckFiles("/", e.self, req.Files, e.isLeftover(req.Records[0].Group))
	if len(problems) > 0 {
		store.Close()
		os.RemoveAll(dir)
		return PrepareResult{}, fmt.Errorf("migration %s: %w", id, filesError(problems))
	}
	// The directories the tree needs are made now (and removed by an abort); the files
	// come while it is frozen (Carry).
	files := map[string]migrate.FileNeed{}
	var res PrepareResult
	for _, n := range carry {
		if !n.Dir {
			files[n.Path] = n
			res.Carry = append(res.Carry, n.Path)
			// Its directory, if that is missing too and the tree does not hold it (else
			// it is in carry, with its mode), is made as mkdir -p would.
			n = migrate.FileNeed{Path: filepath.Dir(n.Path), Dir: true, Mode: 0o755}
		}
		made, err := makeDir(n)
		j.Carried = append(j.Carried, made...)
		if err != nil {
			removeCarried(j.Carried)
			store.Close()
			os.RemoveAll(dir)
			return PrepareResult{}, fmt.Errorf("migration %s: make %s: %w", id, n.Path, err)
		}
	}
	if err := e.saveJournal(j); err != nil {
		removeCarried(j.Carried)
		store.Close()
		os.RemoveAll(dir)
		return PrepareResult{}, err
	}
	// The restored tree reopens its members' logs and finds its group dir at the paths
	// it had.
	var mkdirs []string
	if gdir != "" && !groupShared {
		mkdirs = append(mkdirs, gdir)
	}
	for _, rec := range recs {
		if !shared {
			mkdirs = append(mkdirs, filepath.Join(e.cfg.WorkloadDir, rec.ID))
		}
	}
	for _, d := range mkdirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			store.Close()
			return PrepareResult{}, err
		}
	}
	e.mu.Lock()
	if old := e.targets[id]; old != nil {
		e.mu.Unlock()
		store.Close()
		return PrepareResult{}, fmt.Errorf("migration %s is already open here: %w", id, record.ErrExists)
	}
	e.targets[id] = &targetState{j: j, dir: dir, store: store, carry: files,
		reserve: migrate.NewReserve(int64(min(req.ReserveBytes, maxReserve)))}
	e.mu.Unlock()
	e.log.Info("incoming migration", "migration", id, "workload", recs[0].Name, "members", len(recs), "peer", mg.Source,
		"shared_dir", shared, "shared_group_dir", groupShared, "carry", len(res.Carry), "made_dirs", len(j.Carried))
	faults.At("target-prepared")
	res.Shared, res.GroupShared = shared, groupShared
	return res, nil
}

// sameMembers checks that recs are the records of the workloads migration mg moves, in
// its order.
func sameMembers(mg record.Migration, recs []supervisor.Record) error {
	want := mg.Moves()
	if len(recs) != len(want) {
		return fmt.Errorf("it moves %d workloads, the request names %d: %w", len(want), len(recs), api.ErrBadRequest)
	}
	for i, rec := range recs {
		if rec.ID != want[i] {
			return fmt.Errorf("it moves %s, not %s: %w", want[i], rec.ID, api.ErrBadRequest)
		}
		alone := rec.NSPid == 1 && rec.GroupDir == "" && len(recs) == 1
		if !alone && (rec.NSPid <= 1 || !filepath.IsAbs(rec.GroupDir) || rec.GroupDir != recs[0].GroupDir) {
			return fmt.Errorf("the record of %s names neither a workload alone nor a member of a group tree: %w", rec.ID, api.ErrBadRequest)
		}
	}
	return nil
}

// hasToken reports whether dir holds the token file of migration id with content token:
// then the target sees the source's very dir.
func hasToken(dir, id, token string) bool {
	if token == "" {
		return false
	}
	b, err := os.ReadFile(filepath.Join(dir, ".migration-"+id))
	return err == nil && string(b) == token
}

// Pages takes one pre-copy round of migration id.
func (e *Engine) Pages(ctx context.Context, caller, id string, pages io.Reader) (PagesResult, error) {
	t, err := e.open(ctx, caller, id)
	if err != nil {
		return PagesResult{}, err
	}
	store := t.pageStore()
	if store == nil {
		return PagesResult{}, fmt.Errorf("migration %s: pre-copy pages after the images: %w", id, record.ErrBadTransition)
	}
	n, err := migrate.ReadPages(ctx, pages, store)
	if err != nil {
		return PagesResult{}, fmt.Errorf("pre-copy pages: %w", err)
	}
	return PagesResult{Pages: n}, nil
}

// File takes one of a member's own files (its logs) when the nodes do not share the
// workload dir.
func (e *Engine) File(ctx context.Context, caller, id, wl, name string, content io.Reader) error {
	t, err := e.open(ctx, caller, id)
	if err != nil {
		return err
	}
	if name != supervisor.StdoutFile && name != supervisor.StderrFile {
		return fmt.Errorf("files: %q is not a workload file: %w", name, api.ErrBadRequest)
	}
	if !slices.Contains(t.j.ids(), wl) {
		return fmt.Errorf("files: migration %s does not move workload %q: %w", id, wl, api.ErrBadRequest)
	}
	if t.j.Shared {
		return nil // the very same file
	}
	if err := atomicfile.WriteFrom(filepath.Join(e.cfg.WorkloadDir, wl, name), content, 0o600); err != nil {
		return fmt.Errorf("receive %s: %w", name, err)
	}
	return nil
}

// Carry takes a file of the tree that this node said it lacks (PrepareResult.Carry),
// read on the source while the tree is frozen. It never replaces a file: one that
// appeared at the path since is an error.
func (e *Engine) Carry(ctx context.Context, caller, id, file string, content io.Reader) error {
	t, err := e.open(ctx, caller, id)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.carry[file]
	if !ok {
		return fmt.Errorf("carry: migration %s carries no file %q to %s: %w", id, file, e.self, api.ErrBadRequest)
	}
	if n.Replace {
		info, err := os.Lstat(file)
		if err != nil || !e.isLeftover(t.j.Records[0].Group)(file, info) {
			return fmt.Errorf("carry %s: the outdated copy on %s changed since the check; it is left alone: %w", file, e.self, api.ErrNotMovable)
		}
	}
	if err := writeFile(n, content); err != nil {
		return fmt.Errorf("carry %s: %w", file, err)
	}
	delete(t.carry, file)
	if n.Replace {
		t.j.Replaced = append(t.j.Replaced, file)
	} else {
		t.j.Carried = append(t.j.Carried, file)
	}
	return e.saveJournal(t.j)
}

// Images takes the final images of migration id.
func (e *Engine) Images(ctx context.Context, caller, id string, images io.Reader) (ImagesResult, error) {
	t, err := e.open(ctx, caller, id)
	if err != nil {
		return ImagesResult{}, err
	}
	start := time.Now()
	var parts []record.WindowStep
	if t.releaseReserve() {
		parts = append(parts, record.WindowStep{Step: "give back the reserve", NS: int64(time.Since(start))})
	}
	received := time.Now()
	st, err := migrate.ReadImages(ctx, images, filepath.Join(t.dir, "images"), migrate.StreamOptions{Pages: t.pageStore()})
	if err != nil {
		return ImagesResult{}, fmt.Errorf("receive images: %w", err)
	}
	parts = append(parts, record.WindowStep{Step: "receive and write the image files", NS: int64(time.Since(received))})
	// The pages now live in the images; the store is not needed any more.
	t.mu.Lock()
	if t.store != nil {
		t.store.Close()
		t.store = nil
	}
	t.mu.Unlock()
	faults.At("target-received")
	return ImagesResult{Files: st.Files, Bytes: st.Bytes, RefPages: st.RefPages, Parts: parts}, nil
}

// Restore restores the shipped tree and leaves it stopped, after checking its segments
// against the digests taken at the freeze. It resumes only once the table says done
// (Resume, or recovery).
func (e *Engine) Restore(ctx context.Context, caller, id string, req RestoreRequest) (RestoreResult, error) {
	start := time.Now()
	var parts steps
	parts.start(start)
	if _, err := e.incomingOpen(ctx, caller, id); err != nil {
		return RestoreResult{}, err
	}
	t, err := e.target(id)
	if err != nil {
		return RestoreResult{}, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.proc != nil {
		return RestoreResult{}, fmt.Errorf("migration %s is already restored here: %w", id, record.ErrExists)
	}
	if _, err := e.criu.CachedCheck(ctx); err != nil {
		return RestoreResult{}, err
	}
	parts.mark("catch up with the table")
	// The freeze made every semop blocked at the dump return EINTR; issue them again.
	if n, err := migrate.RestartInterruptedSemop(filepath.Join(t.dir, "images")); err != nil {
		return RestoreResult{}, fmt.Errorf("restore on %s: %w", e.self, err)
	} else if n > 0 {
		e.log.Info("semop calls the freeze interrupted will be issued again", "migration", id, "threads", n)
	}
	parts.mark("semop fixups in the images")
	verify := migrate.VerifySegments(req.Segments)
	ownNetwork := t.j.Records[0].Addr != ""
	var checkNS, holdNS time.Duration
	res, err := e.criu.Restore(ctx, migrate.RestoreOptions{
		ImagesDir: filepath.Join(t.dir, "images"), WorkDir: filepath.Join(t.dir, "work"),
		NetParent: e.cfg.Network.Parent, LeaveStopped: true, BeforeResume: func(pid int) error {
			t0 := time.Now()
			if ownNetwork {
				// CRIU opens the network when it returns: keep it shut until the commit.
				if err := ownnet.Hold(pid); err != nil {
					return err
				}
				holdNS = time.Since(t0)
			}
			defer func() { checkNS = time.Since(t0) - holdNS }()
			return verify(pid)
		}})
	if err != nil {
		return RestoreResult{}, fmt.Errorf("restore on %s: %w", e.self, err)
	}
	criuParts := []record.WindowStep{
		{Step: "criu: forking (its figure)", NS: int64(res.Forking)},
		{Step: "criu: restore (its figure)", NS: int64(res.Restore)},
		{Step: "segment check against the freeze's digests", NS: int64(checkNS)},
	}
	if ownNetwork {
		criuParts = append(criuParts, record.WindowStep{Step: "hold its own network shut until the commit", NS: int64(holdNS)})
	}
	parts.markParts("criu restore", criuParts)
	t.proc = workload.Attach(res.Pid)
	err = e.findMembers(t, res.Pid)
	if err == nil {
		err = e.saveJournal(t.j)
	}
	if err != nil {
		_ = t.proc.Kill()
		_, _ = t.proc.Wait()
		t.proc = nil
		return RestoreResult{}, fmt.Errorf("restore on %s: record the restored tree: %w", e.self, err)
	}
	parts.mark("find the members, write the journal")
	e.log.Info("restored, stopped until the commit", "migration", id, "pid", res.Pid, "took", time.Since(start))
	faults.At("target-restored")
	members := make(map[string]int, len(t.j.Records))
	for _, rec := range t.j.Records {
		members[rec.ID] = rec.InitPid
	}
	return RestoreResult{Pid: res.Pid, RestoreNS: int64(time.Since(start)), Members: members, Parts: parts.list}, nil
}

// findMembers fills in the host pids of the restored group init (pid) and of its
// members, found by the pids they have in the group's PID namespace.
func (e *Engine) findMembers(t *targetState, pid int) error {
	st, err := workload.StartTime("/proc", pid)
	if err != nil {
		return err
	}
	procs, _, err := workload.ReadAll("/proc")
	if err != nil {
		return err
	}
	for i := range t.j.Records {
		rec := &t.j.Records[i]
		m := workload.Member{Pid: pid, NSPid: 1, Start: st} // a workload alone: the init is its own
		if rec.NSPid != 1 {
			if m, err = workload.MemberByNSPid(procs, pid, rec.NSPid); err != nil {
				return fmt.Errorf("member %s: %w", rec.Name, err)
			}
		}
		rec.InitPid, rec.InitStart, rec.GroupPid, rec.GroupStart = m.Pid, m.Start, pid, st
	}
	return nil
}

// Resume resumes the restored tree of migration id once the table says it is done.
func (e *Engine) Resume(ctx context.Context, caller, id string) error {
	if err := e.incomingSettled(ctx, caller, id, record.PhaseDone); err != nil {
		return fmt.Errorf("%w; the restored copy stays stopped", err)
	}
	faults.At("target-resume")
	return e.resumeTarget(id)
}

// Abort removes what this node made for migration id once the table says it is
// aborted.
func (e *Engine) Abort(ctx context.Context, caller, id string) error {
	if err := e.incomingSettled(ctx, caller, id, record.PhaseAborted); err != nil {
		return err
	}
	return e.abortTarget(id)
}

// loadTarget returns the target state of id: the open one, or one rebuilt from the
// journal after a restart.
func (e *Engine) loadTarget(id string) (*targetState, error) {
	e.mu.Lock()
	t := e.targets[id]
	e.mu.Unlock()
	if t != nil {
		return t, nil
	}
	j, err := readJournal(e.journalPath(id))
	if err != nil {
		return nil, err
	}
	t = &targetState{j: j, dir: filepath.Join(e.cfg.ImageDir, "in-"+id)}
	e.mu.Lock()
	defer e.mu.Unlock()
	if cur := e.targets[id]; cur != nil {
		return cur, nil
	}
	e.targets[id] = t
	return t, nil
}

// resumeTarget continues the restored tree of a committed migration and hands it to
// the supervisor. It is idempotent.
func (e *Engine) resumeTarget(id string) error {
	t, err := e.loadTarget(id)
	if errors.Is(err, os.ErrNotExist) {
		return nil // done before
	}
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	root, _ := t.j.root()
	if root == 0 {
		return fmt.Errorf("migration %s is done but %s never restored it: %w", id, e.self, api.ErrNotRunning)
	}
	if err := e.wl.Adopt(t.j.Records, t.proc); err != nil {
		return fmt.Errorf("adopt the restored tree of migration %s: %w", id, err)
	}
	if t.j.Records[0].Addr != "" {
		// Its address is served from here now: open the network, tell the switch.
		t0 := time.Now()
		if err := ownnet.Unhold(root); err != nil {
			return fmt.Errorf("resume the restored tree of migration %s: %w", id, err)
		}
		if err := ownnet.Announce(root); err != nil {
			e.log.Warn("announce the moved workload's address; peers find it when it sends", "migration", id, "err", err)
		}
		e.log.Info("network of the moved workload open, address announced", "migration", id,
			"addr", t.j.Records[0].Addr, "took", time.Since(t0))
	}
	if err := migrate.ResumeTree(root); err != nil {
		return fmt.Errorf("resume the restored tree of migration %s: %w", id, err)
	}
	e.forgetLeftovers(t.j.Records[0].Group, t.j.Replaced)
	e.log.Info("moved workload runs here", "migration", id, "workload", t.j.Records[0].Name, "members", len(t.j.Records), "pid", root)
	e.closeTarget(id, t)
	return nil
}

// abortTarget kills what this node restored for an aborted migration and removes its
// files. It is idempotent.
func (e *Engine) abortTarget(id string) error {
	t, err := e.loadTarget(id)
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
	case t.j.Records[0].GroupPid != 0:
		// Restored by an earlier run of this daemon: no longer our child.
		if w, err := workload.WatchProcess(t.j.root()); err == nil {
			_ = w.Signal(unix.SIGKILL)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = w.Wait(ctx)
			cancel()
			w.Close()
		}
	}
	t.proc = nil
	for _, rec := range t.j.Records {
		if !t.j.Shared {
			os.RemoveAll(filepath.Join(e.cfg.WorkloadDir, rec.ID))
		}
	}
	if gdir := t.j.Records[0].GroupDir; gdir != "" && !t.j.GroupShared {
		os.RemoveAll(gdir)
	}
	removeCarried(t.j.Carried)
	e.noteLeftoverPaths(t.j.Records[0].Group, t.j.Replaced) // the group's copies still: newer ones
	e.log.Info("aborted migration cleaned up", "migration", id, "workload", t.j.Records[0].Name)
	e.closeTarget(id, t)
	return nil
}

// closeTarget drops migration id's state and files; the caller holds t.mu. The images
// (the workload's size) are set aside at once and removed in the background: freeing
// a GiB of tmpfs takes a tenth of a second that the caller (a resume) should not wait.
func (e *Engine) closeTarget(id string, t *targetState) {
	t.reserve.Release()
	t.reserve = nil
	if t.store != nil {
		t.store.Close()
		t.store = nil
	}
	e.removeLater(t.dir)
	os.Remove(e.journalPath(id))
	e.mu.Lock()
	delete(e.targets, id)
	e.mu.Unlock()
}
