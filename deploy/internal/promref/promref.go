// Package promref checks the PromQL that deploy/ files hold (Grafana panels, Prometheus
// alerts) against the metrics a migshmd registry serves: every metric an expression
// selects must be one the daemon exports, and every label it names must be on that metric.
//
// The expressions are read by a small scanner, not the Prometheus parser: it knows
// selectors, label matchers, grouping and matching clauses, strings, ranges and Grafana
// variables, which is what these files use. Its own test says what it recognises. Where
// promtool is installed, the tests of deploy/ also have it parse the expressions.
package promref

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/metrics"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TargetLabels are the labels Prometheus adds to every series it scrapes.
var TargetLabels = []string{"instance", "job"}

// Family is a metric family the daemon serves.
type Family struct {
	Type   dto.MetricType
	Labels []string // the family's own labels, sorted; not le, not the target labels
}

// Families are the families the daemon serves, by name.
type Families map[string]Family

// source is a metrics.Source of a fixed table and Raft stats.
type source struct {
	table *shmowner.Table
	stats map[string]string
}

func (s source) Table() *shmowner.Table   { return s.table }
func (s source) Stats() map[string]string { return s.stats }

// Exported returns what a daemon's /metrics serves once its table has every kind of
// record a metric reads (two nodes that reported load, a workload running with load, a
// finished migration with its figures), Raft has stats, and the daemon committed a command
// and ran a balancer pass: every family the daemon defines then has a series.
func Exported(tb testing.TB) Families {
	tb.Helper()
	wl := func(id string) any {
		return shmowner.UpsertWorkloadRequest{Workload: record.Workload{
			ID: id, Name: "name-" + id, Node: "n1", InitPid: 100, Pids: []int{100}, Group: "grp-" + id}}
	}
	phase := func(p record.Phase, st *record.MigrationStats) any {
		return shmowner.SetMigrationPhaseRequest{ID: "m1", Phase: p, At: 2_000, Stats: st}
	}
	tbl := shmownertest.Table(tb,
		shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: "n1:7420", APIAddr: "n1:7421"},
		shmowner.RegisterNodeRequest{ID: "n2", RaftAddr: "n2:7420", APIAddr: "n2:7421"},
		wl("w1"), wl("w2"),
		shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w3", Name: "name-w3", Node: "n1", InitPid: 200,
			Pids: []int{200}, Group: "grp-w3", Addr: "10.0.0.50/24"}},
		shmowner.ReportLoadRequest{ID: "n1", At: 10,
			Load:      record.LoadVector{CPU: 0.5, Cores: 2, MemFreeBytes: 1 << 30, MemTotalBytes: 2 << 30, Workloads: 2},
			Workloads: map[string]record.WorkloadLoad{"w2": {CPU: 1, MemBytes: 1 << 20}}},
		shmowner.ReportLoadRequest{ID: "n2", At: 10,
			Load: record.LoadVector{CPU: 0.1, Cores: 2, MemFreeBytes: 1 << 30, MemTotalBytes: 2 << 30}},
		// w1 moves to n2: planned, then through every phase to done.
		shmowner.PlanMigrationRequest{ID: "m1", Workload: "w1", Target: "n2", At: 1_000},
		phase(record.PhaseFrozen, nil), phase(record.PhaseShipped, nil), phase(record.PhaseRestored, nil),
		phase(record.PhaseDone, &record.MigrationStats{Rounds: 1, PrecopyBytes: 1000, FinalBytes: 100,
			FrozenNS: 5e7, DumpNS: 2e7, ShipNS: 1e7, RestoreNS: 2e7, TotalNS: 5e8}),
	)
	m := metrics.New("n1", source{table: tbl, stats: map[string]string{
		"state": "Follower", "term": "3", "commit_index": "20", "applied_index": "20",
		"last_contact": "10ms", "num_peers": "1",
	}})
	m.ObserveApply(shmowner.ReportLoadType, 2*time.Millisecond, nil)
	m.ObserveBalance(&api.BalanceReport{Imbalance: 0.1, Spread: 0.2,
		Moves: []api.BalanceMove{{Kind: "cpu", Started: true}}, Skipped: []api.BalanceSkip{{Reason: "cooldown"}}})

	rec := httptest.NewRecorder()
	m.Handler(nil).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		tb.Fatalf("GET /metrics: %d: %s", rec.Code, rec.Body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		tb.Fatalf("parse /metrics: %v", err)
	}
	out := Families{}
	for name, mf := range mfs {
		var labels []string
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if !slices.Contains(labels, lp.GetName()) {
					labels = append(labels, lp.GetName())
				}
			}
		}
		slices.Sort(labels)
		out[name] = Family{Type: mf.GetType(), Labels: labels}
	}
	return out
}

