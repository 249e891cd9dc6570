package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/migshm/migshm/internal/atomicfile"
	"github.com/migshm/migshm/internal/nsutil"
	"github.com/migshm/migshm/internal/procfs"
	"golang.org/x/sys/unix"
)

// An IPC group runs as one tree, like the containers of a pod: a group init is PID 1 of
// the group's PID, IPC, UTS and mount namespaces and runs no command of its own; each
// member is a member init (a child subreaper) under it, running the member's command as
// today's init does, so that a member's daemonized processes stay in its subtree. One
// CRIU dump of the group init then carries every member, their shared SysV objects and
// their namespaces.
//
// Members are started by the group init itself, on request: the daemon writes a request
// file into the group's directory and signals the init, which forks the member init in
// its own namespaces and answers with a file naming the member's pid there. No socket or
// pipe links the daemon to the tree, so nothing stands in the way of a dump, and the
// daemon needs no way into the group's mount namespace (which a multi-threaded Go
// process cannot setns into).

// Group init modes, after initArg0.
const (
	groupMode  = "--group"
	memberMode = "--member"
)

// envGroupDir passes the group's request directory to the group init.
const envGroupDir = "MIGSHM_INIT_GROUP_DIR"

// Files of a group directory.
const (
	groupReady  = "ready" // written by the group init once it serves requests
	requestExt  = ".req"  // a MemberSpec, written by JoinGroup
	answerExt   = ".pid"  // the member init's pid in the group, written by the group init
	refusalExt  = ".err"  // why the member could not start, written by the group init
	groupRescan = time.Second
)

// GroupSpec says where a new group runs.
type GroupSpec struct {
	// Dir is the group's request directory: created by StartGroup, at the same path on
	// every node the group may move to.
	Dir string
	// Hostname is set in the group's UTS namespace; empty keeps the host's.
	Hostname string
	// NetNS: as Spec.NetNS.
	NetNS string
	// InitPath: as Spec.InitPath.
	InitPath string
	// Log, if set, is where the group init writes why it could not start (append-only);
	// once ready it keeps no file open but /dev/null.
	Log string
}

// memberRequest is what JoinGroup asks of the group init.
type memberRequest struct {
	Args       []string `json:"args"` // Args[0] is an absolute path
	Env        []string `json:"env"`
	Dir        string   `json:"dir"`
	Stdout     string   `json:"stdout"`
	Stderr     string   `json:"stderr"`
	StatusFile string   `json:"status_file"`
	PidFile    string   `json:"pid_file"`
}

