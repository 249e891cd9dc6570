package migrate

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// FileNeed is a file the restored tree reopens by path on the target.
type FileNeed struct {
	Path string `json:"path"`
	Kind string `json:"kind"` // "exe", "map", "fd", "cwd"
	// Size is the size of a regular file: CRIU refuses to reopen one whose size changed.
	// -1 means CRIU does not check it: the file is only open write-only for appending
	// (a log), which CRIU reopens whatever its size.
	Size int64 `json:"size"`
	Dir  bool  `json:"dir"`
	// Bytes is a regular file's size on the source, whether CRIU checks it or not; Mode,
	// UID and GID are its permission bits and owner: what a target that lacks the file or
	// directory creates it with.
	Bytes int64  `json:"bytes,omitempty"`
	Mode  uint32 `json:"mode,omitempty"`
	UID   uint32 `json:"uid,omitempty"`
	GID   uint32 `json:"gid,omitempty"`
	// Digest is the SHA-256 (hex) of a file open as an fd and small enough to carry
	// (MaxCarryFile): a target with a file of the same size but other content at the
	// path would have CRIU reopen the wrong data.
	Digest string `json:"digest,omitempty"`
	// Replace is set by CheckFiles on a file to carry over the target's copy, which the
	// target's replaceable said is the tree's own outdated one.
	Replace bool `json:"replace,omitempty"`
}

// What a move carries of the files its tree reopens by path and the target lacks: the
// directories, and the regular files it has open (not executables or mapped libraries:
// software must be installed on every node) of at most MaxCarryFile bytes each and
// MaxCarryTotal in all.
// They are read while the tree is frozen, so the target gets what the dump saw. A
// larger file must be on the target already (or on storage every node shares).
const (
	MaxCarryFile  = 16 << 20
	MaxCarryTotal = 64 << 20
)

// Kinds of FileNeed, strongest first: a path needed in several ways is listed once, as
// the first of these.
const (
	NeedExe = "exe"
	NeedMap = "map"
	NeedFd  = "fd"
	NeedCwd = "cwd"
)

var needRank = map[string]int{NeedExe: 0, NeedMap: 1, NeedFd: 2, NeedCwd: 3}

