package procfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Mapping is one line of /proc/PID/maps: "start-end perms offset dev inode path".
type Mapping struct {
	Start, End uint64
	// Perms is the four letters of the permissions: r, w, x or '-', then s (shared) or
	// p (private).
	Perms  string
	Offset uint64
	Dev    string // major:minor, hex
	Inode  uint64
	// Path is what follows the inode, as the kernel shows it: a file's path (with
	// " (deleted)" if it was removed), a name such as "[heap]" or "[anon:NAME]", or ""
	// for anonymous memory. It may hold spaces.
	Path string
}

// Private reports whether the mapping is private (copy on write), not shared.
func (m Mapping) Private() bool { return m.Perms[3] == 'p' }

// Writable reports whether the mapping may be written to.
func (m Mapping) Writable() bool { return m.Perms[1] == 'w' }

// SysV reports whether the mapping is an attachment of a SysV shm segment: a shared
// mapping of "/SYSV%08x (deleted)", whose inode column is the segment's shmid.
func (m Mapping) SysV() (shmid int, key uint32, ok bool) {
	key, ok = SysVKey(m.Path)
	if !ok || m.Private() || m.Inode >= 1<<31 {
		return 0, 0, false
	}
	return int(m.Inode), key, true
}

const deletedSuffix = " (deleted)"

// pageSize divides every mapping's bounds: 4096 is the smallest page size of Linux.
const pageSize = 4096

// SysVKey reports whether path, as /proc/PID/maps or an fd link shows it, names a SysV
// shm segment: the kernel calls the file behind every segment "SYSV" and its key in
// eight hex digits, and it is never linked anywhere, so always " (deleted)".
func SysVKey(path string) (uint32, bool) {
	key, ok := strings.CutPrefix(path, "/SYSV")
	if !ok {
		return 0, false
	}
	key, ok = strings.CutSuffix(key, deletedSuffix)
	if !ok || len(key) != 8 {
		return 0, false
	}
	k, err := strconv.ParseUint(key, 16, 32)
	return uint32(k), err == nil
}

// ParseMaps parses a /proc/PID/maps listing, in its order (ascending addresses). A line
// that is not in the kernel's format is an error.
func ParseMaps(r io.Reader) ([]Mapping, error) {
	var out []Mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		m, err := parseMapping(sc.Text())
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

func parseMapping(line string) (Mapping, error) {
	var f [5]string
	rest := line
	for i := range f {
		rest = strings.TrimLeft(rest, " ")
		f[i], rest, _ = strings.Cut(rest, " ")
		if f[i] == "" {
			return Mapping{}, fmt.Errorf("bad line %q: %d fields, want at least 5", line, i)
		}
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if !ok || errors.Join(err1, err2) != nil || end < start || start%pageSize != 0 || end%pageSize != 0 {
		return Mapping{}, fmt.Errorf("bad address range %q in %q", f[0], line)
	}
	if len(f[1]) != 4 || !strings.ContainsRune("sp", rune(f[1][3])) {
		return Mapping{}, fmt.Errorf("bad perms %q in %q", f[1], line)
	}
	offset, err := strconv.ParseUint(f[2], 16, 64)
	if err != nil {
		return Mapping{}, fmt.Errorf("bad offset %q in %q", f[2], line)
	}
	if !strings.Contains(f[3], ":") {
		return Mapping{}, fmt.Errorf("bad dev %q in %q", f[3], line)
	}
	inode, err := strconv.ParseUint(f[4], 10, 64)
	if err != nil {
		return Mapping{}, fmt.Errorf("bad inode %q in %q", f[4], line)
	}
	return Mapping{Start: start, End: end, Perms: f[1], Offset: offset, Dev: f[3], Inode: inode,
		Path: strings.TrimLeft(rest, " ")}, nil
}

// ReadMaps reads /proc/PID/maps under procRoot.
func ReadMaps(procRoot string, pid int) ([]Mapping, error) {
	f, err := os.Open(path(procRoot, pid, "maps"))
	if err != nil {
		return nil, fileErr(pid, "maps", err)
	}
	defer f.Close()
	ms, err := ParseMaps(f)
	if err != nil {
		return nil, fileErr(pid, "maps", err)
	}
	return ms, nil
}
