package migration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/migshm/migshm/internal/atomicfile"
	"github.com/migshm/migshm/internal/supervisor"
)

// journalDir (under the data dir) keeps one file per migration this node takes part
// in, until the migration's outcome is carried out: the trees a migration stopped or
// restored outlive a daemon crash only there.
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
	// GroupShared: the group's request directory is the source's too.
	GroupShared bool `json:"group_shared"`
	// Records are the group's members, the one the move was asked for first: on a
	// target as they will run there (pids set once restored), on a source as they run
	// there.
	Records []supervisor.Record `json:"records"`
	// Carried are the paths a target made for the tree (directories first): an abort
	// removes them again.
	Carried []string `json:"carried,omitempty"`
	// Replaced are the outdated copies a target replaced (see leftover.go): kept by an
	// abort, no longer noted as leftovers once the tree runs here.
	Replaced []string `json:"replaced,omitempty"`
}

// root returns the group init's host pid and start time.
func (j journal) root() (int, uint64) { return j.Records[0].GroupPid, j.Records[0].GroupStart }

// ids returns the members' workload ids.
func (j journal) ids() []string {
	ids := make([]string, len(j.Records))
	for i, r := range j.Records {
		ids[i] = r.ID
	}
	return ids
}

const (
	roleSource = "source"
	roleTarget = "target"
)

func (e *Engine) journalPath(id string) string {
	return filepath.Join(e.cfg.DataDir, journalDir, id+".json")
}

func (e *Engine) sourceJournalPath(id string) string {
	return filepath.Join(e.cfg.DataDir, journalDir, "out-"+id+".json")
}

func (e *Engine) saveJournal(j journal) error {
	if err := os.MkdirAll(filepath.Join(e.cfg.DataDir, journalDir), 0o700); err != nil {
		return err
	}
	path := e.journalPath(j.ID)
	if j.Role == roleSource {
		path = e.sourceJournalPath(j.ID)
	}
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}

func readJournal(path string) (journal, error) {
	var j journal
	b, err := os.ReadFile(path)
	if err != nil {
		return j, err
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return j, fmt.Errorf("journal %s: %w", path, err)
	}
	if len(j.Records) == 0 {
		return j, fmt.Errorf("journal %s names no workload", path)
	}
	return j, nil
}
