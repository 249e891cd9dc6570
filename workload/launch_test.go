package workload_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/workload"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	workload.MaybeRunInit()
	os.Exit(m.Run())
}

func waitFile(t *testing.T, path, substr string) string {
	t.Helper()
	var b []byte
	wait.For(t, 10*time.Second, fmt.Sprintf("%q in %s", substr, path), func() (bool, string) {
		b, _ = os.ReadFile(path)
		return strings.Contains(string(b), substr), fmt.Sprintf("it has %q", b)
	})
	return string(b)
}

func readlink(t *testing.T, path string) string {
	t.Helper()
	s, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStartShape checks the shape CRIU needs: the init is PID 1 of fresh PID, IPC, UTS and
// mount namespaces (with a /proc of its own and every fd on its own mounts), a session leader there, stdin on /dev/null, output appended to private
// files, the hostname set; signals reach the command and its status comes back.
func TestStartShape(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	out, errf := filepath.Join(dir, "out"), filepath.Join(dir, "err")
	if err := os.WriteFile(out, []byte("earlier line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The command reports who it is, leaves an orphan that exits soon (the init must
	// reap it), then waits for SIGTERM and exits 7.
	script := `trap 'echo got-term; exit 7' TERM
read -r self rest </proc/self/stat
echo "pid=$$ proc-self=$self host=$(hostname)"
ls -l /proc/self/fd/0 >&2
(sleep 0.2 &)
echo ready
while :; do sleep 0.05; done`
	// The daemon's image tmpfs is the node's: the workload's mounts leave it out.
	images := filepath.Join(dir, "images")
	if err := os.Mkdir(images, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(workload.ImagesMountSource, images, "tmpfs", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(images, unix.MNT_DETACH) })
	p, err := workload.Start(workload.Spec{
		Args: []string{"sh", "-c", script}, Stdout: out, Stderr: errf, Hostname: "wl-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(); _, _ = p.Wait() })
	got := waitFile(t, out, "ready")
	if !strings.HasPrefix(got, "earlier line\n") {
		t.Errorf("stdout was not appended to: %q", got)
	}
	if !strings.Contains(got, "host=wl-test") {
		t.Errorf("hostname not set in the workload's UTS namespace: %q", got)
	}
	if h, _ := os.Hostname(); h == "wl-test" {
		t.Fatal("the host's hostname changed")
	}
	if e := waitFile(t, errf, "/dev/null"); !strings.Contains(e, "/dev/null") {
		t.Errorf("stdin is not /dev/null: %q", e)
	}
	for _, f := range []string{out, errf} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want private", f, st.Mode().Perm())
		}
	}
	init, err := workload.ReadProc("/proc", p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	// The init holds no cgroup files (the Go runtime would keep cpu.max open, which CRIU
	// must then find at the same path on the target), and the command's environment
	// carries none of the init's settings.
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.Pid, fd.Name())); strings.HasPrefix(l, "/sys/fs/cgroup") {
			t.Errorf("the init holds %s open (fd %s)", l, fd.Name())
		}
	}
	if n := init.NSpid; len(n) != 2 || n[1] != 1 {
		t.Errorf("init NSpid %v, want [hostpid 1]", n)
	}
	for _, ns := range []string{"pid", "ipc", "uts", "mnt"} {
		if readlink(t, fmt.Sprintf("/proc/%d/ns/%s", p.Pid, ns)) == readlink(t, "/proc/self/ns/"+ns) {
			t.Errorf("init shares the launcher's %s namespace", ns)
		}
	}
	// CRIU dumps the mount namespace: every fd of the init must be on one of its mounts,
	// and no mount may be a namespace file (CRIU cannot carry nsfs).
	mountIDs := map[string]bool{}
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(mi)), "\n") {
		mountIDs[strings.Fields(line)[0]] = true
		if strings.Contains(line, " - nsfs ") {
			t.Errorf("the workload's mounts include a namespace file: %s", line)
		}
		if strings.Contains(line, " - tmpfs "+workload.ImagesMountSource+" ") {
			t.Errorf("the workload's mounts include the daemon's image tmpfs: %s", line)
		}
	}
	for _, fd := range fds {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.Pid, fd.Name())); strings.HasPrefix(l, "anon_inode:") {
			continue // the Go runtime's epoll, eventfd and pidfds: CRIU needs no mount for them
		}
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", p.Pid, fd.Name()))
		for _, line := range strings.Split(string(info), "\n") {
			if id, ok := strings.CutPrefix(line, "mnt_id:"); ok && !mountIDs[strings.TrimSpace(id)] {
				l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.Pid, fd.Name()))
				t.Errorf("init fd %s (%s) is on mount %s, outside its mount namespace", fd.Name(), l, strings.TrimSpace(id))
			}
		}
	}
	for _, ns := range []string{"net"} {
		if readlink(t, fmt.Sprintf("/proc/%d/ns/%s", p.Pid, ns)) != readlink(t, "/proc/self/ns/"+ns) {
			t.Errorf("init has its own %s namespace; it should keep the launcher's", ns)
		}
	}
	// The command sees itself with its pid inside the namespace, as the init's child.
	all, _, err := workload.ReadAll("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var cmdProc *workload.Proc
	for i := range all {
		if all[i].PPid == p.Pid && all[i].Comm == "sh" {
			cmdProc = &all[i]
		}
	}
	if cmdProc == nil {
		t.Fatalf("no sh child of init %d", p.Pid)
	}
	if nsPid := cmdProc.NSpid[len(cmdProc.NSpid)-1]; nsPid == cmdProc.Pid || !strings.Contains(got, fmt.Sprintf("pid=%d ", nsPid)) {
		t.Errorf("command reports %q; its pid inside the namespace is %d (host %d)", got, nsPid, cmdProc.Pid)
	} else if !strings.Contains(got, fmt.Sprintf("proc-self=%d ", nsPid)) {
		t.Errorf("command reports %q: its /proc/self is not its own pid %d", got, nsPid)
	}
	sid, err := unix.Getsid(p.Pid)
	if err != nil || sid != p.Pid {
		t.Errorf("init session id %d (%v), want itself %d", sid, err, p.Pid)
	}

	// The orphan exits after 0.2 s: the init reaps it, so no zombie stays in the tree.
	wait.For(t, 5*time.Second, "the orphan to be reaped", func() (bool, string) {
		all, _, err := workload.ReadAll("/proc")
		if err != nil {
			t.Fatal(err)
		}
		tree, err := workload.FindTree(all, p.Pid)
		if err != nil {
			t.Fatal(err)
		}
		zombies, sleeps := 0, 0
		for _, q := range tree.Procs {
			if b, _ := os.ReadFile("/proc/" + strconv.Itoa(q.Pid) + "/stat"); strings.Contains(string(b), ") Z ") {
				zombies++
			}
			if q.Comm == "sleep" && q.PPid == p.Pid {
				sleeps++
			}
		}
		return zombies == 0 && sleeps == 0, fmt.Sprintf("%d zombies, %d adopted sleeps left in %v", zombies, sleeps, tree.Procs)
	})

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode() != 7 {
		t.Fatalf("init exit code %d, want the command's 7", st.ExitCode())
	}
	waitFile(t, out, "got-term")
}

