package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// drainPoll is how often `migshm drain` looks at the node's workloads while it waits;
// tests shorten it.
var drainPoll = time.Second

// drainResult is what `migshm drain --json` and `migshm undrain --json` print.
type drainResult struct {
	Node api.Node `json:"node"`
	// Workloads are the running or migrating workloads left on the node: none once it
	// is drained.
	Workloads []api.Workload `json:"workloads"`
}

func drainCommand() *cli.Command {
	return &cli.Command{
		Name:      "drain",
		Usage:     "move every workload off a node and keep new ones away",
		ArgsUsage: "NODE",
		Description: "Sets NODE draining: it takes no new workloads (run, move) and the leader's balancer\n" +
			"moves every workload it can off it, to the least loaded active nodes. Then waits,\n" +
			"printing what is left and what moves, until no running or migrating workload is left\n" +
			"on NODE, or --timeout passes. When the balancer leaves a workload where it is (pinned,\n" +
			"no room elsewhere, ...), its reason is printed once; `migshm unpin`, `migshm move` or\n" +
			"`migshm stop` deal with it.\n\n" +
			"NODE stays draining after migshm exits, on timeout or interrupted too, and when its\n" +
			"daemon restarts or the node goes down and comes back (a cordon), until `migshm undrain\n" +
			"NODE`. Running drain again on a draining node just waits.\n\n" +
			"Examples:\n  migshm drain n1\n  migshm drain n1 --timeout 30m\n  migshm drain n1 --no-wait\n" +
			"  migshm drain n1 --json",
		Flags: []cli.Flag{
			jsonFlag(),
			&cli.BoolFlag{Name: "no-wait", Usage: "set the node draining and return at once"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Minute, Usage: "how long to wait for the node to empty"},
		},
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("give one node: `migshm drain NODE` (got %d arguments; see `migshm nodes`)", len(args))
			}
			node := args[0]
			timeout := c.Duration("timeout")
			if timeout <= 0 && !c.Bool("no-wait") {
				return fmt.Errorf("--timeout %s: give a positive duration (or --no-wait not to wait)", timeout)
			}
			cl := client(c)
			ctx, cancel := apiContext(c)
			defer cancel()
			since := time.Now().UnixNano()
			n, err := cl.Drain(ctx, node)
			if err != nil {
				return err
			}
			if c.Bool("no-wait") {
				if c.Bool("json") {
					ws, err := cl.Workloads(ctx)
					if err != nil {
						return err
					}
					return printJSON(c.App.Writer, drainResult{Node: n, Workloads: leftOn(ws, n.ID)})
				}
				fmt.Fprintf(c.App.Writer, "%s is %s: it takes no new workloads and the balancer moves its workloads off; "+
					"`migshm drain %s` waits for it, `migshm undrain %s` takes it back\n", n.ID, n.State, n.ID, n.ID)
				return nil
			}
			dw := &drainWatch{cl: cl, node: n.ID, since: since, told: map[string]bool{}}
			if !c.Bool("json") {
				dw.out = c.App.Writer
				fmt.Fprintf(dw.out, "%s is %s: it takes no new workloads; waiting up to %s for the balancer to move its workloads off\n",
					n.ID, n.State, timeout)
			}
			sig, stop := signal.NotifyContext(c.Context, unix.SIGINT, unix.SIGTERM)
			defer stop()
			werr := dw.wait(sig, timeout)
			if werr != nil && !errors.Is(werr, errDrainCut) {
				return werr
			}
			if c.Bool("json") {
				ctx, cancel := apiContext(c)
				defer cancel()
				if nodes, err := cl.Nodes(ctx); err == nil {
					if i := slices.IndexFunc(nodes, func(x api.Node) bool { return x.ID == n.ID }); i >= 0 {
						n = nodes[i]
					}
				}
				if err := printJSON(c.App.Writer, drainResult{Node: n, Workloads: dw.left}); err != nil {
					return err
				}
			}
			switch {
			case werr == nil:
				if dw.out != nil {
					fmt.Fprintf(dw.out, "%s drained: 0 workloads; `migshm undrain %s` to take new work\n", n.ID, n.ID)
				}
				return nil
			case c.Context.Err() == nil && sig.Err() != nil:
				return fmt.Errorf("interrupted: stopped waiting with %s; %s stays draining: `migshm drain %s` waits again, `migshm undrain %s` takes it back",
					plural(len(dw.left), "workload")+" left", n.ID, n.ID, n.ID)
			case errors.Is(werr, context.DeadlineExceeded):
				return &wrapped{msg: fmt.Sprintf("%s still has %s after %s: %s; %s stays draining: `migshm drain %s` waits again, "+
					"`migshm move` or `migshm stop` deal with them, `migshm undrain %s` takes it back",
					n.ID, plural(len(dw.left), "workload"), timeout, dw.describeLeft(), n.ID, n.ID, n.ID), err: context.DeadlineExceeded}
			}
			return werr
		}),
	}
}

