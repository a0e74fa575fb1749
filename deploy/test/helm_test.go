package deploytest

import (
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/yaml"
)

const (
	chartPath        = "deploy/helm/gpe-ebpf"
	releaseNamespace = "monitoring"
)

// renderChart renders the chart as `helm install --dry-run` would, with Helm's own
// loader and template engine, in strict mode (a reference to a value that does not
// exist is an error, not an empty string).
func renderChart(release string, vals map[string]any) (map[string]string, error) {
	var ch *chart.Chart
	var err error
	quietly(func() { ch, err = loader.Load(filepath.Join(repoRoot, chartPath)) })
	if err != nil {
		return nil, err
	}
	opts := chartutil.ReleaseOptions{Name: release, Namespace: releaseNamespace, Revision: 1, IsInstall: true}
	rv, err := chartutil.ToRenderValues(ch, vals, opts, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	return engine.Engine{Strict: true}.Render(ch, rv)
}

// quietly runs f with the standard logger discarded: Helm's loader logs every symbolic
// link it follows, and the chart's files/ links to deploy/prometheus.
func quietly(f func()) {
	log.SetOutput(io.Discard)
	defer log.SetOutput(os.Stderr)
	f()
}

// chartObjects is what the chart rendered, decoded into typed objects.
type chartObjects struct {
	ds    *appsv1.DaemonSet
	sa    *corev1.ServiceAccount
	svc   *corev1.Service
	sm    *monitoringv1.ServiceMonitor
	pm    *monitoringv1.PodMonitor
	pr    *monitoringv1.PrometheusRule
	notes string
}

// loadChart renders the chart and decodes every document strictly (an unknown or
// misspelt field is an error) into its typed object: the Kubernetes API types, and the
// Prometheus Operator's for the ServiceMonitor and PodMonitor.
func loadChart(t *testing.T, release string, vals map[string]any) chartObjects {
	t.Helper()
	out, err := renderChart(release, vals)
	if err != nil {
		t.Fatalf("render the chart with %v: %v", vals, err)
	}
	var objs chartObjects
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if strings.HasSuffix(name, "NOTES.txt") {
			objs.notes = out[name]
			continue
		}
		for i, doc := range splitYAML(out[name]) {
			var meta struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("%s document %d: %v\n%s", name, i, err, doc)
			}
			alloc := map[string]func() any{
				"apps/v1 DaemonSet": func() any { return setOnce(t, name, &objs.ds) },
				"v1 ServiceAccount": func() any { return setOnce(t, name, &objs.sa) },
				"v1 Service":        func() any { return setOnce(t, name, &objs.svc) },
				"monitoring.coreos.com/v1 ServiceMonitor": func() any { return setOnce(t, name, &objs.sm) },
				"monitoring.coreos.com/v1 PodMonitor":     func() any { return setOnce(t, name, &objs.pm) },
				"monitoring.coreos.com/v1 PrometheusRule": func() any { return setOnce(t, name, &objs.pr) },
			}[meta.APIVersion+" "+meta.Kind]
			if alloc == nil {
				t.Fatalf("%s document %d: unexpected %s %s", name, i, meta.APIVersion, meta.Kind)
			}
			obj := alloc()
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s document %d (%s): %v\n%s", name, i, meta.Kind, err, doc)
			}
		}
	}
	if objs.ds == nil {
		t.Fatal("the chart renders no DaemonSet")
	}
	return objs
}

// setOnce allocates *p, failing if the chart rendered a second object of its kind.
func setOnce[T any](t *testing.T, where string, p **T) *T {
	t.Helper()
	if *p != nil {
		t.Fatalf("%s: a second object of type %T", where, *p)
	}
	*p = new(T)
	return *p
}

// same fails when got and want differ semantically (resource quantities compare by
// value), printing both as YAML.
func same(t *testing.T, what string, got, want any) {
	t.Helper()
	if equality.Semantic.DeepEqual(got, want) {
		return
	}
	g, _ := yaml.Marshal(got)
	w, _ := yaml.Marshal(want)
	t.Errorf("%s differs\nchart:\n%s\nwant:\n%s", what, g, w)
}