// TestStartLivesWithItsProcesses: a program that daemonizes (its first process exits at
// once) keeps the workload alive; a stop signal reaches the daemon, the one its pidfile
// names or, without one, every process left; the workload's status is the pidfile
// process's, or the last process's.
func TestStartLivesWithItsProcesses(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tc := range []struct {
		name    string
		pidFile bool
		want    int
	}{
		{"pidfile", true, 3},
		{"no pidfile", false, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			out, pidFile := filepath.Join(dir, "out"), filepath.Join(dir, "daemon.pid")
			// The daemon exits 3 on SIGTERM; its helper (not in the pidfile) exits 5.
			// Each installs its trap before it says it is there: a SIGTERM that came before
			// the trap would end it with 143.
			daemon := `trap 'exit 3' TERM; echo \$\$ >` + pidFile + `; while :; do sleep 0.05; done`
			helper := `trap 'exit 5' TERM; echo helper-ready; while :; do sleep 0.05; done`
			script := `sh -c "` + daemon + `" & sh -c "` + helper + `" & echo started; exit 0`
			if !tc.pidFile {
				script = `sh -c "` + helper + `" & echo started; exit 0`
			}
			spec := workload.Spec{Args: []string{"sh", "-c", script}, Stdout: out, Stderr: filepath.Join(dir, "err")}
			if tc.pidFile {
				spec.PidFile = pidFile
			}
			p, err := workload.Start(spec)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = p.Kill(); _, _ = p.Wait() })
			waitFile(t, out, "started")
			// The command has exited; the workload lives on in the processes it left.
			wait.For(t, 5*time.Second, "the first process to exit", func() (bool, string) {
				all, _, err := workload.ReadAll("/proc")
				if err != nil {
					t.Fatal(err)
				}
				tree, err := workload.FindTree(all, p.Pid)
				if err != nil {
					return false, err.Error()
				}
				shells := 0
				for _, q := range tree.Procs {
					if q.Comm == "sh" {
						shells++
						if q.PPid != p.Pid {
							return false, fmt.Sprintf("sh %d still has parent %d", q.Pid, q.PPid)
						}
					}
				}
				want := 1
				if tc.pidFile {
					want = 2
				}
				return shells == want, fmt.Sprintf("%d shells left under the init, want %d: %v", shells, want, tree.Procs)
			})
			waitFile(t, out, "helper-ready")
			if tc.pidFile {
				waitFile(t, pidFile, "\n")
			}
			if err := p.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			st, err := p.Wait()
			if err != nil {
				t.Fatal(err)
			}
			if st.ExitCode() != tc.want {
				t.Fatalf("init exit code %d, want %d", st.ExitCode(), tc.want)
			}
		})
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := workload.Start(workload.Spec{}); err == nil {
		t.Error("empty command: no error")
	}
	if _, err := workload.Start(workload.Spec{Args: []string{"/nonexistent/cmd"}}); err == nil {
		t.Error("missing binary: no error")
	}
	testenv.RequireRoot(t)
	if _, err := workload.Start(workload.Spec{Args: []string{"true"}, NetNS: "/nonexistent/netns"}); err == nil ||
		!strings.Contains(err.Error(), "/nonexistent/netns") {
		t.Errorf("bad netns: got %v, want an error naming it", err)
	}
}

// TestStartKeepsCommandGODEBUG: the init runs with its own GODEBUG; the command gets the
// one it was given (or none), and none of the init's variables.
func TestStartKeepsCommandGODEBUG(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"own", []string{"PATH=/usr/bin:/bin", "GODEBUG=madvdontneed=1"}, "godebug=[madvdontneed=1]"},
		{"none", []string{"PATH=/usr/bin:/bin"}, "godebug=[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			p, err := workload.Start(workload.Spec{
				Args: []string{"sh", "-c", `echo "godebug=[$GODEBUG] set=$(env | grep -c '^GODEBUG=\|^MIGSHM_INIT_')"`},
				Env:  tc.env, Stdout: out, Stderr: filepath.Join(dir, "err"),
			})
			if err != nil {
				t.Fatal(err)
			}
			_, _ = p.Wait()
			got := waitFile(t, out, "godebug=")
			wantSet := "set=0"
			if tc.name == "own" {
				wantSet = "set=1"
			}
			if !strings.Contains(got, tc.want) || !strings.Contains(got, wantSet) {
				t.Fatalf("the command saw %q, want %q and %q", got, tc.want, wantSet)
			}
		})
	}
}
