package main

import (
	"cmp"
	"context"
	"encoding/json"
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

func moveCommand() *cli.Command {
	return &cli.Command{
		Name:      "move",
		Usage:     "move a running workload, with its SysV shared memory, to another node",
		ArgsUsage: "WORKLOAD NODE",
		Description: "WORKLOAD is a name, an id (or a unique prefix of at least 3 characters) or a host pid\n" +
			"of one of its processes; NODE is the id of the target node (see `migshm nodes`).\n\n" +
			"The workload keeps running while its memory is copied to NODE in pre-copy rounds;\n" +
			"each round sends what changed during the last one. When what is left would ship\n" +
			"within --max-downtime (or after --max-rounds), the workload is frozen, the rest is\n" +
			"dumped and shipped, and NODE restores it with its SysV segments, keys and shmids.\n" +
			"On any failure before the restore is confirmed the move is rolled back and the\n" +
			"workload goes on running where it was. A NODE that stops answering while the\n" +
			"workload is frozen aborts the move within the daemon's progress-timeout (2s);\n" +
			"--max-freeze caps the whole frozen window the same way.\n\n" +
			"migshm prints each step as it happens and a summary at the end; interrupting it stops\n" +
			"the printing, not the move (see `migshm migrations`). Try `migshm check WORKLOAD NODE`\n" +
			"first to see whether a move can work.\n\n" +
			"Examples:\n" +
			"  migshm move db1 n2\n" +
			"  migshm move 4242 n3 --max-downtime 100ms --max-rounds 12\n" +
			"  migshm move w3f2a n2 --no-precopy\n" +
			"  migshm move db1 n2 --max-freeze 5s\n" +
			"  migshm move db1 n2 --json | jq -c 'select(.event == \"round\") | .round'",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "max-downtime", Usage: "downtime to aim for: pre-copy goes on while the changed pages would take longer to ship", DefaultText: "300ms"},
			&cli.IntFlag{Name: "max-rounds", Usage: "most pre-copy rounds before freezing anyway", DefaultText: "8"},
			&cli.BoolFlag{Name: "no-precopy", Usage: "no pre-copy: freeze, dump and ship everything at once (longest downtime, fewest bytes)"},
			&cli.DurationFlag{Name: "max-freeze", Usage: "abort, and resume the workload where it runs, if it would stay frozen longer than this", DefaultText: "no cap"},
			&cli.BoolFlag{Name: "json", Usage: "print each event as one line of JSON as it happens"},
		},
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 2 {
				return fmt.Errorf("give a workload and a target node: `migshm move WORKLOAD NODE` (got %d arguments; see `migshm ps` and `migshm nodes`)", len(args))
			}
			req := api.MoveRequest{Workload: args[0], Target: args[1], NoPrecopy: c.Bool("no-precopy")}
			if c.IsSet("max-downtime") {
				d := c.Duration("max-downtime")
				if d < time.Millisecond {
					return fmt.Errorf("--max-downtime %s: give at least 1ms", d)
				}
				req.MaxDowntimeMS = d.Milliseconds()
			}
			if c.IsSet("max-rounds") {
				n := c.Int("max-rounds")
				if n < 1 {
					return fmt.Errorf("--max-rounds %d: give at least 1 (or --no-precopy for none)", n)
				}
				req.MaxRounds = n
			}
			if c.IsSet("max-freeze") {
				d := c.Duration("max-freeze")
				if d < time.Millisecond {
					return fmt.Errorf("--max-freeze %s: give at least 1ms", d)
				}
				req.MaxFreezeMS = d.Milliseconds()
			}
			if req.NoPrecopy && (c.IsSet("max-rounds") || c.IsSet("max-downtime")) {
				return errors.New("--no-precopy does no pre-copy rounds: --max-rounds and --max-downtime have nothing to bound")
			}
			ctx, stop := signal.NotifyContext(c.Context, unix.SIGINT, unix.SIGTERM)
			defer stop()
			cl := client(c)
			var onEvent func(api.MoveEvent)
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				onEvent = func(ev api.MoveEvent) { _ = enc.Encode(ev) }
			} else {
				p := &progress{w: c.App.Writer, cl: cl, ctx: ctx}
				onEvent = p.event
			}
			last, err := cl.Move(ctx, req, onEvent)
			return moveError(c.Context, last, err, func() map[string]string {
				ctx, cancel := apiContext(c)
				defer cancel()
				return workloadNames(ctx, cl)
			})
		}),
	}
}

