package migrate

import (
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/workload"
)

// fakeInfo is a file as the fixture stat table describes it.
type fakeInfo struct {
	name string
	mode fs.FileMode
	size int64
}

func (f fakeInfo) Name() string       { return f.name }
func (f fakeInfo) Size() int64        { return f.size }
func (f fakeInfo) Mode() fs.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return f.mode.IsDir() }
func (f fakeInfo) Sys() any           { return nil }

const (
	fxChar  = fs.ModeDevice | fs.ModeCharDevice | 0o666
	fxBlock = fs.ModeDevice | 0o660
	fxDir   = fs.ModeDir | 0o755
	fxReg   = fs.FileMode(0o644)
)

// fxFiles is what the files named by the fixtures' links are. A fixture's links point
// nowhere on the test machine, so the view stats through this table instead (by the
// link's text, " (deleted)" included, as the kernel shows it).
var fxFiles = map[string]fakeInfo{
	"/dev/null":                           {mode: fxChar},
	"/dev/zero":                           {mode: fxChar},
	"/dev/full":                           {mode: fxChar},
	"/dev/random":                         {mode: fxChar},
	"/dev/urandom":                        {mode: fxChar},
	"/dev/pts/3":                          {mode: fxChar},
	"/dev/kvm":                            {mode: fxChar},
	"/dev/sda":                            {mode: fxBlock},
	"/dev/shm/posix-seg":                  {mode: fxReg, size: 4096},
	"/proc/cpuinfo":                       {mode: fxReg},
	"/proc/4002/status":                   {mode: fxReg},
	"/proc/4101/maps":                     {mode: fxReg},
	"/tmp/scratch (deleted)":              {mode: fxReg, size: 10},
	"/tmp/gone (deleted)":                 {mode: fxReg, size: 10},
	"/tmp/dir-deleted (deleted)":          {mode: fxDir},
	"/opt/app/lib/libold.so (deleted)":    {mode: fxReg, size: 5000},
	"/opt/app/bin/side (deleted)":         {mode: fxReg | 0o111, size: 7000},
	"/opt/app/bin/server":                 {mode: fxReg | 0o111, size: 123456},
	"/opt/app/lib/libfoo.so":              {mode: fxReg, size: 4096},
	"/opt/app/data/with space.db":         {mode: fxReg, size: 8192},
	"/usr/lib/x86_64-linux-gnu/libc.so.6": {mode: fxReg, size: 1922136},
	"/usr/local/bin/migshmd":              {mode: fxReg | 0o111, size: 9000000},
	"/var/lib/migshm/workloads/w1/stdout": {mode: fxReg | 0o600, size: 100},
	"/var/lib/migshm/workloads/w2/stdout": {mode: fxReg | 0o600, size: 100},
	"/var/lib/migshm/workloads/w2/stderr": {mode: fxReg | 0o600, size: 0},
	"/srv/app/data.db":                    {mode: fxReg, size: 65536},
	"/srv/app/app.log":                    {mode: fxReg, size: 777},
	"/srv/app/shared.log":                 {mode: fxReg, size: 300},
	"/srv/app":                            {mode: fxDir},
	"/":                                   {mode: fxDir},
}

// fxSegments are the segments of every fixture's IPC namespace.
var fxSegments = []workload.Segment{{Key: 0x4d494753, Shmid: 3, Size: 1 << 20}, {Shmid: 5, Size: 64 << 10}}

// fxView reads the fixture proc tree testdata/NAME.
func fxView(t *testing.T, name string) procView {
	t.Helper()
	return procView{
		root: filepath.Join("testdata", name),
		stat: func(_, target string) (fs.FileInfo, error) {
			info, ok := fxFiles[target]
			if !ok {
				t.Errorf("the fixture %s names %q, which the stat table lacks", name, target)
				return nil, fs.ErrNotExist
			}
			info.name = filepath.Base(target)
			return info, nil
		},
		segments: func(int) ([]workload.Segment, error) { return fxSegments, nil },
	}
}

// fxTree is a tree of the given pids and names, as ReadProc would have found it.
func fxTree(procs ...workload.Proc) *workload.Tree {
	return &workload.Tree{Init: procs[0], Procs: procs}
}

