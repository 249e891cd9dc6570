package trap

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Release closes, inside process pid, the listener fd CRIU's restorer left there (the
// Listener taken from it keeps the listener alive), so that the tree can be dumped
// again: CRIU cannot dump that kind of file. It runs close(2) in the task through
// ptrace, as CRIU's own parasite code does, and puts the task back as it was (a call it
// was blocked in restarts). A task without such an fd is left alone.
func Release(pid int) error {
	fd, ok, err := listenerFD(pid)
	if err != nil || !ok {
		return err
	}
	if err := inject(pid, unix.SYS_CLOSE, uint64(fd)); err != nil {
		return fmt.Errorf("trap: close the listener (fd %d) in pid %d: %w", fd, pid, err)
	}
	if _, still, _ := listenerFD(pid); still {
		return fmt.Errorf("trap: pid %d still holds a seccomp listener after closing fd %d", pid, fd)
	}
	return nil
}

// listenerFD finds the seccomp listener among pid's fds.
func listenerFD(pid int) (int, bool, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, false, fmt.Errorf("trap: fds of pid %d: %w", pid, err)
	}
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); l == "anon_inode:seccomp notify" {
			fd, _ := strconv.Atoi(e.Name())
			return fd, true, nil
		}
	}
	return 0, false, nil
}

// inject runs the system call nr(arg) in pid and returns its error, if any.
func inject(pid int, nr, arg uint64) (err error) {
	// ptrace requests must all come from the thread that attached.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.PtraceSeize(pid); err != nil {
		return fmt.Errorf("seize: %w", err)
	}
	defer func() {
		if derr := unix.PtraceDetach(pid); derr != nil && err == nil {
			err = fmt.Errorf("detach: %w", derr)
		}
	}()
	if err := unix.PtraceInterrupt(pid); err != nil {
		return fmt.Errorf("interrupt: %w", err)
	}
	if err := waitStop(pid); err != nil {
		return err
	}
	var saved unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &saved); err != nil {
		return fmt.Errorf("get registers: %w", err)
	}
	at, err := syscallInsn(pid, saved.Rip)
	if err != nil {
		return err
	}
	regs := saved
	regs.Rax, regs.Orig_rax, regs.Rdi, regs.Rip = nr, ^uint64(0), arg, at
	if err := unix.PtraceSetRegs(pid, &regs); err != nil {
		return fmt.Errorf("set registers: %w", err)
	}
	if err := unix.PtraceSingleStep(pid); err != nil {
		return fmt.Errorf("single-step: %w", err)
	}
	if err := waitStop(pid); err != nil {
		return err
	}
	var after unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &after); err != nil {
		return fmt.Errorf("get registers: %w", err)
	}
	if err := unix.PtraceSetRegs(pid, &saved); err != nil {
		return fmt.Errorf("restore registers: %w", err)
	}
	if after.Rip != at+2 {
		return fmt.Errorf("the injected call did not run (stopped at %#x, not %#x)", after.Rip, at+2)
	}
	if r := int64(after.Rax); r < 0 && r > -4096 {
		return unix.Errno(-r)
	}
	return nil
}

// waitStop waits until pid stops for its tracer.
func waitStop(pid int) error {
	for {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("wait: %w", err)
		}
		switch {
		case ws.Exited() || ws.Signaled():
			return fmt.Errorf("pid %d ended", pid)
		case ws.Stopped():
			return nil
		}
	}
}

// syscallInsn returns the address of a syscall instruction (0f 05) in pid: the one it
// stopped right after, or one in its vDSO.
func syscallInsn(pid int, rip uint64) (uint64, error) {
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, err
	}
	defer mem.Close()
	insn := []byte{0x0f, 0x05}
	b := make([]byte, 2)
	if rip >= 2 {
		if _, err := mem.ReadAt(b, int64(rip-2)); err == nil && bytes.Equal(b, insn) {
			return rip - 2, nil
		}
	}
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, err
	}
	defer maps.Close()
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[5] != "[vdso]" {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil {
			break
		}
		code := make([]byte, end-start)
		if _, err := mem.ReadAt(code, int64(start)); err != nil {
			return 0, fmt.Errorf("read the vDSO of pid %d: %w", pid, err)
		}
		if i := bytes.Index(code, insn); i >= 0 {
			return start + uint64(i), nil
		}
	}
	return 0, fmt.Errorf("no syscall instruction found in pid %d", pid)
}