// Series returns the family a series name belongs to and the labels a selector of it may
// name: a family's own name, or a histogram's name_bucket (which adds le), name_sum or
// name_count. ok is false for a name the daemon does not serve.
func (fs Families) Series(name string) (family string, labels []string, ok bool) {
	if f, ok := fs[name]; ok {
		return name, append(slices.Clone(f.Labels), TargetLabels...), true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, found := strings.CutSuffix(name, suffix)
		f, ok := fs[base]
		if !found || !ok || f.Type != dto.MetricType_HISTOGRAM {
			continue
		}
		labels = append(slices.Clone(f.Labels), TargetLabels...)
		if suffix == "_bucket" {
			labels = append(labels, "le")
		}
		return base, labels, true
	}
	return "", nil, false
}

// Check returns what is wrong with expr: it does not parse, selects a metric the daemon
// does not serve, names a label in a matcher that its metric does not have, or groups or
// matches on a label that a metric it selects does not have. Grouping labels are checked
// against every metric of the expression, a rule stricter than PromQL's that keeps the
// check simple.
func (fs Families) Check(expr string) []error {
	e, err := Parse(expr)
	if err != nil {
		return []error{err}
	}
	var errs []error
	if len(e.Selectors) == 0 {
		errs = append(errs, fmt.Errorf("selects no metric"))
	}
	for _, s := range e.Selectors {
		_, labels, ok := fs.Series(s.Metric)
		if !ok {
			errs = append(errs, fmt.Errorf("metric %s: migshmd serves no such series", s.Metric))
			continue
		}
		for _, l := range s.Labels {
			if !slices.Contains(labels, l) {
				errs = append(errs, fmt.Errorf("metric %s has no label %s (it has %s)", s.Metric, l, strings.Join(labels, ", ")))
			}
		}
		for _, l := range e.Grouping {
			if !slices.Contains(labels, l) {
				errs = append(errs, fmt.Errorf("groups or matches on %s, which metric %s does not have (it has %s)",
					l, s.Metric, strings.Join(labels, ", ")))
			}
		}
	}
	return errs
}

// Expr is what Parse found in an expression.
type Expr struct {
	Selectors []Selector
	Grouping  []string // labels of by, without, on, ignoring, group_left and group_right
	Vars      []string // Grafana variables: $name and ${name} (also ${name:format}), in strings too
}

// Selector is a metric an expression selects and the labels its matchers name.
type Selector struct {
	Metric string
	Labels []string
}

// Words that are never metric names.
var (
	aggregators = []string{"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
		"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
	clauses  = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}
	keywords = []string{"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
)

// Parse scans a PromQL expression (possibly holding Grafana variables) for its metric
// selectors, grouping labels and variables.
func Parse(expr string) (Expr, error) {
	var e Expr
	s := scanner{src: expr}
	depth := 0 // of parentheses
	for {
		s.space()
		if s.eof() {
			if depth != 0 {
				return e, fmt.Errorf("%q: %d unclosed (", expr, depth)
			}
			return e, nil
		}
		c := s.peek()
		switch {
		case c == '(' || c == ')':
			if c == '(' {
				depth++
			} else if depth--; depth < 0 {
				return e, fmt.Errorf("%q: ) without ( at offset %d", expr, s.pos)
			}
			s.pos++
		case c == '"' || c == '\'' || c == '`':
			if err := s.str(&e); err != nil {
				return e, err
			}
		case c == '$':
			if err := s.variable(&e); err != nil {
				return e, err
			}
		case c == '[': // a range or subquery: durations and variables only
			s.pos++
			for !s.eof() && s.peek() != ']' {
				if s.peek() == '$' {
					if err := s.variable(&e); err != nil {
						return e, err
					}
					continue
				}
				s.pos++
			}
			if s.eof() {
				return e, fmt.Errorf("%q: unclosed [", expr)
			}
			s.pos++
		case c == '{':
			return e, fmt.Errorf("%q: a selector without a metric name at offset %d", expr, s.pos)
		case isDigit(c) || c == '.' && s.pos+1 < len(s.src) && isDigit(s.src[s.pos+1]):
			s.number()
		case isIdentStart(c):
			word := s.ident()
			lower := strings.ToLower(word)
			s.space()
			switch {
			case slices.Contains(clauses, word):
				if s.peek() != '(' {
					continue // group_left with no labels
				}
				labels, err := s.labelList()
				if err != nil {
					return e, fmt.Errorf("%q: %s: %v", expr, word, err)
				}
				e.Grouping = append(e.Grouping, labels...)
			case slices.Contains(aggregators, word) || slices.Contains(keywords, lower):
			case s.peek() == '(': // a function
			default:
				sel := Selector{Metric: word}
				if s.peek() == '{' {
					if err := s.matchers(&sel, &e); err != nil {
						return e, fmt.Errorf("%q: %s: %v", expr, word, err)
					}
				}
				e.Selectors = append(e.Selectors, sel)
			}
		case strings.IndexByte(",+-*/%^=!<>@", c) >= 0:
			s.pos++
		case c == '#': // a comment, to the end of the line
			for !s.eof() && s.peek() != '\n' {
				s.pos++
			}
		default:
			return e, fmt.Errorf("%q: unexpected %q at offset %d", expr, c, s.pos)
		}
	}
}

type scanner struct {
	src string
	pos int
}

func (s *scanner) eof() bool { return s.pos >= len(s.src) }

// peek returns the next byte, 0 at the end.
func (s *scanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.pos]
}