func TestCheckResourcesFixtures(t *testing.T) {
	type want struct {
		pid    int
		reason string
		detail []string // substrings of Detail
	}
	cases := []struct {
		name  string
		fx    string
		procs []workload.Proc
		want  []want
		inet  int // TCP and UDP sockets held
	}{
		{
			name: "movable workload",
			fx:   "proc-clean",
			procs: []workload.Proc{
				{Pid: 4200, Comm: "migshm-init"}, {Pid: 4201, Comm: "server"},
			},
			inet: 2, // a TCP listener on 0.0.0.0 and a UDP socket
		},
		{
			name: "everything that cannot move",
			fx:   "proc-blockers",
			procs: []workload.Proc{
				{Pid: 4000, Comm: "migshm-init"}, {Pid: 4001, Comm: "server"},
				{Pid: 4002, Comm: "worker"}, {Pid: 4003, Comm: "side"},
			},
			want: []want{
				{4001, "tcp-listen-address", []string{"pid 4001 (server) listens on TCP 10.213.0.11:9090", "(fd 4)", "0.0.0.0"}},
				{4001, "tcp-established", []string{
					"pid 4001 (server) has an established TCP connection 10.213.0.11:8080 -> 10.213.0.12:40112",
					"(fd 5; also held by pid 4002)", "start the workload with an address of its own (`migshm run --ip`)"}},
				{4001, "tcp-established", []string{"[::ffff:10.213.0.11]:8443 -> [::ffff:10.213.0.12]:50000", "(fd 8)"}},
				{4001, "tcp-listen-address", []string{"[fd00::11]:7070", "(fd 9)"}},
				{4001, "tcp-established", []string{"10.213.0.11:8080 -> 10.213.0.13:40999 in state CLOSE_WAIT", "(fd 11)"}},
				{4001, "io-uring", []string{"pid 4001 (server) uses io_uring (fd 14)"}},
				{4001, "tcp-bound-address", []string{"bound to 10.213.0.11:5000", "(fd 20)"}},
				{4001, "deleted-file", []string{"pid 4001 (server) maps the deleted file /opt/app/lib/libold.so; CRIU", "restart the workload"}},
				{4002, "terminal", []string{"pid 4002 (worker) has the terminal /dev/pts/3 open (fds 0, 1, 2; also held by pid 4003)", "on files"}},
				{4002, "perf-event", []string{"(fd 6)"}},
				{4002, "userfaultfd", []string{"(fd 7)"}},
				{4002, "device", []string{"the block device /dev/sda open (fd 8)"}},
				{4002, "device", []string{"the character device /dev/kvm open (fd 9)"}},
				{4002, "deleted-file", []string{"has the deleted file /tmp/scratch open (fd 10)"}},
				{4002, "proc-file", []string{"has /proc/4002/status open (fd 12)", "host pid"}},
				{4003, "tcp-established", []string{"pid 4003 (side) has an established TCP connection 192.168.1.5:22 -> 192.168.1.9:51000 (fd 3)"}},
				{4003, "deleted-file", []string{"pid 4003 (side) maps the deleted file /opt/app/bin/side; CRIU"}},
			},
		},
		{
			name:  "one process of the tree",
			fx:    "proc-blockers",
			procs: []workload.Proc{{Pid: 4000, Comm: "migshm-init"}},
		},
		{
			name:  "a process that is gone",
			fx:    "proc-blockers",
			procs: []workload.Proc{{Pid: 4999, Comm: "gone"}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in, err := inspect(fxView(t, tc.fx), fxTree(tc.procs...), nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.inet != 0 && in.InetSockets != tc.inet {
				t.Errorf("InetSockets = %d, want %d", in.InetSockets, tc.inet)
			}
			got := in.Blockers
			if len(tc.want) == 0 {
				if got != nil {
					t.Fatalf("got blockers %+v, want nil", got)
				}
				return
			}
			for i, b := range got {
				t.Logf("%d: %s", i, b.Detail)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d blockers, want %d", len(got), len(tc.want))
			}
			for i, w := range tc.want {
				b := got[i]
				if b.Pid != w.pid || b.Reason != w.reason {
					t.Errorf("blocker %d: pid %d %s, want pid %d %s", i, b.Pid, b.Reason, w.pid, w.reason)
				}
				for _, s := range w.detail {
					if !strings.Contains(b.Detail, s) {
						t.Errorf("blocker %d: detail %q lacks %q", i, b.Detail, s)
					}
				}
			}
		})
	}
}

func TestParseTCPAddr(t *testing.T) {
	cases := []struct {
		in   string
		want string
	}{
		{"0100007F:1F90", "127.0.0.1:8080"},
		{"00000000:0000", "0.0.0.0:0"},
		{"0B00D50A:2382", "10.213.0.11:9090"},
		{"00000000000000000000000001000000:17AD", "[::1]:6061"},
		{"00000000000000000000000000000000:20FB", "[::]:8443"},
		{"0000000000000000FFFF00000B00D50A:20FB", "[::ffff:10.213.0.11]:8443"},
		{"000000FD000000000000000011000000:1B9E", "[fd00::11]:7070"},
	}
	for _, tc := range cases {
		got, err := parseTCPAddr(tc.in)
		if err != nil || got.String() != tc.want {
			t.Errorf("parseTCPAddr(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007F:", "0100007G:1F90", "01007F:1F90", "0100007F:1FFFF"} {
		if got, err := parseTCPAddr(bad); err == nil {
			t.Errorf("parseTCPAddr(%q) = %v, want an error", bad, got)
		}
	}
}

func TestNodeLocal(t *testing.T) {
	for addr, want := range map[string]bool{
		"0.0.0.0": false, "::": false, "127.0.0.1": false, "127.1.2.3": false, "::1": false,
		"::ffff:127.0.0.1": false, "::ffff:0.0.0.0": false,
		"10.213.0.11": true, "fd00::11": true, "::ffff:10.0.0.1": true, "192.168.1.5": true,
	} {
		if got := nodeLocal(netip.MustParseAddr(addr)); got != want {
			t.Errorf("nodeLocal(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestParseTCPRejectsGarbage(t *testing.T) {
	for _, in := range []string{
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 notanumber 1\n",
		"   0: 0100007F:1F90 00000000:0000 ZZ 00000000:00000000 00:00000000 00000000     0        0 12 1\n",
		"   0: 0100007F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12 1\n",
	} {
		if _, err := parseTCP(strings.NewReader(in)); err == nil {
			t.Errorf("parseTCP(%q) did not fail", in)
		}
	}
}

// TestFileMaps: the mappings that name a file, with their map_files entries (bounds
// in hex without the padding maps shows).
func TestFileMaps(t *testing.T) {
	in := `55d0c8a00000-55d0c8a01000 r--p 00000000 08:01 1311                       /opt/app/bin/server
7f0000000000-7f0000001000 rw-s 00000000 00:01 3                          /SYSV4d494753 (deleted)
7f0000002000-7f0000003000 rw-p 00000000 00:00 0
7f0000004000-7f0000005000 rw-p 00000000 00:00 0                          [anon:my region]
7f0000006000-7f0000007000 r--p 00000000 08:01 99                         /data/a file with spaces.db
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
00400000-00401000 r-xp 00000000 08:01 7                                  /opt/static/bin/old
`
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "42"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "42", "maps"), []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	v := newProcView(root)
	got, err := v.fileMaps(42)
	if err != nil {
		t.Fatal(err)
	}
	type mapping struct{ mapFile, path string }
	var files []mapping
	for _, m := range got {
		files = append(files, mapping{strings.TrimPrefix(v.mapFile(42, m), root+"/42/map_files/"), m.Path})
	}
	want := []mapping{
		{"55d0c8a00000-55d0c8a01000", "/opt/app/bin/server"},
		{"7f0000000000-7f0000001000", "/SYSV4d494753 (deleted)"},
		{"7f0000006000-7f0000007000", "/data/a file with spaces.db"},
		{"400000-401000", "/opt/static/bin/old"},
	}
	if !reflect.DeepEqual(files, want) {
		t.Fatalf("got %+v\nwant %+v", files, want)
	}
	if ms, err := v.fileMaps(43); err != nil || ms != nil {
		t.Errorf("a process that is gone: %+v, %v; want none", ms, err)
	}
}

func TestKernelObject(t *testing.T) {
	for path, want := range map[string]bool{
		"/SYSV4d494753 (deleted)":   true,
		"/SYSV00000000 (deleted)":   true,
		"/memfd:jit (deleted)":      true,
		"/memfd:x":                  true,
		"/dev/zero (deleted)":       true,
		"/[aio] (deleted)":          true,
		"/anon_hugepage (deleted)":  true,
		"/SYSVconfig (deleted)":     false, // a real file that happens to be called so
		"/SYSV4d494753":             false,
		"/dev/zero":                 false,
		"/opt/app/lib.so (deleted)": false,
	} {
		if got := kernelObject(path); got != want {
			t.Errorf("kernelObject(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestAnonMemoryFixture(t *testing.T) {
	tree := fxTree(workload.Proc{Pid: 4100}, workload.Proc{Pid: 4101}, workload.Proc{Pid: 4102},
		workload.Proc{Pid: 4103}, workload.Proc{Pid: 4999})
	got, err := anonMemory(fxView(t, "proc-files"), tree)
	if err != nil {
		t.Fatal(err)
	}
	// 4100 and 4101 from smaps_rollup, 4102 from status (no smaps_rollup), the zombie
	// 4103 and the vanished 4999 nothing.
	if want := uint64(1024+20480+512) * 1024; got != want {
		t.Fatalf("anonymous memory %d, want %d", got, want)
	}
}

func TestInetSocketsWork(t *testing.T) {
	for _, tc := range []struct {
		criu, kernel string
		want         bool
	}{
		{"4.1.1", "6.18.44-amd64", false}, // SO_PASSCRED refused on inet sockets since 6.16
		{"4.1", "6.16.0", false},
		{"4.2.1", "6.18.44-amd64", true},
		{"4.10", "6.18.0", true},
		{"4.1.1", "6.12.48+deb13-amd64", true},
		{"3.17.1", "6.1.0-28-amd64", true},
		{"5.0", "7.1.0", true},
		{"", "6.18.0", true}, // an unreadable version is taken as recent
	} {
		if got := inetSocketsWork(tc.criu, tc.kernel); got != tc.want {
			t.Errorf("inetSocketsWork(%q, %q) = %v, want %v", tc.criu, tc.kernel, got, tc.want)
		}
	}
}
