package supervisor

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// tailRef is what seekTail must leave: the last n lines of s (all of s if n <= 0).
func tailRef(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if n <= 0 || n >= len(lines) {
		return s
	}
	return strings.Join(lines[len(lines)-n:], "")
}

func TestSeekTail(t *testing.T) {
	const chunk = 64 << 10
	long := func(n int, c byte) string { return strings.Repeat(string(c), n) }
	contents := map[string]string{
		"empty":             "",
		"one line":          "hello\n",
		"one line no eol":   "hello",
		"lines":             "a\nbb\nccc\n",
		"lines no eol":      "a\nbb\nccc",
		"empty lines":       "\n\n\n",
		"just eol":          "\n",
		"blank last line":   "a\n\n",
		"long lines":        long(100_000, 'a') + "\n" + long(150_000, 'b') + "\n" + long(70_000, 'c') + "\n",
		"long no eol":       long(100_000, 'a') + "\n" + long(3*chunk, 'b'),
		"eol at chunk edge": long(chunk, 'a') + "\n" + long(chunk-1, 'b') + "\n",
		"eol before edge":   "x\n" + long(chunk-2, 'a') + "\n" + long(chunk-1, 'b') + "\n",
		"eol after edge":    "x\n" + long(chunk, 'a') + "\n" + long(chunk, 'b') + "\nc",
		"many short": func() string {
			var b strings.Builder
			for i := range 30_000 {
				fmt.Fprintf(&b, "line %d\n", i)
			}
			return b.String()
		}(),
	}
	dir := t.TempDir()
	for name, s := range contents {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{0, 1, 2, 3, 10, 29_999, 30_000, 100_000} {
			t.Run(fmt.Sprintf("%s/%d", name, n), func(t *testing.T) {
				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := seekTail(f, n); err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(f)
				if err != nil {
					t.Fatal(err)
				}
				if want := tailRef(s, n); string(got) != want {
					t.Errorf("last %d lines: got %d bytes %q..., want %d bytes %q...",
						n, len(got), head(string(got)), len(want), head(want))
				}
			})
		}
	}
}

func head(s string) string {
	if len(s) > 40 {
		return s[:40]
	}
	return s
}

func TestInstallInit(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "data", "init")
	p1, err := installInit(dir)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(p1) != dir || !regexp.MustCompile(`^migshm-init-[0-9a-f]{16}$`).MatchString(filepath.Base(p1)) {
		t.Fatalf("installed at %s, want %s/migshm-init-<16 hex>", p1, dir)
	}
	st1, err := os.Stat(p1)
	if err != nil {
		t.Fatal(err)
	}
	if st1.Mode() != 0o700 {
		t.Errorf("mode %v, want -rwx------", st1.Mode())
	}
	if dst, err := os.Stat(dir); err != nil || dst.Mode().Perm()&0o077 != 0 {
		t.Errorf("init dir: %v %v, want no group or other access", dst.Mode(), err)
	}
	if got, err := os.ReadFile(p1); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the copy differs from %s (%d bytes, want %d): %v", self, len(got), len(want), err)
	}

	p2, err := installInit(dir)
	if err != nil {
		t.Fatal(err)
	}
	st2, err := os.Stat(p2)
	if err != nil {
		t.Fatal(err)
	}
	if p2 != p1 || !st2.ModTime().Equal(st1.ModTime()) ||
		st2.Sys().(*syscall.Stat_t).Ino != st1.Sys().(*syscall.Stat_t).Ino {
		t.Errorf("second install: %s (mtime %v, inode %d), want the same file %s untouched (mtime %v, inode %d)",
			p2, st2.ModTime(), st2.Sys().(*syscall.Stat_t).Ino, p1, st1.ModTime(), st1.Sys().(*syscall.Stat_t).Ino)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("init dir holds %v, want only %s (no temporary files)", names, filepath.Base(p1))
	}

	// Another data dir gets its own copy with the same name (same content, same hash).
	p3, err := installInit(filepath.Join(t.TempDir(), "init"))
	if err != nil || filepath.Base(p3) != filepath.Base(p1) {
		t.Errorf("other dir: %s %v", p3, err)
	}
}