// needs lists, deduplicated by path and sorted, what procs reopen by path: the exe of
// every process, its file-backed mappings (not SysV, not memfd, not [anon] names),
// regular files and directories open as fds, and cwds. Files under skipDirs (the daemon
// ships those itself: the workload's log dir, the init copy) are left out, and so are
// deleted files and files under /proc/<pid> (blockers reports those).
func needs(v procView, procs []procFiles, skipDirs []string) ([]FileNeed, error) {
	var skip []string
	for _, d := range skipDirs {
		if d == "" {
			continue
		}
		skip = append(skip, filepath.Clean(d))
		// /proc shows resolved paths: skip a directory by its real path too.
		if real, err := filepath.EvalSymlinks(d); err == nil && real != filepath.Clean(d) {
			skip = append(skip, real)
		}
	}
	byPath := map[string]*FileNeed{}
	add := func(path, kind, procPath string, sizeChecked bool) error {
		if !strings.HasPrefix(path, "/") || strings.HasSuffix(path, deletedSuffix) ||
			kernelObject(path) || procPidFile(path) || under(path, skip) {
			return nil
		}
		info, err := v.stat(procPath, path)
		if gone(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("stat %s: %w", path, err)
		}
		n := FileNeed{Path: path, Kind: kind, Mode: uint32(info.Mode().Perm())}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			n.UID, n.GID = st.Uid, st.Gid
		}
		switch {
		case info.IsDir():
			n.Dir = true
		case info.Mode().IsRegular():
			n.Size, n.Bytes = info.Size(), info.Size()
			if !sizeChecked {
				n.Size = -1
			}
			if kind == NeedFd && n.Bytes <= MaxCarryFile && !under(path, []string{"/proc", "/sys", "/dev"}) {
				// One that cannot be read (gone since, say) is compared by size only.
				n.Digest, _ = digestFile(procPath)
			}
		default:
			return nil // devices, sockets, fifos: blockers judges those
		}
		old, ok := byPath[path]
		if !ok {
			byPath[path] = &n
			return nil
		}
		if needRank[kind] < needRank[old.Kind] {
			old.Kind = kind
		}
		if old.Digest == "" {
			old.Digest = n.Digest
		}
		if old.Size < 0 && n.Size >= 0 {
			old.Size = n.Size
		}
		return nil
	}
	for _, pf := range procs {
		pid := pf.proc.Pid
		if pf.exe != "" {
			if err := add(pf.exe, NeedExe, v.path(pid, "exe"), true); err != nil {
				return nil, fmt.Errorf("pid %d: exe: %w", pid, err)
			}
		}
		for _, m := range pf.maps {
			if err := add(m.Path, NeedMap, v.mapFile(pid, m), true); err != nil {
				return nil, fmt.Errorf("pid %d: mapping %x-%x: %w", pid, m.Start, m.End, err)
			}
		}
		for _, fd := range pf.fds {
			if !strings.HasPrefix(fd.link, "/") {
				continue
			}
			flags, err := v.fdFlags(pid, fd.fd)
			if gone(err) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if err := add(fd.link, NeedFd, v.path(pid, "fd", strconv.Itoa(fd.fd)), sizeChecked(flags)); err != nil {
				return nil, fmt.Errorf("pid %d: fd %d: %w", pid, fd.fd, err)
			}
		}
		if pf.cwd != "" {
			if err := add(pf.cwd, NeedCwd, v.path(pid, "cwd"), true); err != nil {
				return nil, fmt.Errorf("pid %d: cwd: %w", pid, err)
			}
		}
	}
	out := make([]FileNeed, 0, len(byPath))
	for _, n := range byPath {
		out = append(out, *n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// under reports whether path is one of dirs or lies below one.
func under(path string, dirs []string) bool {
	for _, d := range dirs {
		if path == d || strings.HasPrefix(path, strings.TrimSuffix(d, "/")+"/") {
			return true
		}
	}
	return false
}

// Open flags as /proc/PID/fdinfo shows them (octal, x86 and arm64 values).
const (
	oAccMode = 0o3
	oWronly  = 0o1
	oAppend  = 0o2000
)

// sizeChecked reports whether CRIU records the size of a regular file open with these
// flags (and so refuses to restore it if the size changed): it does, except for files
// open write-only for appending, like logs.
func sizeChecked(flags uint64) bool {
	return !(flags&oAccMode == oWronly && flags&oAppend != 0)
}

// fdFlags reads the open flags of a file descriptor from fdinfo.
func (v procView) fdFlags(pid, fd int) (uint64, error) {
	b, err := os.ReadFile(v.path(pid, "fdinfo", strconv.Itoa(fd)))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "flags:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(rest), 8, 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: fdinfo %d: bad flags %q", pid, fd, line)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("pid %d: fdinfo %d: no flags", pid, fd)
}

// FileProblem is a FileNeed the target cannot meet.
type FileProblem struct {
	Path   string
	Reason string // "missing", "size", "type", "content", "too-large"
	Detail string
}

// Reasons of a FileProblem.
const (
	FileMissing  = "missing"
	FileSize     = "size"
	FileType     = "type"
	FileContent  = "content"
	FileTooLarge = "too-large"
)

// CheckFiles runs on the target, node: each need must exist with the same type, for
// regular files whose size CRIU checks the same size, and for files with a digest the
// same content. What is missing and may be carried (see MaxCarryFile) is returned in
// carry, directories before what they hold, and so is an open file that differs but
// that replaceable (nil: none) says is the tree's own outdated copy; every other
// mismatch is a problem naming the path and what to do. root "" or "/" is the real file
// system; tests pass a temp dir.
func CheckFiles(root, node string, needs []FileNeed, replaceable func(path string, info fs.FileInfo) bool) (problems []FileProblem, carry []FileNeed) {
	var carried int64
	take := func(n FileNeed, why string) {
		if n.Bytes > MaxCarryFile || carried+n.Bytes > MaxCarryTotal {
			problems = append(problems, FileProblem{Path: n.Path, Reason: FileTooLarge, Detail: fmt.Sprintf(
				"%s (%s) %s on %s, and a move carries files of at most %s each and %s in all: "+
					"copy it there, at the same path, or keep it on storage every node shares",
				n.Path, sizeString(n.Bytes), why, node, sizeString(MaxCarryFile), sizeString(MaxCarryTotal))})
			return
		}
		carried += n.Bytes
		carry = append(carry, n)
	}
	for _, n := range needs {
		p := n.Path
		if root != "" && root != "/" {
			p = filepath.Join(root, n.Path)
		}
		info, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) && (n.Dir || n.Kind == NeedFd) {
			if n.Dir {
				carry = append(carry, n)
			} else {
				take(n, "is missing")
			}
			continue
		}
		if err == nil && n.Kind == NeedFd && !n.Dir && info.Mode().IsRegular() && n.Digest != "" &&
			replaceable != nil && replaceable(n.Path, info) && !sameFile(p, info, n) {
			n.Replace = true
			take(n, "is an outdated copy")
			continue
		}
		if err != nil {
			problems = append(problems, FileProblem{Path: n.Path, Reason: FileMissing, Detail: missingDetail(n, node, err)})
			continue
		}
		want := "regular file"
		if n.Dir {
			want = "directory"
		}
		if got := fileType(info.Mode()); got != want {
			problems = append(problems, FileProblem{Path: n.Path, Reason: FileType, Detail: fmt.Sprintf(
				"%s is a %s on %s but a %s on the source: %s", n.Path, got, node, want, sameThere(n))})
			continue
		}
		if !n.Dir && n.Size >= 0 && info.Size() != n.Size {
			problems = append(problems, FileProblem{Path: n.Path, Reason: FileSize, Detail: fmt.Sprintf(
				"%s is %d bytes on %s but %d bytes on the source, and CRIU refuses to reopen a file "+
					"whose size changed: %s", n.Path, info.Size(), node, n.Size, sameThere(n))})
			continue
		}
		if n.Digest != "" && info.Size() == n.Bytes {
			if d, err := digestFile(p); err != nil || d != n.Digest {
				problems = append(problems, FileProblem{Path: n.Path, Reason: FileContent, Detail: fmt.Sprintf(
					"%s on %s has the size of the workload's but other content, and CRIU would reopen %s's: "+
						"remove it there (the move then carries the workload's) or make it the same", n.Path, node, node)})
			}
		}
	}
	sort.SliceStable(carry, func(i, j int) bool { return carry[i].Path < carry[j].Path }) // a dir before what it holds
	return problems, carry
}

