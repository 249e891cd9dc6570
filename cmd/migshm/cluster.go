package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

func ago(nanos int64) string {
	if nanos == 0 {
		return "-"
	}
	d := time.Since(time.Unix(0, nanos))
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	default:
		return d.Round(time.Hour).String()
	}
}

func human(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show this node and the Raft cluster as it sees them",
		Description: "Shows the node answering on --socket, the Raft leader, term, commit and applied\n" +
			"index, the voters of the cluster, and the leader's balancer: whether it balances on\n" +
			"its own and how often, its last pass, the migrations in flight, the load spread\n" +
			"against its threshold, and the last moves it started, with their reasons.\n\n" +
			"Examples:\n  migshm status\n  migshm --socket /run/migshm-cluster/migshm-n2.sock status --json",
		Flags: []cli.Flag{jsonFlag()},
		Action: func(c *cli.Context) error {
			return callAndShow(c, func(ctx context.Context, cl *api.Client) (api.Status, error) {
				return cl.Status(ctx)
			}, printStatus)
		},
	}
}

// printStatus prints `migshm status`: the node, its voters and the leader's balancer.
func printStatus(out io.Writer, s api.Status) error {
	w := newTable(out)
	leader := s.Leader
	if leader == "" {
		leader = "none (no quorum?)"
	}
	fmt.Fprintf(w, "node:\t%s (%s)\n", s.Node, strings.ToLower(s.RaftState))
	fmt.Fprintf(w, "raft address:\t%s\n", s.RaftAddr)
	fmt.Fprintf(w, "peer api:\t%s\n", s.APIAddr)
	fmt.Fprintf(w, "leader:\t%s\n", leader)
	fmt.Fprintf(w, "term:\t%d\n", s.Term)
	fmt.Fprintf(w, "commit index:\t%d (applied %d)\n", s.CommitIndex, s.AppliedIndex)
	fmt.Fprintf(w, "workloads here:\t%d running\n", s.Workloads)
	fmt.Fprintf(w, "daemon:\t%s, up %s\n", s.Version, s.Uptime)
	if s.Error != "" {
		fmt.Fprintf(w, "problem:\t%s\n", s.Error)
	}
	w.Flush()
	fmt.Fprintln(out, "\nvoters:")
	w = newTable(out)
	fmt.Fprintln(w, "  ID\tADDRESS\tSUFFRAGE\tROLE")
	for _, p := range s.Peers {
		role := "follower"
		if p.Leader {
			role = "leader"
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", p.ID, p.Address, p.Suffrage, role)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := printAddresses(out, s.Addresses); err != nil {
		return err
	}
	return printBalancer(out, s.Balancer)
}

// printAddresses prints the address pool part of `migshm status`.
func printAddresses(out io.Writer, a *api.AddressStatus) error {
	if a == nil {
		return nil
	}
	fmt.Fprintln(out, "\naddresses of their own (migshm run --ip):")
	w := newTable(out)
	if a.Parent == "" {
		fmt.Fprintln(w, "  this node:\toffers none (no ip-parent)")
	} else {
		gw := cmp.Or(a.Gateway, "none")
		fmt.Fprintf(w, "  this node:\tmacvlan on %s, network %s, pool %s (%d free), gateway %s\n", a.Parent, a.Network, a.Pool, a.Free, gw)
	}
	for _, h := range a.Held {
		fmt.Fprintf(w, "  %s\t%s (%s) on %s\n", h.Addr, h.Name, h.Workload, h.Node)
	}
	return w.Flush()
}

func nodesCommand() *cli.Command {
	return &cli.Command{
		Name:  "nodes",
		Usage: "list the nodes of the cluster with their state and last load report",
		Description: "STATE is active, draining (takes no new workloads; see `migshm drain`), down or\n" +
			"left. CORES is the CPU capacity the node declares for the balancer; CPU is its use\n" +
			"of all its CPUs.\n\n" +
			"Examples:\n  migshm nodes\n  migshm nodes --json",
		Flags: []cli.Flag{jsonFlag()},
		Action: func(c *cli.Context) error {
			return callAndShow(c, func(ctx context.Context, cl *api.Client) ([]api.Node, error) {
				return cl.Nodes(ctx)
			}, printNodes)
		},
	}
}

// printNodes prints the table of `migshm nodes`.
func printNodes(out io.Writer, nodes []api.Node) error {
	w := newTable(out)
	fmt.Fprintln(w, "NODE\tSTATE\tRAFT\tPEER API\tCORES\tCPU\tMEM FREE\tWORKLOADS\tREPORTED")
	for _, n := range nodes {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%.0f%%\t%s\t%d\t%s\n", n.ID, n.State, n.RaftAddr, n.APIAddr,
			cores(n.Load.Cores), 100*n.Load.CPU, human(n.Load.MemFreeBytes), n.Load.Workloads, ago(n.LoadAt))
	}
	return w.Flush()
}