// errDrainCut marks a wait that ended before the node was empty: on timeout or signal.
var errDrainCut = errors.New("drain wait cut short")

// drainWatch follows a draining node until it has no workload left.
type drainWatch struct {
	cl    *api.Client
	node  string
	since int64     // when the drain was asked (unix nanos): older balancer passes say nothing of it
	out   io.Writer // progress; nil with --json

	left    []api.Workload    // running or migrating on the node, at the last poll
	moving  map[string]string // workload id -> target node, of those migrating
	skipped map[string]string // workload id -> why the balancer's last pass left it there
	line    string            // the last progress line printed
	told    map[string]bool   // skip reasons printed, by workload id + reason
	report  api.BalanceReport // the newest pass seen since the drain, if any
}

// wait polls until the node is empty (nil), or ctx ends or timeout passes (an error
// matching errDrainCut and the context's error), or a poll fails.
func (d *drainWatch) wait(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for {
		err := d.poll(ctx)
		switch {
		case err == nil && len(d.left) == 0:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("%w: %w", errDrainCut, ctx.Err())
		case err != nil:
			return fmt.Errorf("%s stays draining, but watching it failed: %w; see `migshm ps`", d.node, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", errDrainCut, ctx.Err())
		case <-tick.C:
		}
	}
}

// poll reads the node's workloads, their migrations and the leader's last balancer
// pass, and prints what changed.
func (d *drainWatch) poll(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ws, err := d.cl.Workloads(ctx)
	if err != nil {
		return err
	}
	left := leftOn(ws, d.node)
	moving := map[string]string{}
	if slices.ContainsFunc(left, func(w api.Workload) bool { return w.State == record.WorkloadMigrating }) {
		migs, err := d.cl.Migrations(ctx)
		if err != nil {
			return err
		}
		for _, m := range migs {
			if !m.Phase.Terminal() && m.Source == d.node {
				for _, id := range m.Moves() {
					moving[id] = m.Target
				}
			}
		}
		for _, w := range left {
			if _, ok := moving[w.ID]; !ok && w.State == record.WorkloadMigrating {
				moving[w.ID] = "?"
			}
		}
	}
	// A poll cut short keeps the last one whole.
	d.left, d.moving = left, moving
	// The reasons only explain; a leader that does not answer leaves them out.
	if len(d.left) > 0 {
		if r, err := d.cl.LastBalance(ctx); err == nil && r.At >= d.since {
			d.report = r
		}
	}
	d.skipped = map[string]string{}
	for _, s := range d.report.Skipped {
		if s.Node == d.node && s.Workload != "" {
			d.skipped[s.Workload] = s.Reason
		}
	}
	d.print()
	return nil
}

// print prints the progress line if it changed, and the balancer's reasons not yet told.
func (d *drainWatch) print() {
	if d.out == nil || len(d.left) == 0 {
		return
	}
	line := fmt.Sprintf("%s: %s left", d.node, plural(len(d.left), "workload"))
	var moving []string
	for _, w := range d.left {
		if to, ok := d.moving[w.ID]; ok {
			moving = append(moving, w.Name+" -> "+to)
		}
	}
	if len(moving) > 0 {
		line += "; moving: " + strings.Join(moving, ", ")
	}
	if line != d.line {
		fmt.Fprintln(d.out, line)
		d.line = line
	}
	for _, s := range d.report.Skipped {
		if s.Node != d.node {
			continue
		}
		what := "balancer"
		if s.Workload != "" {
			i := slices.IndexFunc(d.left, func(w api.Workload) bool { return w.ID == s.Workload })
			if i < 0 {
				continue // moved or stopped since
			}
			if _, ok := d.moving[s.Workload]; ok {
				continue // "in flight": the line above says it is moving
			}
			what = d.left[i].Name + " not moved"
		}
		if key := s.Workload + "\x00" + s.Reason; !d.told[key] {
			d.told[key] = true
			fmt.Fprintf(d.out, "%s: %s: %s\n", d.node, what, s.Reason)
		}
	}
}

// describeLeft says what is left on the node and why: "db1 (pinned: ...), api (moving to n2)".
func (d *drainWatch) describeLeft() string {
	parts := make([]string, len(d.left))
	for i, w := range d.left {
		why := "not moved yet"
		if to, ok := d.moving[w.ID]; ok {
			why = "moving to " + to
		} else if r, ok := d.skipped[w.ID]; ok {
			why = r
		}
		parts[i] = w.Name + " (" + why + ")"
	}
	return strings.Join(parts, ", ")
}

// leftOn returns the running or migrating workloads of node, by name.
func leftOn(ws []api.Workload, node string) []api.Workload {
	left := []api.Workload{}
	for _, w := range ws {
		if w.Node == node && w.State != record.WorkloadExited {
			left = append(left, w)
		}
	}
	slices.SortFunc(left, func(a, b api.Workload) int { return cmp.Compare(a.Name, b.Name) })
	return left
}

// plural is "1 workload", "3 workloads".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

func undrainCommand() *cli.Command {
	return &cli.Command{
		Name:      "undrain",
		Usage:     "make a draining node active again: it takes new workloads",
		ArgsUsage: "NODE",
		Description: "Ends `migshm drain NODE`: NODE takes new workloads again, and the balancer may move\n" +
			"workloads to it. Workloads moved off it stay where they are.\n\n" +
			"Examples:\n  migshm undrain n1\n  migshm undrain n1 --json",
		Flags: []cli.Flag{jsonFlag()},
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("give one node: `migshm undrain NODE` (got %d arguments; see `migshm nodes`)", len(args))
			}
			return callAndShow(c, func(ctx context.Context, cl *api.Client) (api.Node, error) {
				return cl.Undrain(ctx, args[0])
			}, func(w io.Writer, n api.Node) error {
				if n.State == record.NodeActive {
					fmt.Fprintf(w, "%s is %s: it takes new workloads\n", n.ID, n.State)
				} else {
					fmt.Fprintf(w, "%s is %s and no longer cordoned: it takes new workloads once it is back\n", n.ID, n.State)
				}
				return nil
			})
		}),
	}
}

