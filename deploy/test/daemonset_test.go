package deploytest

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

const daemonSetPath = "deploy/kubernetes/daemonset.yaml"

// splitYAML splits a multi-document YAML stream on its "---" separators and
// drops documents that hold only comments.
func splitYAML(text string) []string {
	var docs []string
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(text, -1) {
		for _, l := range strings.Split(d, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				docs = append(docs, d)
				break
			}
		}
	}
	return docs
}

// loadManifests decodes every document strictly (an unknown or misspelt field
// is an error) into its typed Kubernetes object.
func loadManifests(t *testing.T) (*appsv1.DaemonSet, *corev1.ServiceAccount) {
	t.Helper()
	var ds *appsv1.DaemonSet
	var sa *corev1.ServiceAccount
	for i, doc := range splitYAML(readRepoFile(t, daemonSetPath)) {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch meta.APIVersion + " " + meta.Kind {
		case "apps/v1 DaemonSet":
			ds = &appsv1.DaemonSet{}
			obj = ds
		case "v1 ServiceAccount":
			sa = &corev1.ServiceAccount{}
			obj = sa
		default:
			t.Fatalf("document %d: unexpected %s %s", i, meta.APIVersion, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("document %d (%s): %v", i, meta.Kind, err)
		}
	}
	if ds == nil {
		t.Fatal("no apps/v1 DaemonSet in " + daemonSetPath)
	}
	return ds, sa
}

func TestDaemonSet(t *testing.T) {
	ds, sa := loadManifests(t)
	pod := ds.Spec.Template.Spec

	t.Run("namespace agnostic", func(t *testing.T) {
		if ds.Namespace != "" || (sa != nil && sa.Namespace != "") {
			t.Error("manifests set a namespace; they should be applied with kubectl -n")
		}
	})

	t.Run("selector matches template", func(t *testing.T) {
		if ds.Spec.Selector == nil || len(ds.Spec.Selector.MatchLabels) == 0 {
			t.Fatal("no selector")
		}
		for k, v := range ds.Spec.Selector.MatchLabels {
			if ds.Spec.Template.Labels[k] != v {
				t.Errorf("selector %s=%s not in the pod template's labels", k, v)
			}
		}
	})

	t.Run("service account", func(t *testing.T) {
		if sa == nil {
			if pod.ServiceAccountName != "" {
				t.Errorf("serviceAccountName %q but no ServiceAccount in the file", pod.ServiceAccountName)
			}
			return
		}
		if pod.ServiceAccountName != sa.Name {
			t.Errorf("serviceAccountName %q, ServiceAccount is %q", pod.ServiceAccountName, sa.Name)
		}
	})

	t.Run("pod", func(t *testing.T) {
		if !pod.HostPID {
			t.Error("hostPID must be true: gpe-ebpf must see the node's Gunicorn processes")
		}
		if pod.HostNetwork {
			t.Error("hostNetwork is not needed")
		}
		if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool {
			return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
		}) {
			t.Error("no catch-all toleration (operator: Exists): the DaemonSet must run on every node")
		}
		ann := ds.Spec.Template.Annotations
		for k, v := range map[string]string{
			"prometheus.io/scrape": "true",
			"prometheus.io/port":   "9090",
			"prometheus.io/path":   "/metrics",
		} {
			if ann[k] != v {
				t.Errorf("pod annotation %s = %q, want %q", k, ann[k], v)
			}
		}
	})

	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]

	t.Run("security context", func(t *testing.T) {
		sc := c.SecurityContext
		if sc == nil {
			t.Fatal("no securityContext")
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Error("container is privileged")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation must be false")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Error("readOnlyRootFilesystem must be true")
		}
		if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
			t.Error("runAsUser must be 0 (BPF and other users' /proc need uid 0)")
		}
		if sc.Capabilities == nil {
			t.Fatal("no capabilities")
		}
		if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("capabilities drop %v, want [ALL]", sc.Capabilities.Drop)
		}
		add := slices.Clone(sc.Capabilities.Add)
		slices.Sort(add)
		want := []corev1.Capability{"BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_PTRACE"}
		if !slices.Equal(add, want) {
			t.Errorf("capabilities add %v, want exactly %v", add, want)
		}
		// The kernel requirement, and why no more capabilities are needed, are part of the
		// artefact.
		text := readRepoFile(t, daemonSetPath)
		for _, re := range []string{`Linux >= 6\.3 with BTF`, `6\.3\+[\s\S]*CAP_BPF[\s\S]*neither SYS_ADMIN nor SYS_RESOURCE`} {
			if !regexp.MustCompile(re).MatchString(text) {
				t.Errorf("no comment matching %q", re)
			}
		}
	})

	t.Run("args and env", func(t *testing.T) {
		for _, want := range []string{"--discover", "--log-format=json"} {
			if !slices.Contains(c.Args, want) {
				t.Errorf("args %v lack %s", c.Args, want)
			}
		}
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
		}) {
			t.Error("no env var from fieldRef spec.nodeName")
		}
		if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.ContainerPort == 9090 }) {
			t.Error("no containerPort 9090")
		}
	})

	t.Run("resources", func(t *testing.T) {
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okReq := c.Resources.Requests[res]
			lim, okLim := c.Resources.Limits[res]
			if !okReq || !okLim {
				t.Errorf("%s: request and limit must both be set", res)
				continue
			}
			if req.Cmp(lim) > 0 {
				t.Errorf("%s: request %s above limit %s", res, req.String(), lim.String())
			}
		}
	})

	t.Run("probes", func(t *testing.T) {
		// Probes ask the endpoints made for them, not /metrics (a scrape costs a
		// full collection): /-/healthy is "the process is up", /-/ready is
		// "attached to at least one master".
		for _, pr := range []struct {
			name, path string
			p          *corev1.Probe
		}{{"readinessProbe", "/-/ready", c.ReadinessProbe}, {"livenessProbe", "/-/healthy", c.LivenessProbe}} {
			name, p := pr.name, pr.p
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s: want an httpGet probe", name)
				continue
			}
			if p.HTTPGet.Path != pr.path {
				t.Errorf("%s path %q, want %s", name, p.HTTPGet.Path, pr.path)
			}
			port := p.HTTPGet.Port
			if port.IntValue() != 9090 && !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool {
				return cp.Name == port.String() && cp.ContainerPort == 9090
			}) {
				t.Errorf("%s port %s is not 9090", name, port.String())
			}
		}
	})

	t.Run("mounts", func(t *testing.T) {
		vols := map[string]corev1.Volume{}
		for _, v := range pod.Volumes {
			vols[v.Name] = v
		}
		tracefs := false
		for _, m := range c.VolumeMounts {
			v, ok := vols[m.Name]
			if !ok {
				t.Errorf("mount %s names no volume", m.Name)
				continue
			}
			if v.HostPath == nil {
				continue
			}
			if !m.ReadOnly {
				t.Errorf("hostPath %s mounted read-write", v.HostPath.Path)
			}
			switch v.HostPath.Path {
			case "/sys/kernel/tracing":
				tracefs = m.MountPath == "/sys/kernel/tracing"
			case "/sys/kernel/debug":
			default:
				t.Errorf("unexpected hostPath %s (only tracefs and debugfs are needed; /proc comes with hostPID)", v.HostPath.Path)
			}
		}
		if !tracefs {
			t.Error("host /sys/kernel/tracing is not mounted at /sys/kernel/tracing")
		}
	})
}
