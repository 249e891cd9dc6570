package migrate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/migshm/migshm/internal/atomicfile"
	"google.golang.org/protobuf/proto"
)

// The freeze of a dump interrupts a thread blocked in semop(2) or semtimedop(2), and
// Linux never restarts those: the thread sees EINTR, as after SIGSTOP and SIGCONT
// (signal(7)), although no signal reached the program. Many programs treat that as an
// error (Python's sysv_ipc raises "Signaled while waiting"). A migration must not add
// failures, so before a restore RestartInterruptedSemop rewinds such a thread to issue
// the call again, as the kernel does for restartable calls. A thread a real signal
// interrupted has that signal still pending in its images: it is delivered right after
// the restore and interrupts the call again, so the program sees what it would have.
// A thread whose handler already ran has orig_ax -1 (rt_sigreturn) and is left alone.

// x86-64 numbers of the calls that return EINTR to a stopped-and-continued thread and
// that a SysV program blocks in.
const (
	sysSemop      = 65
	sysSemtimedop = 220
	eintr         = 4
	syscallInsn   = 2 // length of the syscall instruction (0f 05)
)

// RestartInterruptedSemop rewinds, in the core images of imagesDir, every thread that
// the dump's freeze interrupted in semop or semtimedop, and returns how many. Only
// x86-64 images are handled; elsewhere it does nothing.
func RestartInterruptedSemop(imagesDir string) (int, error) {
	if runtime.GOARCH != "amd64" {
		return 0, nil
	}
	paths, err := filepath.Glob(filepath.Join(imagesDir, "core-*.img"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, path := range paths {
		changed, err := restartInCore(path)
		if err != nil {
			return n, fmt.Errorf("%s: %w", filepath.Base(path), err)
		}
		if changed {
			n++
		}
	}
	return n, nil
}

// CRIU image files start with a magic (two u32 for most images: the common magic and
// the image's own), then hold entries, each a little-endian u32 size and a protobuf.
const (
	imgCommonMagic  = 0x54564319
	imgServiceMagic = 0x55105940
)

// restartInCore rewinds the thread of one core image if it was interrupted in a semop.
func restartInCore(path string) (bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	if len(b) < 4 {
		return false, errors.New("too short for an image")
	}
	head := 4
	if m := binary.LittleEndian.Uint32(b); m == imgCommonMagic || m == imgServiceMagic {
		head = 8
	}
	if len(b) < head {
		return false, errors.New("too short for an image")
	}
	out := append([]byte(nil), b[:head]...)
	changed := false
	for rest := b[head:]; len(rest) > 0; {
		if len(rest) < 4 {
			return false, errors.New("truncated entry size")
		}
		size := int(binary.LittleEndian.Uint32(rest))
		if size > len(rest)-4 {
			return false, errors.New("truncated entry")
		}
		entry := rest[4 : 4+size]
		rest = rest[4+size:]
		var core criu_core.CoreEntry
		if err := (proto.UnmarshalOptions{AllowPartial: true}).Unmarshal(entry, &core); err != nil {
			return false, err
		}
		if regs := core.GetThreadInfo().GetGpregs(); regs != nil && interruptedSemop(regs.GetAx(), regs.GetOrigAx()) {
			ax, ip := regs.GetOrigAx(), regs.GetIp()-syscallInsn
			regs.Ax, regs.Ip = &ax, &ip
			if entry, err = (proto.MarshalOptions{AllowPartial: true}).Marshal(&core); err != nil {
				return false, err
			}
			changed = true
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(len(entry)))
		out = append(out, entry...)
	}
	if !changed {
		return false, nil
	}
	return true, atomicfile.Write(path, out, 0o600)
}

// interruptedSemop reports whether a thread's registers are those of a semop or
// semtimedop that returned EINTR and was not yet followed by a signal handler.
func interruptedSemop(ax, origAx uint64) bool {
	return int64(ax) == -eintr && (origAx == sysSemop || origAx == sysSemtimedop)
}
