package migrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// ErrCPUIncompatible means CRIU found that this node's CPU lacks features of the CPU a
// description was taken on (instruction set extensions, FPU/xsave state): a tree dumped
// there could crash, or fail to restore, here.
var ErrCPUIncompatible = errors.New("CPU is not compatible")

// cpuinfoImage is the file `criu cpuinfo dump` writes and `criu cpuinfo check` reads.
const cpuinfoImage = "cpuinfo.img"

// cpuMismatchRE matches CRIU's verdicts on a CPU, which come from its arch cpu.c with the
// "cpu: " prefix ("CPU instruction capabilities do not match run time", "CPU xfeatures has
// unsupported bits", "CPU xsave size mismatch", ...); an unreadable image fails elsewhere
// (image.c, protobuf.c).
var cpuMismatchRE = regexp.MustCompile(`Error \([^)]*cpu\.c:\d+\): cpu: `)

// CPUInfoDump describes this node's CPU the way CRIU compares CPUs: it runs
// `criu cpuinfo dump` into a private temp dir and returns cpuinfo.img's bytes, for
// CPUInfoCheck on another node.
func (c *CRIU) CPUInfoDump(ctx context.Context) ([]byte, error) {
	var img []byte
	err := c.cpuinfo(ctx, "dump", func(string) error { return nil }, func(dir string) error {
		var err error
		img, err = os.ReadFile(filepath.Join(dir, cpuinfoImage))
		if err == nil && len(img) == 0 {
			err = errors.New("criu wrote an empty " + cpuinfoImage)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return img, nil
}

// CPUInfoCheck asks CRIU whether a tree dumped on the CPU img describes (CPUInfoDump on
// the source) can run on this node's CPU: it writes img to a private temp dir and runs
// `criu cpuinfo check`, with CRIU's default comparison (FPU state and instruction set:
// this CPU may have more than the source's, not less). An incompatible CPU gives an error
// wrapping ErrCPUIncompatible; an unreadable description gives a *CRIUError that does not.
func (c *CRIU) CPUInfoCheck(ctx context.Context, img []byte) error {
	if len(img) == 0 {
		return &CRIUError{Op: "cpuinfo check", Err: errors.New("empty CPU description")}
	}
	return c.cpuinfo(ctx, "check", func(dir string) error {
		return os.WriteFile(filepath.Join(dir, cpuinfoImage), img, 0o600)
	}, func(string) error { return nil })
}

// cpuinfo runs `criu cpuinfo OP` in a fresh private directory: before prepares it, after
// collects the result once CRIU succeeded. CRIU's log there is read into the error and
// removed with the directory, so the error names only the log's file name.
func (c *CRIU) cpuinfo(ctx context.Context, op string, before, after func(dir string) error) error {
	opName := "cpuinfo " + op
	path, err := FindCRIU(c.Path)
	if err != nil {
		return &CRIUError{Op: opName, Err: err}
	}
	dir, err := os.MkdirTemp("", "migshm-cpuinfo-")
	if err != nil {
		return &CRIUError{Op: opName, Err: err}
	}
	defer os.RemoveAll(dir)
	if err := before(dir); err != nil {
		return &CRIUError{Op: opName, Err: err}
	}
	logName := "cpuinfo-" + op + ".log"
	// The default log level (2) logs errors and warnings only: exactly the tail wanted.
	out, err := exec.CommandContext(ctx, path, "cpuinfo", op, "-D", dir, "-o", logName).CombinedOutput()
	if err == nil {
		if err := after(dir); err != nil {
			return &CRIUError{Op: opName, Err: err}
		}
		return nil
	}
	tail := logTail(filepath.Join(dir, logName))
	if s := strings.TrimSpace(string(out)); s != "" {
		tail = strings.TrimSpace(s + "\n" + tail)
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	switch {
	case op != "check":
	case cpuMismatchRE.MatchString(tail):
		err = fmt.Errorf("%w: %s", ErrCPUIncompatible, cpuVerdict(tail))
	case ctx.Err() == nil:
		err = fmt.Errorf("CRIU cannot read the CPU description (damaged, or written by an incompatible CRIU): %w", err)
	}
	return &CRIUError{Op: opName, LogFile: logName, LogTail: tail, Err: err}
}

// cpuVerdict returns CRIU's own words on the first CPU mismatch in a log tail.
func cpuVerdict(tail string) string {
	for _, line := range strings.Split(tail, "\n") {
		if loc := cpuMismatchRE.FindStringIndex(line); loc != nil {
			return strings.TrimSpace(line[loc[1]:])
		}
	}
	return ""
}
