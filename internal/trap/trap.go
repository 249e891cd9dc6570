// Package trap catches the SysV IPC calls of a restored tree with seccomp user
// notification: the mechanism split sharers need, so that a member restored away from
// its semaphores' home can have its semop run there on its behalf.
//
// CRIU carries seccomp filters but not their listeners: a USER_NOTIF filter restores
// without one, and every trapped call then fails with ENOSYS. Since the images are ours
// to edit, the filter is added at restore instead (AddToImages): with
// SECCOMP_FILTER_FLAG_NEW_LISTENER, CRIU's restorer leaves the listener in each task's
// fd table, where Listener takes it (pidfd_getfd) before the tree runs.
//
// The listener fd also stays in the task, and CRIU cannot dump that kind of file:
// Release closes it inside the task (ptrace) before a dump. A trapped tree that is
// dumped keeps the filter in its images without the listener; AddToImages asks for one
// again rather than stacking a second filter. Not done yet: threads (one listener per
// filter tree: a multi-threaded task is refused).
package trap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"unsafe"

	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/seccomp"
	"github.com/migshm/migshm/internal/atomicfile"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Trapped are the x86_64 system calls the filter hands to the listener: the SysV
// semaphore and shared memory calls (glibc's semop is semtimedop).
var Trapped = []uint32{unix.SYS_SEMOP, unix.SYS_SEMTIMEDOP, unix.SYS_SEMCTL, unix.SYS_SHMAT, unix.SYS_SHMDT, unix.SYS_SHMCTL}

// x32Bit marks the x32 ABI's system call numbers, which would bypass the filter.
const x32Bit = 0x40000000

// Program is the filter: a call of another ABI kills the process (it could bypass the
// trap), the Trapped calls go to the listener, everything else runs.
func Program() []unix.SockFilter {
	const (
		ld  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		ret = unix.BPF_RET | unix.BPF_K
	)
	n := len(Trapped)
	p := []unix.SockFilter{
		{Code: ld, K: 4}, // seccomp_data.arch
		{Code: jeq, Jt: 1, K: unix.AUDIT_ARCH_X86_64},
		{Code: ret, K: unix.SECCOMP_RET_KILL_PROCESS},
		{Code: ld, K: 0}, // seccomp_data.nr
		{Code: jge, Jt: uint8(n + 1), K: x32Bit},
	}
	for i, nr := range Trapped {
		p = append(p, unix.SockFilter{Code: jeq, Jt: uint8(n - i + 1), K: nr}) // to USER_NOTIF
	}
	return append(p,
		unix.SockFilter{Code: ret, K: unix.SECCOMP_RET_ALLOW},
		unix.SockFilter{Code: ret, K: unix.SECCOMP_RET_KILL_PROCESS},
		unix.SockFilter{Code: ret, K: unix.SECCOMP_RET_USER_NOTIF},
	)
}

// Image magics (criu/include/magic.h).
const (
	imgCommonMagic = 0x54564319
	seccompMagic   = 0x64413049
	pstreeMagic    = 0x50273030
)

// listenerFlags: one listener per task, installed on all its threads at once.
const listenerFlags = unix.SECCOMP_FILTER_FLAG_NEW_LISTENER | unix.SECCOMP_FILTER_FLAG_TSYNC | unix.SECCOMP_FILTER_FLAG_TSYNC_ESRCH