func (s *scanner) space() {
	for !s.eof() && strings.IndexByte(" \t\r\n", s.peek()) >= 0 {
		s.pos++
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
func isIdent(c byte) bool { return isIdentStart(c) || isDigit(c) }

func (s *scanner) ident() string {
	start := s.pos
	for !s.eof() && isIdent(s.peek()) {
		s.pos++
	}
	return s.src[start:s.pos]
}

// number skips a number or a duration: 0.99, 1e-3, 0x1f, 5m, 1h30m.
func (s *scanner) number() {
	for !s.eof() {
		c := s.peek()
		switch {
		case isIdent(c) || c == '.':
			s.pos++
		case (c == '-' || c == '+') && (s.src[s.pos-1] == 'e' || s.src[s.pos-1] == 'E'):
			s.pos++
		default:
			return
		}
	}
}

// str skips a string literal, noting the variables in it.
func (s *scanner) str(e *Expr) error {
	quote := s.peek()
	start := s.pos
	s.pos++
	for !s.eof() {
		c := s.peek()
		switch {
		case c == '\\' && quote != '`':
			s.pos += 2
			continue
		case c == quote:
			s.pos++
			return nil
		case c == '$':
			if err := s.variable(e); err != nil {
				return err
			}
			continue
		}
		s.pos++
	}
	return fmt.Errorf("%q: unterminated string at offset %d", s.src, start)
}

// variable reads $name, ${name} or ${name:format}.
func (s *scanner) variable(e *Expr) error {
	start := s.pos
	s.pos++ // $
	braced := !s.eof() && s.peek() == '{'
	if braced {
		s.pos++
	}
	from := s.pos
	for !s.eof() && s.peek() != ':' && isIdent(s.peek()) {
		s.pos++
	}
	name := s.src[from:s.pos]
	if braced {
		if !s.eof() && s.peek() == ':' {
			for !s.eof() && s.peek() != '}' {
				s.pos++
			}
		}
		if s.eof() || s.peek() != '}' {
			return fmt.Errorf("%q: unclosed ${ at offset %d", s.src, start)
		}
		s.pos++
	}
	if name == "" {
		return fmt.Errorf("%q: bad variable at offset %d", s.src, start)
	}
	e.Vars = append(e.Vars, name)
	return nil
}

// labelList reads (a, b, c).
func (s *scanner) labelList() ([]string, error) {
	s.pos++ // (
	var labels []string
	for {
		s.space()
		if s.eof() {
			return nil, fmt.Errorf("unclosed (")
		}
		if s.peek() == ')' {
			s.pos++
			return labels, nil
		}
		if s.peek() == ',' {
			s.pos++
			continue
		}
		if !isIdentStart(s.peek()) {
			return nil, fmt.Errorf("want a label name at offset %d, got %q", s.pos, s.peek())
		}
		labels = append(labels, s.ident())
	}
}

// matchers reads {label op "value", ...} into sel.
func (s *scanner) matchers(sel *Selector, e *Expr) error {
	s.pos++ // {
	for {
		s.space()
		if s.eof() {
			return fmt.Errorf("unclosed {")
		}
		switch c := s.peek(); {
		case c == '}':
			s.pos++
			return nil
		case c == ',':
			s.pos++
		case isIdentStart(c):
			sel.Labels = append(sel.Labels, s.ident())
			s.space()
			if s.eof() || strings.IndexByte("=!", s.peek()) < 0 {
				return fmt.Errorf("label %s: want =, !=, =~ or !~ at offset %d", sel.Labels[len(sel.Labels)-1], s.pos)
			}
			for !s.eof() && strings.IndexByte("=!~", s.peek()) >= 0 {
				s.pos++
			}
			s.space()
			if s.eof() || strings.IndexByte("\"'`", s.peek()) < 0 {
				return fmt.Errorf("want a quoted value at offset %d", s.pos)
			}
			if err := s.str(e); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unexpected %q in matchers at offset %d", c, s.pos)
		}
	}
}

// Promtool returns the promtool on PATH, or skips the test. promtool (Debian package
// prometheus) is not among what scripts/setup installs, so even in CI its absence skips
// rather than fails; the checks above run everywhere.
func Promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skipf("skipped: promtool not found (it comes with the Debian package prometheus): %v", err)
	}
	return p
}

// RunPromtool runs promtool with args in dir and fails the test on an error, with its output.
func RunPromtool(t *testing.T, promtool, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(promtool, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}
