package deploytest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// ruleSets are the rule files in deploy/prometheus, each with its promtool unit tests.
var ruleSets = []struct{ rules, tests string }{
	{"deploy/prometheus/gpe-ebpf-rules.yml", "deploy/prometheus/gpe-ebpf-rules.test.yml"},
	{"deploy/prometheus/gpe-ebpf-migration-rules.yml", "deploy/prometheus/gpe-ebpf-migration-rules.test.yml"},
}

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Record      string            `json:"record"`
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

type ruleTestFile struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Interval    string `json:"interval"`
		InputSeries []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels"`
				ExpAnnotations map[string]string `json:"exp_annotations"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
		PromQLExprTest []struct {
			Expr       string `json:"expr"`
			EvalTime   string `json:"eval_time"`
			ExpSamples []struct {
				Labels string  `json:"labels"`
				Value  float64 `json:"value"`
			} `json:"exp_samples"`
		} `json:"promql_expr_test"`
	} `json:"tests"`
}

// decodeStrict reads a YAML file of the repository into v; an unknown field is an error.
func decodeStrict(t *testing.T, rel string, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(readRepoFile(t, rel)), v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

// TestPromtool runs promtool's own checks: the rules parse and are valid PromQL, and their unit
// tests pass, on Prometheus 2 (Debian 12's promtool 2.42, on the host) and on Prometheus 3 (sid's
// promtool 3.5, from the sid root): the tests are written so that they hold on both.
func TestPromtool(t *testing.T) {
	t.Run("host", func(t *testing.T) {
		promtool := requireTool(t, "promtool", "prometheus")
		runPromtool(t, func(dir string, args ...string) *exec.Cmd {
			cmd := exec.Command(promtool, args...)
			cmd.Dir = dir
			return cmd
		}, filepath.Join(repoRoot, "deploy/prometheus"))
	})
	t.Run("sid", func(t *testing.T) {
		root := debianRoot(t, "sid")
		t.Logf("promtool %s", rootVersion(t, root, "prometheus"))
		host, inside := rootTempDir(t, root)
		for _, rs := range ruleSets {
			for _, f := range []string{rs.rules, rs.tests} {
				if err := os.WriteFile(filepath.Join(host, filepath.Base(f)), []byte(readRepoFile(t, f)), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		runPromtool(t, func(dir string, args ...string) *exec.Cmd {
			return inRoot(context.Background(), root, "/bin/sh", append([]string{"-c", `cd "$0" && exec promtool "$@"`, dir}, args...)...)
		}, inside)
	})
}

// runPromtool runs `promtool check rules` and `promtool test rules` on every rule set, in dir.
func runPromtool(t *testing.T, promtool func(dir string, args ...string) *exec.Cmd, dir string) {
	t.Helper()
	for _, rs := range ruleSets {
		for _, args := range [][]string{{"check", "rules", filepath.Base(rs.rules)}, {"test", "rules", filepath.Base(rs.tests)}} {
			out, err := promtool(dir, args...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "SUCCESS") {
				t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	}
}

// recordedName matches a recording rule's level:metric:operation name in an expression.
var recordedName = regexp.MustCompile(`\b[a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]+`)

// TestRulesAreTestedAndUseExportedMetrics checks what promtool does not: every alert has a
// unit test in which it fires and one in which it does not, every recording rule is
// evaluated by a test, every alert has a severity and a summary, and every metric the
// rules read is one gpe-ebpf exports.
func TestRulesAreTestedAndUseExportedMetrics(t *testing.T) {
	fams := exportedFamilies(t)
	for _, rs := range ruleSets {
		var rules ruleFile
		var tests ruleTestFile
		decodeStrict(t, rs.rules, &rules)
		decodeStrict(t, rs.tests, &tests)
		if !slices.Equal(tests.RuleFiles, []string{filepath.Base(rs.rules)}) {
			t.Errorf("%s: rule_files %v, want [%s]", rs.tests, tests.RuleFiles, filepath.Base(rs.rules))
		}
		fires, quiet := map[string]bool{}, map[string]bool{}
		evaluated := map[string]bool{}
		for _, tc := range tests.Tests {
			for _, at := range tc.AlertRuleTest {
				if len(at.ExpAlerts) > 0 {
					fires[at.Alertname] = true
				} else {
					quiet[at.Alertname] = true
				}
			}
			for _, et := range tc.PromQLExprTest {
				for _, name := range recordedName.FindAllString(et.Expr, -1) {
					evaluated[name] = true
				}
				// A migration rule records a plain name: count a test whose expression names it.
				for _, w := range regexp.MustCompile(`[a-zA-Z_][a-zA-Z0-9_]*`).FindAllString(et.Expr, -1) {
					evaluated[w] = true
				}
			}
		}
		recorded := map[string]bool{}
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				if r.Record != "" {
					recorded[r.Record] = true
				}
			}
		}
		if len(recorded) == 0 && len(fires) == 0 {
			t.Errorf("%s: no rules", rs.rules)
		}
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				name := r.Record + r.Alert
				switch {
				case r.Alert != "":
					if !fires[r.Alert] {
						t.Errorf("%s: alert %s has no unit test in which it fires", rs.tests, r.Alert)
					}
					if !quiet[r.Alert] {
						t.Errorf("%s: alert %s has no unit test in which it must not fire", rs.tests, r.Alert)
					}
					if s := r.Labels["severity"]; s != "warning" && s != "critical" {
						t.Errorf("alert %s: severity %q, want warning or critical", r.Alert, s)
					}
					if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
						t.Errorf("alert %s: want a summary and a description", r.Alert)
					}
				case !evaluated[r.Record]:
					t.Errorf("%s: recording rule %s is evaluated by no promql_expr_test", rs.tests, r.Record)
				}
				// The metrics read, recorded names aside.
				for _, rec := range recordedName.FindAllString(r.Expr, -1) {
					if !recorded[rec] {
						t.Errorf("%s: %s reads %s, which no rule of the file records", rs.rules, name, rec)
					}
				}
				bare := recordedName.ReplaceAllString(r.Expr, " ")
				for _, m := range metricName.FindAllString(bare, -1) {
					if familyOf(m, fams) != "" {
						continue
					}
					t.Errorf("%s: %s reads %s, which gpe-ebpf does not export (not in the golden expositions)", rs.rules, name, m)
				}
			}
		}
	}
}
