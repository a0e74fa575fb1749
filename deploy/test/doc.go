// Package deploytest checks the deployment artefacts of gpe-ebpf: the
// Dockerfile, the Kubernetes DaemonSet, the Helm chart, the systemd unit, the
// Vagrantfile, the Grafana dashboard and the Prometheus rules.
//
// It is a module of its own so that the main module does not depend on the
// Kubernetes API types, Helm (whose loader, template engine and linter render
// and check the chart here, as `helm lint` and `helm install --dry-run` would)
// or the Prometheus Operator's types (which decode the chart's ServiceMonitor
// and PodMonitor strictly). Run it from this directory:
//
//	go test ./... -count=1
//
// The dashboard test reads the metric names gpe-ebpf exports from the main
// module's golden exposition, internal/export/testdata/golden.prom; the
// environment variable GPE_GOLDEN points it at another file.
//
// Tests that need a tool (systemd-analyze, ruby, promtool, prometheus) skip when
// it is missing, except under CI=true, where they fail. The Prometheus 3 checks
// run sid's promtool and prometheus from a root that test/roots/build.sh builds
// (debootstrap, cached in .cache/roots): that needs root, and a root that
// cannot be built fails under CI=true too.
package deploytest