// moveError words the error of a move for the user; names maps workload ids to names.
func moveError(ctx context.Context, last api.MoveEvent, err error, names func() map[string]string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, api.ErrOutcomeUnknown) && errors.Is(err, context.Canceled) && ctx.Err() == nil:
		// Our own signal context ended: the user interrupted.
		what := "the migration"
		if last.Migration != "" {
			what = "migration " + last.Migration
		}
		return fmt.Errorf("interrupted: stopped following %s, which goes on without us; see `migshm migrations` for how it ends: %w",
			what, api.ErrOutcomeUnknown)
	case last.Event != api.EventError:
		return err // refused before it started, or cut short (the error says so)
	}
	m := last.Record
	if m == nil {
		m = &api.Migration{}
	}
	id := cmp.Or(m.ID, last.Migration)
	wl := cmp.Or(names()[m.Workload], m.Workload, "the workload")
	switch {
	case errors.Is(err, api.ErrMigrationFailed): // rolled back
		// The record's error is the cause; the event's message may say what we say.
		cause := err.Error()
		if m.Phase == record.PhaseAborted && m.Error != "" {
			cause = m.Error
		}
		return &wrapped{msg: fmt.Sprintf("migration %s aborted, %s still runs on %s: %s", id, wl, cmp.Or(m.Source, "its node"), cause), err: err}
	case last.Record != nil:
		return fmt.Errorf("migration %s of %s failed in phase %s (see `migshm migrations` and `migshm ps`): %w", id, wl, m.Phase, err)
	}
	return err
}

// wrapped is an error with a message of its own that still matches what err matches.
type wrapped struct {
	msg string
	err error
}

func (e *wrapped) Error() string { return e.msg }
func (e *wrapped) Unwrap() error { return e.err }

// progress prints a move's events as they come.
type progress struct {
	w     io.Writer
	cl    *api.Client
	ctx   context.Context
	names map[string]string // workload id -> name, fetched once
}

func (p *progress) event(ev api.MoveEvent) {
	switch ev.Event {
	case api.EventPhase:
		if ev.Phase == string(record.PhasePlanned) {
			fmt.Fprintf(p.w, "migration %s: planned (%s)\n", ev.Migration, p.describe(ev))
			return
		}
		if ev.Phase != string(record.PhaseDone) { // the done event follows, with the summary
			fmt.Fprintln(p.w, ev.Phase)
		}
	case api.EventRound:
		if ev.Round != nil {
			fmt.Fprintln(p.w, roundLine(*ev.Round))
		}
	case api.EventStalled:
		fmt.Fprintf(p.w, "stalled: %s\n", ev.Error)
	case api.EventAnswering:
		fmt.Fprintln(p.w, "the target answers again")
	case api.EventDone:
		printSummary(p.w, ev, p.workloadNames())
	}
}

// describe names the workload and nodes of a migration: "w1234 counter n1 -> n2".
func (p *progress) describe(ev api.MoveEvent) string {
	m := ev.Record
	if m == nil {
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		defer cancel()
		migs, _ := p.cl.Migrations(ctx)
		if i := slices.IndexFunc(migs, func(m api.Migration) bool { return m.ID == ev.Migration }); i >= 0 {
			m = &migs[i]
		}
	}
	if m == nil {
		return "see `migshm migrations`"
	}
	w := m.Workload
	if name := p.workloadNames()[m.Workload]; name != "" && name != m.Workload {
		w += " " + name
	}
	if others := memberNames(m, p.workloadNames()); others != "" {
		w += " with its ipc group: " + others + ","
	}
	return fmt.Sprintf("%s %s -> %s", w, m.Source, m.Target)
}

