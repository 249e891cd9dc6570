package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/gdamore/tcell/v2"
	"github.com/migshm/migshm/api"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// `migshm top`: a live view of the cluster, as openMosix's mosmon was. Each refresh
// fetches the table (nodes, workloads, migrations) and the leader's last balancer pass
// from the node on --socket; renderTop turns that into the lines of one frame, and the
// frame goes either to a full-screen tcell view (stdout a terminal) or, as plain text,
// to stdout again and again.

// topData is what one frame shows.
type topData struct {
	At         time.Time // when it was fetched
	Socket     string
	Interval   time.Duration
	Nodes      []api.Node
	Workloads  []api.Workload
	Migrations []api.Migration
	Balance    *api.BalanceReport
	// BalanceErr is why the leader's last pass is missing; the table may still be there.
	BalanceErr string
	// Err is why the daemon did not answer this time; the tables are then those of
	// Stale, the last time it did (zero: never).
	Err   string
	Stale time.Time
}

// topTimeout bounds the calls of one refresh: a hung daemon shows as an error.
const topTimeout = 5 * time.Second

// fetchTop asks cl for a frame's data. When the daemon does not answer, the frame keeps
// the tables of last and says why.
func fetchTop(ctx context.Context, cl *api.Client, last topData) topData {
	ctx, cancel := context.WithTimeout(ctx, topTimeout)
	defer cancel()
	d := topData{At: time.Now(), Socket: last.Socket, Interval: last.Interval}
	var err error
	if d.Nodes, err = cl.Nodes(ctx); err == nil {
		if d.Workloads, err = cl.Workloads(ctx); err == nil {
			d.Migrations, err = cl.Migrations(ctx)
		}
	}
	if err != nil {
		d.Nodes, d.Workloads, d.Migrations, d.Balance = last.Nodes, last.Workloads, last.Migrations, last.Balance
		d.Err, d.Stale = oneLine(err.Error()), last.Stale
		if last.Err == "" {
			d.Stale = last.At
		}
		return d
	}
	if b, err := cl.LastBalance(ctx); err != nil {
		d.BalanceErr = oneLine(err.Error())
	} else {
		d.Balance = &b
	}
	return d
}

// topBarWidth is the number of cells of a node's CPU bar.
const topBarWidth = 10

// loadBar draws used of capacity: "[#####.....] 0.52/1 cores"; a node without a
// declared capacity gets its CPU share of all its CPUs, in percent.
func loadBar(share, capacity float64) string {
	fill := func(frac float64) string {
		n := int(frac*topBarWidth + 0.5)
		n = max(0, min(topBarWidth, n))
		return "[" + strings.Repeat("#", n) + strings.Repeat(".", topBarWidth-n) + "]"
	}
	if capacity <= 0 {
		return fmt.Sprintf("%s %3.0f%%", fill(share), 100*share)
	}
	used := share * capacity
	return fmt.Sprintf("%s %.2f/%s cores", fill(share), used, cores(capacity))
}

// memFree formats free/total memory, "-" when the node has not reported it.
func memFree(free, total uint64) string {
	if total == 0 {
		return "-"
	}
	return human(free) + "/" + human(total)
}

// topNameWidth caps names and ids in the frame's columns.
const topNameWidth = 24

// renderTop returns the lines of one frame of d. width > 0 cuts every line to that many
// characters (the terminal's width); 0 leaves them whole.
func renderTop(d topData) []string { return renderTopWidth(d, 0) }

