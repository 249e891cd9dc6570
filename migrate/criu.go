package migrate

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"github.com/checkpoint-restore/go-criu/v7/stats"
	"github.com/migshm/migshm/internal/nsutil"
	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/internal/procfs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// DefaultCRIUPrefix is where scripts/setup installs CRIU (a wrapper at bin/criu).
const DefaultCRIUPrefix = "/opt/migshm/criu"

// EnvCRIU names the environment variable that points at the criu binary to use.
const EnvCRIU = "MIGSHM_CRIU"

// envCRIUFault is CRIU's own fault-injection switch; 130 is FI_NO_BREAKPOINTS.
//
// CRIU lets a task leave its parasite and stops it again on an x86 hardware breakpoint.
// In some virtual machines that breakpoint never fires (seen on an AMD guest with kernel
// 6.18: the task runs on and criu waits in wait4 for ever, for a plain C sleeper too), so
// every dump and restore hangs. Without breakpoints CRIU stops the task by tracing its
// syscalls instead: the path it takes on architectures without breakpoints, and took on
// every x86 machine for years as its workaround for Xen guests. It costs a few syscall
// stops per task. migshm therefore runs every CRIU with it, unless CRIU_FAULT is set.
const (
	envCRIUFault  = "CRIU_FAULT"
	noBreakpoints = "130"
)

var criuEnvOnce sync.Once

// setCRIUEnv sets CRIU_FAULT for the CRIUs this process starts: go-criu starts swrk with
// this process's environment and takes no other.
func setCRIUEnv() {
	criuEnvOnce.Do(func() {
		if _, ok := os.LookupEnv(envCRIUFault); !ok {
			_ = os.Setenv(envCRIUFault, noBreakpoints)
		}
	})
}

// FindCRIU returns the criu binary to use: the given path if not empty, else $MIGSHM_CRIU,
// else DefaultCRIUPrefix/bin/criu when it exists. It never searches PATH: Debian 12's own
// criu is found there and does not work on kernels >= 6.13. Once a CRIU is found, the
// CRIUs this process starts run without hardware breakpoints (see envCRIUFault).
func FindCRIU(path string) (string, error) {
	if path == "" {
		path = os.Getenv(EnvCRIU)
	}
	if path == "" {
		path = filepath.Join(DefaultCRIUPrefix, "bin", "criu")
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v (run scripts/setup, or point --criu / %s at a CRIU >= 4.1)",
			ErrCRIUUnavailable, path, err, EnvCRIU)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%w: %s is not an executable file", ErrCRIUUnavailable, path)
	}
	setCRIUEnv()
	return path, nil
}

// CRIU runs CRIU through go-criu's swrk RPC, with a fresh criu process per operation,
// and remembers what CRIU said of this machine (CachedCheck, CPUInfo). A CRIU must not be
// copied once used.
type CRIU struct {
	// Path is the criu binary; empty means FindCRIU's default.
	Path string

	cache criuCache
}

// Capabilities is what CRIU itself says works on this machine.
type Capabilities struct {
	Path    string
	Version string // e.g. "4.1.1"
	// Features maps the optional features migshm may use to whether CRIU reports them
	// working here: mem_dirty_track (soft-dirty pre-dump), uffd and uffd-noncoop (lazy
	// pages), pidfd_store, timens.
	Features map[string]bool
	// InetSockets says whether this CRIU can dump TCP and UDP sockets on the running
	// kernel: CRIU before 4.2 asks every socket for SO_PASSCRED, which kernels >= 6.16
	// refuse on inet sockets, and fails the dump (`sockets: Can't get 1:16 opt`).
	InetSockets bool
}

// inetSocketsWork reports whether CRIU version criu dumps inet sockets on kernel release.
func inetSocketsWork(criu, kernel string) bool {
	return versionBefore(kernel, 6, 16) || !versionBefore(criu, 4, 2)
}

// versionBefore reports whether version v ("6.18.44-amd64", "4.1.1") is before
// major.minor. A version it cannot read counts as recent.
func versionBefore(v string, major, minor int) bool {
	var a, b int
	if n, _ := fmt.Sscanf(v, "%d.%d", &a, &b); n < 2 {
		return false
	}
	return a < major || (a == major && b < minor)
}

// OptionalFeatures are probed by Check with `criu check --feature NAME`.
var OptionalFeatures = []string{"mem_dirty_track", "uffd", "uffd-noncoop", "pidfd_store", "timens"}