// memberNames lists the workloads a migration moves besides the one asked for ("" if
// none): a group moves as one tree.
func memberNames(m *api.Migration, names map[string]string) string {
	var out []string
	for _, id := range m.Members {
		if id == m.Workload {
			continue
		}
		if n := names[id]; n != "" {
			id = n
		}
		out = append(out, id)
	}
	return strings.Join(out, ", ")
}

// workloadNames maps workload ids to names, as far as the daemon answers.
func (p *progress) workloadNames() map[string]string {
	if p.names == nil {
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		defer cancel()
		p.names = workloadNames(ctx, p.cl)
	}
	return p.names
}

// workloadNames maps workload ids to names, as far as the daemon answers: names only
// decorate output, so an error leaves them out.
func workloadNames(ctx context.Context, cl *api.Client) map[string]string {
	ws, _ := cl.Workloads(ctx)
	names := make(map[string]string, len(ws))
	for _, w := range ws {
		names[w.ID] = w.Name
	}
	return names
}

// roundLine is "precopy round 2: 1,234 of 131,072 pages changed, 4.8 MiB sent in 0.12s (40.1 MiB/s)".
func roundLine(r api.RoundInfo) string {
	var b strings.Builder
	fmt.Fprintf(&b, "precopy round %d: ", r.Round)
	if r.Round <= 1 {
		fmt.Fprintf(&b, "%s pages", thousands(r.Pages))
	} else {
		fmt.Fprintf(&b, "%s of %s pages changed", thousands(r.ChangedPages), thousands(r.Pages))
	}
	if r.DeltaPages > 0 {
		fmt.Fprintf(&b, " (%s sent as deltas)", thousands(r.DeltaPages))
	}
	fmt.Fprintf(&b, ", %s sent in %.2fs", human(uint64(max(r.SentBytes, 0))), time.Duration(r.DurationNS).Seconds())
	if r.RateBPS > 0 {
		fmt.Fprintf(&b, " (%s/s)", human(uint64(r.RateBPS)))
	}
	return b.String()
}

// printSummary prints the last event of a successful move.
func printSummary(w io.Writer, ev api.MoveEvent, names map[string]string) {
	m := ev.Record
	if m == nil {
		m = &api.Migration{ID: ev.Migration}
	}
	what := m.Workload
	if n := names[m.Workload]; n != "" && n != m.Workload {
		what += " (" + n + ")"
	}
	if others := memberNames(m, names); others != "" {
		what += " with " + others
	}
	fmt.Fprintf(w, "migration %s: done, %s moved from %s to %s\n", m.ID, what, m.Source, m.Target)
	st := ev.Summary
	if st == nil {
		st = m.Stats
	}
	if st == nil {
		return
	}
	wire := st.PrecopyBytes + st.FinalBytes
	if wire == 0 {
		wire = m.Bytes
	}
	t := newTable(w)
	fmt.Fprintf(t, "  downtime:\t%s (frozen)\n", span(st.FrozenNS))
	fmt.Fprintf(t, "  total time:\t%s\n", span(st.TotalNS))
	size := ""
	if st.WorkloadBytes > 0 {
		size = fmt.Sprintf(" for a %s workload (%.2fx)", human(st.WorkloadBytes), float64(wire)/float64(st.WorkloadBytes))
	}
	fmt.Fprintf(t, "  on the wire:\t%s%s\n", human(wire), size)
	if st.Rounds == 0 {
		fmt.Fprintf(t, "  rounds:\tnone (no pre-copy), %s shipped frozen\n", human(st.FinalBytes))
	} else {
		fmt.Fprintf(t, "  rounds:\t%d pre-copy, %s sent while it ran, %s while frozen\n", st.Rounds, human(st.PrecopyBytes), human(st.FinalBytes))
	}
	fmt.Fprintf(t, "  frozen time:\tdump %s, ship %s, restore %s\n", span(st.DumpNS), span(st.ShipNS), span(st.RestoreNS))
	t.Flush()
	printWindow(w, st.Window)
}

