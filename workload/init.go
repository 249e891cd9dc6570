package workload

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
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

// forwarded are the signals the init passes on to the command. SIGCHLD drives reaping.
var forwarded = []os.Signal{
	unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2,
	unix.SIGWINCH, unix.SIGCONT, unix.SIGALRM, unix.SIGPWR,
}

func runInit(args []string) int {
	if len(args) < 2 || args[0] != "--" {
		fmt.Fprintln(os.Stderr, "migshm-init: usage: migshm-init -- CMD [ARGS...]")
		return 127
	}
	args = args[1:]
	if h := os.Getenv(envHostname); h != "" {
		if err := unix.Sethostname([]byte(h)); err != nil {
			fmt.Fprintf(os.Stderr, "migshm-init: set hostname %q: %v\n", h, err)
		}
	}
	statusFile := os.Getenv(envStatusFile)
	userGODEBUG, haveUser := os.LookupEnv(envGODEBUG)
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, envHostname+"="), strings.HasPrefix(kv, envStatusFile+"="),
			strings.HasPrefix(kv, envGODEBUG+"="):
		case haveUser && strings.HasPrefix(kv, "GODEBUG="):
			// The init's own setting; the command gets its own back below.
		default:
			env = append(env, kv)
		}
	}
	if userGODEBUG != "" {
		env = append(env, userGODEBUG)
	}
	status := superviseCommand(args, env)
	if statusFile != "" {
		if err := writeExitStatus(statusFile, status); err != nil {
			fmt.Fprintf(os.Stderr, "migshm-init: record exit status: %v\n", err)
		}
	}
	return status
}

// superviseCommand starts the command, forwards signals to it, reaps orphans and returns
// the command's exit status (128+signal if a signal killed it).
func superviseCommand(args, env []string) int {
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
	main := proc.Pid
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			_ = unix.Kill(main, sig.(syscall.Signal))
			continue
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			if pid != main {
				continue // an orphan we adopted; reaped
			}
			switch {
			case ws.Exited():
				return ws.ExitStatus()
			case ws.Signaled():
				return 128 + int(ws.Signal())
			}
		}
	}
	return 0 // unreachable: sigs is never closed
}