// Check asks CRIU whether it works on this kernel (`criu check` must say "Looks good.")
// and which optional features it supports. A version number alone proves nothing:
// CRIU 3.17 reports its version on kernels where nothing else works.
func (c *CRIU) Check(ctx context.Context) (*Capabilities, error) {
	out, err := exec.CommandContext(ctx, c.Path, "check").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("Looks good")) {
		return nil, &CRIUError{Op: "check", Err: fmt.Errorf("%w: `%s check` says: %s (%v)",
			ErrCRIUUnavailable, c.Path, strings.TrimSpace(string(out)), err)}
	}
	caps := &Capabilities{Path: c.Path, Features: map[string]bool{}}
	if v, err := exec.CommandContext(ctx, c.Path, "--version").Output(); err == nil {
		caps.Version = parseVersion(string(v))
	}
	for _, f := range OptionalFeatures {
		out, err := exec.CommandContext(ctx, c.Path, "check", "--feature", f).CombinedOutput()
		caps.Features[f] = err == nil && bytes.Contains(out, []byte("is supported"))
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		caps.InetSockets = inetSocketsWork(caps.Version, unix.ByteSliceToString(uts.Release[:]))
	}
	return caps, nil
}

func parseVersion(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return strings.TrimSpace(s)
}

// DumpOptions says what to checkpoint and how.
type DumpOptions struct {
	// Pid is the host pid of the tree's root: the workload's init.
	Pid int
	// ImagesDir receives the images; created with mode 0700 if missing.
	ImagesDir string
	// WorkDir receives the log (dump.log); empty means ImagesDir.
	WorkDir string
	// LeaveStopped leaves the tree stopped after the dump (to be resumed with Resume on
	// abort, or killed after the move commits). Otherwise the tree is killed, unless
	// LeaveRunning is set.
	LeaveStopped bool
	LeaveRunning bool
	// NetNS is the node's network namespace: criu runs inside it, so a tree in that
	// namespace leaves it out of the images.
	NetNS string
	// OwnNetwork says the tree has a network namespace of its own (internal/ownnet) to
	// carry: CRIU dumps it with its TCP connections and locks it with nftables while
	// frozen. A dump that leaves such a tree stopped leaves it locked, its connections
	// in repair mode: ownnet.Release undoes that before the tree may run on here.
	OwnNetwork bool
	// LogLevel is CRIU's log level (0-4); 0 means 4 (everything).
	LogLevel int32
	// PageServer, if set (host:port), sends the memory pages to a `criu page-server`
	// there instead of writing them into ImagesDir.
	PageServer string
}

// DumpResult reports on a dump.
type DumpResult struct {
	// Freezing is how long freezing the tree took; Frozen how long it stayed frozen
	// (the workload's downtime on the source); Memdump and Memwrite the parts of that
	// spent collecting and writing memory.
	Freezing, Frozen, Memdump, Memwrite time.Duration
	PagesWritten                        uint64
	// ImageBytes is the total size of the image files.
	ImageBytes int64
	LogFile    string
}