// printWindow prints the frozen window step by step, each step's parts (as CRIU and the
// target report them) in parentheses.
func printWindow(w io.Writer, steps []api.WindowStep) {
	if len(steps) == 0 {
		return
	}
	fmt.Fprintln(w, "  frozen window, step by step:")
	t := newTable(w)
	for _, st := range steps {
		var parts []string
		for _, p := range st.Parts {
			parts = append(parts, p.Step+" "+span(p.NS))
		}
		detail := ""
		if len(parts) > 0 {
			detail = "(" + strings.Join(parts, "; ") + ")"
		}
		fmt.Fprintf(t, "    %s\t%s\t%s\n", st.Step, span(st.NS), detail)
	}
	t.Flush()
}

// span formats a duration in nanoseconds for people: 850µs, 84.3ms, 2.31s, 1m2.31s.
func span(ns int64) string {
	d := time.Duration(ns)
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	default:
		return d.Round(10 * time.Millisecond).String()
	}
}

// thousands formats n with commas: 131,072.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// recentMigrations is how many finished migrations `migshm migrations` shows without --all.
const recentMigrations = 20

func migrationsCommand() *cli.Command {
	return &cli.Command{
		Name:  "migrations",
		Usage: "list the migrations of the cluster: in flight, done and aborted",
		Description: "Oldest first. Without --all, shows every migration in flight and the last 20\n" +
			"started. BY is who asked for it: user (`migshm move`) or balancer (--json has its\n" +
			"reason); STARTED is how long ago it started; DOWNTIME is how long the workload was\n" +
			"frozen; BYTES were shipped to the target; ERROR is why it was aborted (--json has\n" +
			"it whole).\n\n" +
			"Examples:\n  migshm migrations\n  migshm migrations --all --json",
		Flags: []cli.Flag{jsonFlag(), &cli.BoolFlag{Name: "all", Aliases: []string{"a"}, Usage: "include every finished migration"}},
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 0 {
				return fmt.Errorf("migrations takes no arguments (got %q)", args)
			}
			ctx, cancel := apiContext(c)
			defer cancel()
			cl := client(c)
			migs, err := cl.Migrations(ctx)
			if err != nil {
				return err
			}
			slices.SortStableFunc(migs, func(a, b api.Migration) int {
				return cmp.Or(cmp.Compare(a.StartedAt, b.StartedAt), cmp.Compare(a.ID, b.ID))
			})
			hidden := 0
			if !c.Bool("all") {
				migs, hidden = recent(migs, recentMigrations)
			}
			if migs == nil {
				migs = []api.Migration{} // --json prints [], not null
			}
			return show(c, migs, func(w io.Writer, migs []api.Migration) error {
				return printMigrations(w, migs, workloadNames(ctx, cl), hidden)
			})
		}),
	}
}

