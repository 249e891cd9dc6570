package migration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

// Recover settles, every few seconds until ctx ends, this node's part of migrations
// nobody drives any more: after a crash of this daemon, of the other side or of the
// leader.
func (e *Engine) Recover(ctx context.Context) {
	e.removeSetAside()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if e.table.IsMember() {
			e.recover(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (e *Engine) recover(ctx context.Context) {
	table := e.table.Table()
	entries, _ := os.ReadDir(filepath.Join(e.cfg.DataDir, journalDir))
	journaled := map[string]bool{}
	for _, ent := range entries {
		name, ok := strings.CutSuffix(ent.Name(), ".json")
		if !ok {
			continue
		}
		if id, out := strings.CutPrefix(name, "out-"); out {
			journaled[id] = true
			e.recoverSource(ctx, table, id)
			continue
		}
		// Target side: act once the outcome is recorded; until then the source decides.
		mg, known := table.Migration(name)
		switch {
		case known && mg.Phase == record.PhaseDone:
			if err := e.resumeTarget(name); err != nil {
				e.log.Error("resume a moved workload", "migration", name, "err", err)
			}
		case known && mg.Phase == record.PhaseAborted:
			if err := e.abortTarget(name); err != nil {
				e.log.Error("clean up an aborted migration", "migration", name, "err", err)
			}
		}
	}
	// A migration planned by this node that crashed before writing its journal: nothing
	// was touched yet; only the record needs closing.
	for _, mg := range table.Migrations() {
		if mg.Source != e.self || mg.Phase.Terminal() || journaled[mg.ID] || e.isDriving(mg) {
			continue
		}
		if _, err := e.settle(mg.ID, mg.Epoch, record.PhaseAborted,
			fmt.Sprintf("the source daemon on %s stopped during phase %s", e.self, mg.Phase), nil, nil); err != nil {
			e.log.Warn("cannot settle migration yet", "migration", mg.ID, "err", err)
		}
	}
}

func (e *Engine) isDriving(mg record.Migration) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.driving[mg.Workload] == mg.ID
}

// recoverSource carries out the outcome of a migration this node was the source of and
// no longer drives: roll it back if it is still open, then resume the stopped tree
// (aborted) or kill it (done).
func (e *Engine) recoverSource(ctx context.Context, table *shmowner.Table, id string) {
	j, err := readJournal(e.sourceJournalPath(id))
	if err != nil {
		if !os.IsNotExist(err) {
			e.log.Error("unreadable migration journal", "migration", id, "err", err)
		}
		return
	}
	mg, known := table.Migration(id)
	if !known || e.isDriving(mg) {
		return
	}
	phase := mg.Phase
	if !phase.Terminal() {
		e.log.Warn("migration has no driver any more (this daemon restarted); rolling it back",
			"migration", id, "workload", j.Records[0].Name, "phase", phase)
		phase, err = e.settle(id, mg.Epoch, record.PhaseAborted,
			fmt.Sprintf("the source daemon on %s stopped during phase %s", e.self, mg.Phase), nil, nil)
		if err != nil {
			e.log.Warn("cannot settle migration yet", "migration", id, "err", err)
			return
		}
	}
	rec := j.Records[0]
	root, rootStart := j.root()
	w, err := workload.WatchProcess(root, rootStart)
	alive := err == nil
	switch phase {
	case record.PhaseAborted:
		if alive {
			if err := resumeSource(root, rec.Addr != ""); err != nil {
				e.log.Error("resume the workload after an aborted migration", "migration", id, "err", err)
				w.Close()
				return
			}
			e.log.Info("workload runs here again after an aborted migration", "migration", id, "workload", rec.Name)
		}
	case record.PhaseDone:
		if known, ok := e.wl.Record(rec.ID); ok && known.GroupPid == root {
			e.wl.Release(rec.Group, j.ids(), !j.Shared, !j.GroupShared)
		} else if alive {
			_ = w.Signal(unix.SIGKILL)
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = w.Wait(wctx)
			cancel()
		}
		e.log.Info("removed the stopped copy of a moved workload", "migration", id, "workload", rec.Name, "now_on", mg.Target)
	}
	if alive {
		w.Close()
	}
	os.Remove(e.sourceJournalPath(id))
}

// AbortOrphans is the leader's job: a migration whose source node is down cannot go on
// (its driver is gone); aborting it lets the target clean up now and the source resume
// its copy when it comes back.
func (e *Engine) AbortOrphans(ctx context.Context) {
	table := e.table.Table()
	for _, mg := range table.Migrations() {
		if mg.Phase.Terminal() {
			continue
		}
		n, ok := table.Node(mg.Source)
		if ok && n.State != record.NodeDown && n.State != record.NodeLeft {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := e.table.ApplyHere(cctx, shmowner.SetMigrationPhaseType, shmowner.SetMigrationPhaseRequest{
			ID: mg.ID, Phase: record.PhaseAborted, Epoch: mg.Epoch, At: time.Now().UnixNano(),
			Error: fmt.Sprintf("source node %s went down during phase %s", mg.Source, mg.Phase)})
		cancel()
		if err != nil {
			e.log.Warn("abort migration of a down source", "migration", mg.ID, "err", err)
			continue
		}
		e.log.Warn("aborted migration: its source node is down", "migration", mg.ID, "peer", mg.Source, "phase", mg.Phase)
	}
}