// AddToImages adds the filter, with a listener, on top of whatever filters they had,
// to the tasks of the images in dir but those whose pid (in the tree's PID namespace)
// is in except, and returns the pids it gave the trap. A task with more than one thread
// is refused, naming it.
func AddToImages(dir string, except ...int) ([]int, error) {
	tasks, err := readPstree(filepath.Join(dir, "pstree.img"))
	if err != nil {
		return nil, err
	}
	seccompPath := filepath.Join(dir, "seccomp.img")
	var entry seccomp.SeccompEntry
	if b, err := os.ReadFile(seccompPath); err == nil {
		entries, err := readEntries(b, seccompMagic)
		if err != nil {
			return nil, fmt.Errorf("trap: %s: %w", seccompPath, err)
		}
		if len(entries) > 0 {
			if err := proto.Unmarshal(entries[0], &entry); err != nil {
				return nil, fmt.Errorf("trap: %s: %w", seccompPath, err)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	filter := make([]byte, 0, 8*len(Program()))
	for _, ins := range Program() {
		filter = binary.NativeEndian.AppendUint16(filter, ins.Code)
		filter = append(filter, ins.Jt, ins.Jf)
		filter = binary.NativeEndian.AppendUint32(filter, ins.K)
	}
	// Ours goes on top of each distinct earlier filter once: entries chain through prev.
	ours := map[int64]uint32{} // earlier top index (-1: none) -> index of ours on it
	var trapped []int
	for _, task := range tasks {
		pid := int(task.GetPid())
		if slices.Contains(except, pid) {
			continue
		}
		if len(task.GetThreads()) > 1 {
			return nil, fmt.Errorf("trap: task %d has %d threads; trapping threads is not supported yet", pid, len(task.GetThreads()))
		}
		path := filepath.Join(dir, fmt.Sprintf("core-%d.img", pid))
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("trap: task %d: %w", pid, err)
		}
		head, entries, err := splitImage(b)
		if err != nil || len(entries) != 1 {
			return nil, fmt.Errorf("trap: %s: not one core entry (%v)", path, err)
		}
		var core criu_core.CoreEntry
		if err := (proto.UnmarshalOptions{AllowPartial: true}).Unmarshal(entries[0], &core); err != nil {
			return nil, fmt.Errorf("trap: %s: %w", path, err)
		}
		tc := core.GetThreadCore()
		if tc == nil {
			return nil, fmt.Errorf("trap: %s has no thread core", path)
		}
		below := int64(-1)
		switch tc.GetSeccompMode() {
		case criu_core.SeccompMode_filter:
			below = int64(tc.GetSeccompFilter())
		case criu_core.SeccompMode_strict:
			return nil, fmt.Errorf("trap: task %d is in strict seccomp mode", pid)
		}
		if below >= 0 && int(below) < len(entry.SeccompFilters) && bytes.Equal(entry.SeccompFilters[below].Filter, filter) {
			// Trapped before (a move of a trapped tree): the dump kept our filter
			// without its listener; ask for one again instead of stacking another.
			entry.SeccompFilters[below].Flags = proto.Uint32(listenerFlags)
			trapped = append(trapped, pid)
			continue
		}
		idx, ok := ours[below]
		if !ok {
			f := &seccomp.SeccompFilter{Filter: filter, Flags: proto.Uint32(listenerFlags)}
			if below >= 0 {
				f.Prev = proto.Uint32(uint32(below))
			}
			idx = uint32(len(entry.SeccompFilters))
			entry.SeccompFilters = append(entry.SeccompFilters, f)
			ours[below] = idx
		}
		tc.SeccompMode = criu_core.SeccompMode_filter.Enum()
		tc.SeccompFilter = proto.Uint32(idx)
		out, err := (proto.MarshalOptions{AllowPartial: true}).Marshal(&core)
		if err != nil {
			return nil, err
		}
		if err := atomicfile.Write(path, appendEntry(slices.Clone(head), out), 0o600); err != nil {
			return nil, err
		}
		trapped = append(trapped, pid)
	}
	out, err := proto.Marshal(&entry)
	if err != nil {
		return nil, err
	}
	img := binary.LittleEndian.AppendUint32(nil, imgCommonMagic)
	img = binary.LittleEndian.AppendUint32(img, seccompMagic)
	if err := atomicfile.Write(seccompPath, appendEntry(img, out), 0o600); err != nil {
		return nil, err
	}
	return trapped, nil
}

// readPstree returns the tasks of a pstree image.
func readPstree(path string) ([]*pstree.PstreeEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("trap: %w", err)
	}
	entries, err := readEntries(b, pstreeMagic)
	if err != nil {
		return nil, fmt.Errorf("trap: %s: %w", path, err)
	}
	var out []*pstree.PstreeEntry
	for _, e := range entries {
		var t pstree.PstreeEntry
		if err := (proto.UnmarshalOptions{AllowPartial: true}).Unmarshal(e, &t); err != nil {
			return nil, fmt.Errorf("trap: %s: %w", path, err)
		}
		out = append(out, &t)
	}
	return out, nil
}

// splitImage returns a protobuf image's magic head and its entries.
func splitImage(b []byte) (head []byte, entries [][]byte, err error) {
	if len(b) < 4 {
		return nil, nil, errors.New("too short for an image")
	}
	n := 4
	if binary.LittleEndian.Uint32(b) == imgCommonMagic {
		n = 8
	}
	if len(b) < n {
		return nil, nil, errors.New("too short for an image")
	}
	entries, err = readEntries(b, 0)
	return b[:n], entries, err
}

// readEntries returns the entries of an image (each a u32 size and a protobuf). With
// magic set, the image must be of that kind.
func readEntries(b []byte, magic uint32) ([][]byte, error) {
	n := 4
	if len(b) >= 8 && binary.LittleEndian.Uint32(b) == imgCommonMagic {
		if magic != 0 && binary.LittleEndian.Uint32(b[4:]) != magic {
			return nil, fmt.Errorf("image magic %#x, want %#x", binary.LittleEndian.Uint32(b[4:]), magic)
		}
		n = 8
	}
	var out [][]byte
	for rest := b[n:]; len(rest) > 0; {
		if len(rest) < 4 {
			return nil, errors.New("truncated entry size")
		}
		size := int(binary.LittleEndian.Uint32(rest))
		if size > len(rest)-4 {
			return nil, errors.New("truncated entry")
		}
		out = append(out, rest[4:4+size])
		rest = rest[4+size:]
	}
	return out, nil
}

func appendEntry(b, entry []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entry)))
	return append(b, entry...)
}