// printMigrations prints the table of `migshm migrations`, workloads by their names, and
// how many finished migrations it leaves out.
func printMigrations(out io.Writer, migs []api.Migration, names map[string]string, hidden int) error {
	w := newTable(out)
	fmt.Fprintln(w, "ID\tWORKLOAD\tSOURCE\tTARGET\tBY\tPHASE\tSTARTED\tDOWNTIME\tBYTES\tERROR")
	for _, m := range migs {
		wl := m.Workload
		if n := names[m.Workload]; n != "" {
			wl = n
		}
		if len(m.Members) > 1 {
			wl += fmt.Sprintf(" (+%d of its group)", len(m.Members)-1)
		}
		down := "-"
		if m.Stats != nil {
			down = span(m.Stats.FrozenNS)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, wl, m.Source, m.Target, movedBy(m.Reason),
			m.Phase, ago(m.StartedAt), down, human(m.Bytes), truncate(oneLine(m.Error), 60))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if hidden > 0 {
		fmt.Fprintf(out, "(%d older finished migrations not shown; --all shows them)\n", hidden)
	}
	return nil
}

// movedBy says who asked for a migration, from its reason: "user" for none, else the
// reason's first word ("balancer: cpu ..." is the balancer).
func movedBy(reason string) string {
	if reason == "" {
		return "user"
	}
	by, _, _ := strings.Cut(reason, ":")
	if f := strings.Fields(by); len(f) > 0 {
		return f[0]
	}
	return "user"
}

// recent keeps the last n migrations of migs (sorted oldest first) and every one in
// flight; it returns them in the same order and how many it left out.
func recent(migs []api.Migration, n int) ([]api.Migration, int) {
	cut := len(migs) - n
	var kept []api.Migration
	for i, m := range migs {
		if i >= cut || !m.Phase.Terminal() {
			kept = append(kept, m)
		}
	}
	return kept, len(migs) - len(kept)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func truncate(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// checkMove asks the daemon whether a workload can move to a node now.
func checkMove(c *cli.Context, workload, target string) error {
	ctx, cancel := apiContext(c)
	defer cancel()
	r, err := client(c).Check(ctx, api.CheckRequest{Workload: workload, Target: target})
	if err != nil {
		return err
	}
	if err := show(c, r, printCheckReport); err != nil {
		return err
	}
	if r.OK {
		return nil
	}
	name := cmp.Or(r.Name, r.Workload, workload)
	target = cmp.Or(r.Target, target)
	var msg string
	switch len(r.Problems) {
	case 0:
		msg = fmt.Sprintf("%s cannot move to %s (the daemon gave no reason)", name, target)
	case 1:
		msg = fmt.Sprintf("%s cannot move to %s: %s: %s", name, target, r.Problems[0].Reason, r.Problems[0].Detail)
	default:
		reasons := make([]string, len(r.Problems))
		for i, p := range r.Problems {
			reasons[i] = p.Reason
		}
		msg = fmt.Sprintf("%s cannot move to %s: %d problems: %s (details above)", name, target, len(r.Problems), strings.Join(reasons, ", "))
	}
	return &wrapped{msg: msg, err: api.ErrNotMovable}
}

// printCheckReport prints the daemon's answer to `migshm check WORKLOAD NODE`.
func printCheckReport(out io.Writer, r api.CheckReport) error {
	name := r.Workload
	if r.Name != "" && r.Name != r.Workload {
		name = r.Name + " (" + r.Workload + ")"
	}
	w := newTable(out)
	fmt.Fprintf(w, "workload:\t%s on %s\n", name, r.Source)
	if len(r.Members) > 1 {
		fmt.Fprintf(w, "moves with:\tipc group %s: %s\n", r.Group, strings.Join(r.Members[1:], ", "))
	}
	fmt.Fprintf(w, "target:\t%s\n", r.Target)
	// A check that stops at its first problem (target not active, tree not movable)
	// leaves the figures out.
	if r.Processes > 0 {
		fmt.Fprintf(w, "processes:\t%d\n", r.Processes)
		fmt.Fprintf(w, "segments:\t%d SysV\n", r.Segments)
	}
	switch {
	case r.MemoryBytes > 0 && r.TargetFree > 0:
		fmt.Fprintf(w, "memory:\t%s needed, %s free on %s\n", human(r.MemoryBytes), human(r.TargetFree), r.Target)
	case r.MemoryBytes > 0:
		fmt.Fprintf(w, "memory:\t%s needed, free memory on %s unknown\n", human(r.MemoryBytes), r.Target)
	}
	for _, f := range r.Carries {
		what := human(uint64(f.Bytes))
		if f.Dir {
			what = "directory"
		}
		why := "missing on " + r.Target
		if f.Replaces {
			why = "replaces the outdated copy it left on " + r.Target
		}
		fmt.Fprintf(w, "carries:\t%s (%s), %s\n", f.Path, what, why)
	}
	if r.OK {
		fmt.Fprintf(w, "result:\tmovable\n")
	} else {
		fmt.Fprintf(w, "result:\tcannot move\n")
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "problem:\t%s: %s\n", p.Reason, p.Detail)
	}
	return w.Flush()
}