// StartGroup starts the init of a new IPC group and returns once it serves requests
// (JoinGroup). It has no member yet; it exits once it had one and none is left. The
// caller is its parent and must Wait for it, or Kill it if no member ever joins.
func StartGroup(spec GroupSpec) (*Process, error) {
	if spec.Dir == "" {
		return nil, errors.New("start group: no directory given")
	}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start group: %w", err)
	}
	initPath, err := initExecutable(spec.InitPath)
	if err != nil {
		return nil, fmt.Errorf("start group: %w", err)
	}
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("start group: %w", err)
	}
	defer stdin.Close()
	logf, err := openLog(spec.Log)
	if err != nil {
		return nil, fmt.Errorf("start group: log: %w", err)
	}
	defer logf.Close()
	env := []string{defaultPath, initGODEBUG, envOwnMounts + "=1", envStdout + "=", envStderr + "=" + spec.Log,
		envGroupDir + "=" + spec.Dir}
	if spec.Hostname != "" {
		env = append(env, envHostname+"="+spec.Hostname)
	}
	cmd := &exec.Cmd{
		Path: initPath, Args: []string{initArg0, groupMode}, Env: env, Dir: "/",
		Stdin: stdin, Stdout: logf, Stderr: logf,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true,
			Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWNS},
	}
	if err := nsutil.Do(nsutil.Net, spec.NetNS, cmd.Start); err != nil {
		return nil, fmt.Errorf("start group: %w", err)
	}
	p := &Process{Pid: cmd.Process.Pid, proc: cmd.Process}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(spec.Dir, groupReady)); err == nil {
			return p, nil
		}
		if err := unix.Kill(p.Pid, 0); err != nil || isZombie(p.Pid) || time.Now().After(deadline) {
			_ = p.Kill()
			_, _ = p.Wait()
			why := "it did not get ready within 10s"
			if tail := logTail(spec.Log); tail != "" {
				why = "it said: " + tail
			}
			return nil, fmt.Errorf("start group: the group init exited or hung (%s)", why)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Member is a member init started by JoinGroup.
type Member struct {
	Pid   int    // host pid of the member init
	NSPid int    // its pid in the group's PID namespace (kept across a migration)
	Start uint64 // its start time, to tell it from a later process of the same pid
}

// JoinGroup starts spec's command as a new member of the group whose init runs as host
// pid groupPid (started at groupStart) with request directory dir, and returns the
// member init. spec's Hostname, NetNS, IPCNS and InitPath do not apply: a member has its
// group's. The member init records the command's exit status in spec.StatusFile; it is
// not the caller's child.
func JoinGroup(ctx context.Context, groupPid int, groupStart uint64, dir string, spec Spec) (Member, error) {
	if len(spec.Args) == 0 || spec.Args[0] == "" {
		return Member{}, errors.New("join group: no command given")
	}
	path, err := exec.LookPath(spec.Args[0])
	if err != nil {
		return Member{}, fmt.Errorf("join group: %w", err)
	}
	if path, err = filepath.Abs(path); err != nil {
		return Member{}, fmt.Errorf("join group: %w", err)
	}
	if st, err := StartTime("/proc", groupPid); err != nil || st != groupStart {
		return Member{}, fmt.Errorf("join group: its init (pid %d) is gone", groupPid)
	}
	env := spec.Env
	if env == nil {
		env = os.Environ()
	}
	req := memberRequest{Args: append([]string{path}, spec.Args[1:]...), Env: env, Dir: spec.Dir,
		Stdout: spec.Stdout, Stderr: spec.Stderr, StatusFile: spec.StatusFile, PidFile: spec.PidFile}
	if req.Dir == "" {
		req.Dir = "/"
	}
	b, err := json.Marshal(req)
	if err != nil {
		return Member{}, err
	}
	name := newRequestName()
	base := filepath.Join(dir, name)
	defer os.Remove(base + answerExt)
	defer os.Remove(base + refusalExt)
	if err := atomicfile.Write(base+requestExt, b, 0o600); err != nil {
		return Member{}, fmt.Errorf("join group: %w", err)
	}
	defer os.Remove(base + requestExt) // if the init never took it
	_ = unix.Kill(groupPid, unix.SIGUSR1)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if b, err := os.ReadFile(base + refusalExt); err == nil {
			return Member{}, fmt.Errorf("join group: %s", strings.TrimSpace(string(b)))
		}
		if b, err := os.ReadFile(base + answerExt); err == nil {
			nspid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				return Member{}, fmt.Errorf("join group: the group init answered %q", b)
			}
			return findMember(groupPid, nspid)
		}
		if st, err := StartTime("/proc", groupPid); err != nil || st != groupStart {
			return Member{}, fmt.Errorf("join group: its init (pid %d) exited before it started the member", groupPid)
		}
		select {
		case <-ctx.Done():
			return Member{}, fmt.Errorf("join group: the group init (pid %d) did not start the member: %w", groupPid, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// findMember returns the child of the group init whose pid in the group is nspid.
func findMember(groupPid, nspid int) (Member, error) {
	procs, _, err := ReadAll("/proc")
	if err != nil {
		return Member{}, err
	}
	return MemberByNSPid(procs, groupPid, nspid)
}

// MemberByNSPid finds, among procs, the child of the group init groupPid (a host pid)
// whose pid in the group's PID namespace is nspid: how a member is found again after a
// migration restored its group under new host pids.
func MemberByNSPid(procs []Proc, groupPid, nspid int) (Member, error) {
	for _, p := range procs {
		if p.PPid == groupPid && len(p.NSpid) > 0 && p.NSpid[len(p.NSpid)-1] == nspid {
			st, err := StartTime("/proc", p.Pid)
			if err != nil {
				return Member{}, fmt.Errorf("member %d of group init %d: %w", nspid, groupPid, err)
			}
			return Member{Pid: p.Pid, NSPid: nspid, Start: st}, nil
		}
	}
	return Member{}, fmt.Errorf("group init %d has no member with pid %d in the group (it exited?)", groupPid, nspid)
}

func newRequestName() string {
	return strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.Itoa(os.Getpid())
}

// KillTree kills the process pid and every process under it, stopping them first so
// that none can fork a process the kill would miss. A member's tree must go this way:
// killing only its init would hand its processes to the group init, alive.
func KillTree(pid int) error {
	seen := map[int]bool{}
	for round := 0; round < 50; round++ {
		procs, _, err := ReadAll("/proc")
		if err != nil {
			return err
		}
		tree, err := FindSubtree(procs, pid)
		if err != nil {
			break // the root is gone
		}
		grew := false
		for _, p := range tree.Pids() {
			if !seen[p] {
				seen[p], grew = true, true
				_ = unix.Kill(p, unix.SIGSTOP)
			}
		}
		if !grew {
			break
		}
	}
	for p := range seen {
		_ = unix.Kill(p, unix.SIGKILL)
	}
	return nil
}

// runGroupInit is the group init: PID 1 of the group's namespaces. It serves member
// requests (on SIGUSR1, and every groupRescan in case a signal was lost), reaps, passes
// stop signals on to every member, and exits once it had members and none is left.
func runGroupInit() int {
	dir := os.Getenv(envGroupDir)
	if err := initNamespace(); err != nil {
		fmt.Fprintf(os.Stderr, "migshm-init: %v\n", err)
		return 127
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGUSR1, unix.SIGTERM, unix.SIGINT, unix.SIGQUIT, unix.SIGHUP)
	if err := os.WriteFile(filepath.Join(dir, groupReady), nil, 0o600); err != nil {
		fmt.Fprintf(os.Stderr, "migshm-init: group: %v\n", err)
		return 127
	}
	// From here on the init reports through answer files only. Its log is let go, so
	// that no open file ties the group to a path its next node may lack.
	if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		_ = unix.Dup3(int(null.Fd()), 1, 0)
		_ = unix.Dup3(int(null.Fd()), 2, 0)
		null.Close()
	}
	tick := time.NewTicker(groupRescan)
	defer tick.Stop()
	members := 0
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case unix.SIGCHLD:
				if reapAll() && members > 0 {
					return 0
				}
				continue
			case unix.SIGUSR1:
			default:
				_ = unix.Kill(-1, sig.(syscall.Signal)) // every member
				continue
			}
		case <-tick.C:
		}
		members += serveRequests(dir)
	}
}