func psCommand() *cli.Command {
	return &cli.Command{
		Name:  "ps",
		Usage: "list workloads on every node",
		Description: "PIDS counts the processes of the workload; INIT is the host pid of its init on its\n" +
			"node (use it, or the name or id, with stop, logs and move). CPU is the cores it used\n" +
			"and MEM its memory (resident and shared), as its node last measured them; PIN says\n" +
			"whether it is pinned (`migshm pin`): the balancer never moves it. ADDR is the address of\n" +
			"its own it was started with (`migshm run --ip`), which moves with it.\n\n" +
			"Examples:\n  migshm ps\n  migshm ps --all --json",
		Flags: []cli.Flag{jsonFlag(), &cli.BoolFlag{Name: "all", Aliases: []string{"a"}, Usage: "include exited workloads"}},
		Action: func(c *cli.Context) error {
			ctx, cancel := apiContext(c)
			defer cancel()
			ws, err := client(c).Workloads(ctx)
			if err != nil {
				return err
			}
			if !c.Bool("all") {
				kept := ws[:0]
				for _, wl := range ws {
					if wl.State != "exited" {
						kept = append(kept, wl)
					}
				}
				ws = kept
			}
			if ws == nil {
				ws = []api.Workload{} // --json prints [], not null
			}
			return show(c, ws, printWorkloads)
		},
	}
}

// printWorkloads prints the table of `migshm ps`, by name.
func printWorkloads(out io.Writer, ws []api.Workload) error {
	sort.Slice(ws, func(i, j int) bool { return ws[i].Name < ws[j].Name })
	w := newTable(out)
	fmt.Fprintln(w, "ID\tNAME\tNODE\tSTATE\tINIT\tPIDS\tCPU\tMEM\tPIN\tGROUP\tADDR\tSTARTED\tCOMMAND")
	for _, wl := range ws {
		state := string(wl.State)
		cpu, mem := "-", "-"
		if wl.State == "exited" {
			state = fmt.Sprintf("exited(%d)", wl.ExitStatus)
		} else if wl.Load != nil {
			cpu, mem = fmt.Sprintf("%.2f", wl.Load.CPU), human(wl.Load.MemBytes)
		}
		pin := "-"
		if wl.Pinned {
			pin = "yes"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wl.ID, wl.Name, wl.Node, state, wl.InitPid,
			len(wl.Pids), cpu, mem, pin, wl.Group, cmp.Or(wl.Addr, "-"), ago(wl.StartedAt), strings.Join(wl.Args, " "))
	}
	return w.Flush()
}

func segmentsCommand() *cli.Command {
	return &cli.Command{
		Name:  "segments",
		Usage: "list SysV shared memory segments of all workloads and who owns them",
		Description: "GROUP is the IPC group (the workload's IPC namespace); SHMID and KEY are as the\n" +
			"workload sees them, and stay the same when it moves. OWNER holds the owner copy.\n\n" +
			"Examples:\n  migshm segments\n  migshm segments --json",
		Flags: []cli.Flag{jsonFlag()},
		Action: func(c *cli.Context) error {
			ctx, cancel := apiContext(c)
			defer cancel()
			cl := client(c)
			segs, err := cl.Segments(ctx)
			if err != nil {
				return err
			}
			return show(c, segs, func(w io.Writer, segs []api.Segment) error {
				ws, err := cl.Workloads(ctx) // the table names the workloads of each group
				if err != nil {
					return err
				}
				return printSegments(w, segs, ws)
			})
		},
	}
}

