package migrate

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/migshm/migshm/internal/nsutil"
	"github.com/migshm/migshm/internal/procfs"
	"github.com/migshm/migshm/workload"
)

// Inspection is what the /proc files of a tree's processes say about moving it.
type Inspection struct {
	// Blockers are the resources CRIU cannot carry to another node (nil if none), in
	// pid order. A resource shared by several processes (an inherited socket or
	// terminal) is reported once, by its lowest pid, naming the others.
	Blockers []Blocker
	// MemoryBytes is what the target must hold for the tree: see TreeMemory.
	MemoryBytes uint64
	// Segments are the SysV segments of the tree's IPC namespace, attached or not.
	Segments []workload.Segment
	// Files are what the restored tree reopens by path, so the target must have them,
	// deduplicated by path and sorted: the exe of every process, its file-backed
	// mappings (not SysV, not memfd, not [anon] names), regular files and directories
	// open as fds, and cwds. Deleted files and files under /proc/<pid> are left out
	// (they are Blockers).
	Files []FileNeed
	// InetSockets counts the TCP and UDP sockets the tree holds (each once): CRIU
	// carries them only where Capabilities.InetSockets says it can.
	InetSockets int
}

// Inspect reads the /proc files of every process of tree under procRoot (normally
// "/proc") once, and the segments of the tree's IPC namespace once, and returns what
// they say about moving it. Files under skipDirs are left out of Files: the daemon ships
// those itself (the workload's log dir, the init copy). It reads only.
func Inspect(procRoot string, tree *workload.Tree, skipDirs ...string) (Inspection, error) {
	return inspect(newProcView(procRoot), tree, skipDirs)
}

func inspect(v procView, tree *workload.Tree, skipDirs []string) (Inspection, error) {
	v.stat = statOnce(v.stat)
	var in Inspection
	procs, err := v.readTree(tree)
	if err != nil {
		return in, err
	}
	if in.Blockers, in.InetSockets, err = blockers(v, procs); err != nil {
		return in, err
	}
	if in.Files, err = needs(v, procs, skipDirs); err != nil {
		return in, err
	}
	if in.Segments, err = v.segments(tree.Init.Pid); err != nil {
		return in, err
	}
	in.MemoryBytes = segmentBytes(in.Segments)
	for _, p := range procs {
		in.MemoryBytes += p.anon
	}
	return in, nil
}

// statOnce remembers what stat said of each link: the blockers and the needs of an
// inspection ask about the same files.
func statOnce(stat func(procPath, target string) (fs.FileInfo, error)) func(procPath, target string) (fs.FileInfo, error) {
	type result struct {
		info fs.FileInfo
		err  error
	}
	seen := map[[2]string]result{}
	return func(procPath, target string) (fs.FileInfo, error) {
		k := [2]string{procPath, target}
		r, ok := seen[k]
		if !ok {
			r.info, r.err = stat(procPath, target)
			seen[k] = r
		}
		return r.info, r.err
	}
}

// procFiles is what the checks read of one process, each file once. A process that is
// gone has none of it.
type procFiles struct {
	proc workload.Proc
	fds  []fdLink         // open file descriptors, by number
	maps []procfs.Mapping // mappings that name a file, the first of each path
	exe  string           // what its exe and cwd links say
	cwd  string
	anon uint64 // anonymous resident bytes
}

// readTree reads the files of every process of tree, in its order.
func (v procView) readTree(tree *workload.Tree) ([]procFiles, error) {
	out := make([]procFiles, 0, len(tree.Procs))
	for _, p := range tree.Procs {
		pf, err := v.readProc(p)
		if err != nil {
			return nil, err
		}
		out = append(out, pf)
	}
	return out, nil
}

func (v procView) readProc(p workload.Proc) (procFiles, error) {
	pf := procFiles{proc: p}
	var err error
	if pf.exe, err = v.link(p.Pid, "exe"); err != nil {
		return pf, err
	}
	if pf.fds, err = v.fds(p.Pid); err != nil {
		return pf, err
	}
	maps, err := v.fileMaps(p.Pid)
	if err != nil {
		return pf, err
	}
	seen := map[string]bool{}
	for _, m := range maps {
		if !seen[m.Path] {
			seen[m.Path] = true
			pf.maps = append(pf.maps, m)
		}
	}
	if pf.cwd, err = v.link(p.Pid, "cwd"); err != nil {
		return pf, err
	}
	if pf.anon, err = v.anon(p.Pid); err != nil {
		return pf, err
	}
	return pf, nil
}

// link reads the link name (exe, cwd) of pid; "" if the process is gone.
func (v procView) link(pid int, name string) (string, error) {
	target, err := os.Readlink(v.path(pid, name))
	if gone(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("pid %d: %s: %w", pid, name, err)
	}
	return target, nil
}

// procView reads the parts of a proc file system the pre-move checks need.
type procView struct {
	root string
	// stat describes the file that a /proc magic link (procPath: .../fd/N, exe, cwd,
	// map_files/A-B) points to; target is what readlink says of it. Fixture tests
	// replace it: a fixture's links point nowhere.
	stat func(procPath, target string) (fs.FileInfo, error)
	// segments lists the SysV segments of the IPC namespace process pid lives in
	// (ipcSegments); fixture tests replace it, as a fixture has no namespaces to enter.
	segments func(pid int) ([]workload.Segment, error)
}

func newProcView(root string) procView {
	if root == "" {
		root = "/proc"
	}
	v := procView{root: root, stat: statMagicLink}
	v.segments = v.ipcSegments
	return v
}

