package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
	"github.com/urfave/cli/v2"
)

func newApp() *cli.App {
	return withCompletion(&cli.App{
		Name:  "migshm",
		Usage: "move running programs that use SysV shared memory between Linux nodes",
		Description: "migshm moves process trees together with their SysV shared memory segments\n" +
			"between the nodes of a cluster, using CRIU.",
		HideHelpCommand: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "criu", Usage: "criu binary to use", EnvVars: []string{migrate.EnvCRIU},
				DefaultText: migrate.DefaultCRIUPrefix + "/bin/criu"},
			socketFlag(),
		},
		Commands: []*cli.Command{
			runCommand(), psCommand(), stopCommand(), logsCommand(), rmCommand(),
			nodesCommand(), segmentsCommand(), statusCommand(), leaveCommand(),
			moveCommand(), migrationsCommand(), checkCommand(), drainCommand(), undrainCommand(),
			pinCommand(), unpinCommand(), balanceCommand(), topCommand(), eventsCommand(), doctorCommand(), tlsCommand(),
			completionCommand(), manCommand(),
		},
	})
}

// doctorReport is what `migshm doctor` finds.
type doctorReport struct {
	OK          bool            `json:"ok"`
	Root        bool            `json:"root"`
	Kernel      string          `json:"kernel"`
	CRIU        string          `json:"criu"`
	CRIUVersion string          `json:"criu_version,omitempty"`
	Features    map[string]bool `json:"criu_features,omitempty"`
	PipeMaxSize int             `json:"pipe_max_size"`
	Problems    []string        `json:"problems,omitempty"`
}

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check that this machine can checkpoint and restore workloads",
		Description: "Runs `criu check` with the CRIU migshm uses (never the one in PATH), lists the\n" +
			"optional CRIU features it reports, and checks root and kernel settings.\n\n" +
			"Examples:\n  migshm doctor\n  migshm doctor --json",
		Flags: []cli.Flag{jsonFlag()},
		Action: func(c *cli.Context) error {
			r := doctorReport{Root: os.Geteuid() == 0}
			if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
				r.Kernel = strings.TrimSpace(string(b))
			}
			if !r.Root {
				r.Problems = append(r.Problems, "not running as root: CRIU and namespaces need root")
			}
			path, err := migrate.FindCRIU(c.String("criu"))
			r.CRIU = path
			if err != nil {
				r.Problems = append(r.Problems, err.Error())
			} else if r.Root {
				ctx, cancel := context.WithTimeout(c.Context, time.Minute)
				caps, err := (&migrate.CRIU{Path: path}).Check(ctx)
				cancel()
				if err != nil {
					r.Problems = append(r.Problems, err.Error())
				} else {
					r.CRIUVersion, r.Features = caps.Version, caps.Features
				}
			}
			if b, err := os.ReadFile("/proc/sys/fs/pipe-max-size"); err == nil {
				r.PipeMaxSize, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			}
			r.OK = len(r.Problems) == 0
			if err := show(c, r, printDoctor); err != nil {
				return err
			}
			if !r.OK {
				return errors.New("this machine cannot move workloads yet; fix the problems above (scripts/setup does most of it)")
			}
			return nil
		},
	}
}

// printDoctor prints what `migshm doctor` found.
func printDoctor(w io.Writer, r doctorReport) error {
	fmt.Fprintf(w, "kernel         %s\n", r.Kernel)
	fmt.Fprintf(w, "root           %v\n", r.Root)
	fmt.Fprintf(w, "criu           %s %s\n", r.CRIU, r.CRIUVersion)
	for _, f := range migrate.OptionalFeatures {
		if v, ok := r.Features[f]; ok {
			fmt.Fprintf(w, "  %-16s %s\n", f, map[bool]string{true: "yes", false: "no"}[v])
		}
	}
	fmt.Fprintf(w, "pipe-max-size  %d\n", r.PipeMaxSize)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
	return nil
}

// checkReport is what `migshm check` finds.
type checkReport struct {
	Pid      int                   `json:"pid"`
	Movable  bool                  `json:"movable"`
	Init     int                   `json:"init,omitempty"`
	Procs    []workload.Proc       `json:"processes,omitempty"`
	Segments []workload.Attachment `json:"segments,omitempty"`
	Reason   migrate.Reason        `json:"reason,omitempty"`
	Detail   string                `json:"detail,omitempty"`
}

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "say whether a workload could be moved (to NODE), and why not",
		ArgsUsage: "PID | WORKLOAD NODE",
		Description: "With a PID: reads /proc on this machine only (no daemon needed; nothing is stopped or\n" +
			"dumped) and checks what CRIU needs to move the process tree with its SysV shared\n" +
			"memory intact: the tree has PID and IPC namespaces of its own, no process outside it\n" +
			"shares its IPC namespace, no SysV segment is attached in the host IPC namespace. PID\n" +
			"may be any process of the tree.\n\n" +
			"With a WORKLOAD and a NODE: asks the daemons whether `migshm move WORKLOAD NODE`\n" +
			"could work now, wherever the workload runs: the same checks on its node, its\n" +
			"connections, and whether NODE is active and has the memory it needs. WORKLOAD is a\n" +
			"name, an id (or a unique prefix) or a host pid of one of its processes.\n\n" +
			"Exits 0 when movable, 1 (with the reasons) when not.\n\n" +
			"Examples:\n  migshm check 4242\n  migshm check --json 4242\n" +
			"  migshm check db1 n2\n  migshm check db1 n2 --json",
		Flags: []cli.Flag{jsonFlag()},
		Action: withArgs(func(c *cli.Context, args []string) error {
			switch len(args) {
			case 1:
				return checkLocal(c, args[0])
			case 2:
				return checkMove(c, args[0], args[1])
			}
			return fmt.Errorf("check needs one PID, or a WORKLOAD and a NODE (got %d arguments); see `migshm check --help`", len(args))
		}),
	}
}

// checkLocal is the /proc preflight of the workload of one process on this machine.
func checkLocal(c *cli.Context, arg string) error {
	pid, err := strconv.Atoi(arg)
	if err != nil || pid <= 0 {
		return fmt.Errorf("%q is not a process id", arg)
	}
	tree, err := migrate.Preflight{}.Check(pid)
	r := checkReport{Pid: pid, Movable: err == nil}
	var nm *migrate.NotMovableError
	switch {
	case err == nil:
		r.Init, r.Procs, r.Segments = tree.Init.Pid, tree.Procs, tree.Segments()
	case errors.As(err, &nm):
		r.Reason, r.Detail, r.Procs = nm.Reason, nm.Detail, nm.Procs
	case errors.Is(err, workload.ErrNoProcess):
		return fmt.Errorf("no process with pid %d on this node", pid)
	default:
		return fmt.Errorf("check pid %d: %w", pid, err)
	}
	if err := show(c, r, printCheckLocal); err != nil {
		return err
	}
	return err // nil, or why the tree cannot move
}

// printCheckLocal prints a movable process tree; the error of `migshm check` says why one
// is not.
func printCheckLocal(w io.Writer, r checkReport) error {
	if r.Movable {
		fmt.Fprintf(w, "pid %d: movable: workload init %d, %d processes, %d SysV segments attached\n",
			r.Pid, r.Init, len(r.Procs), len(r.Segments))
	}
	return nil
}
