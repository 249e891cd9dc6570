package procfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// Status is what migshm reads of /proc/PID/status.
type Status struct {
	Name string // the command name (comm)
	PPid int
	// NSpid is the pid in each nested PID namespace, outermost first; nil on kernels
	// older than 4.1, which do not show it.
	NSpid []int
	// NSsid is the session id in each nested PID namespace, outermost first.
	NSsid []int
	// RssAnon is the anonymous resident memory in bytes; 0 for kernel threads and
	// zombies, which have no memory of their own.
	RssAnon uint64
}

// ParseStatus parses a /proc/PID/status listing. A field migshm uses whose value does
// not parse is an error; other lines are skipped.
func ParseStatus(r io.Reader) (Status, error) {
	var st Status
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Name":
			st.Name = v
		case "PPid":
			n, err := strconv.Atoi(v)
			if err != nil {
				return Status{}, fmt.Errorf("bad PPid %q", v)
			}
			st.PPid = n
		case "NSpid":
			for _, f := range strings.Fields(v) {
				n, err := strconv.Atoi(f)
				if err != nil {
					return Status{}, fmt.Errorf("bad NSpid %q", v)
				}
				st.NSpid = append(st.NSpid, n)
			}
		case "NSsid":
			for _, f := range strings.Fields(v) {
				n, err := strconv.Atoi(f)
				if err != nil {
					return Status{}, fmt.Errorf("bad NSsid %q", v)
				}
				st.NSsid = append(st.NSsid, n)
			}
		case "RssAnon":
			n, err := parseKB(v)
			if err != nil {
				return Status{}, fmt.Errorf("bad line %q", line)
			}
			st.RssAnon = n
		}
	}
	if err := sc.Err(); err != nil {
		return Status{}, err
	}
	return st, nil
}

// ReadStatus reads /proc/PID/status under procRoot.
func ReadStatus(procRoot string, pid int) (Status, error) {
	f, err := os.Open(path(procRoot, pid, "status"))
	if err != nil {
		return Status{}, fileErr(pid, "status", err)
	}
	defer f.Close()
	st, err := ParseStatus(f)
	if err != nil {
		return Status{}, fileErr(pid, "status", err)
	}
	return st, nil
}

// parseKB parses a value of the form "N kB" into bytes.
func parseKB(v string) (uint64, error) {
	f := strings.Fields(v)
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("not a size in kB: %q", v)
	}
	n, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a size in kB: %q", v)
	}
	return n * 1024, nil
}

// ReadAnon returns the anonymous resident memory of process pid in bytes:
// smaps_rollup's "Anonymous:", or status's "RssAnon:" on kernels without smaps_rollup
// (before 4.14). A zombie or a kernel thread has none.
func ReadAnon(procRoot string, pid int) (uint64, error) {
	f, err := os.Open(path(procRoot, pid, "smaps_rollup"))
	if errors.Is(err, fs.ErrNotExist) {
		st, err := ReadStatus(procRoot, pid)
		return st.RssAnon, err
	}
	if err != nil {
		return 0, fileErr(pid, "smaps_rollup", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		v, ok := strings.CutPrefix(line, "Anonymous:")
		if !ok {
			continue
		}
		n, err := parseKB(v)
		if err != nil {
			return 0, fmt.Errorf("pid %d: smaps_rollup: bad line %q", pid, line)
		}
		return n, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fileErr(pid, "smaps_rollup", err)
	}
	return 0, nil
}

// Meminfo is what migshm reads of /proc/meminfo, in bytes.
type Meminfo struct {
	MemTotal     uint64
	MemAvailable uint64 // 0 on kernels older than 3.14, which do not show it
}

// ParseMeminfo parses /proc/meminfo, whose sizes are in kB. Lines that are not
// "Key: N ..." are skipped; a listing without MemTotal is an error.
func ParseMeminfo(r io.Reader) (Meminfo, error) {
	var m Meminfo
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		f := strings.Fields(v)
		if !ok || len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "MemTotal":
			m.MemTotal = n * 1024
		case "MemAvailable":
			m.MemAvailable = n * 1024
		}
	}
	if err := sc.Err(); err != nil {
		return Meminfo{}, err
	}
	if m.MemTotal == 0 {
		return Meminfo{}, errors.New("no MemTotal")
	}
	return m, nil
}

// ReadMeminfo reads a meminfo file (normally /proc/meminfo).
func ReadMeminfo(file string) (Meminfo, error) {
	f, err := os.Open(file)
	if err != nil {
		return Meminfo{}, err
	}
	defer f.Close()
	m, err := ParseMeminfo(f)
	if err != nil {
		return Meminfo{}, fmt.Errorf("%s: %w", file, err)
	}
	return m, nil
}