// sameFile reports whether the file at p (with info) has n's size and digest.
func sameFile(p string, info fs.FileInfo, n FileNeed) bool {
	if info.Size() != n.Bytes {
		return false
	}
	d, err := digestFile(p)
	return err == nil && d == n.Digest
}

// digestFile returns the SHA-256 of the file at path, in hex.
func digestFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

func fileType(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "directory"
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

// sameThere says how to make a file on this node the one the workload had.
func sameThere(n FileNeed) string {
	switch n.Kind {
	case NeedExe, NeedMap:
		return "install the same build there, at the same path"
	case NeedCwd:
		return "create the same directory there"
	}
	if n.Dir {
		return "create the same directory there"
	}
	return "copy the same file there, at the same path"
}

func missingDetail(n FileNeed, node string, err error) string {
	why := "is missing on " + node
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case errors.Is(err, syscall.ENOTDIR):
		why += " (a parent of it is not a directory)"
	case errors.As(err, &pe):
		why = fmt.Sprintf("cannot be read on %s (%v)", node, pe.Err)
	default:
		why = fmt.Sprintf("cannot be read on %s (%v)", node, err)
	}
	switch n.Kind {
	case NeedExe:
		return fmt.Sprintf("%s %s: the workload runs it; %s", n.Path, why, sameThere(n))
	case NeedMap:
		return fmt.Sprintf("%s %s: the workload has it mapped (a library, say); %s", n.Path, why, sameThere(n))
	case NeedCwd:
		return fmt.Sprintf("directory %s %s: the workload runs in it; %s", n.Path, why, sameThere(n))
	}
	return fmt.Sprintf("%s %s: the workload has it open and CRIU reopens it by path; %s", n.Path, why, sameThere(n))
}