func renderTopWidth(d topData, width int) []string {
	var b bytes.Buffer
	head := "migshm top"
	if d.Socket != "" {
		head += "  " + d.Socket
	}
	if !d.At.IsZero() {
		head += "  " + d.At.Format("15:04:05")
	}
	if d.Interval > 0 {
		head += "  every " + d.Interval.String()
	}
	fmt.Fprintln(&b, head)
	if d.Err != "" {
		fmt.Fprintf(&b, "error: %s (retrying)\n", d.Err)
		if d.Stale.IsZero() {
			fmt.Fprintln(&b, "no answer yet")
			return cut(b.String(), width)
		}
		fmt.Fprintf(&b, "showing the cluster as of %s\n", d.Stale.Format("15:04:05"))
	}

	names := map[string]string{}
	running, exited := []api.Workload{}, 0
	for _, wl := range d.Workloads {
		names[wl.ID] = wl.Name
		if wl.State == "exited" {
			exited++
			continue
		}
		running = append(running, wl)
	}

	fmt.Fprintf(&b, "\nnodes (%d)\n", len(d.Nodes))
	w := newTable(&b)
	fmt.Fprintln(w, "  NODE\tSTATE\tCPU\tMEM FREE\tWORKLOADS")
	for _, n := range d.Nodes {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%d\n", truncate(n.ID, topNameWidth), n.State,
			loadBar(n.Load.CPU, n.Load.Cores), memFree(n.Load.MemFreeBytes, n.Load.MemTotalBytes), n.Load.Workloads)
	}
	w.Flush()
	if len(d.Nodes) == 0 {
		fmt.Fprintln(&b, "  no nodes")
	}

	fmt.Fprintf(&b, "\nworkloads (%d running", len(running))
	if exited > 0 {
		fmt.Fprintf(&b, ", %d exited", exited)
	}
	fmt.Fprintln(&b, ")")
	if len(running) == 0 {
		fmt.Fprintln(&b, "  none running")
	} else {
		w = newTable(&b)
		fmt.Fprintln(w, "  NAME\tNODE\tSTATE\tCPU\tMEM\tGROUP")
		for _, wl := range running {
			cpu, mem := "-", "-"
			if wl.Load != nil {
				cpu, mem = fmt.Sprintf("%.2f", wl.Load.CPU), human(wl.Load.MemBytes)
			}
			state := string(wl.State)
			if wl.Pinned {
				state += " (pinned)"
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\n", truncate(wl.Name, topNameWidth), truncate(wl.Node, topNameWidth),
				state, cpu, mem, truncate(wl.Group, topNameWidth))
		}
		w.Flush()
	}

	var moving []api.Migration
	for _, m := range d.Migrations {
		if !m.Phase.Terminal() {
			moving = append(moving, m)
		}
	}
	fmt.Fprintf(&b, "\nmigrations in flight (%d)\n", len(moving))
	if len(moving) == 0 {
		fmt.Fprintln(&b, "  none")
	} else {
		w = newTable(&b)
		fmt.Fprintln(w, "  ID\tWORKLOAD\tFROM -> TO\tPHASE\tBYTES\tFOR")
		for _, m := range moving {
			fmt.Fprintf(w, "  %s\t%s\t%s -> %s\t%s\t%s\t%s\n", m.ID, truncate(migrationNames(m, names), topNameWidth),
				m.Source, m.Target, m.Phase, human(m.Bytes), sinceAt(d.At, m.StartedAt))
		}
		w.Flush()
	}

	fmt.Fprintln(&b)
	switch r := d.Balance; {
	case r == nil && d.BalanceErr != "":
		fmt.Fprintf(&b, "balancer: %s\n", d.BalanceErr)
	case r == nil:
		fmt.Fprintln(&b, "balancer: no pass known")
	case r.At == 0:
		fmt.Fprintln(&b, "balancer: no pass yet")
	default:
		auto := "auto off"
		if r.Auto {
			auto = "auto every " + cmp.Or(r.Interval, "?")
		}
		fmt.Fprintf(&b, "balancer: last pass %s ago by %s (%s): mean %.2f, spread %.2f (threshold %.2f), %s\n",
			sinceAt(d.At, r.At), cmp.Or(r.Leader, "the leader"), auto, r.Mean, r.Spread, r.Threshold,
			plural(len(r.Moves), "move"))
		if len(r.LastMoves) > 0 {
			fmt.Fprintf(&b, "  last moves, %s ago:\n", sinceAt(d.At, r.LastMovesAt))
			for _, m := range r.LastMoves {
				fmt.Fprintf(&b, "    %s %s -> %s (%s): %s\n", truncate(cmp.Or(m.Name, m.Workload), topNameWidth),
					m.From, m.To, m.Kind, oneLine(m.Reason))
			}
		}
	}
	return cut(b.String(), width)
}

// migrationNames names the workload a migration moves, and the members of its group
// that move with it: "db1 (+api)".
func migrationNames(m api.Migration, names map[string]string) string {
	name := cmp.Or(names[m.Workload], m.Workload)
	if more := memberNames(&m, names); more != "" {
		name += " (+" + more + ")"
	}
	return name
}

// sinceAt is the time from nanos to now, rounded as ago rounds it; "-" when unknown.
func sinceAt(now time.Time, nanos int64) string {
	if nanos == 0 || now.IsZero() {
		return "-"
	}
	d := max(0, now.Sub(time.Unix(0, nanos)))
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	}
	return d.Round(time.Hour).String()
}

// cut splits s into lines, each cut to width characters when width > 0.
func cut(s string, width int) []string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		l = strings.TrimRight(l, " ")
		if width > 0 {
			l = truncate(l, width)
		}
		lines[i] = l
	}
	return lines
}