// printSegments prints the table of `migshm segments`, with the running workloads of ws
// that use each segment.
func printSegments(out io.Writer, segs []api.Segment, ws []api.Workload) error {
	users := map[string][]string{}
	for _, wl := range ws {
		if wl.State != "exited" {
			users[wl.Group] = append(users[wl.Group], wl.Name)
		}
	}
	w := newTable(out)
	fmt.Fprintln(w, "GROUP\tSHMID\tKEY\tSIZE\tMODE\tOWNER\tEPOCH\tWORKLOADS")
	for _, s := range segs {
		fmt.Fprintf(w, "%s\t%d\t0x%08x\t%s\t%04o\t%s\t%d\t%s\n", s.Group, s.Shmid, s.Key, human(s.Size),
			s.Mode, s.Owner, s.Epoch, strings.Join(users[s.Group], ","))
	}
	return w.Flush()
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "start a command as a workload on the node (in its own PID, IPC, UTS and mount namespaces)",
		ArgsUsage: "-- CMD [ARGS...]",
		Description: "The node's daemon starts CMD under a small init in fresh namespaces, with stdin on\n" +
			"/dev/null and stdout/stderr in files (see `migshm logs`), registers it in the cluster\n" +
			"table, and follows its SysV segments. The workload keeps running if the daemon restarts,\n" +
			"and lives while any of its processes does: a program that daemonizes (forks, and its\n" +
			"first process exits) keeps it alive; name its pidfile with --pidfile so that signals and\n" +
			"the exit status are its main process's. The workload sees a /proc of its own.\n" +
			"CMD, its files and the directory must exist at the same paths on a node it moves to.\n\n" +
			"Examples:\n" +
			"  migshm run -- /usr/local/bin/shmcounter 4\n" +
			"  migshm run --name db1 --env PGDATA=/srv/pg -- /usr/lib/postgresql/15/bin/postgres\n" +
			"  migshm run --ipc-group g1 -- ./producer; migshm run --ipc-group g1 -- ./consumer\n" +
			"  migshm run --pidfile /run/mydaemon.pid -- /usr/sbin/mydaemon --daemon\n" +
			"  migshm run --ip auto --name web -- /usr/sbin/nginx -g 'daemon off;'\n\n" +
			"With --ip the workload gets an address of its own on the cluster's network (a macvlan on\n" +
			"the node's ip-parent interface, in a network namespace of its own) which moves with it:\n" +
			"its listeners and open TCP connections survive `migshm move`. Its own node cannot reach\n" +
			"it over that address (macvlan); every other host on the network can.",
		Flags: []cli.Flag{
			jsonFlag(),
			&cli.StringFlag{Name: "name", Usage: "workload name (default: command name + id suffix)"},
			&cli.StringFlag{Name: "ipc-group", Usage: "share the IPC namespace (SysV segments) of the running workloads of this group, or start the group"},
			&cli.StringSliceFlag{Name: "env", Usage: "KEY=VALUE for the command's environment (repeatable); PATH defaults to the system's"},
			&cli.StringFlag{Name: "dir", Usage: "working directory (default: the current one)"},
			&cli.StringFlag{Name: "pidfile", Usage: "where the program, if it daemonizes, writes its main pid (relative to --dir); the run waits for it"},
			&cli.DurationFlag{Name: "pidfile-timeout", Value: 10 * time.Second, Usage: "how long the run waits for --pidfile before it stops the workload and fails"},
			&cli.StringFlag{Name: "ip", Usage: "an address of its own that moves with it, connections included: ADDR, ADDR/PREFIX, or auto " +
				"(the first free one of the nodes' ip-pool); members of an ipc group share the group's"},
		},
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) == 0 {
				return errors.New("no command given: use `migshm run [--name N] -- CMD [ARGS...]`")
			}
			if strings.Contains(args[0], "/") && !filepath.IsAbs(args[0]) {
				abs, err := filepath.Abs(args[0])
				if err != nil {
					return err
				}
				args[0] = abs
			}
			for _, e := range c.StringSlice("env") {
				if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
					return fmt.Errorf("--env %q: want KEY=VALUE", e)
				}
			}
			dir, err := filepath.Abs(c.String("dir")) // "" is the current directory
			if err != nil {
				return err
			}
			if c.Duration("pidfile-timeout") <= 0 {
				return fmt.Errorf("--pidfile-timeout %v: want a positive duration", c.Duration("pidfile-timeout"))
			}
			req := api.RunRequest{Name: c.String("name"), Group: c.String("ipc-group"), Args: args, Env: c.StringSlice("env"), Dir: dir,
				IP: c.String("ip")}
			if req.PidFile = c.String("pidfile"); req.PidFile != "" {
				req.PidFileTimeoutMS = c.Duration("pidfile-timeout").Milliseconds()
			}
			return callAndShow(c, func(ctx context.Context, cl *api.Client) (api.Workload, error) {
				return cl.Run(ctx, req)
			}, func(w io.Writer, wl api.Workload) error {
				fmt.Fprintf(w, "started %s (id %s) on %s, init pid %d, ipc group %s", wl.Name, wl.ID, wl.Node, wl.InitPid, wl.Group)
				if wl.Addr != "" {
					fmt.Fprintf(w, ", address %s", wl.Addr)
				}
				fmt.Fprintln(w)
				return nil
			})
		},
	}
}