// reapAll reaps every exited child and reports whether none is left.
func reapAll() bool {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			return true
		case err != nil || pid <= 0:
			return false
		}
	}
}

// serveRequests starts the member of every request in dir and returns how many started.
func serveRequests(dir string) int {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), requestExt)
		if !ok {
			continue
		}
		base := filepath.Join(dir, name)
		pid, err := startMember(base + requestExt)
		os.Remove(base + requestExt)
		if err != nil {
			_ = atomicfile.Write(base+refusalExt, []byte(err.Error()), 0o600)
			continue
		}
		n++
		_ = atomicfile.Write(base+answerExt, []byte(strconv.Itoa(pid)), 0o600)
	}
	return n
}

// startMember forks the member init a request asks for.
func startMember(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var req memberRequest
	if err := json.Unmarshal(b, &req); err != nil || len(req.Args) == 0 {
		return 0, fmt.Errorf("unreadable member request %s: %v", filepath.Base(path), err)
	}
	if _, err := os.Stat(req.Dir); err != nil {
		return 0, fmt.Errorf("working directory %s: %w", req.Dir, errors.Unwrap(err))
	}
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer stdin.Close()
	stdout, err := openLog(req.Stdout)
	if err != nil {
		return 0, fmt.Errorf("stdout: %w", err)
	}
	defer stdout.Close()
	stderr, err := openLog(req.Stderr)
	if err != nil {
		return 0, fmt.Errorf("stderr: %w", err)
	}
	defer stderr.Close()
	env, userGODEBUG := splitGODEBUG(req.Env)
	env = append(env, initGODEBUG, envGODEBUG+"="+userGODEBUG)
	if req.StatusFile != "" {
		env = append(env, envStatusFile+"="+req.StatusFile)
	}
	if req.PidFile != "" {
		env = append(env, envPidFile+"="+req.PidFile)
	}
	proc, err := os.StartProcess("/proc/self/exe", append([]string{initArg0, memberMode, "--"}, req.Args...), &os.ProcAttr{
		Dir: req.Dir, Env: env, Files: []*os.File{stdin, stdout, stderr},
		Sys: &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", req.Args[0], err)
	}
	return proc.Pid, nil
}

// defaultPath is the group init's own PATH (it runs no command; members bring theirs).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// descendants returns the pids of every process under pid, read from procRoot.
func descendants(procRoot string, pid int) []int {
	pids, err := procfs.ListPids(procRoot)
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, p := range pids {
		if st, err := procfs.ReadStat(procRoot, p); err == nil {
			children[st.PPid] = append(children[st.PPid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, children[p]...)
		queue = append(queue, children[p]...)
	}
	return out
}

// isZombie reports whether pid has exited and waits to be reaped.
func isZombie(pid int) bool {
	st, err := procfs.ReadStat("/proc", pid)
	return err == nil && st.State == 'Z'
}

// logTail returns the last line of the file at path, "" if none.
func logTail(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