// Dump checkpoints the tree rooted at opts.Pid.
func (c *CRIU) Dump(ctx context.Context, opts DumpOptions) (*DumpResult, error) {
	if opts.Pid <= 0 {
		return nil, fmt.Errorf("criu dump: invalid pid %d", opts.Pid)
	}
	if opts.LeaveStopped && opts.LeaveRunning {
		return nil, errors.New("criu dump: LeaveStopped and LeaveRunning exclude each other")
	}
	imgDir, workDir, err := openDirs(opts.ImagesDir, opts.WorkDir)
	if err != nil {
		return nil, fmt.Errorf("criu dump of pid %d: %w", opts.Pid, err)
	}
	defer imgDir.Close()
	defer workDir.Close()
	const logName = "dump.log"
	ro := &rpc.CriuOpts{
		ImagesDirFd:  proto.Int32(int32(imgDir.Fd())),
		WorkDirFd:    proto.Int32(int32(workDir.Fd())),
		Pid:          proto.Int32(int32(opts.Pid)),
		LogFile:      proto.String(logName),
		LogLevel:     proto.Int32(logLevel(opts.LogLevel)),
		LeaveRunning: proto.Bool(opts.LeaveRunning),
		LeaveStopped: proto.Bool(opts.LeaveStopped),
	}
	if opts.PageServer != "" {
		host, port, err := net.SplitHostPort(opts.PageServer)
		p, perr := strconv.ParseUint(port, 10, 16)
		if err != nil || perr != nil || host == "" {
			return nil, fmt.Errorf("criu dump of pid %d: page server %q: want host:port", opts.Pid, opts.PageServer)
		}
		ro.Ps = &rpc.CriuPageServerInfo{Address: proto.String(host), Port: proto.Int32(int32(p))}
	}
	if opts.OwnNetwork {
		if !ownnet.Own(opts.Pid, opts.NetNS) {
			return nil, fmt.Errorf("criu dump of pid %d: it has no network namespace of its own to carry", opts.Pid)
		}
		ownNetwork(ro)
	}
	if ownMountNS(opts.Pid) {
		externalMounts(ro)
		binds, err := nodeBinds(opts.Pid)
		if err != nil {
			return nil, fmt.Errorf("criu dump of pid %d: %w", opts.Pid, err)
		}
		for _, point := range binds {
			ro.External = append(ro.External, externalMount(point))
		}
	}
	if d, ok := ctx.Deadline(); ok {
		// CRIU cannot be cancelled through swrk; bound at least the time it may take
		// to freeze the tree.
		if s := time.Until(d).Seconds(); s >= 1 {
			ro.Timeout = proto.Uint32(uint32(s))
		}
	}
	logFile := filepath.Join(workDir.Name(), logName)
	err = c.run(ctx, opts.NetNS, func(cr *criu.Criu) error { return cr.Dump(ro, nil) })
	if err != nil {
		return nil, &CRIUError{Op: "dump", PID: opts.Pid, LogFile: logFile, LogTail: logTail(logFile), Err: err}
	}
	// CRIU creates files with the caller's umask; images hold the workload's memory, so
	// they are made private whatever the umask was (the 0700 directory already keeps
	// others out while CRIU writes).
	if err := makePrivate(imgDir.Name()); err != nil {
		return nil, fmt.Errorf("criu dump of pid %d: %w", opts.Pid, err)
	}
	if err := makePrivate(workDir.Name()); err != nil {
		return nil, fmt.Errorf("criu dump of pid %d: %w", opts.Pid, err)
	}
	res := &DumpResult{LogFile: logFile}
	// CRIU writes stats-dump into the work dir when it has one.
	st, err := stats.CriuGetDumpStats(workDir)
	if err != nil {
		st, err = stats.CriuGetDumpStats(imgDir)
	}
	if err == nil {
		res.Freezing = time.Duration(st.GetFreezingTime()) * time.Microsecond
		res.Frozen = time.Duration(st.GetFrozenTime()) * time.Microsecond
		res.Memdump = time.Duration(st.GetMemdumpTime()) * time.Microsecond
		res.Memwrite = time.Duration(st.GetMemwriteTime()) * time.Microsecond
		res.PagesWritten = st.GetPagesWritten()
	}
	res.ImageBytes, err = dirSize(imgDir.Name())
	if err != nil {
		return res, fmt.Errorf("criu dump of pid %d: measure images: %w", opts.Pid, err)
	}
	return res, nil
}

// RestoreOptions says what to restore and where.
type RestoreOptions struct {
	// ImagesDir holds the images of a dump.
	ImagesDir string
	// WorkDir receives the log (restore.log); empty means ImagesDir.
	WorkDir string
	// NetNS is the network namespace to restore into (the target node's); criu runs
	// inside it. The tree gets fresh PID, IPC and UTS namespaces from the images.
	NetNS string
	// NetParent is the target node's interface to the cluster's network, on which a
	// tree that carries its own network namespace gets its macvlan back; required
	// for such images.
	NetParent string
	// LogLevel is CRIU's log level (0-4); 0 means 4.
	LogLevel int32
	// LeaveStopped leaves the restored tree stopped (SIGSTOP) instead of running it: a
	// migration resumes it (Resume) only once the move is committed, so the workload
	// never runs on two nodes at once.
	LeaveStopped bool
	// BeforeResume, if set, is called with the host pid of the restored root while the
	// tree is restored but not yet running. An error aborts the restore: CRIU kills
	// the restored tree and removes what it created.
	BeforeResume func(pid int) error
}

// RestoreResult reports on a restore.
type RestoreResult struct {
	// Pid is the host pid of the restored root. The caller is its parent (CRIU's
	// rst_sibling) and must reap it.
	Pid int
	// Restore is CRIU's own measure of the restore; Forking the part spent creating tasks.
	Restore, Forking time.Duration
	LogFile          string
}

