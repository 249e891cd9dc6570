package procfs

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

const fxRoot = "testdata/proc"

func fxOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestListPids(t *testing.T) {
	got, err := ListPids(fxRoot)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 4242, 4300, 4400}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v (self, uptime, sys and meminfo are not pids)", got, want)
	}
	if _, err := ListPids(filepath.Join(t.TempDir(), "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing proc root: got %v, want ErrNotExist", err)
	}
	// The real thing lists this process.
	pids, err := ListPids("/proc")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range pids {
		found = found || p == os.Getpid()
	}
	if !found {
		t.Errorf("/proc: own pid %d not among %d pids", os.Getpid(), len(pids))
	}
}

// fullStat is a stat line with every field, as the kernel writes it.
func fullStat(head string) string {
	return head + " 4242 4242 0 -1 4194560 100 0 0 0 11 22 0 0 20 0 1 0 987654 1234 56 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n"
}

func TestParseStat(t *testing.T) {
	cases := []struct {
		in   string
		want Stat
	}{
		{fullStat("4242 (sleep) S 4241"), Stat{Pid: 4242, PPid: 4241, Comm: "sleep", State: 'S', UTime: 11, STime: 22, StartTime: 987654}},
		// comm may hold spaces and parentheses: the fields follow the last ')'.
		{fullStat("7 (a (b) c) T 1"), Stat{Pid: 7, PPid: 1, Comm: "a (b) c", State: 'T', UTime: 11, STime: 22, StartTime: 987654}},
		{fullStat("8 (x) y) t 2"), Stat{Pid: 8, PPid: 2, Comm: "x) y", State: 't', UTime: 11, STime: 22, StartTime: 987654}},
		{fullStat("4242 (a b) c) S 1"), Stat{Pid: 4242, PPid: 1, Comm: "a b) c", State: 'S', UTime: 11, STime: 22, StartTime: 987654}},
		{fullStat("9 () Z 1"), Stat{Pid: 9, PPid: 1, Comm: "", State: 'Z', UTime: 11, STime: 22, StartTime: 987654}},
	}
	for _, tc := range cases {
		got, err := ParseStat([]byte(tc.in))
		if err != nil || got != tc.want {
			t.Errorf("ParseStat(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if got.CPUTicks() != got.UTime+got.STime {
			t.Errorf("CPUTicks() = %d", got.CPUTicks())
		}
	}
	for _, bad := range []string{
		"", "12 sleep S 1", "x (a) S 1", "12 (a) S", "12 (a) S x",
		"4242 (x) S 1",                 // short: no starttime
		"13 (short) S 1 2 3\n",         // short
		"12 (no close paren S 1 2 3\n", // no ')'
		"14 (x) S 1 14 14 0 -1 0 0 0 0 0 abc 5 0 0 0 0 0 0 0 0 0\n", // utime not a number
		fullStat("15 (x) SS 1"),                                    // state of two letters
		fullStat("16 (x) S one"),                                   // ppid not a number
		strings.Replace(fullStat("17 (x) S 1"), "987654", "-1", 1), // starttime not a number
	} {
		if got, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) = %+v, want an error", bad, got)
		}
	}
}

