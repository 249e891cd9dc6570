package testwork

import (
	"encoding/binary"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/migshm/migshm/internal/nsutil"
	"golang.org/x/sys/unix"
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

// The segment shmcounter makes (testdata/shmcounter.c): its default key, and the
// magic number its header starts with, followed by the worker count (u32), padding
// (u32) and the shared total (u64), in the machine's byte order.
const (
	counterKey     = 0x4d494754
	counterMagic   = 0x31544e434d534d47 // "GMSMCNT1"
	counterTotalAt = 16
)

// CounterTotal reads the shared total of the shmcounter in the IPC namespace of pid
// straight from its segment, without taking the counter's mutex: a stopped tree may hold
// the mutex, and `shmcounter check` then waits for it in vain. It checks no invariant
// (CounterCheck does, on a running tree).
func CounterTotal(pid int) (uint64, error) {
	var total uint64
	err := nsutil.Do(nsutil.IPC, "/proc/"+strconv.Itoa(pid)+"/ns/ipc", func() error {
		id, err := unix.SysvShmGet(counterKey, 0, 0)
		if err != nil {
			return fmt.Errorf("no shmcounter segment (key %#x): %w", counterKey, err)
		}
		mem, err := unix.SysvShmAttach(id, 0, unix.SHM_RDONLY)
		if err != nil {
			return fmt.Errorf("attach shmid %d: %w", id, err)
		}
		defer unix.SysvShmDetach(mem)
		if len(mem) < counterTotalAt+8 || binary.NativeEndian.Uint64(mem) != counterMagic {
			return fmt.Errorf("shmid %d is not a shmcounter segment", id)
		}
		// The workers store it with one aligned 8-byte write.
		total = atomic.LoadUint64((*uint64)(unsafe.Pointer(&mem[counterTotalAt])))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("shmcounter total in the IPC namespace of %d: %w", pid, err)
	}
	return total, nil
}