// Restore restores a dumped tree, detached from criu, as a child of the caller.
func (c *CRIU) Restore(ctx context.Context, opts RestoreOptions) (*RestoreResult, error) {
	imgDir, workDir, err := openDirs(opts.ImagesDir, opts.WorkDir)
	if err != nil {
		return nil, fmt.Errorf("criu restore: %w", err)
	}
	defer imgDir.Close()
	defer workDir.Close()
	const logName = "restore.log"
	ro := &rpc.CriuOpts{
		ImagesDirFd: proto.Int32(int32(imgDir.Fd())),
		WorkDirFd:   proto.Int32(int32(workDir.Fd())),
		LogFile:     proto.String(logName),
		LogLevel:    proto.Int32(logLevel(opts.LogLevel)),
		RstSibling:  proto.Bool(true),
	}
	if opts.LeaveStopped {
		ro.LeaveStopped = proto.Bool(true)
	}
	if hasNetNS(opts.ImagesDir) {
		if opts.NetParent == "" {
			return nil, errors.New("criu restore: the images carry the workload's own network and no parent interface was given for its macvlan")
		}
		ownNetwork(ro)
		ro.External = append(ro.External, fmt.Sprintf("macvlan[%s]:%s", ownnet.Inside, opts.NetParent))
	}
	if hasMountNS(opts.ImagesDir) {
		// The tree's mounts are rebuilt under this node's root, the copies of host
		// mounts as binds of this node's own.
		ro.Root = proto.String("/")
		externalMounts(ro)
		// The mounts the dump named by their mount point (nodeBinds) are bound from
		// this node's own at the same point.
		points, err := mountPoints("self")
		if err != nil {
			return nil, fmt.Errorf("criu restore: %w", err)
		}
		for _, point := range points {
			ro.External = append(ro.External, externalMount(point))
		}
	}
	n := &restoreNotify{before: opts.BeforeResume}
	logFile := filepath.Join(workDir.Name(), logName)
	err = c.run(ctx, opts.NetNS, func(cr *criu.Criu) error { return cr.Restore(ro, n) })
	if err != nil {
		if n.pid > 0 {
			// The tree was restored as our child and the restore failed after that
			// (BeforeResume refused it, or CRIU failed later): CRIU kills it on the
			// way out; make sure it is dead and reap it, so nothing is left on the
			// target, not even a zombie holding the pid.
			_ = unix.Kill(n.pid, unix.SIGKILL)
			_, _ = unix.Wait4(n.pid, nil, 0, nil)
		}
		return nil, &CRIUError{Op: "restore", PID: n.pid, LogFile: logFile, LogTail: logTail(logFile), Err: err}
	}
	if n.pid <= 0 {
		return nil, &CRIUError{Op: "restore", LogFile: logFile, LogTail: logTail(logFile),
			Err: errors.New("criu reported success but never named the restored pid")}
	}
	res := &RestoreResult{Pid: n.pid, LogFile: logFile}
	if st, err := stats.CriuGetRestoreStats(workDir); err == nil {
		res.Restore = time.Duration(st.GetRestoreTime()) * time.Microsecond
		res.Forking = time.Duration(st.GetForkingTime()) * time.Microsecond
	} else if st, err := stats.CriuGetRestoreStats(imgDir); err == nil {
		res.Restore = time.Duration(st.GetRestoreTime()) * time.Microsecond
		res.Forking = time.Duration(st.GetForkingTime()) * time.Microsecond
	}
	return res, nil
}

// ownMountNS reports whether process pid lives in a mount namespace other than this
// process's: CRIU then dumps that namespace with the tree.
func ownMountNS(pid int) bool {
	return nsutil.Differ("/proc/self/ns/mnt", fmt.Sprintf("/proc/%d/ns/mnt", pid))
}

// ownNetwork has CRIU carry a tree's own network namespace: its TCP connections (in
// repair mode), and the namespace locked with nftables (iptables is not needed) from the
// freeze until the restored tree's namespace is unlocked.
func ownNetwork(ro *rpc.CriuOpts) {
	ro.TcpEstablished = proto.Bool(true)
	ro.NetworkLock = rpc.CriuNetworkLockMethod_NFTABLES.Enum()
}

// hasNetNS reports whether a dump in dir carries a network namespace.
func hasNetNS(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "netns-*.img"))
	return len(m) > 0
}

// hasMountNS reports whether a dump in dir carries a mount namespace.
func hasMountNS(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "mountpoints-*.img"))
	return len(m) > 0
}

// externalMounts has CRIU treat the copies of this node's mounts in a tree's mount
// namespace as external (found by device and root among its own mounts, and bound from
// the same paths on restore), so the tree restores on any node that has those paths,
// as runc and podman have it do for a container's bind mounts. What the workload
// mounted itself (its /proc, say) CRIU carries in the images.
func externalMounts(ro *rpc.CriuOpts) {
	ro.AutoExtMnt = proto.Bool(true)
	ro.ExtMasters = proto.Bool(true)
}