// ownProc reports whether fd of process pid is on a proc file system other than the
// reader's /proc: the one a migshm init mounts for its PID namespace, in its own mount
// namespace. Its files name the workload's own pids, and CRIU carries the mount.
func (v procView) ownProc(pid, fd int) bool {
	info, err := os.ReadFile(v.path(pid, "fdinfo", strconv.Itoa(fd)))
	if err != nil {
		return false
	}
	mntID := -1
	for _, line := range strings.Split(string(info), "\n") {
		if s, ok := strings.CutPrefix(line, "mnt_id:"); ok {
			mntID, _ = strconv.Atoi(strings.TrimSpace(s))
		}
	}
	theirs, err := readMounts(v.path(pid, "mountinfo"))
	if err != nil {
		return false
	}
	ours, err := readMounts(filepath.Join(v.root, "self", "mountinfo"))
	if err != nil {
		return false
	}
	hostProc := ""
	for _, m := range ours {
		if m.Point == "/proc" && m.FSType == "proc" {
			hostProc = m.Dev
		}
	}
	for _, m := range theirs {
		if m.ID == mntID {
			return m.FSType == "proc" && hostProc != "" && m.Dev != hostProc
		}
	}
	return false
}

func readMounts(path string) ([]procfs.Mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return procfs.ParseMountinfo(f)
}

// statMagicLink stats through a /proc link, which reaches the open file even when it
// was deleted or lives in another mount namespace. map_files needs CAP_SYS_ADMIN; without
// it the target path is the best there is.
func statMagicLink(procPath, target string) (fs.FileInfo, error) {
	info, err := os.Stat(procPath)
	if errors.Is(err, fs.ErrPermission) && strings.HasPrefix(target, "/") {
		return os.Stat(strings.TrimSuffix(target, deletedSuffix))
	}
	return info, err
}

func (v procView) path(pid int, elem ...string) string {
	return filepath.Join(append([]string{v.root, strconv.Itoa(pid)}, elem...)...)
}

// fdLink is one open file descriptor.
type fdLink struct {
	fd   int
	link string
}

// fds lists the open file descriptors of pid by number. A process that is gone has none.
func (v procView) fds(pid int) ([]fdLink, error) {
	ents, err := os.ReadDir(v.path(pid, "fd"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("pid %d: list open files: %w", pid, err)
	}
	out := make([]fdLink, 0, len(ents))
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		link, err := os.Readlink(v.path(pid, "fd", e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // closed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("pid %d: fd %d: %w", pid, n, err)
		}
		out = append(out, fdLink{fd: n, link: link})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].fd < out[j].fd })
	return out, nil
}

// fileMaps lists the mappings of pid that name a file (path starting with "/"), in
// address order. A process that is gone has none.
func (v procView) fileMaps(pid int) ([]procfs.Mapping, error) {
	all, err := procfs.ReadMaps(v.root, pid)
	if errors.Is(err, procfs.ErrNoProcess) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []procfs.Mapping
	for _, m := range all {
		if strings.HasPrefix(m.Path, "/") {
			out = append(out, m)
		}
	}
	return out, nil
}

// mapFile is the path of a mapping's entry in /proc/PID/map_files, named by its bounds
// in hex without padding (maps pads them to eight digits).
func (v procView) mapFile(pid int, m procfs.Mapping) string {
	return v.path(pid, "map_files", fmt.Sprintf("%x-%x", m.Start, m.End))
}

// readErr reports a failed read of an opened /proc file.
func readErr(pid int, file string, err error) error {
	return fmt.Errorf("pid %d: %s: %w", pid, file, err)
}

// gone reports whether err means the process no longer exists: its /proc directory is
// missing, or it was reaped after a file of it was opened (ESRCH on read).
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}

// TreeMemory estimates what the target must hold for the tree: the anonymous resident
// memory of every process (smaps_rollup "Anonymous:") plus the size of every SysV
// segment of the tree's IPC namespace, attached or not, each once. Memory shared
// copy-on-write between processes is counted once per process, so it errs high.
func TreeMemory(procRoot string, tree *workload.Tree) (uint64, error) {
	v := newProcView(procRoot)
	anon, err := anonMemory(v, tree)
	if err != nil {
		return 0, err
	}
	segs, err := v.segments(tree.Init.Pid)
	if err != nil {
		return 0, err
	}
	return anon + segmentBytes(segs), nil
}

func segmentBytes(segs []workload.Segment) uint64 {
	var total uint64
	for _, s := range segs {
		total += s.Size
	}
	return total
}

// anonMemory sums the anonymous resident memory of the tree's processes.
func anonMemory(v procView, tree *workload.Tree) (uint64, error) {
	var total uint64
	for _, p := range tree.Procs {
		n, err := v.anon(p.Pid)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// anon returns the anonymous resident bytes of pid (procfs.ReadAnon). A process that
// is gone has none.
func (v procView) anon(pid int) (uint64, error) {
	n, err := procfs.ReadAnon(v.root, pid)
	if errors.Is(err, procfs.ErrNoProcess) {
		return 0, nil
	}
	return n, err
}

// ipcSegments lists the SysV segments of the IPC namespace pid lives in: the calling
// thread enters it and reads sysvipc/shm, which shows the reader's namespace.
func (v procView) ipcSegments(pid int) ([]workload.Segment, error) {
	var segs []workload.Segment
	err := nsutil.Do(nsutil.IPC, v.path(pid, "ns", "ipc"), func() error {
		f, err := os.Open(filepath.Join(v.root, "sysvipc", "shm"))
		if err != nil {
			return err
		}
		defer f.Close()
		segs, err = workload.ParseSysVShm(f)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list segments of pid %d: %w", pid, err)
	}
	return segs, nil
}
