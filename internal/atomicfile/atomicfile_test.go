package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// entries lists the names in dir.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestWrite(t *testing.T) {
	old := syscall.Umask(0o077) // the mode must not depend on it
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "workload.json")
	for _, tc := range []struct {
		data string
		perm os.FileMode
	}{
		{`{"id":"w1"}`, 0o600}, // a new file
		{`{"id":"w1","pid":42}`, 0o644},
		{"", 0o640}, // empty content
	} {
		if err := Write(path, []byte(tc.data), tc.perm); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != tc.data {
			t.Fatalf("content %q, %v; want %q", b, err, tc.data)
		}
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != tc.perm {
			t.Fatalf("mode %v, %v; want %v", st.Mode().Perm(), err, tc.perm)
		}
		if names := entries(t, dir); len(names) != 1 || names[0] != "workload.json" {
			t.Fatalf("the directory holds %v, want only workload.json", names)
		}
	}
}

func TestWriteFrom(t *testing.T) {
	path := filepath.Join(t.TempDir(), "init")
	if err := WriteFrom(path, strings.NewReader("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "#!/bin/sh\n" {
		t.Fatalf("content %q, %v", b, err)
	}
	// A relative path is written next to the working directory's files.
	t.Chdir(t.TempDir())
	if err := Write("rel", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile("rel"); err != nil || string(b) != "x" {
		t.Fatalf("relative path: %q, %v", b, err)
	}
}

// TestWriteFails: a failure at any step leaves the old content and no temporary file.
func TestWriteFails(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "exit.json")
	if err := Write(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("got %v, want an error naming %s", err, path)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "old" {
			t.Fatalf("after the failure: %q, %v; want the old content", b, err)
		}
		if names := entries(t, dir); len(names) != 1 {
			t.Fatalf("the directory holds %v, want only exit.json", names)
		}
	}

	t.Run("fsync", func(t *testing.T) {
		boom := errors.New("fsync failed")
		syncFile = func(*os.File) error { return boom }
		defer func() { syncFile = (*os.File).Sync }()
		err := Write(path, []byte("new"), 0o600)
		check(t, err)
		if !errors.Is(err, boom) {
			t.Errorf("got %v, want the fsync error", err)
		}
	})
	t.Run("read", func(t *testing.T) {
		boom := errors.New("read failed")
		check(t, WriteFrom(path, &failReader{err: boom}, 0o600))
	})
	t.Run("rename over a directory", func(t *testing.T) {
		sub := filepath.Join(dir, "sub")
		if err := os.MkdirAll(filepath.Join(sub, "full"), 0o755); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(sub)
		if err := Write(sub, []byte("new"), 0o600); err == nil || !strings.Contains(err.Error(), sub) {
			t.Fatalf("replacing a non-empty directory: %v, want an error naming it", err)
		}
		if names := entries(t, sub); len(names) != 1 || names[0] != "full" {
			t.Fatalf("the directory holds %v, want it as it was", names)
		}
		if names := entries(t, dir); len(names) != 2 {
			t.Fatalf("%s holds %v, want exit.json and sub only", dir, names)
		}
	})
	t.Run("no directory", func(t *testing.T) {
		err := Write(filepath.Join(dir, "none", "x"), []byte("new"), 0o600)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("got %v, want ErrNotExist", err)
		}
	})
}

type failReader struct{ err error }

func (r *failReader) Read(p []byte) (int, error) {
	if len(p) > 0 {
		p[0] = 'x'
		return 1, r.err
	}
	return 0, r.err
}
