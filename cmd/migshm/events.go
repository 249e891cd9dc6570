package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

func eventsCommand() *cli.Command {
	return &cli.Command{
		Name:  "events",
		Usage: "print the cluster table's changes: nodes, workloads, migrations, segments",
		Description: "Prints the changes of the replicated table the node on --socket saw: nodes joining,\n" +
			"going down, draining or leaving; workloads starting, exiting or moving; each phase of\n" +
			"a migration; a segment's new owner. The node keeps its last 1000 events and numbers\n" +
			"them (the numbers are that node's own and restart with it); --since N prints those\n" +
			"after N. -f keeps following, until interrupted.\n\n" +
			"Each event is stamped with the time the leader took the change and comes from the\n" +
			"node applying it, so none is missed, however fast; a node that restarts lists again\n" +
			"the changes of the log it replays.\n\n" +
			"With --json each event is one JSON object on a line (NDJSON), as it comes.\n\n" +
			"Examples:\n  migshm events\n  migshm events -f\n  migshm events -f --json | jq -c 'select(.kind == \"migration\")'\n" +
			"  migshm events --since 120",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new events until interrupted"},
			&cli.Uint64Flag{Name: "since", Usage: "print the events after this number"},
			&cli.BoolFlag{Name: "json", Usage: "print each event as JSON, one a line"},
		},
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 0 {
				return fmt.Errorf("events takes no arguments (got %q); see `migshm events --help`", args)
			}
			emit := func(ev api.Event) error { return printEvent(c.App.Writer, ev) }
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				emit = func(ev api.Event) error { return enc.Encode(ev) }
			}
			if c.Bool("follow") {
				ctx, stop := signal.NotifyContext(c.Context, unix.SIGINT, unix.SIGTERM)
				defer stop()
				var werr error
				err := client(c).FollowEvents(ctx, c.Uint64("since"), func(ev api.Event) {
					if werr == nil {
						werr = emit(ev)
					}
				})
				if werr != nil {
					return werr
				}
				return err
			}
			ctx, cancel := apiContext(c)
			defer cancel()
			evs, err := client(c).Events(ctx, c.Uint64("since"))
			if err != nil {
				return err
			}
			for _, ev := range evs {
				if err := emit(ev); err != nil {
					return err
				}
			}
			return nil
		}),
	}
}

// printEvent prints one event on a line: its time, what changed, where, e.g.
// "12:03:04  migration m1a2b3c  db1  n1 -> n2  frozen".
func printEvent(w io.Writer, ev api.Event) error {
	parts := []string{time.Unix(0, ev.At).Format("15:04:05"), ev.Kind + " " + ev.ID}
	if ev.Name != "" {
		parts = append(parts, ev.Name)
	}
	switch {
	case ev.From != "" || ev.To != "":
		parts = append(parts, ev.From+" -> "+ev.To)
	case ev.Node != "" && ev.Node != ev.ID:
		parts = append(parts, ev.Node)
	}
	parts = append(parts, ev.Change)
	if ev.Detail != "" {
		parts = append(parts, ev.Detail)
	}
	_, err := fmt.Fprintln(w, strings.Join(parts, "  "))
	return err
}
