package workload

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// MaybeRunInit turns this process into a workload's init when it was started as one by
// Start, and never returns in that case. Call it first thing in main (and in TestMain of
// tests that start workloads).
func MaybeRunInit() {
	if len(os.Args) > 0 && os.Args[0] == initArg0 {
		os.Exit(runInit(os.Args[1:]))
	}
}

// forwarded are the signals the init passes on to the workload. SIGCHLD drives reaping.
var forwarded = []os.Signal{
	unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2,
	unix.SIGWINCH, unix.SIGCONT, unix.SIGALRM, unix.SIGPWR,
}

// stopSignals end a workload: once one was forwarded to its main process and that
// process is gone, the init passes it on to every process left.
var stopSignals = map[os.Signal]bool{unix.SIGTERM: true, unix.SIGINT: true, unix.SIGQUIT: true}

// initVars are the variables through which Start configures the init; the command sees
// none of them.
var initVars = []string{envHostname, envStatusFile, envGODEBUG, envStdout, envStderr, envPidFile, envOwnMounts}

// runInit runs one of the init's three modes: "-- CMD..." is a workload's init (PID 1
// of its own namespaces, running CMD), "--group" a group init (see group.go), and
// "--member -- CMD..." a member init under a group init.
func runInit(args []string) int {
	if len(args) == 1 && args[0] == groupMode {
		return runGroupInit()
	}
	member := len(args) > 0 && args[0] == memberMode
	if member {
		args = args[1:]
	}
	if len(args) < 2 || args[0] != "--" {
		fmt.Fprintln(os.Stderr, "migshm-init: usage: migshm-init [--member] -- CMD [ARGS...] | migshm-init --group")
		return 127
	}
	args = args[1:]
	if member {
		// Not PID 1: orphans of the member's processes come here, not to the group init,
		// so the member's tree stays its own.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			fmt.Fprintf(os.Stderr, "migshm-init: become a subreaper: %v\n", err)
			return 127
		}
	} else if err := initNamespace(); err != nil {
		fmt.Fprintf(os.Stderr, "migshm-init: %v\n", err)
		return 127
	}
	statusFile := os.Getenv(envStatusFile)
	pidFile := os.Getenv(envPidFile)
	userGODEBUG, haveUser := os.LookupEnv(envGODEBUG)
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case isInitEnv(name):
		case haveUser && name == "GODEBUG":
			// The init's own setting; the command gets its own back below.
		default:
			env = append(env, kv)
		}
	}
	if userGODEBUG != "" {
		env = append(env, userGODEBUG)
	}
	status := supervise(args, env, pidFile, member)
	if statusFile != "" {
		if err := writeExitStatus(statusFile, status); err != nil {
			fmt.Fprintf(os.Stderr, "migshm-init: record exit status: %v\n", err)
		}
	}
	return status
}

// initNamespace sets up the namespaces an init is PID 1 of: the hostname and, if it has a
// mount namespace of its own, its mounts and stdio there.
func initNamespace() error {
	if h := os.Getenv(envHostname); h != "" {
		if err := unix.Sethostname([]byte(h)); err != nil {
			fmt.Fprintf(os.Stderr, "migshm-init: set hostname %q: %v\n", h, err)
		}
	}
	if os.Getenv(envOwnMounts) != "1" {
		return nil
	}
	closeInherited()
	if err := setupMounts(); err != nil {
		return err
	}
	// Stdio was opened by the launcher, in the mounts outside; CRIU can only dump fds
	// into mounts of the tree's own namespace.
	return reopenStdio(os.Getenv(envStdout), os.Getenv(envStderr))
}

func isInitEnv(name string) bool {
	for _, n := range initVars {
		if name == n {
			return true
		}
	}
	return false
}

