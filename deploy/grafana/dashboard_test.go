// Package grafana holds a Grafana dashboard of migshmd's metrics; its test checks that
// every query names only metrics and labels the daemon exports.
package grafana

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/migshm/migshm/deploy/internal/promref"
)

const dashboardFile = "migshm.json"

// The dashboard's data source: a variable, so that import (UI or file provisioning) needs
// no editing.
const datasourceUID = "${datasource}"

// builtinVars are Grafana's own variables the queries may use.
var builtinVars = []string{"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s"}

type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *datasource              `json:"datasource"`
	GridPos    struct{ X, Y, W, H int } `json:"gridPos"`
	Targets    []target                 `json:"targets"`
	Panels     []panel                  `json:"panels"` // a row's
}

type target struct {
	RefID        string      `json:"refId"`
	Expr         string      `json:"expr"`
	LegendFormat string      `json:"legendFormat"`
	Datasource   *datasource `json:"datasource"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"` // a string, or an object with a query string
	Datasource *datasource     `json:"datasource"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// query returns a variable's query: a string, or the query field of an object.
func (v variable) query() (string, error) {
	var s string
	if err := json.Unmarshal(v.Query, &s); err == nil {
		return s, nil
	}
	var o struct {
		Query string `json:"query"`
	}
	err := json.Unmarshal(v.Query, &o)
	return o.Query, err
}

var labelValues = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)

// legendLabel matches {{label}} in a legend format.
var legendLabel = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)

// TestDashboardQueries: every panel query selects metrics migshmd exports, with labels
// those metrics have, and uses only variables the dashboard defines; the variables'
// label_values queries name an exported metric and one of its labels.
func TestDashboardQueries(t *testing.T) {
	d := readDashboard(t)
	fs := promref.Exported(t)

	vars := slices.Clone(builtinVars)
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
		switch v.Type {
		case "datasource":
			if q, err := v.query(); err != nil || q != "prometheus" {
				t.Errorf("variable %s: query %q (%v), want prometheus", v.Name, q, err)
			}
		case "query":
			if v.Datasource == nil || v.Datasource.UID != datasourceUID {
				t.Errorf("variable %s: data source %+v, want uid %s", v.Name, v.Datasource, datasourceUID)
			}
			q, err := v.query()
			m := labelValues.FindStringSubmatch(q)
			if err != nil || m == nil {
				t.Errorf("variable %s: query %q (%v), want label_values(METRIC, LABEL)", v.Name, q, err)
				continue
			}
			if _, labels, ok := fs.Series(m[1]); !ok || !slices.Contains(labels, m[2]) {
				t.Errorf("variable %s: %s: migshmd serves no metric %s with label %s", v.Name, q, m[1], m[2])
			}
		}
	}
	for _, want := range []string{"datasource", "node"} {
		if !slices.Contains(vars, want) {
			t.Errorf("no variable %s", want)
		}
	}

	n := 0
	ids := map[int]string{}
	for p := range allPanels(d.Panels) {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("%s: id also used by %q", where, prev)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("%s: gridPos %+v leaves the 24 columns", where, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != datasourceUID || p.Datasource.Type != "prometheus" {
			t.Errorf("%s: data source %+v, want prometheus %s", where, p.Datasource, datasourceUID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		for _, tg := range p.Targets {
			where := fmt.Sprintf("%s query %s", where, tg.RefID)
			n++
			if tg.Datasource != nil && tg.Datasource.UID != datasourceUID {
				t.Errorf("%s: data source %+v, want %s", where, tg.Datasource, datasourceUID)
			}
			for _, err := range fs.Check(tg.Expr) {
				t.Errorf("%s: %s: %v", where, tg.Expr, err)
			}
			e, err := promref.Parse(tg.Expr)
			if err != nil {
				continue // reported by Check
			}
			for _, v := range e.Vars {
				if !slices.Contains(vars, v) {
					t.Errorf("%s: uses $%s, which the dashboard does not define", where, v)
				}
			}
			// A legend's {{label}} must be a label of a metric the query selects.
			var have []string
			for _, s := range e.Selectors {
				if _, labels, ok := fs.Series(s.Metric); ok {
					have = append(have, labels...)
				}
			}
			for _, m := range legendLabel.FindAllStringSubmatch(tg.LegendFormat, -1) {
				if !slices.Contains(have, m[1]) {
					t.Errorf("%s: legend %q names %s, not a label of its metrics", where, tg.LegendFormat, m[1])
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no queries found: the panels did not parse")
	}
	t.Logf("%d queries in %d panels checked against %d exported families", n, len(ids), len(fs))
}

// TestDashboardCovers: the dashboard shows each thing it is for.
func TestDashboardCovers(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 39 {
		t.Errorf("uid %q, title %q, schemaVersion %d: want a uid, a title and schemaVersion >= 39", d.UID, d.Title, d.SchemaVersion)
	}
	var exprs []string
	for p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	all := strings.Join(exprs, "\n")
	for _, want := range []string{
		"migshm_migrations_total", "migshm_migrations_in_flight",
		"migshm_migration_frozen_seconds_bucket", "migshm_migration_phase_seconds_bucket", "migshm_migration_bytes_total",
		"migshm_node_cpu_load", "migshm_node_mem_free_bytes", "migshm_node_workloads", "migshm_node_up", "migshm_node_draining",
		"migshm_workload_cpu_cores", "migshm_workload_mem_bytes",
		"migshm_raft_state", "migshm_raft_apply_seconds_bucket", "migshm_raft_term",
		"migshm_balancer_passes_total", "migshm_balancer_moves_total", "migshm_balancer_skips", "migshm_balancer_imbalance",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no panel queries %s", want)
		}
	}
}

// allPanels yields every panel, those inside rows too.
func allPanels(ps []panel) func(func(panel) bool) {
	return func(yield func(panel) bool) {
		for _, p := range ps {
			if !yield(p) {
				return
			}
			for q := range allPanels(p.Panels) {
				if !yield(q) {
					return
				}
			}
		}
	}
}

// rangeVar is a variable as a range ([$__rate_interval]); any other variable stands in a
// label matcher's regular expression.
var (
	rangeVar = regexp.MustCompile(`\[\$\{?[a-zA-Z0-9_]+\}?\]`)
	otherVar = regexp.MustCompile(`\$\{[^}]+\}|\$[a-zA-Z0-9_]+`)
)

// TestDashboardPromQL has promtool parse every query, with the variables replaced by what
// Grafana would put there, as recording rules.
func TestDashboardPromQL(t *testing.T) {
	promtool := promref.Promtool(t)
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for p := range allPanels(readDashboard(t).Panels) {
		for _, tg := range p.Targets {
			expr := otherVar.ReplaceAllString(rangeVar.ReplaceAllString(tg.Expr, "[5m]"), ".*")
			rules = append(rules, rule{Record: fmt.Sprintf("panel_%d_%s", p.ID, tg.RefID), Expr: expr})
		}
	}
	// JSON is YAML: a rules file with one group.
	b, err := json.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	promref.RunPromtool(t, promtool, dir, "check", "rules", "rules.yml")
}
