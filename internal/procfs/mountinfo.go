package procfs

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Mount is one line of /proc/PID/mountinfo (proc(5)), the fields migshm uses.
type Mount struct {
	ID     int    // unique mount id (also fdinfo's mnt_id)
	Dev    string // "major:minor" of the file system
	Root   string // the directory of the file system mounted ("/" unless a bind of a subdirectory)
	Point  string // mount point, as the process sees it
	FSType string
	Source string // the mount source ("tmpfs", "/dev/sda1", ...)
}

// ParseMountinfo parses a mountinfo file: "ID PARENT MAJ:MIN ROOT POINT OPTS
// [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS", with octal escapes in paths.
func ParseMountinfo(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(f) {
			return nil, fmt.Errorf("malformed mountinfo line %q", sc.Text())
		}
		id, err := strconv.Atoi(f[0])
		if err != nil {
			return nil, fmt.Errorf("malformed mountinfo line %q", sc.Text())
		}
		m := Mount{ID: id, Dev: f[2], Root: unescape(f[3]), Point: unescape(f[4]), FSType: f[sep+1]}
		if sep+2 < len(f) {
			m.Source = unescape(f[sep+2])
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space, ...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