func stopCommand() *cli.Command {
	return &cli.Command{
		Name:      "stop",
		Usage:     "stop a workload (SIGTERM, then SIGKILL after the timeout)",
		ArgsUsage: "WORKLOAD",
		Description: "WORKLOAD is a name, an id (or a unique prefix of at least 3 characters) or a host pid\n" +
			"of one of its processes. It may run on any node.\n\n" +
			"Examples:\n  migshm stop db1\n  migshm stop --timeout 30s w3f2a",
		Flags: []cli.Flag{jsonFlag(), &cli.DurationFlag{Name: "timeout", Usage: "grace period before SIGKILL (default: the node's stop-timeout)"}},
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 1 {
				return errors.New("give one workload: `migshm stop WORKLOAD` (see `migshm ps`)")
			}
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout")+time.Minute)
			defer cancel()
			wl, err := client(c).Stop(ctx, args[0], api.StopRequest{TimeoutMS: c.Duration("timeout").Milliseconds()})
			if err != nil {
				return err
			}
			return show(c, wl, func(w io.Writer, wl api.Workload) error {
				fmt.Fprintf(w, "stopped %s on %s: exit status %d\n", wl.Name, wl.Node, wl.ExitStatus)
				return nil
			})
		}),
	}
}

func rmCommand() *cli.Command {
	return &cli.Command{
		Name:        "rm",
		Usage:       "forget an exited workload: its record and its log files",
		ArgsUsage:   "WORKLOAD",
		Description: "Examples:\n  migshm rm db1",
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 1 {
				return errors.New("give one workload: `migshm rm WORKLOAD` (see `migshm ps --all`)")
			}
			ctx, cancel := apiContext(c)
			defer cancel()
			if err := client(c).Remove(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "removed %s\n", args[0])
			return nil
		}),
	}
}

func logsCommand() *cli.Command {
	return &cli.Command{
		Name:      "logs",
		Usage:     "print a workload's output",
		ArgsUsage: "WORKLOAD",
		Description: "Prints the workload's stdout (or stderr), fetched from the node it runs on.\n\n" +
			"Examples:\n  migshm logs db1\n  migshm logs -f --tail 20 db1\n  migshm logs --stderr db1",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new output until the workload exits"},
			&cli.BoolFlag{Name: "stderr", Usage: "print stderr instead of stdout"},
			&cli.IntFlag{Name: "tail", Usage: "start with the last N lines (0: all)"},
		},
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 1 {
				return errors.New("give one workload: `migshm logs WORKLOAD` (see `migshm ps`)")
			}
			stream := "stdout"
			if c.Bool("stderr") {
				stream = "stderr"
			}
			ctx, stop := signal.NotifyContext(c.Context, unix.SIGINT, unix.SIGTERM)
			defer stop()
			return client(c).Logs(ctx, args[0], stream, c.Bool("follow"), c.Int("tail"), c.App.Writer)
		}),
	}
}

func leaveCommand() *cli.Command {
	return &cli.Command{
		Name:      "leave",
		Usage:     "remove a node from the cluster (the node answering on --socket, or NODE)",
		ArgsUsage: "[NODE]",
		Description: "Without NODE the node you talk to leaves; name a NODE to remove a dead one. A node\n" +
			"that still runs workloads is refused unless --force. Afterwards stop that node's\n" +
			"daemon; to join again, clear its data dir's raft/ and start it with --join.\n\n" +
			"Examples:\n  migshm --socket /run/migshmd/migshmd.sock leave\n  migshm leave node3",
		Flags: []cli.Flag{jsonFlag(), &cli.BoolFlag{Name: "force", Usage: "leave even though workloads run there"}},
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) > 1 {
				return errors.New("give at most one node: `migshm leave [NODE]`")
			}
			node := ""
			if len(args) == 1 {
				node = args[0]
			}
			return callAndShow(c, func(ctx context.Context, cl *api.Client) (api.LeaveResult, error) {
				return cl.Leave(ctx, api.LeaveRequest{Node: node, Force: c.Bool("force")})
			}, func(w io.Writer, res api.LeaveResult) error {
				fmt.Fprintf(w, "node %s left the cluster; stop its daemon now\n", res.Node)
				return nil
			})
		}),
	}
}
