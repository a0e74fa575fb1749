package aggregate

import (
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// TestIgnoreRoutes: requests to an --ignore-route template count only in Ignored, whatever
// their status or fate; the kernel's in flight and busy time, which include them, are served
// as they are; other requests, --route templates and the endpoint bound are unaffected.
func TestIgnoreRoutes(t *testing.T) {
	const w = 101
	a, _ := newTestAggregator(t, func(c *Config) {
		c.IgnoreRoutes = []string{"/healthz", "/probe/{kind}", "/unused"}
		c.Routes = []string{"/users/{id}"}
		c.MaxEndpoints = 2
	})
	occ := occupancy{}
	a.SetOccupancy(occ.read)
	feed(a, evFork(sec, w, masterPID))
	req := func(fd, seq uint32, at uint64, line string, status uint16) {
		feed(a, evReq(at+20*ms, w, fd, seq, line, at, at+10*ms, 100, 200, status, events.EndClose))
	}
	req(5, 1, 2*sec, "GET /healthz", 200)
	req(5, 2, 3*sec, "GET /healthz/", 503)      // trailing slash; a 5xx is not a failure either
	req(5, 3, 4*sec, "HEAD /probe/ready", 200)  // a {name} segment matches any one
	req(5, 4, 5*sec, "GET /probe/ready/x", 200) // not the template: counted
	req(5, 5, 6*sec, "GET /healthz", 0)         // no response: not a failure
	req(5, 6, 7*sec, "GET /users/7", 200)
	req(5, 7, 8*sec, "GET /other", 200) // the third endpoint: /healthz took no place
	// In flight when the worker dies: not a worker_exit failure either.
	occ[w] = events.Occupancy{InFlight: 1, BusyNS: 60 * ms, BusySince: 9 * sec}
	ws := workerOf(t, a.Snapshot(9*sec+500*ms), w)
	wantEq(t, "ignored request in flight", ws.InFlight, 1)
	wantEq(t, "busy seconds while in flight", ws.BusySeconds, 0.56)
	feed(a, evReq(10*sec, w, 6, 1, "GET /healthz", 9*sec, 0, 10, 0, 0, events.EndExit),
		evExitBusy(10*sec, w, 9, 60*ms+sec))

	s := a.Snapshot(0)
	m := masterOf(t, s, masterPID)
	ws = workerOf(t, s, w)
	wantEq(t, "ignored /healthz", m.Ignored["/healthz"], uint64(4))
	wantEq(t, "ignored /probe/{kind}", m.Ignored["/probe/{kind}"], uint64(1))
	wantEq(t, "unused template served as 0", m.Ignored["/unused"], uint64(0))
	wantEq(t, "ignored templates", len(m.Ignored), 3)
	wantEq(t, "worker requests", ws.Requests, uint64(3))
	wantEq(t, "duration observations", ws.Duration.Count, uint64(3))
	wantEq(t, "size observations", ws.ReqSize.Count, uint64(3))
	wantEq(t, "failed", total(ws.Failed), uint64(0))
	wantEq(t, "errors", total(ws.Errors), uint64(0))
	wantEq(t, "http total", httpTotal(m), uint64(3))
	wantEq(t, "/probe/ready/x counted", httpCount(m, "GET", "/probe/ready/x", 200), uint64(1))
	wantEq(t, "route", httpCount(m, "GET", "/users/{id}", 200), uint64(1))
	wantEq(t, "third endpoint past max", httpCount(m, "GET", EndpointOther, 200), uint64(1))
	for _, r := range m.Routes {
		if r.Endpoint == "/healthz" || r.Endpoint == "/probe/{kind}" {
			t.Errorf("route histogram for ignored %s", r.Endpoint)
		}
	}
	// The exit record's busy time, ignored requests included (the fake kernel's 60 ms before,
	// plus 1 s in flight until the exit).
	wantEq(t, "busy seconds", ws.BusySeconds, 1.06)
	wantEq(t, "in flight after the exit", ws.InFlight, 0)
}
