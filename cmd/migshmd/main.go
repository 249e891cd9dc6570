// Command migshmd is the migshm node daemon: a member of the Raft cluster that holds
// the ownership table, the local API for the migshm CLI and the peer API between nodes.
// Started as "migshm-init" it is instead the init of a workload (see workload.Start).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"

	"github.com/migshm/migshm/daemon"
	"github.com/migshm/migshm/workload"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

func main() {
	workload.MaybeRunInit()
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "migshmd: %v\n", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "migshmd",
		Usage: "the migshm node daemon",
		Description: "migshmd runs on every node. The daemons form one Raft cluster that holds the table of\n" +
			"nodes, workloads and SysV segments, start workloads for `migshm run`, and move them.\n\n" +
			"Settings come from flags, then MIGSHMD_* environment variables, then the TOML file\n" +
			"(keys are the flag names), then defaults.\n\n" +
			"Examples:\n" +
			"  migshmd --bootstrap                       # first node of a new cluster\n" +
			"  migshmd --join 10.0.0.11:7421             # any other node\n" +
			"  migshmd --config /etc/migshm/migshmd.toml # what the systemd unit runs",
		HideHelpCommand: true,
		Flags:           daemon.Flags(),
		Before:          daemon.LoadConfigFile,
		Action:          run,
	}
}

func run(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see migshmd --help)", c.Args().First())
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root: CRIU, namespaces and the root-only local API need it")
	}
	// Raft state, images, logs and sockets are private to root.
	unix.Umask(0o077)
	// Whatever this process inherited beyond stdio (a shell's or a supervisor's fds)
	// must not leak into workloads: CRIU would have to dump them, and cannot when they
	// belong to another mount namespace (ip netns exec makes one). As runc does.
	if err := daemon.CloseExecFrom(3); err != nil {
		return err
	}
	cfg, err := daemon.ConfigFromCLI(c)
	if err != nil {
		return err
	}
	log, err := daemon.NewLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	d, err := daemon.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	return d.Run(ctx)
}
