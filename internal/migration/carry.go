package migration

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/migrate"
)

// The files a move carries: on a target that lacks them (nodes that share no disk),
// the directories the tree runs in or holds open, and the small files it holds open
// (migrate.MaxCarryFile). The target makes them with the source's mode and owner, never
// over an existing file, and an abort removes what it made.

// filesError is the error of a target that cannot give the tree its files.
func filesError(problems []migrate.FileProblem) error {
	var b strings.Builder
	b.WriteString("the workload's files do not fit this node:")
	for _, p := range problems {
		fmt.Fprintf(&b, "\n  - file-%s: %s", p.Reason, p.Detail)
	}
	return fmt.Errorf("%s: %w", b.String(), api.ErrNotMovable)
}

// makeDir makes directory n.Path and any missing parents (with n's mode and owner for
// the last, 0755 root for the parents) and returns those it made, outermost first.
func makeDir(n migrate.FileNeed) ([]string, error) {
	var missing []string
	for p := filepath.Clean(n.Path); p != "/"; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		missing = append([]string{p}, missing...)
	}
	var made []string
	for i, p := range missing {
		mode, uid, gid := os.FileMode(0o755), 0, 0
		if i == len(missing)-1 {
			mode, uid, gid = os.FileMode(n.Mode)&os.ModePerm, int(n.UID), int(n.GID)
		}
		if err := os.Mkdir(p, mode); err != nil {
			return made, err
		}
		made = append(made, p)
		if err := os.Chmod(p, mode); err != nil { // past the umask
			return made, err
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			return made, err
		}
	}
	return made, nil
}

// writeFile writes content to n.Path with n's mode and owner: to a temporary file
// first, then linked into place, which fails on an existing name, or, for n.Replace
// (an outdated copy the caller checked), renamed over it.
func writeFile(n migrate.FileNeed, content io.Reader) error {
	dir := filepath.Dir(n.Path)
	f, err := os.CreateTemp(dir, ".migshm-carry-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	written, err := io.Copy(f, io.LimitReader(content, migrate.MaxCarryFile+1))
	if err == nil && written != n.Bytes {
		err = fmt.Errorf("got %d bytes, the source found %d at the check: %w", written, n.Bytes, api.ErrBadRequest)
	}
	if err == nil {
		err = f.Chmod(os.FileMode(n.Mode) & os.ModePerm)
	}
	if err == nil {
		err = f.Chown(int(n.UID), int(n.GID))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if n.Replace {
		return os.Rename(tmp, n.Path)
	}
	if err := os.Link(tmp, n.Path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("a file appeared at %s since the check; it is left alone: %w", n.Path, api.ErrNotMovable)
		}
		return err
	}
	return nil
}

// removeCarried removes what a target made for a tree, innermost first: files, then
// the directories if they are empty (anything else put there stays).
func removeCarried(paths []string) {
	for i := len(paths) - 1; i >= 0; i-- {
		p := paths[i]
		if info, err := os.Lstat(p); err == nil && info.IsDir() {
			_ = os.Remove(p) // only if empty
			continue
		}
		_ = os.Remove(p)
	}
}