// sameFields compares two structs of one type field by field, so that a difference is
// reported by the name of the field that holds it.
func sameFields(t *testing.T, what string, got, want any) {
	t.Helper()
	gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range gv.NumField() {
		same(t, what+"."+gv.Type().Field(i).Name, gv.Field(i).Interface(), wv.Field(i).Interface())
	}
}

func container(t *testing.T, ds *appsv1.DaemonSet) corev1.Container {
	t.Helper()
	if n := len(ds.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("want one container, got %d", n)
	}
	return ds.Spec.Template.Spec.Containers[0]
}

// TestHelmLint runs Helm's chart linter (what `helm lint --strict` runs): warnings fail too.
func TestHelmLint(t *testing.T) {
	var l support.Linter
	quietly(func() { l = lint.All(filepath.Join(repoRoot, chartPath), nil, releaseNamespace, false) })
	for _, m := range l.Messages {
		if m.Severity >= support.WarningSev {
			t.Errorf("helm lint: %s", m)
		} else {
			t.Logf("helm lint: %s", m)
		}
	}
}

// TestHelmChartMatchesDaemonSet: with its default values the chart renders the pod of
// deploy/kubernetes/daemonset.yaml, security context first, so that the two cannot drift.
func TestHelmChartMatchesDaemonSet(t *testing.T) {
	objs := loadChart(t, "gpe-ebpf", nil)
	want, wantSA := loadManifests(t)
	ds := objs.ds
	pod, wantPod := ds.Spec.Template.Spec, want.Spec.Template.Spec
	c, wc := container(t, ds), container(t, want)

	t.Run("objects", func(t *testing.T) {
		if objs.sa == nil || objs.svc == nil {
			t.Fatalf("want a ServiceAccount and a Service by default (sa %v, svc %v)", objs.sa != nil, objs.svc != nil)
		}
		if objs.sm != nil || objs.pm != nil || objs.pr != nil {
			t.Error("a ServiceMonitor, PodMonitor or PrometheusRule by default: they need the Prometheus Operator's CRDs")
		}
		for kind, ns := range map[string]string{"DaemonSet": ds.Namespace, "ServiceAccount": objs.sa.Namespace, "Service": objs.svc.Namespace} {
			if ns != releaseNamespace {
				t.Errorf("%s namespace %q, want the release's %q", kind, ns, releaseNamespace)
			}
		}
		same(t, "ServiceAccount automountServiceAccountToken", objs.sa.AutomountServiceAccountToken, wantSA.AutomountServiceAccountToken)
		if pod.ServiceAccountName != objs.sa.Name {
			t.Errorf("serviceAccountName %q, ServiceAccount %q", pod.ServiceAccountName, objs.sa.Name)
		}
	})

	t.Run("security context", func(t *testing.T) {
		same(t, "container securityContext", c.SecurityContext, wc.SecurityContext)
		same(t, "pod securityContext", pod.SecurityContext, wantPod.SecurityContext)
		same(t, "hostPID", pod.HostPID, wantPod.HostPID)
	})

	// Then every other field of the pod and of the container, args order aside.
	t.Run("pod", func(t *testing.T) {
		got, exp := pod.DeepCopy(), wantPod.DeepCopy()
		got.Containers, exp.Containers = nil, nil
		sameFields(t, "pod spec", *got, *exp)
		same(t, "updateStrategy", ds.Spec.UpdateStrategy, want.Spec.UpdateStrategy)
		same(t, "pod annotations", ds.Spec.Template.Annotations, want.Spec.Template.Annotations)
	})
	t.Run("container", func(t *testing.T) {
		got, exp := c.DeepCopy(), wc.DeepCopy()
		slices.Sort(got.Args)
		slices.Sort(exp.Args)
		sameFields(t, "container", *got, *exp)
	})

	t.Run("labels", func(t *testing.T) {
		for k, v := range want.Spec.Template.Labels {
			if ds.Spec.Template.Labels[k] != v {
				t.Errorf("pod label %s=%q, want %q", k, ds.Spec.Template.Labels[k], v)
			}
		}
		for k, v := range ds.Spec.Selector.MatchLabels {
			if ds.Spec.Template.Labels[k] != v {
				t.Errorf("selector %s=%s not in the pod template's labels", k, v)
			}
		}
		if ds.Spec.Selector.MatchLabels["app.kubernetes.io/instance"] != "gpe-ebpf" {
			t.Errorf("selector %v does not select by release (app.kubernetes.io/instance)", ds.Spec.Selector.MatchLabels)
		}
	})

	t.Run("service", func(t *testing.T) {
		svc := objs.svc
		for k, v := range svc.Spec.Selector {
			if ds.Spec.Template.Labels[k] != v {
				t.Errorf("Service selector %s=%s does not select the pods", k, v)
			}
		}
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || svc.Spec.Ports[0].Port != 9090 ||
			svc.Spec.Ports[0].TargetPort.String() != "metrics" {
			t.Errorf("Service ports %+v, want metrics 9090 → the container port named metrics", svc.Spec.Ports)
		}
	})

	t.Run("notes", func(t *testing.T) {
		for _, want := range []string{"pod-security.kubernetes.io/enforce=privileged", "/-/ready", "prometheus.io/*"} {
			if !strings.Contains(objs.notes, want) {
				t.Errorf("NOTES.txt lacks %q:\n%s", want, objs.notes)
			}
		}
	})
}