func pinCommand() *cli.Command {
	return &cli.Command{
		Name:      "pin",
		Usage:     "keep a workload on its node: neither the balancer nor `migshm move` moves it",
		ArgsUsage: "WORKLOAD",
		Description: "WORKLOAD is a name, an id (or a unique prefix of at least 3 characters) or a host pid\n" +
			"of one of its processes. The balancer leaves a pinned workload where it is, even on a\n" +
			"draining node, and with it the other workloads of its IPC group (a group moves whole);\n" +
			"`migshm move` refuses it until `migshm unpin`.\n" +
			"`migshm ps` marks pinned workloads.\n\n" +
			"Examples:\n  migshm pin db1\n  migshm pin db1 --json",
		Flags:  []cli.Flag{jsonFlag()},
		Action: pinAction(true),
	}
}

func unpinCommand() *cli.Command {
	return &cli.Command{
		Name:      "unpin",
		Usage:     "let the balancer move a pinned workload again",
		ArgsUsage: "WORKLOAD",
		Description: "WORKLOAD is a name, an id (or a unique prefix of at least 3 characters) or a host pid\n" +
			"of one of its processes.\n\n" +
			"Examples:\n  migshm unpin db1\n  migshm unpin db1 --json",
		Flags:  []cli.Flag{jsonFlag()},
		Action: pinAction(false),
	}
}