func topCommand() *cli.Command {
	return &cli.Command{
		Name:  "top",
		Usage: "watch the cluster: nodes, workloads, migrations in flight and the balancer, refreshed live",
		Description: "Shows every node (state, CPU load against the cores it declares, free memory, its\n" +
			"workloads), the running workloads (node, CPU, memory, IPC group), the migrations in\n" +
			"flight (phase, bytes shipped) and the leader's last balancer pass, refreshed every\n" +
			"--interval from the node on --socket. q, Esc or Ctrl-C quits. When the daemon does\n" +
			"not answer, the view says so and keeps the last answer, and tries again.\n\n" +
			"When stdout is not a terminal, frames are printed as plain text, a blank line apart,\n" +
			"until interrupted or --count frames. --once prints one frame and exits (1 if the\n" +
			"daemon did not answer).\n\n" +
			"Examples:\n  migshm top\n  migshm top --interval 5s\n  migshm top --once\n" +
			"  migshm top --count 10 --interval 2s > cluster.log",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "once", Usage: "print one frame and exit"},
			&cli.DurationFlag{Name: "interval", Aliases: []string{"n"}, Value: time.Second, Usage: "time between refreshes"},
			&cli.IntFlag{Name: "count", Usage: "stop after this many frames (0: until interrupted)"},
		},
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 0 {
				return fmt.Errorf("top takes no arguments (got %q); see `migshm top --help`", args)
			}
			interval, count := c.Duration("interval"), c.Int("count")
			if interval <= 0 {
				return fmt.Errorf("--interval %s: give a positive duration", interval)
			}
			if count < 0 {
				return fmt.Errorf("--count %d: give 0 (until interrupted) or more", count)
			}
			if c.Bool("once") {
				count = 1
			}
			ctx, stop := signal.NotifyContext(c.Context, unix.SIGINT, unix.SIGTERM)
			defer stop()
			t := &topper{cl: client(c), last: topData{Socket: c.String("socket"), Interval: interval}, interval: interval, count: count}
			if count == 0 && isTerminal(c.App.Writer) {
				screen, err := tcell.NewScreen()
				if err != nil {
					return fmt.Errorf("top: open the terminal: %w", err)
				}
				return t.screen(ctx, screen)
			}
			return t.plain(ctx, c.App.Writer)
		}),
	}
}

// isTerminal reports whether w is a terminal (the full-screen view then draws on it).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// topper runs `migshm top`.
type topper struct {
	cl       *api.Client
	last     topData
	interval time.Duration
	count    int // frames to show; 0: until interrupted
	// drawn, if set, is called after each draw of the full-screen view, in its goroutine.
	drawn func(tcell.Screen)
}

// errTopNoAnswer is the exit of a finite top whose last frame had no answer.
var errTopNoAnswer = errors.New("the daemon did not answer")

// plain prints frames to out until ctx ends or count frames are out.
func (t *topper) plain(ctx context.Context, out io.Writer) error {
	for n := 1; ; n++ {
		t.last = fetchTop(ctx, t.cl, t.last)
		if ctx.Err() != nil {
			return nil // interrupted while fetching: the frame would only say so
		}
		if n > 1 {
			fmt.Fprintln(out)
		}
		if _, err := fmt.Fprintln(out, strings.Join(renderTop(t.last), "\n")); err != nil {
			return err
		}
		if t.count > 0 && n >= t.count {
			if t.last.Err != "" {
				return fmt.Errorf("%w: %s", errTopNoAnswer, t.last.Err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(t.interval):
		}
	}
}

// screen runs the full-screen view on s until q, Esc, Ctrl-C or ctx ends; the
// terminal is restored (s.Fini) whatever happens.
func (t *topper) screen(ctx context.Context, s tcell.Screen) error {
	if err := s.Init(); err != nil {
		return fmt.Errorf("top: set up the terminal: %w", err)
	}
	defer s.Fini()
	s.HideCursor()
	events := make(chan tcell.Event, 16)
	quit := make(chan struct{})
	defer close(quit)
	go s.ChannelEvents(events, quit)

	fetched := make(chan topData, 1)
	fetching := false
	fetch := func() {
		if fetching {
			return // the daemon is slow: one refresh at a time
		}
		fetching = true
		last := t.last
		go func() { fetched <- fetchTop(ctx, t.cl, last) }()
	}
	draw := func() {
		s.Clear()
		width, height := s.Size()
		lines := renderTopWidth(t.last, width)
		if t.last.At.IsZero() {
			lines = []string{"migshm top  " + t.last.Socket, "asking the daemon..."}
		}
		if len(lines) > height-1 && height > 1 {
			more := len(lines) - (height - 2)
			lines = append(lines[:height-2], fmt.Sprintf("... %d more lines", more))
		}
		for y, l := range lines {
			s.PutStr(0, y, l)
		}
		if height > 0 {
			s.PutStrStyled(0, height-1, truncate("q quits", max(width, 1)), tcell.StyleDefault.Reverse(true))
		}
		s.Show()
		if t.drawn != nil {
			t.drawn(s)
		}
	}

	draw()
	fetch()
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case d := <-fetched:
			fetching = false
			if ctx.Err() == nil {
				t.last = d
				draw()
			}
		case <-tick.C:
			fetch()
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			switch ev := ev.(type) {
			case *tcell.EventResize:
				s.Sync()
				draw()
			case *tcell.EventKey:
				if ev.Key() == tcell.KeyEscape || ev.Key() == tcell.KeyCtrlC ||
					(ev.Key() == tcell.KeyRune && (ev.Rune() == 'q' || ev.Rune() == 'Q')) {
					return nil
				}
			}
		}
	}
}