// TestHelmChartValues sets every value a user is expected to change and checks each one
// lands where it should, and that the security context stays as it is.
func TestHelmChartValues(t *testing.T) {
	vals := map[string]any{
		"image":             map[string]any{"repository": "registry.example/gpe-ebpf", "tag": "v1.2.3", "pullPolicy": "Always"},
		"args":              []any{"--discover", "--workers=4"},
		"env":               []any{map[string]any{"name": "REDIS_ENABLED", "value": "true"}},
		"metricsPort":       9191,
		"resources":         map[string]any{"requests": map[string]any{"cpu": "10m", "memory": "32Mi"}, "limits": map[string]any{"cpu": "1", "memory": "256Mi"}},
		"tolerations":       []any{map[string]any{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}},
		"nodeSelector":      map[string]any{"gunicorn": "yes"},
		"priorityClassName": "system-node-critical",
		"podAnnotations":    map[string]any{"example.com/owner": "web"},
		"podLabels":         map[string]any{"team": "web"},
		"appArmorProfile":   map[string]any{"type": "Unconfined"},
		"probes":            map[string]any{"scheme": "HTTPS", "readiness": map[string]any{"path": "/-/healthy"}},
		"mountDebugfs":      false,
		"service":           map[string]any{"port": 9191},
		"serviceMonitor":    map[string]any{"enabled": true, "labels": map[string]any{"release": "kube-prometheus-stack"}, "interval": "15s"},
	}
	objs := loadChart(t, "prod", vals)
	ds := objs.ds
	pod := ds.Spec.Template.Spec
	c := container(t, ds)
	want, _ := loadManifests(t)
	wc := container(t, want)

	if ds.Name != "prod-gpe-ebpf" || objs.svc.Name != "prod-gpe-ebpf" || objs.sm.Name != "prod-gpe-ebpf" {
		t.Errorf("names %q %q %q, want prod-gpe-ebpf (release name, then chart name)", ds.Name, objs.svc.Name, objs.sm.Name)
	}
	same(t, "image", c.Image, "registry.example/gpe-ebpf:v1.2.3")
	same(t, "imagePullPolicy", c.ImagePullPolicy, corev1.PullAlways)
	same(t, "args", c.Args, []string{"--discover", "--workers=4", "--metrics-port=9191"})
	if len(c.Env) != 2 || c.Env[0].Name != "NODE_NAME" || c.Env[1] != (corev1.EnvVar{Name: "REDIS_ENABLED", Value: "true"}) {
		t.Errorf("env %+v, want NODE_NAME then REDIS_ENABLED=true", c.Env)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 9191 {
		t.Errorf("ports %+v, want metrics 9191", c.Ports)
	}
	if q := c.Resources.Limits[corev1.ResourceMemory]; q.String() != "256Mi" {
		t.Errorf("memory limit %s, want 256Mi", q.String())
	}
	if q := c.Resources.Requests[corev1.ResourceCPU]; q.String() != "10m" {
		t.Errorf("cpu request %s, want 10m", q.String())
	}
	same(t, "tolerations", pod.Tolerations, []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "web", Effect: corev1.TaintEffectNoSchedule}})
	same(t, "nodeSelector", pod.NodeSelector, map[string]string{"gunicorn": "yes"})
	same(t, "priorityClassName", pod.PriorityClassName, "system-node-critical")
	same(t, "pod annotations", ds.Spec.Template.Annotations, map[string]string{
		"prometheus.io/scrape": "true", "prometheus.io/port": "9191", "prometheus.io/path": "/metrics",
		"example.com/owner": "web",
	})
	if ds.Spec.Template.Labels["team"] != "web" {
		t.Errorf("pod labels %v lack team=web", ds.Spec.Template.Labels)
	}
	if _, ok := ds.Spec.Selector.MatchLabels["team"]; ok {
		t.Error("podLabels leaked into the selector, which cannot change after install")
	}

	// AppArmor is added; nothing else in the security context moves.
	sc := c.SecurityContext.DeepCopy()
	if sc.AppArmorProfile == nil || sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined {
		t.Errorf("appArmorProfile %+v, want Unconfined", sc.AppArmorProfile)
	}
	sc.AppArmorProfile = nil
	same(t, "securityContext apart from appArmorProfile", sc, wc.SecurityContext)

	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("%s probe scheme %q, want HTTPS", name, p.HTTPGet.Scheme)
		}
	}
	same(t, "readiness path", c.ReadinessProbe.HTTPGet.Path, "/-/healthy")
	same(t, "liveness path", c.LivenessProbe.HTTPGet.Path, "/-/healthy")
	for _, v := range pod.Volumes {
		if v.Name == "debugfs" {
			t.Error("debugfs volume with mountDebugfs: false")
		}
	}
	for _, m := range c.VolumeMounts {
		if m.Name == "debugfs" {
			t.Error("debugfs mount with mountDebugfs: false")
		}
	}

	t.Run("service monitor", func(t *testing.T) {
		sm, svc := objs.sm, objs.svc
		if sm.Namespace != releaseNamespace || !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{releaseNamespace}) {
			t.Errorf("ServiceMonitor namespace %q, namespaceSelector %+v: want the release's", sm.Namespace, sm.Spec.NamespaceSelector)
		}
		if sm.Labels["release"] != "kube-prometheus-stack" {
			t.Errorf("ServiceMonitor labels %v lack serviceMonitor.labels", sm.Labels)
		}
		for k, v := range sm.Spec.Selector.MatchLabels {
			if svc.Labels[k] != v {
				t.Errorf("ServiceMonitor selects %s=%s, which the Service's labels %v lack", k, v, svc.Labels)
			}
		}
		if len(sm.Spec.Endpoints) != 1 {
			t.Fatalf("ServiceMonitor endpoints %+v, want one", sm.Spec.Endpoints)
		}
		ep := sm.Spec.Endpoints[0]
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) {
			t.Errorf("ServiceMonitor port %q is no port name of the Service", ep.Port)
		}
		same(t, "ServiceMonitor path", ep.Path, "/metrics")
		same(t, "ServiceMonitor interval", string(ep.Interval), "15s")
		same(t, "ServiceMonitor scheme", ep.Scheme.String(), "https")
		if len(ep.RelabelConfigs) != 1 || ep.RelabelConfigs[0].TargetLabel != "node" ||
			!slices.Equal(ep.RelabelConfigs[0].SourceLabels, []monitoringv1.LabelName{"__meta_kubernetes_pod_node_name"}) {
			t.Errorf("ServiceMonitor relabelings %+v, want the node name as label node", ep.RelabelConfigs)
		}
		if svc.Spec.Ports[0].Port != 9191 {
			t.Errorf("Service port %d, want 9191", svc.Spec.Ports[0].Port)
		}
	})
}

