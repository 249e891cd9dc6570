package workload

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/migshm/migshm/internal/nsutil"
	"golang.org/x/sys/unix"
)

// initArg0 is the argv[0] under which the daemon's binary acts as a workload's init.
const initArg0 = "migshm-init"

// envHostname passes the UTS hostname from the launcher to the init.
const envHostname = "MIGSHM_INIT_HOSTNAME"

// envStatusFile passes Spec.StatusFile from the launcher to the init.
const envStatusFile = "MIGSHM_INIT_STATUS_FILE"

// envGODEBUG carries the command's own GODEBUG setting ("GODEBUG=..." or "" if it has
// none) past the init, which runs with GODEBUG=containermaxprocs=0: otherwise the Go
// runtime in the init keeps cgroup files open (cpu.max, cpu.cfs_quota_us), which CRIU
// must reopen at the same path on the target node, tying a workload to the cgroup path
// of the daemon that started it.
const envGODEBUG = "MIGSHM_INIT_GODEBUG"

const initGODEBUG = "GODEBUG=containermaxprocs=0"

// envStdout and envStderr pass the log paths to the init, which reopens them in its own
// mount namespace; envPidFile passes Spec.PidFile; envOwnMounts says the init has a
// mount namespace of its own to set up.
const (
	envStdout    = "MIGSHM_INIT_STDOUT"
	envStderr    = "MIGSHM_INIT_STDERR"
	envPidFile   = "MIGSHM_INIT_PIDFILE"
	envOwnMounts = "MIGSHM_INIT_OWN_MOUNTS"
)

// Spec says what to start and where.
type Spec struct {
	// Args is the command and its arguments; Args[0] is looked up in PATH.
	Args []string
	// Env is the command's environment; nil means the launcher's.
	Env []string
	// Dir is the working directory; empty means "/".
	Dir string
	// Stdout and Stderr are files the workload writes to. They are opened append-only
	// (CRIU then does not insist on their size at restore) and created with mode 0600.
	// Empty means /dev/null.
	Stdout, Stderr string
	// Hostname is set in the workload's own UTS namespace; empty keeps the host's.
	Hostname string
	// NetNS is the path of a network namespace to start the workload in (a node's
	// namespace, /run/netns/NAME); empty means the launcher's own.
	NetNS string
	// InitPath is the executable that acts as init; empty means this binary, which must
	// then call MaybeRunInit first thing in main (or TestMain).
	InitPath string
	// IPCNS is the path of an existing IPC namespace (/proc/PID/ns/ipc of another
	// workload's init) to start the workload in, so that both share its SysV objects;
	// empty means a fresh IPC namespace.
	IPCNS string
	// StatusFile, if set, is where the init records the command's exit status (see
	// ReadExitStatus) just before it exits. Whoever is not the init's parent (a daemon
	// restarted while the workload ran on) learns the status from it.
	StatusFile string
	// PidFile, if set, is where a program that daemonizes writes the pid of its main
	// process (as seen in the workload, relative to Dir): signals go to that process
	// once the command itself exited, and its exit status is the workload's.
	PidFile string
}

// Process is a started workload: the host view of its init.
type Process struct {
	// Pid is the host pid of the workload's init (PID 1 inside its namespace).
	Pid  int
	proc *os.Process
}

