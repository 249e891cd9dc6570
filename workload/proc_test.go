package workload

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/migshm/migshm/internal/procfs"
	"golang.org/x/sys/unix"
)

// The fixture proc tree testdata/proc/tree1 holds:
//
//	1     systemd      host init, host PID and IPC namespaces
//	4000  migshm-init  workload init (NSpid 4000 1), parent 1
//	4001  shmcounter   child of 4000 (NSpid 4001 2), shmids 3 and 5 attached
//	4002  shmcounter   child of 4000 (NSpid 4002 3), shmid 3 attached
//	5000  sleep        host PID namespace, but the workload's IPC namespace
//
// and a file "uptime" that is not a process. ns/pid and ns/ipc are dangling symlinks
// to "pid:[N]" and "ipc:[N]", as the kernel shows them.
const (
	fxTree1      = "testdata/proc/tree1"
	fxHostPidNS  = "pid:[4026531836]"
	fxHostIPCNS  = "ipc:[4026531839]"
	fxWorkPidNS  = "pid:[4026532301]"
	fxWorkIPCNS  = "ipc:[4026532300]"
	fxKeyMIGS    = 0x4d494753 // "MIGS"
	fxKeyedShmid = 3
	fxPrivShmid  = 5
)

// TestSysVAttachments: the segments of a maps listing (procfs parses it).
func TestSysVAttachments(t *testing.T) {
	tests := []struct {
		file string
		want []Attachment
	}{
		// Listed in address order; shmid 3 is mapped twice and reported once.
		{"sysv-two.maps", []Attachment{{Shmid: fxPrivShmid, Key: 0}, {Shmid: fxKeyedShmid, Key: fxKeyMIGS}}},
		// Shared mappings of /dev/zero and /dev/shm are not SysV.
		{"none.maps", nil},
		// /SYSVfoo/bar, a bare /SYSV and /srv/SYSV00000000 are files, not segments.
		{"tricky.maps", []Attachment{{Shmid: 9, Key: 0xabcd}}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata/proc/maps", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			maps, err := procfs.ParseMaps(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if got := attachments(maps); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestProcReadFixture(t *testing.T) {
	tests := []struct {
		pid  int
		want Proc
	}{
		{1, Proc{Pid: 1, PPid: 0, Comm: "systemd", NSpid: []int{1}, Sid: 1, PidNS: fxHostPidNS, IPCNS: fxHostIPCNS}},
		{4000, Proc{Pid: 4000, PPid: 1, Comm: "migshm-init", NSpid: []int{4000, 1}, Sid: 1, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS}},
		{4001, Proc{Pid: 4001, PPid: 4000, Comm: "shmcounter", NSpid: []int{4001, 2}, Sid: 2, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS,
			SysV: []Attachment{{Shmid: fxPrivShmid}, {Shmid: fxKeyedShmid, Key: fxKeyMIGS}}}},
		{4002, Proc{Pid: 4002, PPid: 4000, Comm: "shmcounter", NSpid: []int{4002, 3}, Sid: 3, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS,
			SysV: []Attachment{{Shmid: fxKeyedShmid, Key: fxKeyMIGS}}}},
		{5000, Proc{Pid: 5000, PPid: 1, Comm: "sleep", NSpid: []int{5000}, Sid: 5000, PidNS: fxHostPidNS, IPCNS: fxWorkIPCNS}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.pid), func(t *testing.T) {
			got, err := ReadProc(fxTree1, tt.pid)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// fxCopyTree copies a fixture proc tree (keeping its symlinks) into a fresh directory.
func fxCopyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		default:
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(to, b, 0o644)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestProcReadErrors(t *testing.T) {
	tests := []struct {
		name      string
		mutate    func(t *testing.T, dir string) // dir is the proc dir of pid 4001
		noProcess bool                           // want errors.Is(err, ErrNoProcess)
		wantErr   string
	}{
		{name: "missing pid", mutate: func(t *testing.T, dir string) { fxMustRemoveAll(t, dir) }, noProcess: true},
		// A process that exits between reading status and reading its namespaces.
		{name: "gone before ns", mutate: func(t *testing.T, dir string) { fxMustRemoveAll(t, filepath.Join(dir, "ns")) }, noProcess: true},
		{name: "gone before maps", mutate: func(t *testing.T, dir string) { fxMustRemoveAll(t, filepath.Join(dir, "maps")) }, noProcess: true},
		{name: "no NSpid", mutate: func(t *testing.T, dir string) {
			fxCopyFile(t, "testdata/proc/status/old.status", filepath.Join(dir, "status"))
		}, wantErr: "pid 4001: status: no NSpid line"},
		{name: "bad maps", mutate: func(t *testing.T, dir string) {
			fxCopyFile(t, "testdata/proc/maps/badinode.maps", filepath.Join(dir, "maps"))
		}, wantErr: "pid 4001: maps: bad inode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fxCopyTree(t, fxTree1)
			tt.mutate(t, filepath.Join(root, "4001"))
			_, err := ReadProc(root, 4001)
			if err == nil {
				t.Fatal("no error")
			}
			if got := errors.Is(err, ErrNoProcess); got != tt.noProcess {
				t.Errorf("errors.Is(%v, ErrNoProcess) = %v, want %v", err, got, tt.noProcess)
			}
			if tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
	t.Run("unknown pid in fixture", func(t *testing.T) {
		_, err := ReadProc(fxTree1, 4003)
		if !errors.Is(err, ErrNoProcess) {
			t.Fatalf("got %v, want ErrNoProcess", err)
		}
		if !strings.Contains(err.Error(), "4003") {
			t.Errorf("error %q does not name the pid", err)
		}
	})
}

func fxMustRemoveAll(t *testing.T, path string) {
	t.Helper()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
}

func fxCopyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func fxPidsOf(ps []Proc) []int {
	var out []int
	for _, p := range ps {
		out = append(out, p.Pid)
	}
	return out
}

func TestProcReadAll(t *testing.T) {
	procs, hidden, err := ReadAll(fxTree1)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 4000, 4001, 4002, 5000}; !reflect.DeepEqual(fxPidsOf(procs), want) {
		t.Errorf("read pids %v, want %v", fxPidsOf(procs), want)
	}
	if len(hidden) != 0 {
		t.Errorf("hidden %v, want none", hidden)
	}
	for _, p := range procs {
		want, err := ReadProc(fxTree1, p.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(p, want) {
			t.Errorf("ReadAll gave %+v, ReadProc %+v", p, want)
		}
	}
}

func TestProcReadAllExitedAndGarbage(t *testing.T) {
	t.Run("exited", func(t *testing.T) {
		root := fxCopyTree(t, fxTree1)
		// 4002 exited after the listing: its directory has lost its files.
		fxMustRemoveAll(t, filepath.Join(root, "4002", "status"))
		procs, hidden, err := ReadAll(root)
		if err != nil {
			t.Fatal(err)
		}
		if want := []int{1, 4000, 4001, 5000}; !reflect.DeepEqual(fxPidsOf(procs), want) {
			t.Errorf("read pids %v, want %v", fxPidsOf(procs), want)
		}
		if len(hidden) != 0 {
			t.Errorf("hidden %v, want none", hidden)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		root := fxCopyTree(t, fxTree1)
		fxCopyFile(t, "testdata/proc/status/bad.status", filepath.Join(root, "5000", "status"))
		if _, _, err := ReadAll(root); err == nil || !strings.Contains(err.Error(), "pid 5000") {
			t.Fatalf("got %v, want an error about pid 5000", err)
		}
	})
}

// A process whose namespaces the reader may not see is reported hidden. The read runs
// on a thread without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that root, too, obeys
// the mode bits of the fixture (as the kernel makes it obey the ptrace checks on a
// non-dumpable process's ns links): the test runs as root and unprivileged alike.
func TestProcReadAllHidden(t *testing.T) {
	root := fxCopyTree(t, fxTree1)
	ns := filepath.Join(root, "4002", "ns")
	if err := os.Chmod(ns, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(ns, 0o755) })
	var procs []Proc
	var hidden []int
	var err error
	withoutDAC(t, func() { procs, hidden, err = ReadAll(root) })
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 4000, 4001, 5000}; !reflect.DeepEqual(fxPidsOf(procs), want) {
		t.Errorf("read pids %v, want %v", fxPidsOf(procs), want)
	}
	if want := []int{4002}; !reflect.DeepEqual(hidden, want) {
		t.Errorf("hidden %v, want %v", hidden, want)
	}
}

// withoutDAC runs fn on an OS thread of its own whose effective capabilities lack
// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (capabilities belong to a thread). The
// thread is never given back: it ends with fn's goroutine, and its capabilities with it.
func withoutDAC(t *testing.T, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the runtime ends the thread with us
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		for _, c := range []uint{unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH} {
			data[c/32].Effective &^= 1 << (c % 32)
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("drop the DAC capabilities: %v", err)
	}
}

// Synthetic processes for FindTree. Namespaces: host (pid fxHostPidNS, ipc fxHostIPCNS),
// workload W (init 4000), and a nested PID namespace N inside W (init 4010).
func fxSynthetic() []Proc {
	const nestedPidNS = "pid:[4026532400]"
	seg := func(id int, key uint32) []Attachment { return []Attachment{{Shmid: id, Key: key}} }
	return []Proc{
		{Pid: 1, PPid: 0, Comm: "systemd", NSpid: []int{1}, PidNS: fxHostPidNS, IPCNS: fxHostIPCNS},
		{Pid: 2, PPid: 0, Comm: "kthreadd", NSpid: []int{2}, PidNS: fxHostPidNS, IPCNS: fxHostIPCNS},
		{Pid: 3900, PPid: 1, Comm: "migshmd", NSpid: []int{3900}, PidNS: fxHostPidNS, IPCNS: fxHostIPCNS},
		{Pid: 4000, PPid: 3900, Comm: "migshm-init", NSpid: []int{4000, 1}, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS},
		{Pid: 4001, PPid: 4000, Comm: "shmcounter", NSpid: []int{4001, 2}, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS,
			SysV: []Attachment{{Shmid: 7, Key: fxKeyMIGS}, {Shmid: 3, Key: 0}}},
		{Pid: 4002, PPid: 4001, Comm: "worker", NSpid: []int{4002, 3}, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS,
			SysV: seg(7, fxKeyMIGS)},
		// A grandchild whose parent exited: adopted by the workload's init.
		{Pid: 4005, PPid: 4000, Comm: "orphan", NSpid: []int{4005, 6}, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS,
			SysV: seg(3, 0)},
		// A nested PID namespace inside the workload.
		{Pid: 4010, PPid: 4001, Comm: "nested-init", NSpid: []int{4010, 11, 1}, PidNS: nestedPidNS, IPCNS: fxWorkIPCNS},
		{Pid: 4011, PPid: 4010, Comm: "nested-child", NSpid: []int{4011, 12, 2}, PidNS: nestedPidNS, IPCNS: fxWorkIPCNS,
			SysV: seg(12, 0x1234)},
		// A host process.
		{Pid: 5000, PPid: 1, Comm: "sleep", NSpid: []int{5000}, PidNS: fxHostPidNS, IPCNS: fxHostIPCNS},
		// Entered the workload's PID namespace with setns: its parent is a host process,
		// so no ancestor is the namespace's init.
		{Pid: 6000, PPid: 5999, Comm: "nsenter", NSpid: []int{6000}, PidNS: fxHostPidNS, IPCNS: fxHostIPCNS},
		{Pid: 6001, PPid: 6000, Comm: "sh", NSpid: []int{6001, 20}, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS},
		// Its parent is not in the listing at all.
		{Pid: 7001, PPid: 7000, Comm: "lost", NSpid: []int{7001, 2}, PidNS: "pid:[4026532500]", IPCNS: "ipc:[4026532501]"},
	}
}

func TestFindTree(t *testing.T) {
	workload := []int{4000, 4001, 4002, 4005, 4010, 4011}
	tests := []struct {
		name     string
		pid      int
		wantInit int
		wantPids []int
	}{
		{"from the init", 4000, 4000, workload},
		{"from a child", 4001, 4000, workload},
		{"from a grandchild", 4002, 4000, workload},
		{"from an orphan adopted by the init", 4005, 4000, workload},
		// From inside the nested namespace, the tree is that namespace's.
		{"from a nested namespace", 4011, 4010, []int{4010, 4011}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tree, err := FindTree(fxSynthetic(), tt.pid)
			if err != nil {
				t.Fatal(err)
			}
			if tree.Init.Pid != tt.wantInit {
				t.Errorf("init %d, want %d", tree.Init.Pid, tt.wantInit)
			}
			if got := fxPidsOf(tree.Procs); !reflect.DeepEqual(got, tt.wantPids) {
				t.Errorf("tree %v, want %v", got, tt.wantPids)
			}
		})
	}
}

func TestFindTreeErrors(t *testing.T) {
	tests := []struct {
		name    string
		all     []Proc
		pid     int
		is      error  // want errors.Is(err, is), if not nil
		wantErr string // substring of the error
	}{
		{name: "host process", all: fxSynthetic(), pid: 5000, is: ErrNotInPidNS, wantErr: "pid 5000 (sleep)"},
		{name: "host init", all: fxSynthetic(), pid: 1, is: ErrNotInPidNS},
		{name: "unknown pid", all: fxSynthetic(), pid: 31337, is: ErrNoProcess, wantErr: "31337"},
		{name: "empty listing", all: nil, pid: 4000, is: ErrNoProcess},
		{name: "entered with setns", all: fxSynthetic(), pid: 6001, wantErr: "cannot find the init of its PID namespace " + fxWorkPidNS},
		{name: "parent not listed", all: fxSynthetic(), pid: 7001, wantErr: "pid 7001 (lost): cannot find the init"},
		{name: "parent links loop", pid: 8001, wantErr: "cannot find the init", all: []Proc{
			// Pid reuse while /proc was read can leave such a loop.
			{Pid: 8001, PPid: 8002, NSpid: []int{8001, 5}},
			{Pid: 8002, PPid: 8001, NSpid: []int{8002, 6}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tree, err := FindTree(tt.all, tt.pid)
			if err == nil {
				t.Fatalf("got tree %v, want an error", fxPidsOf(tree.Procs))
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("got %v, want errors.Is %v", err, tt.is)
			}
			if tt.is == nil && (errors.Is(err, ErrNoProcess) || errors.Is(err, ErrNotInPidNS)) {
				t.Errorf("got %v, want neither ErrNoProcess nor ErrNotInPidNS", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// An init whose recorded parent pid was reused by one of its own descendants while
// /proc was read: the walk down the tree must still end.
func TestFindTreeChildLinksLoop(t *testing.T) {
	all := []Proc{
		{Pid: 4000, PPid: 4001, Comm: "init", NSpid: []int{4000, 1}},
		{Pid: 4001, PPid: 4000, Comm: "child", NSpid: []int{4001, 2}},
		{Pid: 4002, PPid: 4001, Comm: "grandchild", NSpid: []int{4002, 3}},
	}
	tree, err := FindTree(all, 4002)
	if err != nil {
		t.Fatal(err)
	}
	if tree.Init.Pid != 4000 {
		t.Errorf("init %d, want 4000", tree.Init.Pid)
	}
	if got, want := fxPidsOf(tree.Procs), []int{4000, 4001, 4002}; !reflect.DeepEqual(got, want) {
		t.Errorf("tree %v, want %v", got, want)
	}
}

func TestFindTreeFixture(t *testing.T) {
	all, _, err := ReadAll(fxTree1)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := FindTree(all, 4002)
	if err != nil {
		t.Fatal(err)
	}
	if tree.Init.Pid != 4000 || tree.Init.Comm != "migshm-init" {
		t.Errorf("init %v, want 4000 (migshm-init)", tree.Init)
	}
	if got, want := fxPidsOf(tree.Procs), []int{4000, 4001, 4002}; !reflect.DeepEqual(got, want) {
		t.Errorf("tree %v, want %v", got, want)
	}
	if want := []Attachment{{Shmid: fxKeyedShmid, Key: fxKeyMIGS}, {Shmid: fxPrivShmid}}; !reflect.DeepEqual(tree.Segments(), want) {
		t.Errorf("segments %+v, want %+v", tree.Segments(), want)
	}
	if _, err := FindTree(all, 5000); !errors.Is(err, ErrNotInPidNS) {
		t.Errorf("host process 5000: got %v, want ErrNotInPidNS", err)
	}
}

func TestTreeContains(t *testing.T) {
	tree, err := FindTree(fxSynthetic(), 4001)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		pid  int
		want bool
	}{
		{4000, true}, {4001, true}, {4005, true}, {4011, true},
		{1, false}, {3900, false}, {5000, false}, {6001, false}, {0, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.pid), func(t *testing.T) {
			if got := tree.Contains(tt.pid); got != tt.want {
				t.Errorf("Contains(%d) = %v, want %v", tt.pid, got, tt.want)
			}
		})
	}
}

func TestTreeSegments(t *testing.T) {
	tests := []struct {
		name  string
		procs []Proc
		want  []Attachment
	}{
		{name: "none", procs: []Proc{{Pid: 1}, {Pid: 2}}, want: nil},
		{name: "deduplicated and sorted by shmid", procs: []Proc{
			{Pid: 1, SysV: []Attachment{{Shmid: 9, Key: 0x99}, {Shmid: 2, Key: 0}}},
			{Pid: 2, SysV: []Attachment{{Shmid: 2, Key: 0}, {Shmid: 4, Key: 0x44}}},
			{Pid: 3, SysV: []Attachment{{Shmid: 9, Key: 0x99}}},
		}, want: []Attachment{{Shmid: 2}, {Shmid: 4, Key: 0x44}, {Shmid: 9, Key: 0x99}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &Tree{Init: tt.procs[0], Procs: tt.procs}
			if got := tr.Segments(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	t.Run("fxSynthetic workload", func(t *testing.T) {
		tree, err := FindTree(fxSynthetic(), 4000)
		if err != nil {
			t.Fatal(err)
		}
		want := []Attachment{{Shmid: 3}, {Shmid: 7, Key: fxKeyMIGS}, {Shmid: 12, Key: 0x1234}}
		if got := tree.Segments(); !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})
}

func TestProcString(t *testing.T) {
	if got := (Proc{Pid: 4001, Comm: "shmcounter"}).String(); got != "4001 (shmcounter)" {
		t.Errorf("got %q", got)
	}
}

func TestTreePids(t *testing.T) {
	tree := &Tree{Procs: []Proc{{Pid: 30}, {Pid: 10}, {Pid: 20}}}
	if got := fmt.Sprint(tree.Pids()); got != "[10 20 30]" {
		t.Fatalf("Pids() = %s, want [10 20 30]", got)
	}
}