// pinAction is the action of pin (pin true) and of unpin.
func pinAction(pin bool) cli.ActionFunc {
	return withArgs(func(c *cli.Context, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("give one workload: `migshm %s WORKLOAD` (see `migshm ps`)", c.Command.Name)
		}
		return callAndShow(c, func(ctx context.Context, cl *api.Client) (api.Workload, error) {
			if pin {
				return cl.Pin(ctx, args[0])
			}
			return cl.Unpin(ctx, args[0])
		}, func(w io.Writer, wl api.Workload) error {
			if pin {
				fmt.Fprintf(w, "pinned %s to %s\n", wl.Name, wl.Node)
			} else {
				fmt.Fprintf(w, "unpinned %s: the balancer may move it off %s\n", wl.Name, wl.Node)
			}
			return nil
		})
	})
}

func balanceCommand() *cli.Command {
	return &cli.Command{
		Name:  "balance",
		Usage: "run a balancer pass now (or plan one with --dry-run) and show what it does",
		Description: "Asks the leader's balancer for a pass now and shows the load of each active node as\n" +
			"the balancer counts it (CPU: cores its workloads use; LOAD: CPU over the CORES it\n" +
			"declares), the mean, the spread (most minus least loaded) against the threshold, the\n" +
			"moves it started, and what it left alone and why. Moves go on after migshm returns:\n" +
			"`migshm migrations` follows them. With --dry-run it only plans: nothing moves.\n\n" +
			"KIND is memory (the source is short of memory), drain (the source is draining) or\n" +
			"cpu (balancing the load).\n\n" +
			"Examples:\n  migshm balance --dry-run\n  migshm balance\n  migshm balance --dry-run --json",
		Flags: []cli.Flag{jsonFlag(), &cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "plan only: move nothing"}},
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 0 {
				return fmt.Errorf("balance takes no arguments (got %q); see `migshm balance --help`", args)
			}
			return callAndShow(c, func(ctx context.Context, cl *api.Client) (api.BalanceReport, error) {
				return cl.Balance(ctx, c.Bool("dry-run"))
			}, printBalance)
		}),
	}
}