func TestHelmChartPodMonitor(t *testing.T) {
	objs := loadChart(t, "gpe-ebpf", map[string]any{
		"podMonitor":        map[string]any{"enabled": true},
		"scrapeAnnotations": false,
		"service":           map[string]any{"enabled": false},
		"serviceAccount":    map[string]any{"create": false, "name": "existing"},
	})
	if objs.svc != nil || objs.sm != nil || objs.sa != nil {
		t.Errorf("service.enabled=false, serviceAccount.create=false: got a Service %v, ServiceMonitor %v, ServiceAccount %v",
			objs.svc != nil, objs.sm != nil, objs.sa != nil)
	}
	same(t, "serviceAccountName", objs.ds.Spec.Template.Spec.ServiceAccountName, "existing")
	for k := range objs.ds.Spec.Template.Annotations {
		if strings.HasPrefix(k, "prometheus.io/") {
			t.Errorf("annotation %s with scrapeAnnotations: false", k)
		}
	}
	pm := objs.pm
	if pm == nil {
		t.Fatal("no PodMonitor with podMonitor.enabled")
	}
	for k, v := range pm.Spec.Selector.MatchLabels {
		if objs.ds.Spec.Template.Labels[k] != v {
			t.Errorf("PodMonitor selects %s=%s, which the pods' labels lack", k, v)
		}
	}
	if !slices.Equal(pm.Spec.NamespaceSelector.MatchNames, []string{releaseNamespace}) {
		t.Errorf("PodMonitor namespaceSelector %+v, want the release's", pm.Spec.NamespaceSelector)
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("PodMonitor endpoints %+v, want one", pm.Spec.PodMetricsEndpoints)
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	c := container(t, objs.ds)
	if ep.Port == nil || !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == *ep.Port }) {
		t.Errorf("PodMonitor port %v is no port name of the container", ep.Port)
	}
	same(t, "PodMonitor path", ep.Path, "/metrics")
	same(t, "PodMonitor interval", string(ep.Interval), "30s")
	same(t, "PodMonitor scheme", ep.Scheme.String(), "http")
}

