package migration

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/migshm/migshm/internal/atomicfile"
	"github.com/migshm/migshm/migrate"
)

// Leftovers: when a tree moves away, the files it held open stay on the source (its
// copy is never deleted: other programs may use it). The source notes each, as it was
// then, per IPC group in DataDir/leftovers/GROUP.json. When the group comes back and
// such a file is still exactly as it was left (same inode, size and change time), it is
// that group's own outdated copy: the move replaces it with the one the tree has now,
// instead of refusing the move over a file that differs.

const leftoverDir = "leftovers"

// leftover is one file a group left on this node.
type leftover struct {
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	CtimeNS int64  `json:"ctime_ns"`
}

func (e *Engine) leftoverPath(group string) string {
	return filepath.Join(e.cfg.DataDir, leftoverDir, group+".json")
}

func (e *Engine) readLeftovers(group string) map[string]leftover {
	m := map[string]leftover{}
	if b, err := os.ReadFile(e.leftoverPath(group)); err == nil {
		_ = json.Unmarshal(b, &m) // a damaged file only costs the replacements
	}
	return m
}

func (e *Engine) writeLeftovers(group string, m map[string]leftover) error {
	if len(m) == 0 {
		err := os.Remove(e.leftoverPath(group))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(e.cfg.DataDir, leftoverDir), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(e.leftoverPath(group), b, 0o600)
}

// noteLeftovers records, after group's tree moved away, the regular files it held open
// as they are now on this node.
func (e *Engine) noteLeftovers(group string, files []migrate.FileNeed) {
	var paths []string
	for _, n := range files {
		if n.Kind == migrate.NeedFd && !n.Dir {
			paths = append(paths, n.Path)
		}
	}
	e.noteLeftoverPaths(group, paths)
}

// noteLeftoverPaths records the files at paths as group's copies, as they are now.
func (e *Engine) noteLeftoverPaths(group string, paths []string) {
	if len(paths) == 0 {
		return
	}
	m := e.readLeftovers(group)
	for _, p := range paths {
		if l, ok := statLeftover(p); ok {
			m[p] = l
		}
	}
	if err := e.writeLeftovers(group, m); err != nil {
		e.log.Warn("note the files a moved workload left here", "group", group, "err", err)
	}
}

// isLeftover returns whether the file at path, with info, is group's own copy, left
// here unchanged since the group moved away.
func (e *Engine) isLeftover(group string) func(path string, info fs.FileInfo) bool {
	m := e.readLeftovers(group)
	return func(path string, info fs.FileInfo) bool {
		l, ok := m[path]
		if !ok || !info.Mode().IsRegular() {
			return false
		}
		cur, ok := leftoverOf(info)
		return ok && cur == l
	}
}

// forgetLeftovers drops the notes of paths: the group's tree holds them here again.
func (e *Engine) forgetLeftovers(group string, paths []string) {
	if len(paths) == 0 {
		return
	}
	m := e.readLeftovers(group)
	for _, p := range paths {
		delete(m, p)
	}
	if err := e.writeLeftovers(group, m); err != nil {
		e.log.Warn("forget the files a workload left here", "group", group, "err", err)
	}
}

func statLeftover(path string) (leftover, bool) {
	info, err := os.Lstat(path)
	if err != nil || !info.Mode().IsRegular() {
		return leftover{}, false
	}
	return leftoverOf(info)
}

func leftoverOf(info fs.FileInfo) (leftover, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return leftover{}, false
	}
	return leftover{Ino: st.Ino, Size: info.Size(), CtimeNS: st.Ctim.Nano()}, true
}
