// Package deploytest checks the deployment artefacts of gpe-ebpf: the
// Dockerfile, the Kubernetes DaemonSet, the systemd unit, the Vagrantfile and
// the Grafana dashboard.
//
// It is a module of its own so that the main module does not depend on the
// Kubernetes API types. Run it from this directory:
//
//	go test ./... -count=1
//
// The dashboard test reads the metric names gpe-ebpf exports from the main
// module's golden exposition, internal/export/testdata/golden.prom; the
// environment variable GPE_GOLDEN points it at another file.
//
// Tests that need a tool (systemd-analyze, ruby) skip when it is missing,
// except under CI=true, where they fail.
package deploytest