// supervise starts the command and stays until its PID namespace is empty, as a service
// manager does: a program that daemonizes (forks, and its first process exits) lives on.
// It forwards signals to the workload's main process (the command while it runs, then
// the process pidFile names, if any) or, when that is gone, to every process left; a
// stop signal whose main process then exits goes on to the rest, so a daemon's master
// first gets to stop its children itself. It reaps every process and returns the exit
// status of the pidFile's process if it named one the init reaped, else of the last
// process to exit (the command itself, for a program that does not daemonize).
//
// A member init (subreaper) does the same for its own subtree: "every process left" is
// every process under it, not the whole namespace, which its group's other members share.
func supervise(args, env []string, pidFile string, subreaper bool) int {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, append([]os.Signal{unix.SIGCHLD}, forwarded...)...)

	// The init is the session leader; the command gets its own process group so that
	// signals meant for it do not bounce back to the init.
	proc, err := os.StartProcess(args[0], args, &os.ProcAttr{
		Env:   env,
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "migshm-init: start %s: %v\n", args[0], err)
		return 127
	}
	t := tracker{command: proc.Pid, pidFile: pidFile, subreaper: subreaper}
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			t.forward(sig.(syscall.Signal))
			continue
		}
		if done := t.reap(); done {
			return t.status()
		}
	}
	return 0 // unreachable: sigs is never closed
}

// tracker follows the processes of a workload's PID namespace from its init.
type tracker struct {
	command  int    // the command's pid; 0 once it exited
	pidFile  string // names the main process once the command has written it
	service  int    // the pid read from pidFile, once read; 0 before
	stopping syscall.Signal
	// subreaper: the init is a member init, and "the rest" is its subtree only.
	subreaper bool

	last, serviceStatus int
	serviceDone         bool
}

// main returns the process signals are meant for: the command while it runs, else the
// live process pidFile names; 0 if neither.
func (t *tracker) main() int {
	if t.pidFile != "" && t.service == 0 {
		t.service = ReadPidFile(t.pidFile)
	}
	if t.service > 0 && !t.serviceDone && unix.Kill(t.service, 0) == nil {
		return t.service
	}
	return t.command
}

func (t *tracker) forward(sig syscall.Signal) {
	if stopSignals[sig] {
		t.stopping = sig
	}
	if pid := t.main(); pid > 0 {
		_ = unix.Kill(pid, sig)
		return
	}
	t.signalRest(sig)
}

// signalRest signals every process the init is responsible for: from PID 1, -1 means
// every other process of its namespace; a member init signals its descendants.
func (t *tracker) signalRest(sig syscall.Signal) {
	if !t.subreaper {
		_ = unix.Kill(-1, sig)
		return
	}
	for _, pid := range descendants("/proc", os.Getpid()) {
		_ = unix.Kill(pid, sig)
	}
}

// reap reaps every exited child and reports whether the namespace is empty.
func (t *tracker) reap() bool {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			return true // every process of the namespace is gone
		case err != nil || pid <= 0:
			return false
		}
		if !ws.Exited() && !ws.Signaled() {
			continue
		}
		status := ws.ExitStatus()
		if ws.Signaled() {
			status = 128 + int(ws.Signal())
		}
		t.last = status
		mainGone := false
		if pid == t.command {
			t.command = 0
			if t.pidFile != "" && t.service == 0 {
				t.service = ReadPidFile(t.pidFile)
			}
			mainGone = t.service <= 0 || t.service == pid
		}
		if pid == t.service && t.service > 0 {
			t.serviceDone, t.serviceStatus = true, status
			mainGone = true
		}
		if mainGone && t.stopping != 0 {
			// The main process is gone while stopping: the rest get the signal too.
			t.signalRest(t.stopping)
		}
	}
}

func (t *tracker) status() int {
	if t.serviceDone {
		return t.serviceStatus
	}
	return t.last
}

// ReadPidFile returns the pid a pidfile holds (its first word), 0 if it has none yet.
func ReadPidFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return 0
	}
	return pid
}
