package migrate

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/migshm/migshm/workload"
)

func TestNeededFilesFixture(t *testing.T) {
	tree := fxTree(workload.Proc{Pid: 4100, Comm: "migshm-init"}, workload.Proc{Pid: 4101, Comm: "server"},
		workload.Proc{Pid: 4102, Comm: "worker"}, workload.Proc{Pid: 4103, Comm: "zombie"},
		workload.Proc{Pid: 4999, Comm: "gone"})
	base := []FileNeed{
		{Path: "/", Kind: "cwd", Dir: true},
		{Path: "/opt/app/bin/server", Kind: "exe", Size: 123456},
		{Path: "/opt/app/data/with space.db", Kind: "map", Size: 8192},
		{Path: "/opt/app/lib/libfoo.so", Kind: "map", Size: 4096}, // also open as fd 10
		{Path: "/proc/cpuinfo", Kind: "fd"},
		{Path: "/srv/app", Kind: "fd", Dir: true},        // open as fd 5 and the cwd
		{Path: "/srv/app/app.log", Kind: "fd", Size: -1}, // open for appending only: size not checked
		{Path: "/srv/app/data.db", Kind: "fd", Size: 65536},
		{Path: "/srv/app/shared.log", Kind: "fd", Size: 300}, // appended by 4101, read-write by 4102
		{Path: "/usr/lib/x86_64-linux-gnu/libc.so.6", Kind: "map", Size: 1922136},
		{Path: "/usr/local/bin/migshmd", Kind: "exe", Size: 9000000},
	}
	withLog := append(append([]FileNeed{}, base...), FileNeed{Path: "/var/lib/migshm/workloads/w1/stdout", Kind: "fd", Size: -1})
	sortNeeds(withLog)
	cases := []struct {
		name string
		skip []string
		want []FileNeed
	}{
		{"no skip", nil, withLog},
		{"skip the workload dir", []string{"/var/lib/migshm/workloads/w1"}, base},
		{"skip with a trailing slash", []string{"/var/lib/migshm/workloads/w1/"}, base},
		{"skip the whole state dir", []string{"", "/var/lib/migshm"}, base},
		{"a prefix of a name is not a parent", []string{"/var/lib/migshm/workloads/w", "/srv/ap"}, withLog},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in, err := inspect(fxView(t, "proc-files"), tree, tc.skip)
			if err != nil {
				t.Fatal(err)
			}
			got := in.Files
			for i, n := range got {
				if !n.Dir && n.Size >= 0 && n.Bytes != n.Size {
					t.Errorf("%s: bytes %d, size %d", n.Path, n.Bytes, n.Size)
				}
				if n.Digest != "" {
					t.Errorf("%s: a digest of a file the fixture cannot hold: %s", n.Path, n.Digest)
				}
				got[i].Bytes, got[i].Mode, got[i].UID, got[i].GID = 0, 0, 0, 0 // the fixture's stat has none
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got\n%s\nwant\n%s", fmtNeeds(got), fmtNeeds(tc.want))
			}
		})
	}
}

func sortNeeds(ns []FileNeed) {
	sort.Slice(ns, func(i, j int) bool { return ns[i].Path < ns[j].Path })
}

func fmtNeeds(ns []FileNeed) string {
	var b strings.Builder
	for _, n := range ns {
		fmt.Fprintf(&b, "  %s %s size=%d dir=%v\n", n.Path, n.Kind, n.Size, n.Dir)
	}
	return b.String()
}

func TestSizeChecked(t *testing.T) {
	for flags, want := range map[uint64]bool{
		0o100000:  true,  // O_RDONLY|O_LARGEFILE
		0o100002:  true,  // O_RDWR
		0o100001:  true,  // O_WRONLY
		0o102001:  false, // O_WRONLY|O_APPEND: a log
		0o2102001: false, // ... |O_CLOEXEC
		0o102002:  true,  // O_RDWR|O_APPEND: CRIU checks
	} {
		if got := sizeChecked(flags); got != want {
			t.Errorf("sizeChecked(%#o) = %v, want %v", flags, got, want)
		}
	}
}

