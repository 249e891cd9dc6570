package supervisor

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/workload"
)

// defaultPidFileTimeout is how long a run waits for the pidfile it names.
const defaultPidFileTimeout = 10 * time.Second

// waitPidFile waits until the pidfile of a workload whose init is initPid names a live
// process of the workload, and returns that pid (as the workload sees it). path is as the
// workload sees it; it is read through the init's root, so a workload with mounts of
// its own is read right. It fails if the workload exits first or timeout passes.
func waitPidFile(ctx context.Context, initPid int, watch *workload.Watch, path string, timeout time.Duration) (int, error) {
	root := fmt.Sprintf("/proc/%d/root", initPid)
	deadline := time.Now().Add(timeout)
	for {
		if pid := workload.ReadPidFile(filepath.Join(root, path)); pid > 0 {
			if _, err := os.Stat(filepath.Join(root, "proc", strconv.Itoa(pid))); err == nil {
				return pid, nil
			}
		}
		wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		err := watch.Wait(wctx)
		cancel()
		switch {
		case err == nil:
			return 0, fmt.Errorf("run: the workload exited before its pidfile %s named a running process: %w", path, api.ErrBadRequest)
		case ctx.Err() != nil:
			return 0, ctx.Err()
		case time.Now().After(deadline):
			what := "does not exist"
			if _, err := os.Stat(filepath.Join(root, path)); err == nil {
				what = "names no running process of the workload"
			}
			return 0, fmt.Errorf("run: pidfile %s %s after %v; check that the program writes it there (its --pidfile option), "+
				"or give it longer with --pidfile-timeout: %w", path, what, timeout, api.ErrBadRequest)
		}
	}
}

// lastLines returns the last n lines of a file (seekTail), "" if it has none.
func lastLines(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if seekTail(f, n) != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, 4096))
	return strings.TrimSpace(string(b))
}
