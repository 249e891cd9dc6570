package promref

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		expr     string
		want     []Selector
		grouping []string
		vars     []string
	}{
		{`up`, []Selector{{Metric: "up"}}, nil, nil},
		{`sum by (outcome) (rate(migshm_migrations_total{outcome="aborted", instance=~"$instance"}[$__rate_interval])) > 0`,
			[]Selector{{"migshm_migrations_total", []string{"outcome", "instance"}}}, []string{"outcome"},
			[]string{"instance", "__rate_interval"}},
		// Aggregators, functions, keywords, numbers, durations and strings are not metrics.
		{`histogram_quantile(0.99, sum(rate(a_bucket{x!~'y|z'}[5m:1m] offset -1h30m)) by (le)) * 1e-3 + inf`,
			[]Selector{{"a_bucket", []string{"x"}}}, []string{"le"}, nil},
		{"a * on(instance) group_left() (b{state=\"leader\"} == bool 1) # b is a gauge\n or c",
			[]Selector{{Metric: "a"}, {"b", []string{"state"}}, {Metric: "c"}}, []string{"instance"}, nil},
		{`topk(5, max without (job) (m{name="sum(x)"})) and ignoring(state) n`,
			[]Selector{{"m", []string{"name"}}, {Metric: "n"}}, []string{"job", "state"}, nil},
		{`m{node=~"${node:regex}"} / ${scale}`, []Selector{{"m", []string{"node"}}}, nil, []string{"node", "scale"}},
	} {
		e, err := Parse(tt.expr)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.expr, err)
			continue
		}
		if !reflect.DeepEqual(e.Selectors, tt.want) || !slices.Equal(e.Grouping, tt.grouping) || !slices.Equal(e.Vars, tt.vars) {
			t.Errorf("Parse(%q):\n got %+v %q %q\nwant %+v %q %q", tt.expr, e.Selectors, e.Grouping, e.Vars,
				tt.want, tt.grouping, tt.vars)
		}
	}
	for _, bad := range []string{`{__name__="up"}`, `m{x="y"`, `m{x}`, `m{x=y}`, `sum by (x`, `m["5m"`, `"open`, `m{x="$"}`, `sum(rate(m[5m])`, `m)`} {
		if e, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", bad, e)
		}
	}
}

// TestCheck: the daemon's families, and each way an expression can name what is not there.
func TestCheck(t *testing.T) {
	fs := Exported(t)
	// Every family the metrics package defines has a series (a family without one would be
	// missing from /metrics, and a query of it would pass unchecked as unknown).
	for _, name := range []string{
		"migshm_migrations_total", "migshm_migrations_in_flight", "migshm_migration_phase_seconds",
		"migshm_migration_frozen_seconds", "migshm_migration_bytes_total",
		"migshm_node_cpu_load", "migshm_node_cores", "migshm_node_mem_free_bytes", "migshm_node_workloads",
		"migshm_node_up", "migshm_node_draining", "migshm_workload_cpu_cores", "migshm_workload_mem_bytes",
		"migshm_workload_address_info", "migshm_addresses_held",
		"migshm_raft_state", "migshm_raft_term", "migshm_raft_commit_index", "migshm_raft_applied_index",
		"migshm_raft_last_contact_seconds", "migshm_raft_peers", "migshm_raft_apply_seconds",
		"migshm_balancer_passes_total", "migshm_balancer_moves_total", "migshm_balancer_skips",
		"migshm_balancer_imbalance", "migshm_balancer_spread",
	} {
		if _, ok := fs[name]; !ok {
			t.Errorf("the daemon's registry lacks %s", name)
		}
	}
	n := 0
	for name := range fs {
		if strings.HasPrefix(name, "migshm_") {
			n++
		}
	}
	if n != 27 {
		t.Errorf("%d migshm_ families, want the 27 above: a new one needs a series in Exported and a line here", n)
	}

	for _, tt := range []struct {
		expr string
		want string // a substring of the one error; "" for none
	}{
		{`sum by (phase, le) (rate(migshm_migration_phase_seconds_bucket{instance="a"}[5m]))`, ""},
		{`rate(migshm_migration_frozen_seconds_sum[1h]) / rate(migshm_migration_frozen_seconds_count[1h])`, ""},
		{`migshm_migrations_total{outcome="aborted",initiator="user",job="migshm"}`, ""},
		{`migshm_migration_total`, "migshm_migration_total: migshmd serves no such series"},
		{`migshm_migrations_total_bucket`, "no such series"}, // a counter has no buckets
		{`migshm_migration_frozen_seconds{le="1"}`, "has no label le"},
		{`migshm_node_up{instance="a", state="down"}`, "migshm_node_up has no label state"},
		{`max by (node) (migshm_raft_state)`, "groups or matches on node, which metric migshm_raft_state"},
		{`migshm_node_up * on(node) migshm_raft_peers`, "which metric migshm_raft_peers does not have"},
		{`rate(5m)`, "selects no metric"},
	} {
		errs := fs.Check(tt.expr)
		switch {
		case tt.want == "" && len(errs) > 0:
			t.Errorf("Check(%q): %v, want none", tt.expr, errs)
		case tt.want != "" && (len(errs) != 1 || !strings.Contains(errs[0].Error(), tt.want)):
			t.Errorf("Check(%q): %v, want one error with %q", tt.expr, errs, tt.want)
		}
	}
}