func TestCheckFiles(t *testing.T) {
	root := t.TempDir()
	mk := func(path string, size int) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mkdir := func(path string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, path), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk("/opt/app/bin/server", 1000)
	mk("/opt/app/lib/libfoo.so", 10)
	mk("/srv/app/app.log", 12345)
	mk("/srv/app/data.db", 4096)
	mk("/srv/app/notadir", 1)
	mk("/srv/app/same.dat", 100)
	mk("/srv/app/other.dat", 100)
	mkdir("/srv/app/cache")
	mkdir("/data")
	if err := os.Symlink("server", filepath.Join(root, "/opt/app/bin/link")); err != nil {
		t.Fatal(err)
	}

	needs := []FileNeed{
		{Path: "/opt/app/bin/server", Kind: "exe", Size: 1000},                                                              // fine
		{Path: "/opt/app/bin/link", Kind: "exe", Size: 1000},                                                                // fine, through a symlink
		{Path: "/opt/app/lib/libfoo.so", Kind: "map", Size: 4096},                                                           // size
		{Path: "/opt/app/lib/libbar.so", Kind: "map", Size: 10},                                                             // missing
		{Path: "/srv/app/app.log", Kind: "fd", Size: -1},                                                                    // fine: size not checked
		{Path: "/srv/app/data.db", Kind: "fd", Size: 8192},                                                                  // size
		{Path: "/srv/app/cache", Kind: "fd", Size: 10},                                                                      // type: a directory here
		{Path: "/srv/app/data.db/x", Kind: "fd", Size: 1},                                                                   // missing (ENOTDIR)
		{Path: "/srv/app/notadir", Kind: "cwd", Dir: true},                                                                  // type: a file here
		{Path: "/data", Kind: "cwd", Dir: true},                                                                             // fine
		{Path: "/srv/gone", Kind: "cwd", Dir: true},                                                                         // missing
		{Path: "/usr/local/bin/migshmd", Kind: "exe", Size: 9000000},                                                        // missing
		{Path: "/var/lib/app/queue", Kind: "fd", Dir: false, Size: 0},                                                       // missing: carried
		{Path: "/srv/app/same.dat", Kind: "fd", Size: 100, Bytes: 100, Digest: digestOf(make([]byte, 100))},                 // fine
		{Path: "/srv/app/other.dat", Kind: "fd", Size: 100, Bytes: 100, Digest: digestOf([]byte(strings.Repeat("x", 100)))}, // content
		{Path: "/srv/app/big.dat", Kind: "fd", Size: MaxCarryFile + 1, Bytes: MaxCarryFile + 1},                             // missing, too large
		{Path: "/srv/app/new.dat", Kind: "fd", Size: 7, Bytes: 7},                                                           // missing: carried
	}
	want := []struct {
		path, reason string
		detail       []string
	}{
		{"/opt/app/lib/libfoo.so", "size", []string{"is 10 bytes on n2 but 4096 bytes on the source", "install the same build there, at the same path"}},
		{"/opt/app/lib/libbar.so", "missing", []string{"/opt/app/lib/libbar.so is missing on n2", "mapped", "install the same build there, at the same path"}},
		{"/srv/app/data.db", "size", []string{"4096 bytes on n2 but 8192", "refuses", "copy the same file there"}},
		{"/srv/app/cache", "type", []string{"/srv/app/cache is a directory on n2 but a regular file on the source"}},
		{"/srv/app/data.db/x", "missing", []string{"/srv/app/data.db/x is missing on n2 (a parent of it is not a directory)"}},
		{"/srv/app/notadir", "type", []string{"is a regular file on n2 but a directory on the source", "create the same directory there"}},
		{"/usr/local/bin/migshmd", "missing", []string{"/usr/local/bin/migshmd is missing on n2: the workload runs it; install the same build there, at the same path"}},
		{"/srv/app/other.dat", "content", []string{"/srv/app/other.dat on n2 has the size of the workload's but other content", "remove it there"}},
		{"/srv/app/big.dat", "too-large", []string{"/srv/app/big.dat (16.0 MiB) is missing on n2", "at most 16.0 MiB each and 64.0 MiB in all", "copy it there"}},
	}
	got, carry := CheckFiles(root, "n2", needs, nil)
	var carried []string
	for _, n := range carry {
		carried = append(carried, n.Path)
	}
	if want := []string{"/srv/app/new.dat", "/srv/gone", "/var/lib/app/queue"}; !slices.Equal(carried, want) {
		t.Errorf("carried %v, want %v", carried, want)
	}
	for _, p := range got {
		t.Logf("%s %s: %s", p.Reason, p.Path, p.Detail)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Path != w.path || got[i].Reason != w.reason {
			t.Errorf("problem %d: %s %s, want %s %s", i, got[i].Path, got[i].Reason, w.path, w.reason)
		}
		for _, s := range w.detail {
			if !strings.Contains(got[i].Detail, s) {
				t.Errorf("problem %d: detail %q lacks %q", i, got[i].Detail, s)
			}
		}
	}

	// A copy the target says is the tree's own outdated one is replaced, not refused;
	// an identical one is left alone.
	problems, carry := CheckFiles(root, "n2", needs, func(p string, _ fs.FileInfo) bool {
		return p == "/srv/app/other.dat" || p == "/srv/app/same.dat"
	})
	if len(problems) != len(want)-1 || slices.ContainsFunc(problems, func(p FileProblem) bool { return p.Path == "/srv/app/other.dat" }) {
		t.Errorf("with other.dat replaceable: problems %+v", problems)
	}
	var replaced []string
	for _, n := range carry {
		if n.Replace {
			replaced = append(replaced, n.Path)
		}
	}
	if !slices.Equal(replaced, []string{"/srv/app/other.dat"}) {
		t.Errorf("replaced %v, want only /srv/app/other.dat", replaced)
	}
	if p, c := CheckFiles(root, "n2", nil, nil); p != nil || c != nil {
		t.Errorf("no needs: got %+v", p)
	}
	// The real root: this test's own binary and the root directory are there.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(exe)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"", "/"} {
		if p, c := CheckFiles(r, "n2", []FileNeed{{Path: exe, Kind: "exe", Size: st.Size()}, {Path: "/", Kind: "cwd", Dir: true}}, nil); p != nil || c != nil {
			t.Errorf("root %q: got %+v", r, p)
		}
	}
}

func digestOf(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