// printBalance prints a balancer pass for `migshm balance`.
func printBalance(out io.Writer, r api.BalanceReport) error {
	w := newTable(out)
	fmt.Fprintln(w, "NODE\tSTATE\tCORES\tCPU\tLOAD\tWORKLOADS\tMEM FREE")
	settling := false
	for _, n := range r.Nodes {
		st := n.State
		if n.Settling {
			st, settling = st+" (settling)", true
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%.2f\t%.2f\t%d\t%s\n", n.Node, st, cores(n.Cores), n.CPU, n.Load, n.Workloads, human(n.MemFreeBytes))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nmean load %.2f, spread %.2f (threshold %.2f), imbalance %.3f\n", r.Mean, r.Spread, r.Threshold, r.Imbalance)
	switch {
	case len(r.Moves) == 0 && settling:
		fmt.Fprintln(out, "nothing to move now: a settling node's load predates its last migration; it counts again after its next load report")
	case len(r.Moves) == 0:
		fmt.Fprintln(out, "balanced: nothing to move")
	default:
		if r.DryRun {
			fmt.Fprintf(out, "\nwould move (dry run, nothing moved):\n")
		} else {
			fmt.Fprintf(out, "\nmoves:\n")
		}
		if err := printMoves(out, "  ", r.Moves, !r.DryRun); err != nil {
			return err
		}
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintln(out, "\nleft alone:")
		for _, s := range r.Skipped {
			fmt.Fprintf(out, "  %s%s\n", skipSubject(s), s.Reason)
		}
	}
	switch {
	case len(r.Moves) > 0 && r.DryRun:
		fmt.Fprintln(out, "\n`migshm balance` moves them now")
	case len(r.Moves) > 0:
		fmt.Fprintln(out, "\n`migshm migrations` follows them")
	}
	return nil
}

// printMoves prints balancer moves as a table indented by indent; with status, whether
// each started.
func printMoves(out io.Writer, indent string, moves []api.BalanceMove, status bool) error {
	w := newTable(out)
	if status {
		fmt.Fprintln(w, indent+"WORKLOAD\tFROM\tTO\tKIND\tSTATUS\tREASON")
	} else {
		fmt.Fprintln(w, indent+"WORKLOAD\tFROM\tTO\tKIND\tREASON")
	}
	for _, m := range moves {
		name := cmp.Or(m.Name, m.Workload)
		if !status {
			fmt.Fprintf(w, "%s%s\t%s\t%s\t%s\t%s\n", indent, name, m.From, m.To, m.Kind, oneLine(m.Reason))
			continue
		}
		st := "not started"
		switch {
		case m.Error != "":
			st = "error: " + truncate(oneLine(m.Error), 60)
		case m.Started:
			st = "started"
		}
		fmt.Fprintf(w, "%s%s\t%s\t%s\t%s\t%s\t%s\n", indent, name, m.From, m.To, m.Kind, st, oneLine(m.Reason))
	}
	return w.Flush()
}

// skipSubject names what a skip is about: "api on n1: ", "n1: ", or nothing for the
// whole pass.
func skipSubject(s api.BalanceSkip) string {
	switch {
	case s.Workload != "" && s.Node != "":
		return cmp.Or(s.Name, s.Workload) + " on " + s.Node + ": "
	case s.Workload != "":
		return cmp.Or(s.Name, s.Workload) + ": "
	case s.Node != "":
		return s.Node + ": "
	}
	return ""
}

// cores formats a core count: 4, 2.5, or "-" when unknown.
func cores(c float64) string {
	if c <= 0 {
		return "-"
	}
	return strconv.FormatFloat(c, 'f', -1, 64)
}

// printBalancer prints the balancer section of `migshm status`.
func printBalancer(out io.Writer, r *api.BalanceReport) error {
	if r == nil {
		fmt.Fprintln(out, "\nbalancer: leader did not answer")
		return nil
	}
	fmt.Fprintln(out, "\nbalancer:")
	w := newTable(out)
	auto := "off: drains only (`migshm balance` runs a full pass)"
	if r.Auto {
		auto = "on, every " + cmp.Or(r.Interval, "?")
	}
	fmt.Fprintf(w, "  auto:\t%s\n", auto)
	if r.At == 0 {
		fmt.Fprintf(w, "  last pass:\tnone yet\n")
	} else {
		fmt.Fprintf(w, "  last pass:\t%s ago by %s\n", ago(r.At), cmp.Or(r.Leader, "the leader"))
	}
	fmt.Fprintf(w, "  in flight:\t%s\n", plural(r.InFlight, "migration"))
	fmt.Fprintf(w, "  load:\tmean %.2f, spread %.2f (threshold %.2f)\n", r.Mean, r.Spread, r.Threshold)
	if len(r.LastMoves) == 0 {
		fmt.Fprintf(w, "  last moves:\tnone\n")
		return w.Flush()
	}
	fmt.Fprintf(w, "  last moves:\t%s, %s ago\n", plural(len(r.LastMoves), "move"), ago(r.LastMovesAt))
	if err := w.Flush(); err != nil {
		return err
	}
	return printMoves(out, "    ", r.LastMoves, true)
}
