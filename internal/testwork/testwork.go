// Package testwork builds the C test workloads in testdata/ (shmwriter,
// shmcounter, shmbench) and the shmsum tool for tests.
//
// Tests call Build, which compiles the programs once per test binary run into
// a private directory that lives until the process exits. Non-test code (for
// example benchmark commands) can call BuildAll with a directory of its own.
package testwork

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// Bins holds the absolute paths of the built programs.
type Bins struct {
	Dir        string // directory holding the binaries
	ShmWriter  string // testdata/shmwriter.c
	ShmCounter string // testdata/shmcounter.c
	ShmBench   string // testdata/shmbench.c
	ShmSum     string // testdata/shmsum.c
}

// CFlags are the compiler flags every program is built with.
var CFlags = []string{"-O2", "-Wall", "-Wextra", "-Werror"}

// programs lists the C programs in testdata/ (file name without ".c").
var programs = []string{"shmwriter", "shmcounter", "shmbench", "shmsum"}

var (
	buildOnce sync.Once
	buildBins Bins
	buildErr  error
)

// Build compiles all programs once per process into a directory under
// os.TempDir() (mode 0755, never removed while the process runs) and returns
// their paths. It calls tb.Fatalf, with the compiler's output, if that fails.
func Build(tb testing.TB) Bins {
	tb.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", fmt.Sprintf("migshm-testwork-%d-", os.Getpid()))
		if err != nil {
			buildErr = err
			return
		}
		buildBins, buildErr = BuildAll(dir)
	})
	if buildErr != nil {
		tb.Fatalf("testwork: building the C test workloads: %v", buildErr)
	}
	return buildBins
}

// BuildAll compiles every program of testdata/ with gcc into outDir (created
// if needed; outDir and the binaries get mode 0755) and returns their absolute
// paths. A compile error includes gcc's output.
func BuildAll(outDir string) (Bins, error) {
	src, err := SourceDir()
	if err != nil {
		return Bins{}, err
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return Bins{}, fmt.Errorf("gcc not found (apt-get install gcc): %w", err)
	}
	dir, err := filepath.Abs(outDir)
	if err != nil {
		return Bins{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Bins{}, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return Bins{}, err
	}
	paths := make(map[string]string, len(programs))
	for _, name := range programs {
		out := filepath.Join(dir, name)
		tmp := filepath.Join(dir, "."+name+".tmp")
		args := append(append([]string{}, CFlags...), "-o", tmp, filepath.Join(src, name+".c"))
		if msg, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
			os.Remove(tmp)
			return Bins{}, fmt.Errorf("gcc %s.c: %v\n%s", name, err, msg)
		}
		if err := os.Chmod(tmp, 0o755); err != nil {
			return Bins{}, err
		}
		if err := os.Rename(tmp, out); err != nil {
			return Bins{}, err
		}
		paths[name] = out
	}
	return Bins{
		Dir:        dir,
		ShmWriter:  paths["shmwriter"],
		ShmCounter: paths["shmcounter"],
		ShmBench:   paths["shmbench"],
		ShmSum:     paths["shmsum"],
	}, nil
}

// SourceDir returns the absolute path of the repository's testdata/
// directory. It is found relative to this source file; when the binary was
// built with -trimpath it falls back to searching upwards from the working
// directory.
func SourceDir() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		dir := filepath.Join(filepath.Dir(file), "..", "..", "testdata")
		if hasSources(dir) {
			return filepath.Clean(dir), nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if dir := filepath.Join(d, "testdata"); hasSources(dir) {
			return dir, nil
		}
		if filepath.Dir(d) == d {
			break
		}
	}
	return "", errors.New("testwork: cannot find testdata/ with the C workloads")
}

func hasSources(dir string) bool {
	for _, name := range programs {
		if _, err := os.Stat(filepath.Join(dir, name+".c")); err != nil {
			return false
		}
	}
	return true
}
