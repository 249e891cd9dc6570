package testwork

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// InIPC runs a command inside the IPC namespace of process pid (via nsenter) and returns
// its combined output.
func InIPC(pid int, args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--ipc=/proc/" + strconv.Itoa(pid) + "/ns/ipc", "--"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var counterRE = regexp.MustCompile(`total=(\d+) sum=(\d+) workers=(\d+) ok=(\d)`)

// CounterCheck runs `shmcounter check` in the IPC namespace of pid and returns the shared
// total, or an error if the check could not run or the invariant total == sum of the
// per-worker counts does not hold.
func (b Bins) CounterCheck(pid int) (uint64, error) {
	out, err := InIPC(pid, b.ShmCounter, "check")
	m := counterRE.FindStringSubmatch(out)
	if err != nil || m == nil {
		return 0, fmt.Errorf("shmcounter check in the IPC namespace of %d: %v: %s", pid, err, strings.TrimSpace(out))
	}
	if m[4] != "1" || m[1] != m[2] {
		return 0, fmt.Errorf("invariant broken in the IPC namespace of %d: %s", pid, strings.TrimSpace(out))
	}
	return strconv.ParseUint(m[1], 10, 64)
}
