// Package nsutil runs a piece of Go code with the calling OS thread switched into
// another namespace (network, IPC), the way vishvananda/netns and runc do it: the
// goroutine is locked to its thread, the thread enters the namespace, the function runs
// (processes it forks inherit the namespace), and the thread switches back. If switching
// back fails the thread is left locked so the Go runtime discards it instead of reusing a
// thread that lives in the wrong namespace.
package nsutil

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Kind names a namespace type as it appears under /proc/PID/ns.
type Kind string

// Namespace kinds this package can enter.
const (
	Net Kind = "net"
	IPC Kind = "ipc"
	UTS Kind = "uts"
)

func (k Kind) flag() (int, error) {
	switch k {
	case Net:
		return unix.CLONE_NEWNET, nil
	case IPC:
		return unix.CLONE_NEWIPC, nil
	case UTS:
		return unix.CLONE_NEWUTS, nil
	}
	return 0, fmt.Errorf("nsutil: unsupported namespace kind %q", k)
}

// Do runs fn with the calling thread inside the namespace at path (for example
// /run/netns/node1 or /proc/1234/ns/ipc). An empty path runs fn unchanged.
func Do(kind Kind, path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	flag, err := kind.flag()
	if err != nil {
		return err
	}
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open %s namespace %s: %w", kind, path, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	self := fmt.Sprintf("/proc/thread-self/ns/%s", kind)
	orig, err := os.Open(self)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own %s namespace: %w", kind, err)
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), flag); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter %s namespace %s: %w", kind, path, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), flag); err != nil {
		// Keep the thread locked: the runtime kills it when this goroutine exits.
		return fmt.Errorf("return from %s namespace %s: %w (and %v)", kind, path, err, ferr)
	}
	runtime.UnlockOSThread()
	return ferr
}

// ID returns the identity of the namespace of the given kind that process pid lives in,
// as the kernel prints it (for example "ipc:[4026531839]"), read under procRoot.
func ID(procRoot string, pid int, kind Kind) (string, error) {
	return os.Readlink(fmt.Sprintf("%s/%d/ns/%s", procRoot, pid, kind))
}

// Differ reports whether the namespace files at paths a and b (/proc/PID/ns/KIND, or a
// bind mount of one) name two different namespaces; false if either cannot be read.
func Differ(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Ino != sb.Ino || sa.Dev != sb.Dev
}