// nodeBinds returns the mount points in pid's mount namespace that are copies of this
// node's binds of a directory (a private /tmp bound from /var/lib/..., a container's
// volume). CRIU's automatic detection would record them by the directory bound, which
// is this node's own and may not exist elsewhere; named by their mount point, each
// node binds its own mount at that point (as runc names a container's binds).
func nodeBinds(pid int) ([]string, error) {
	own, err := readMounts("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	node := map[string]procfs.Mount{}
	for _, m := range own {
		node[m.Point] = m // the last mount at a point is the one seen
	}
	theirs, err := readMounts(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil, fmt.Errorf("read the mounts of pid %d: %w", pid, err)
	}
	var out []string
	for _, m := range theirs {
		if n, ok := node[m.Point]; ok && m.Root != "/" && n.Root == m.Root && n.Dev == m.Dev && namable(m.Point) {
			out = append(out, m.Point)
		}
	}
	return out, nil
}

// mountPoints returns the mount points of process pid ("self" for this one) but "/".
func mountPoints(pid string) ([]string, error) {
	ms, err := readMounts("/proc/" + pid + "/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	var out []string
	for _, m := range ms {
		if m.Point != "/" && namable(m.Point) && !slices.Contains(out, m.Point) {
			out = append(out, m.Point)
		}
	}
	return out, nil
}

// externalMount is CRIU's --external for a mount known by its mount point: on dump, the
// mount at point gets the key point; on restore, key point is bound from point.
func externalMount(point string) string { return "mnt[" + point + "]:" + point }

// namable reports whether point can be written in CRIU's "mnt[KEY]:VAL" (CRIU ends the
// key at the first "]"); other mounts are left to its automatic detection.
func namable(point string) bool { return !strings.ContainsAny(point, "]\n") }

type restoreNotify struct {
	criu.NoNotify
	before func(int) error
	pid    int
}

func (n *restoreNotify) PostRestore(pid int32) error {
	n.pid = int(pid)
	if n.before != nil {
		if err := n.before(int(pid)); err != nil {
			return fmt.Errorf("before resume of restored pid %d: %w", pid, err)
		}
	}
	return nil
}

// run executes one CRIU operation with a fresh swrk process started inside netns. The
// RPC itself cannot be interrupted; ctx is checked before it starts.
func (c *CRIU) run(ctx context.Context, netns string, op func(*criu.Criu) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	path, err := FindCRIU(c.Path)
	if err != nil {
		return err
	}
	cr := criu.MakeCriu()
	cr.SetCriuPath(path)
	// go-criu starts `criu swrk` from the calling goroutine, so it inherits the thread's
	// network namespace.
	return nsutil.Do(nsutil.Net, netns, func() error { return op(cr) })
}

func logLevel(l int32) int32 {
	if l <= 0 || l > 4 {
		return 4
	}
	return l
}

// openDirs opens (creating with 0700) the images dir and the work dir.
func openDirs(images, work string) (*os.File, *os.File, error) {
	if images == "" {
		return nil, nil, errors.New("no images directory given")
	}
	if work == "" {
		work = images
	}
	for _, d := range []string{images, work} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, nil, err
		}
	}
	img, err := os.Open(images)
	if err != nil {
		return nil, nil, err
	}
	wd, err := os.Open(work)
	if err != nil {
		img.Close()
		return nil, nil, err
	}
	return img, wd, nil
}

// makePrivate removes group and other permissions from every file under dir.
func makePrivate(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			// Chmod would follow it, possibly out of dir (CRIU's "parent" link to
			// the previous images): a symlink's own mode means nothing.
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			return os.Chmod(path, perm&^0o077)
		}
		return nil
	})
}

func dirSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}

// harmless tells CRIU error lines that do not explain a failure: without
// CAP_SYS_RESOURCE (containers, some sandboxes) every run logs that it cannot raise its
// own RLIMIT_NOFILE, and goes on.
func harmless(line string) bool {
	return strings.Contains(line, "Can't setup RLIMIT_NOFILE for self")
}

// logTail returns the lines of a CRIU log worth showing with an error: the last error
// lines CRIU wrote and the last few lines of the log.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const keepErrors, keepLast = 8, 6
	var errs, last []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "Error (") && !harmless(line) {
			errs = append(errs, line)
			if len(errs) > keepErrors {
				errs = errs[1:]
			}
		}
		last = append(last, line)
		if len(last) > keepLast {
			last = last[1:]
		}
	}
	out := append([]string{}, errs...)
	for _, l := range last {
		dup := false
		for _, e := range errs {
			if e == l {
				dup = true
			}
		}
		if !dup {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