func TestReadStat(t *testing.T) {
	got, err := ReadStat(fxRoot, 4242)
	want := Stat{Pid: 4242, Comm: "my (weird) proc) x", State: 'S', PPid: 4200, UTime: 250, STime: 50, StartTime: 987654}
	if err != nil || got != want {
		t.Fatalf("ReadStat(4242) = %+v, %v; want %+v", got, err, want)
	}
	if st, err := ReadStat(fxRoot, 4999); !errors.Is(err, ErrNoProcess) || st != (Stat{}) {
		t.Errorf("ReadStat of a missing pid = %+v, %v; want ErrNoProcess", st, err)
	}
	// The real thing: this process runs, and started after boot.
	self, err := ReadStat("/proc", os.Getpid())
	if err != nil || self.Pid != os.Getpid() || self.PPid != os.Getppid() || self.StartTime == 0 {
		t.Errorf("ReadStat(/proc, self) = %+v, %v", self, err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "5"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "5", "stat"), []byte("5 (x) S 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadStat(root, 5); err == nil || errors.Is(err, ErrNoProcess) || !strings.HasPrefix(err.Error(), "pid 5: stat: ") {
		t.Errorf("ReadStat of a short stat = %v, want an error naming pid and file, not ErrNoProcess", err)
	}
}

func TestReadTaskStates(t *testing.T) {
	for _, tc := range []struct {
		pid  int
		want string
	}{
		{4242, "ST"}, // the second thread is stopped
		{4300, "Z"},
	} {
		if got, err := ReadTaskStates(fxRoot, tc.pid); err != nil || got != tc.want {
			t.Errorf("ReadTaskStates(%d) = %q, %v; want %q", tc.pid, got, err, tc.want)
		}
	}
	if _, err := ReadTaskStates(fxRoot, 4999); !errors.Is(err, ErrNoProcess) {
		t.Errorf("a missing pid: %v, want ErrNoProcess", err)
	}
	// A thread that exits while the states are read is left out.
	root := t.TempDir()
	for _, tid := range []string{"10", "11"} {
		if err := os.MkdirAll(filepath.Join(root, "10", "task", tid), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "10", "task", "10", "stat"), []byte(fullStat("10 (x) R 1")), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadTaskStates(root, 10); err != nil || got != "R" {
		t.Errorf("with a thread gone: %q, %v; want R", got, err)
	}
	self, err := ReadTaskStates("/proc", os.Getpid())
	if err != nil || len(self) == 0 || strings.ContainsAny(self, "TtZ") {
		t.Errorf("ReadTaskStates(/proc, self) = %q, %v", self, err)
	}
}

// TestFileErr: a process reaped after its file was opened fails the read with ESRCH,
// which means gone, as a missing file does; anything else is an error of the file.
func TestFileErr(t *testing.T) {
	reaped := &fs.PathError{Op: "read", Path: "/proc/42/status", Err: syscall.ESRCH}
	if err := fileErr(42, "status", reaped); !errors.Is(err, ErrNoProcess) || !errors.Is(err, syscall.ESRCH) {
		t.Errorf("fileErr(ESRCH) = %v, want it to wrap ErrNoProcess and ESRCH", err)
	}
	missing := &fs.PathError{Op: "open", Path: "/proc/42/maps", Err: syscall.ENOENT}
	if err := fileErr(42, "maps", missing); !errors.Is(err, ErrNoProcess) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("fileErr(ENOENT) = %v, want it to wrap ErrNoProcess and ErrNotExist", err)
	}
	denied := &fs.PathError{Op: "open", Path: "/proc/42/maps", Err: syscall.EACCES}
	if err := fileErr(42, "maps", denied); errors.Is(err, ErrNoProcess) || !errors.Is(err, fs.ErrPermission) {
		t.Errorf("fileErr(EACCES) = %v, want ErrPermission and not ErrNoProcess", err)
	}
	other := &fs.PathError{Op: "read", Path: "/proc/42/maps", Err: syscall.EIO}
	err := fileErr(42, "maps", other)
	if errors.Is(err, ErrNoProcess) || !errors.Is(err, syscall.EIO) {
		t.Errorf("fileErr(EIO) = %v, want EIO and not ErrNoProcess", err)
	}
	if !strings.HasPrefix(err.Error(), "pid 42: maps: ") {
		t.Errorf("fileErr(EIO) = %q, want it to name pid and file", err)
	}
}

func TestParseMaps(t *testing.T) {
	got, err := ParseMaps(fxOpen(t, "testdata/maps/kinds.maps"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mapping{
		{Start: 0x5610f2f7c000, End: 0x5610f2f7d000, Perms: "r--p", Dev: "fe:00", Inode: 9978145, Path: "/tmp/explore/shmbench"},
		{Start: 0x5610f2f80000, End: 0x5610f2f81000, Perms: "rw-p", Offset: 0x3000, Dev: "fe:00", Inode: 9978145, Path: "/tmp/explore/shmbench"},
		{Start: 0x5610f5f78000, End: 0x5610f5f99000, Perms: "rw-p", Dev: "00:00", Path: "[heap]"},
		{Start: 0x7f4a28200000, End: 0x7f4a28a00000, Perms: "rw-s", Dev: "00:01", Path: "/SYSV4d494755 (deleted)"},
		{Start: 0x7f4a28a00000, End: 0x7f4a29200000, Perms: "rw-p", Dev: "00:00"},
		{Start: 0x7f4a29200000, End: 0x7f4a29300000, Perms: "r--s", Dev: "00:01", Inode: 32769, Path: "/SYSV00000000 (deleted)"},
		{Start: 0x7f4a29300000, End: 0x7f4a29301000, Perms: "rw-s", Dev: "00:05", Inode: 12, Path: "/SYSV4d494755"},
		{Start: 0x7f4a29301000, End: 0x7f4a29302000, Perms: "rw-s", Dev: "00:05", Inode: 13, Path: "/dev/shm/SYSV4d494755 (deleted)"},
		{Start: 0x7f4a29302000, End: 0x7f4a29303000, Perms: "rw-p", Dev: "00:01", Inode: 14, Path: "/SYSV4d494755 (deleted)"},
		{Start: 0x7f4a29303000, End: 0x7f4a29304000, Perms: "rw-p", Dev: "00:00"},
		{Start: 0x7f4a29304000, End: 0x7f4a29305000, Perms: "rw-p", Dev: "00:00", Path: "[anon:my region]"},
		{Start: 0x7f4a29305000, End: 0x7f4a29306000, Perms: "r--p", Dev: "08:01", Inode: 99, Path: "/data/a file with spaces.db"},
		{Start: 0x7f4a29306000, End: 0x7f4a29307000, Perms: "rw-s", Dev: "00:01", Inode: 1 << 31, Path: "/SYSV00000001 (deleted)"},
		{Start: 0x7ffda3c54000, End: 0x7ffda3c75000, Perms: "rw-p", Dev: "00:00", Path: "[stack]"},
		{Start: 0x7ffda3dd7000, End: 0x7ffda3ddd000, Perms: "r--p", Dev: "00:00", Path: "[vvar]"},
		{Start: 0xffffffffff600000, End: 0xffffffffff601000, Perms: "--xp", Dev: "00:00", Path: "[vsyscall]"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d mappings, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: got %+v, want %+v", i+1, got[i], want[i])
		}
	}
	// Private, Writable and SysV: only shared mappings of "/SYSV%08x (deleted)" with a
	// shmid that fits are attachments.
	type sysv struct {
		shmid int
		key   uint32
		ok    bool
	}
	attached := map[int]sysv{3: {0, 0x4d494755, true}, 5: {32769, 0, true}}
	for i, m := range got {
		shmid, key, ok := m.SysV()
		if w := attached[i]; (sysv{shmid, key, ok}) != w {
			t.Errorf("line %d (%s): SysV() = %d %#x %v, want %+v", i+1, m.Path, shmid, key, ok, w)
		}
	}
	if !got[1].Private() || !got[1].Writable() || got[0].Writable() || got[3].Private() || got[5].Writable() {
		t.Errorf("Private/Writable wrong for %+v", got[:6])
	}
}

func TestParseMapsErrors(t *testing.T) {
	for _, bad := range []string{
		"7f4a28200000 rw-p 00000000 00:00 0",               // no range
		"7f4a28200000-7f4a28a00000 rw-p",                   // short
		"7f4a28200000-7f4a28a00000 rwxpq 00000000 00:00 0", // perms
		"7f4a28200000-7f4a28a00000 rwxq 00000000 00:00 0",  // neither shared nor private
		"7f4a28a00000-7f4a28200000 rw-p 00000000 00:00 0",  // end before start
		"zz-7f4a28a00000 rw-p 00000000 00:00 0",            // not hex
		"7f4a28200001-7f4a28a00000 rw-p 00000000 00:00 0",  // not page aligned
		"7f4a28200000-7f4a28a00000 rw-p 0000zz00 00:00 0",  // offset
		"7f4a28200000-7f4a28a00000 rw-p 00000000 0000 0",   // dev
		"7f4a28200000-7f4a28a00000 rw-p 00000000 00:00 -1", // inode
		"", // empty
	} {
		if _, err := ParseMaps(strings.NewReader(bad + "\n")); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	_, err := ParseMaps(fxOpen(t, "testdata/maps/badinode.maps"))
	if err == nil || !strings.Contains(err.Error(), `bad inode "x9"`) {
		t.Errorf("badinode.maps: got %v, want a bad inode error", err)
	}
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader("7f000-80000 rw-s 00000000 00:01 3 /SYSV00000001 (deleted)\n"), errReader{boom})
	if _, err := ParseMaps(r); !errors.Is(err, boom) {
		t.Errorf("got %v, want the reader's error", err)
	}
}

func TestSysVKey(t *testing.T) {
	for path, want := range map[string]uint32{
		"/SYSV4d494753 (deleted)": 0x4d494753,
		"/SYSV00000000 (deleted)": 0,
		"/SYSVFFFFFFFF (deleted)": 0xffffffff,
	} {
		if got, ok := SysVKey(path); !ok || got != want {
			t.Errorf("SysVKey(%q) = %#x, %v; want %#x", path, got, ok, want)
		}
	}
	for _, path := range []string{
		"/SYSV4d494753", "/SYSVconfig (deleted)", "/SYSV4d49475 (deleted)", "/SYSV4d4947531 (deleted)",
		"/SYSV+d494753 (deleted)", "/srv/SYSV00000000 (deleted)", "/SYSV", "", "/SYSV0x494753 (deleted)",
	} {
		if got, ok := SysVKey(path); ok {
			t.Errorf("SysVKey(%q) = %#x, true; want not SysV", path, got)
		}
	}
}

func TestReadMaps(t *testing.T) {
	ms, err := ReadMaps(fxRoot, 4242)
	if err != nil || len(ms) != 24 {
		t.Fatalf("ReadMaps(4242) = %d mappings, %v; want 24", len(ms), err)
	}
	if _, err := ReadMaps(fxRoot, 4300); !errors.Is(err, ErrNoProcess) {
		t.Errorf("no maps file: %v, want ErrNoProcess", err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "7"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("testdata/maps/badinode.maps")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "7", "maps"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMaps(root, 7); err == nil || errors.Is(err, ErrNoProcess) || !strings.HasPrefix(err.Error(), "pid 7: maps: bad inode") {
		t.Errorf("bad maps: %v, want an error naming pid, file and inode", err)
	}
	// The real thing: this process maps its own binary.
	self, err := ReadMaps("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range self {
		found = found || m.Path == exe
	}
	if !found {
		t.Errorf("/proc/self/maps does not map %s: %+v", exe, self)
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		file    string
		want    Status
		wantErr string // substring of the error; empty means success
	}{
		{file: "nested.status", want: Status{Name: "shmcounter", PPid: 4200, NSpid: []int{4242, 7}, NSsid: []int{4242, 7}}},
		{file: "host.status", want: Status{Name: "sleep", PPid: 1, NSpid: []int{100}, NSsid: []int{100}}},
		{file: "old.status", want: Status{Name: "sleep", PPid: 1}}, // a kernel without NSpid
		{file: "bad.status", wantErr: "bad NSpid"},
		{file: "badppid.status", wantErr: `bad PPid "nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := ParseStatus(fxOpen(t, filepath.Join("testdata/status", tt.file)))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if _, err := ParseStatus(strings.NewReader("Name:\tx\nRssAnon:\tlots kB\n")); err == nil {
		t.Error("bad RssAnon parsed")
	}
	boom := errors.New("boom")
	if _, err := ParseStatus(errReader{boom}); !errors.Is(err, boom) {
		t.Errorf("got %v, want the reader's error", err)
	}
}

func TestReadStatus(t *testing.T) {
	got, err := ReadStatus(fxRoot, 4400)
	if want := (Status{Name: "oldkernel", PPid: 1, NSpid: []int{4400}, RssAnon: 512 << 10}); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ReadStatus(4400) = %+v, %v; want %+v", got, err, want)
	}
	if _, err := ReadStatus(fxRoot, 4999); !errors.Is(err, ErrNoProcess) {
		t.Errorf("missing pid: %v, want ErrNoProcess", err)
	}
	self, err := ReadStatus("/proc", os.Getpid())
	if err != nil || self.PPid != os.Getppid() || len(self.NSpid) == 0 || self.NSpid[len(self.NSpid)-1] != os.Getpid() || self.RssAnon == 0 {
		t.Errorf("ReadStatus(/proc, self) = %+v, %v", self, err)
	}
}

func TestReadAnon(t *testing.T) {
	for _, tc := range []struct {
		pid  int
		want uint64
	}{
		{4242, 20480 << 10}, // smaps_rollup
		{4300, 0},           // a zombie: no Anonymous line
		{4400, 512 << 10},   // no smaps_rollup: status RssAnon
	} {
		if got, err := ReadAnon(fxRoot, tc.pid); err != nil || got != tc.want {
			t.Errorf("ReadAnon(%d) = %d, %v; want %d", tc.pid, got, err, tc.want)
		}
	}
	if _, err := ReadAnon(fxRoot, 4999); !errors.Is(err, ErrNoProcess) {
		t.Errorf("missing pid: %v, want ErrNoProcess", err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "3"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "3", "smaps_rollup"), []byte("Anonymous: 12 MB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAnon(root, 3); err == nil || !strings.Contains(err.Error(), "pid 3") {
		t.Errorf("bad Anonymous line: %v, want an error naming the pid", err)
	}
	if n, err := ReadAnon("/proc", os.Getpid()); err != nil || n == 0 {
		t.Errorf("ReadAnon(/proc, self) = %d, %v", n, err)
	}
}

func TestReadMeminfo(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name, text   string
		avail, total uint64
		err          bool
	}{
		{"no MemAvailable", "MemTotal: 1000 kB\nMemFree: 10 kB\n", 0, 1000 * 1024, false},
		{"no MemTotal", "MemFree: 10 kB\nMemAvailable: 20 kB\n", 0, 0, true},
		{"empty", "", 0, 0, true},
		{"garbage total", "MemTotal: lots kB\n", 0, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if err := os.WriteFile(p, []byte(tt.text), 0o644); err != nil {
				t.Fatal(err)
			}
			m, err := ReadMeminfo(p)
			if (err != nil) != tt.err || m.MemAvailable != tt.avail || m.MemTotal != tt.total {
				t.Errorf("ReadMeminfo = %+v, %v; want %d, %d, error %v", m, err, tt.avail, tt.total, tt.err)
			}
		})
	}
	m, err := ReadMeminfo(filepath.Join(fxRoot, "meminfo"))
	if want := (Meminfo{MemTotal: 16318412 << 10, MemAvailable: 12000000 << 10}); err != nil || m != want {
		t.Errorf("fixture: %+v, %v; want %+v", m, err, want)
	}
	if _, err := ReadMeminfo(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if m, err := ReadMeminfo("/proc/meminfo"); err != nil || m.MemTotal == 0 || m.MemAvailable > m.MemTotal {
		t.Errorf("/proc/meminfo: %+v %v", m, err)
	}
}

func TestParseMountinfo(t *testing.T) {
	in := `22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:4 net:[4026532301] /run/netns/migshm-n1 rw shared:5 - nsfs nsfs rw
40 22 0:40 / /mnt/with\040space rw - tmpfs tmpfs rw
41 22 0:41 / /proc rw,nosuid - proc proc rw
42 22 254:0 /var/lib/x/fs/n1/tmp /tmp rw - ext4 /dev/vda rw
`
	got, err := ParseMountinfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{ID: 22, Dev: "0:21", Root: "/", Point: "/", FSType: "ext4", Source: "/dev/vda"},
		{ID: 35, Dev: "0:4", Root: "net:[4026532301]", Point: "/run/netns/migshm-n1", FSType: "nsfs", Source: "nsfs"},
		{ID: 40, Dev: "0:40", Root: "/", Point: "/mnt/with space", FSType: "tmpfs", Source: "tmpfs"},
		{ID: 41, Dev: "0:41", Root: "/", Point: "/proc", FSType: "proc", Source: "proc"},
		{ID: 42, Dev: "254:0", Root: "/var/lib/x/fs/n1/tmp", Point: "/tmp", FSType: "ext4", Source: "/dev/vda"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	for _, bad := range []string{"22 1 0:21 / / rw shared:1 ext4 /dev/vda rw\n", "x 1 0:21 / / rw - ext4 /dev/vda rw\n", "22 1 0:21 / / rw -\n"} {
		if _, err := ParseMountinfo(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