// Start launches spec's command under a fresh init in new PID, IPC, UTS and mount
// namespaces; the init mounts a /proc of the new PID namespace (see setupMounts) and
// lives until every process of the namespace is gone (see supervise).
// The caller becomes the init's parent and must Wait for it (or hand that to whoever
// restores it after a migration).
func Start(spec Spec) (*Process, error) {
	if len(spec.Args) == 0 || spec.Args[0] == "" {
		return nil, errors.New("start workload: no command given")
	}
	path, err := exec.LookPath(spec.Args[0])
	if err != nil {
		return nil, fmt.Errorf("start workload: %w", err)
	}
	if !filepath.IsAbs(path) {
		if path, err = filepath.Abs(path); err != nil {
			return nil, fmt.Errorf("start workload: %w", err)
		}
	}
	initPath, err := initExecutable(spec.InitPath)
	if err != nil {
		return nil, fmt.Errorf("start workload: %w", err)
	}
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("start workload: %w", err)
	}
	defer stdin.Close()
	stdout, err := openLog(spec.Stdout)
	if err != nil {
		return nil, fmt.Errorf("start workload: stdout: %w", err)
	}
	defer stdout.Close()
	stderr, err := openLog(spec.Stderr)
	if err != nil {
		return nil, fmt.Errorf("start workload: stderr: %w", err)
	}
	defer stderr.Close()

	env := spec.Env
	if env == nil {
		env = os.Environ()
	}
	initEnv, userGODEBUG := splitGODEBUG(env)
	initEnv = append(initEnv, initGODEBUG, envGODEBUG+"="+userGODEBUG)
	if spec.Hostname != "" {
		initEnv = append(initEnv, envHostname+"="+spec.Hostname)
	}
	if spec.StatusFile != "" {
		initEnv = append(initEnv, envStatusFile+"="+spec.StatusFile)
	}
	if spec.PidFile != "" {
		initEnv = append(initEnv, envPidFile+"="+spec.PidFile)
	}
	initEnv = append(initEnv, envOwnMounts+"=1", envStdout+"="+spec.Stdout, envStderr+"="+spec.Stderr)
	clone := uintptr(unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWNS)
	if spec.IPCNS != "" {
		clone &^= unix.CLONE_NEWIPC
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/"
	}
	cmd := &exec.Cmd{
		Path:   initPath,
		Args:   append([]string{initArg0, "--", path}, spec.Args[1:]...),
		Env:    initEnv,
		Dir:    dir,
		Stdin:  stdin,
		Stdout: stdout,
		Stderr: stderr,
		SysProcAttr: &syscall.SysProcAttr{
			// Setsid runs in the child after clone, so the session leader is PID 1 of the
			// new PID namespace, which is what CRIU requires.
			Setsid:     true,
			Cloneflags: clone,
		},
	}
	start := func() error { return nsutil.Do(nsutil.IPC, spec.IPCNS, cmd.Start) }
	if err := nsutil.Do(nsutil.Net, spec.NetNS, start); err != nil {
		return nil, fmt.Errorf("start workload %s: %w", spec.Args[0], err)
	}
	return &Process{Pid: cmd.Process.Pid, proc: cmd.Process}, nil
}

// initExecutable returns the init's executable: path, or this binary if path is "".
func initExecutable(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable for init: %w", err)
	}
	return self, nil
}

// splitGODEBUG returns env without its GODEBUG entry, and that entry ("" if none): the
// init runs with its own (initGODEBUG) and hands the command's back (envGODEBUG).
func splitGODEBUG(env []string) (rest []string, godebug string) {
	rest = make([]string, 0, len(env)+8)
	for _, kv := range env {
		if strings.HasPrefix(kv, "GODEBUG=") {
			godebug = kv
			continue
		}
		rest = append(rest, kv)
	}
	return rest, godebug
}

// Attach returns a Process for an init that is already this process's child, such as a
// tree CRIU restored with the caller as parent.
func Attach(pid int) *Process {
	p, _ := os.FindProcess(pid) // never fails on Unix
	return &Process{Pid: pid, proc: p}
}

// Wait waits for the init to exit and returns its status. The init exits with its
// command's status.
func (p *Process) Wait() (*os.ProcessState, error) {
	return p.proc.Wait()
}

// Signal sends sig to the init, which forwards it to the command.
func (p *Process) Signal(sig os.Signal) error {
	return p.proc.Signal(sig)
}

// Kill kills the init; the kernel then kills every process of its PID namespace.
func (p *Process) Kill() error {
	return p.proc.Kill()
}

func openLog(path string) (*os.File, error) {
	if path == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
}
