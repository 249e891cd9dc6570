package migration

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/migrate"
)

// TestLeftovers: a file a group left behind is its own outdated copy while it stays as
// it was, and no longer once anything changed it or the group took it back.
func TestLeftovers(t *testing.T) {
	e := &Engine{cfg: Config{DataDir: t.TempDir()}, log: slog.New(slog.DiscardHandler)}
	dir := t.TempDir()
	kept, changed := filepath.Join(dir, "kept"), filepath.Join(dir, "changed")
	for _, p := range []string{kept, changed} {
		if err := os.WriteFile(p, []byte("v1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.noteLeftovers("g1", []migrate.FileNeed{
		{Path: kept, Kind: migrate.NeedFd}, {Path: changed, Kind: migrate.NeedFd},
		{Path: dir, Kind: migrate.NeedCwd, Dir: true}, // not a file the group holds
	})
	if err := os.WriteFile(changed, []byte("v9\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	is := func(group, p string) bool {
		info, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		return e.isLeftover(group)(p, info)
	}
	if !is("g1", kept) || is("g1", changed) || is("g2", kept) || is("g1", dir) {
		t.Fatalf("leftover: kept %v, changed %v, kept by another group %v, the dir %v; want true, false, false, false",
			is("g1", kept), is("g1", changed), is("g2", kept), is("g1", dir))
	}
	e.forgetLeftovers("g1", []string{kept, changed})
	if is("g1", kept) {
		t.Fatal("a file the group took back is still a leftover")
	}
	if _, err := os.Stat(e.leftoverPath("g1")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no leftovers left, and the notes remain: %v", err)
	}
}

// TestWriteFile: a carried file is written whole with its mode, never over an existing
// file unless it replaces an outdated copy, and never longer or shorter than checked.
func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "data")
	n := migrate.FileNeed{Path: p, Kind: migrate.NeedFd, Bytes: 5, Mode: 0o640}
	if err := writeFile(n, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "hello" {
		t.Fatalf("wrote %q", b)
	}
	if info, _ := os.Stat(p); info.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", info.Mode().Perm())
	}
	if err := writeFile(n, strings.NewReader("other")); !errors.Is(err, api.ErrNotMovable) {
		t.Errorf("over an existing file: %v, want ErrNotMovable", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "hello" {
		t.Fatalf("the existing file was changed to %q", b)
	}
	n.Replace = true
	if err := writeFile(n, strings.NewReader("newer")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "newer" {
		t.Fatalf("replace wrote %q", b)
	}
	short := migrate.FileNeed{Path: filepath.Join(dir, "short"), Kind: migrate.NeedFd, Bytes: 10, Mode: 0o600}
	if err := writeFile(short, bytes.NewReader([]byte("abc"))); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("3 bytes for a 10-byte file: %v, want ErrBadRequest", err)
	}
	if _, err := os.Stat(short.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a short file was left: %v", err)
	}
	// No temporary file stays behind.
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"data"}) {
		t.Errorf("dir holds %v, want only data", names)
	}
}

// TestMakeDirAndRemove: makeDir makes the missing parents and reports them, and
// removeCarried takes away exactly those, keeping a dir someone else put a file in.
func TestMakeDirAndRemove(t *testing.T) {
	root := t.TempDir()
	made, err := makeDir(migrate.FileNeed{Path: filepath.Join(root, "a/b/c"), Dir: true, Mode: 0o750})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(root, "a"), filepath.Join(root, "a/b"), filepath.Join(root, "a/b/c")}
	if !slices.Equal(made, want) {
		t.Fatalf("made %v, want %v", made, want)
	}
	if info, _ := os.Stat(want[2]); info.Mode().Perm() != 0o750 {
		t.Errorf("mode of the dir asked for: %v", info.Mode().Perm())
	}
	other := filepath.Join(root, "a/b/other")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	removeCarried(made)
	if _, err := os.Stat(want[2]); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a/b/c not removed: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a file someone else put there went: %v", err)
	}
}
