// Package prometheus holds example Prometheus scrape and alerting configuration for
// migshmd; its tests check them against the metrics the daemon exports.
package prometheus

import (
	"net"
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/migshm/migshm/deploy/internal/promref"
	"github.com/migshm/migshm/internal/metrics"
	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"
)

const (
	configFile    = "prometheus.yml"
	alertsFile    = "alerts.yml"
	alertTestFile = "alerts_test.yml"
)

type config struct {
	Global        map[string]string `yaml:"global"`
	RuleFiles     []string          `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		Scheme        string `yaml:"scheme"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

// readYAML decodes file into v, refusing keys v does not know (a misspelt key would
// otherwise be dropped silently, here as by Prometheus).
func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// TestScrapeConfig: the job scrapes /metrics over plain HTTP on the daemon's metrics port,
// and loads the alerting rules.
func TestScrapeConfig(t *testing.T) {
	var c config
	readYAML(t, configFile, &c)
	if !slices.Contains(c.RuleFiles, alertsFile) {
		t.Errorf("rule_files %q lacks %s", c.RuleFiles, alertsFile)
	}
	_, port, _ := net.SplitHostPort(metrics.DefaultAddr)
	var job bool
	for _, sc := range c.ScrapeConfigs {
		if sc.JobName != "migshm" {
			continue
		}
		job = true
		if (sc.MetricsPath != "" && sc.MetricsPath != "/metrics") || (sc.Scheme != "" && sc.Scheme != "http") {
			t.Errorf("job migshm: %s://...%s, but migshmd serves http://.../metrics", sc.Scheme, sc.MetricsPath)
		}
		n := 0
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				n++
				if _, p, err := net.SplitHostPort(target); err != nil || p != port {
					t.Errorf("job migshm: target %s: want HOST:%s (the port of metrics-addr's default %s)", target, port, metrics.DefaultAddr)
				}
			}
		}
		if n == 0 {
			t.Error("job migshm: no targets")
		}
	}
	if !job {
		t.Error("no scrape job migshm (the alerts select job=\"migshm\")")
	}
}

// labelRef matches $labels.NAME in an annotation template.
var labelRef = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)

// TestAlertRules: every alert names only metrics and labels migshmd exports (or up, the
// series Prometheus makes for each target), has a severity and says what it means, and
// alerts_test.yml makes each one fire.
func TestAlertRules(t *testing.T) {
	fs := promref.Exported(t)
	fs["up"] = promref.Family{Type: dto.MetricType_GAUGE}

	var rf ruleFile
	readYAML(t, alertsFile, &rf)
	var alerts []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			where := alertsFile + ": " + r.Alert
			if r.Alert == "" {
				t.Errorf("%s: group %s: a rule without an alert name (record %q)", alertsFile, g.Name, r.Record)
				continue
			}
			alerts = append(alerts, r.Alert)
			for _, err := range fs.Check(r.Expr) {
				t.Errorf("%s: %s: %v", where, r.Expr, err)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", where, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: want a summary and a description", where)
			}
			// $labels.X must be a label of a metric the expression selects.
			e, err := promref.Parse(r.Expr)
			if err != nil {
				continue // reported by Check
			}
			var have []string
			for _, s := range e.Selectors {
				if _, labels, ok := fs.Series(s.Metric); ok {
					have = append(have, labels...)
				}
			}
			for _, text := range r.Annotations {
				for _, m := range labelRef.FindAllStringSubmatch(text, -1) {
					if !slices.Contains(have, m[1]) {
						t.Errorf("%s: annotation names $labels.%s, not a label of its metrics", where, m[1])
					}
				}
			}
		}
	}
	for _, want := range []string{"MigshmNodeDown", "MigshmMigrationsAborting", "MigshmRaftNoLeader", "MigshmRaftApplySlow"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("%s: no alert %s", alertsFile, want)
		}
	}

	var tests struct {
		RuleFiles          []string `yaml:"rule_files"`
		EvaluationInterval string   `yaml:"evaluation_interval"`
		Tests              []struct {
			Interval    string `yaml:"interval"`
			InputSeries []struct {
				Series string `yaml:"series"`
				Values string `yaml:"values"`
			} `yaml:"input_series"`
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				EvalTime  string           `yaml:"eval_time"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	readYAML(t, alertTestFile, &tests)
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertRuleTest {
			if len(at.ExpAlerts) > 0 {
				fires[at.Alertname] = true
			}
		}
	}
	for _, a := range alerts {
		if !fires[a] {
			t.Errorf("%s: no test makes %s fire", alertTestFile, a)
		}
	}
}

// TestPromtool has promtool check the configuration and the rules and run the rules' tests.
func TestPromtool(t *testing.T) {
	promtool := promref.Promtool(t)
	promref.RunPromtool(t, promtool, ".", "check", "config", configFile) // and the rule files it loads
	promref.RunPromtool(t, promtool, ".", "test", "rules", alertTestFile)
}