// TestHelmChartPrometheusRule: the chart's PrometheusRule holds exactly the groups of the
// rule files in deploy/prometheus (files/ links there), annotation templates untouched.
func TestHelmChartPrometheusRule(t *testing.T) {
	for _, migration := range []bool{false, true} {
		objs := loadChart(t, "gpe-ebpf", map[string]any{
			"prometheusRule": map[string]any{"enabled": true, "migration": migration, "labels": map[string]any{"release": "kps"}},
		})
		pr := objs.pr
		if pr == nil {
			t.Fatal("no PrometheusRule with prometheusRule.enabled")
		}
		if pr.Namespace != releaseNamespace || pr.Labels["release"] != "kps" {
			t.Errorf("PrometheusRule namespace %q labels %v: want the release's namespace and prometheusRule.labels", pr.Namespace, pr.Labels)
		}
		var want []monitoringv1.RuleGroup
		for _, rs := range ruleSets {
			if strings.Contains(rs.rules, "migration") && !migration {
				continue
			}
			var f struct {
				Groups []monitoringv1.RuleGroup `json:"groups"`
			}
			decodeStrict(t, rs.rules, &f)
			want = append(want, f.Groups...)
		}
		same(t, fmt.Sprintf("PrometheusRule groups (migration %v)", migration), pr.Spec.Groups, want)
		if !strings.Contains(pr.Spec.Groups[1].Rules[0].Annotations["summary"], "{{ $labels.instance }}") {
			t.Errorf("alert annotations were templated by Helm: %q", pr.Spec.Groups[1].Rules[0].Annotations["summary"])
		}
	}
}

// TestHelmChartRefuses: combinations that cannot work fail at render time, with a message.
func TestHelmChartRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		vals map[string]any
		want string
	}{
		{"both monitors", map[string]any{"serviceMonitor": map[string]any{"enabled": true}, "podMonitor": map[string]any{"enabled": true}}, "not both"},
		{"service monitor without service", map[string]any{"serviceMonitor": map[string]any{"enabled": true}, "service": map[string]any{"enabled": false}}, "needs service.enabled"},
		{"no service account name", map[string]any{"serviceAccount": map[string]any{"create": false}}, "serviceAccount.name is required"},
		// values.schema.json: a misspelt value is an error, not silently ignored.
		{"misspelt value", map[string]any{"serviceMonitor": map[string]any{"enable": true}}, "enable"},
		{"unknown top-level value", map[string]any{"tolerance": []any{}}, "tolerance"},
		{"port not a number", map[string]any{"metricsPort": "http"}, "metricsPort"},
		{"probe scheme", map[string]any{"probes": map[string]any{"scheme": "tcp"}}, "scheme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderChart("gpe-ebpf", tc.vals)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("render with %v: error %v, want one containing %q", tc.vals, err, tc.want)
			}
			t.Logf("%v", err)
		})
	}
}
