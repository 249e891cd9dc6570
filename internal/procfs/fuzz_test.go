package procfs

import (
	"bytes"
	"strings"
	"testing"
)

// The /proc parsers read files of processes the daemon does not control (a workload
// may name itself anything, and its comm shows in stat): none may panic on any input.

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("4242 (shm counter) S 1 4242 4242 0 -1 4194560 95 0 0 0 3 1 0 0 20 0 1 0 1234 2293760 200 18446744073709551615"))
	f.Add([]byte("1 ((sd-pam)) R 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0"))
	f.Add([]byte("7 (a) b) Z 1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStat(b)
		if err == nil && st.Pid < 0 {
			t.Fatalf("pid %d from %q", st.Pid, b)
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	f.Add("Name:\tsh\nState:\tS (sleeping)\nTgid:\t42\nNSpid:\t42\t1\nNSsid:\t42\t1\nVmRSS:\t  1024 kB\nRssShmem:\t 10 kB\n")
	f.Add("VmRSS: x kB\n")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseStatus(strings.NewReader(s))
	})
}

func FuzzParseMeminfo(f *testing.F) {
	f.Add("MemTotal:       24576000 kB\nMemAvailable:   23000000 kB\n")
	f.Add("MemTotal: 18446744073709551615 kB\n")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseMeminfo(strings.NewReader(s))
	})
}

func FuzzParseMaps(f *testing.F) {
	f.Add("7f0000000000-7f0000001000 rw-s 00000000 00:01 5 /SYSV4d494753 (deleted)\n" +
		"55d0c0000000-55d0c0021000 r-xp 00000000 fe:00 131 /usr/bin/shm counter\n")
	f.Add("0-1 ---p 0 0:0 0\n")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := ParseMaps(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.End < m.Start {
				t.Fatalf("mapping %x-%x ends before it starts, from %q", m.Start, m.End, s)
			}
		}
	})
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add([]byte("22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n40 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n"))
	f.Add([]byte("1 2 3 4 5 6 - \\777\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseMountinfo(bytes.NewReader(b))
	})
}