// Listener takes the listener CRIU's restorer left in process pid (a restored, stopped
// task of a tree whose images AddToImages changed) and returns it; the fd stays in pid.
func Listener(pid int) (*os.File, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("trap: listener of pid %d: %w", pid, err)
	}
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); l != "anon_inode:seccomp notify" {
			continue
		}
		target, _ := strconv.Atoi(e.Name())
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return nil, fmt.Errorf("trap: listener of pid %d: pidfd_open: %w", pid, err)
		}
		fd, err := unix.PidfdGetfd(pidfd, target, 0)
		unix.Close(pidfd)
		if err != nil {
			return nil, fmt.Errorf("trap: listener of pid %d: pidfd_getfd %d: %w", pid, target, err)
		}
		return os.NewFile(uintptr(fd), fmt.Sprintf("seccomp-notify-%d", pid)), nil
	}
	return nil, fmt.Errorf("trap: pid %d holds no seccomp listener (were its images given the trap?)", pid)
}

// Notif is one trapped call (struct seccomp_notif).
type Notif struct {
	ID    uint64
	Pid   uint32
	Flags uint32
	Nr    int32
	Arch  uint32
	IP    uint64
	Args  [6]uint64
}

// notifResp is struct seccomp_notif_resp.
type notifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// ErrNoTasks is Recv's error once no task is left under the listener's filter.
var ErrNoTasks = errors.New("trap: no task is left under the filter")

// Recv waits for the next trapped call on listener l. A call withdrawn while it was
// being received (its task interrupted by a signal, or stopped by a tracer) is skipped.
func Recv(l *os.File) (Notif, error) {
	var n Notif
	for {
		pfd := []unix.PollFd{{Fd: int32(l.Fd()), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			return n, err
		}
		if pfd[0].Revents&unix.POLLIN == 0 && pfd[0].Revents&unix.POLLHUP != 0 {
			return n, ErrNoTasks
		}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, l.Fd(), unix.SECCOMP_IOCTL_NOTIF_RECV, uintptr(unsafe.Pointer(&n)))
		switch errno {
		case 0:
			return n, nil
		case unix.EINTR, unix.ENOENT:
			continue
		default:
			return n, errno
		}
	}
}

// Continue lets the trapped call id run as it would have without the filter.
func Continue(l *os.File, id uint64) error {
	r := notifResp{ID: id, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, l.Fd(), unix.SECCOMP_IOCTL_NOTIF_SEND, uintptr(unsafe.Pointer(&r))); errno != 0 {
		return errno
	}
	return nil
}
