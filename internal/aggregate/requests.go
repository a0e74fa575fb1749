package aggregate

import (
	"fmt"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// Requests: one END record each, sent by the kernel when the request ended, and the
// counters, failures and histograms it feeds. In flight and busy time are the kernel's counts
// (SetOccupancy).

// Error types (gunicorn_worker_error_handling_total{error_type}) besides http_<code>.
const (
	ErrNoResponse    = "no_response"
	ErrWorkerTimeout = "worker_timeout"
	ErrWorkerExit    = "worker_exit"
)

type connKey struct{ tgid, fd uint32 }

// reqKey names one request: the kernel's request ids are unique on the host.
type reqKey struct {
	connKey
	seq uint32
}

// request is what one END record says of a request, labelled; Aggregator.req is reused for
// every one (the kernel sends a request whole, when it ends).
type request struct {
	line     []byte // the request line, until labelled
	ignored  bool   // endpoint is an --ignore-route template: counted in ignored only
	method   string
	endpoint string
	status   uint16
	gone     bool // the client had left when the status line was written
}

// label turns the request line into labels.
func (r *request) label(n *normalizer) {
	l := n.label(r.line)
	r.method, r.endpoint, r.ignored = l.method, l.endpoint, l.ignored
	r.line = r.line[:0] // the buffer stays for the next request
}

type failKey struct{ method, endpoint string }
type errKey struct{ method, endpoint, errorType string }
type httpKey struct {
	method, endpoint string
	status           uint16
}
type routeKey struct{ method, endpoint string }

// maxPieces bounds the request lines waiting for their END in pieces: a line arrives in
// pieces only from a slow client, and its END follows; more than this were never ended.
const maxPieces = 1024

// reqLine keeps a piece of a request line that arrived in several reads, until its END.
func (a *Aggregator) reqLine(ev *events.Event) {
	if w, ok := a.workers[ev.TGID]; !ok || w.state == StateExited {
		return
	}
	k := reqKey{connKey{ev.TGID, ev.FD}, ev.Seq}
	p, ok := a.pieces[k]
	if !ok && len(a.pieces) >= maxPieces {
		return
	}
	if room := events.LineMax - len(p); room > 0 {
		a.pieces[k] = append(p, ev.Line[:min(len(ev.Line), room)]...)
	}
}

// reqEnd counts one request from its record: the kernel sends it when the request ends (the
// next request, the connection's close, the worker's read finding nothing, its exit).
func (a *Aggregator) reqEnd(ev *events.Event) {
	var more []byte
	if len(a.pieces) > 0 {
		k := reqKey{connKey{ev.TGID, ev.FD}, ev.Seq}
		more = a.pieces[k]
		delete(a.pieces, k)
	}
	ds, calls := a.takeDownstream(ev)
	w, ok := a.workers[ev.TGID]
	if !ok || w.state == StateExited || ev.Flags&events.FlagTLS != 0 {
		return
	}
	r := &a.req
	line := append(append(r.line[:0], ev.Line...), more...)
	*r = request{line: line[:min(len(line), events.LineMax)], status: ev.Status, gone: ev.Flags&events.FlagClientGone != 0}
	r.label(w.master.norm)
	if ev.EstablishedNS != 0 && ev.StartNS >= ev.EstablishedNS {
		// The connection's first request: how long it waited in the accept queue.
		w.master.queue.observe(float64(ev.StartNS-ev.EstablishedNS) / 1e9)
	}
	if r.status == 0 || r.gone {
		// Not answered (or answered into the void: the client had left): why, if the
		// worker was dying.
		errType := ErrNoResponse
		switch {
		case ev.Reason == events.EndExit || w.state == StateAborting:
			errType = a.deathError(w)
		case w.state == StateQuitting:
			errType = ErrWorkerExit
		}
		a.fail(w, r, errType)
		return
	}
	if a.ignore(w, r) {
		return // nor in the histograms
	}
	w.requests++
	w.master.http[httpKey{r.method, r.endpoint, r.status}]++
	if r.status >= 500 {
		a.fail(w, r, fmt.Sprintf("http_%d", r.status))
	}
	end := ev.LastWriteNS
	if end < ev.StartNS {
		end = ev.StartNS
	}
	d := float64(end-ev.StartNS) / 1e9
	w.duration.observe(d)
	w.reqSize.observe(float64(ev.BytesIn))
	w.respSize.observe(float64(ev.BytesOut))
	rk := routeKey{r.method, r.endpoint}
	rt, ok := w.master.routes[rk]
	if !ok {
		rt = &routeStats{duration: a.newHistogram(DurationBuckets), cpu: a.newHistogram(DurationBuckets)}
		w.master.routes[rk] = rt
	}
	rt.duration.observe(d)
	if ev.Flags&events.FlagCPU != 0 {
		rt.cpu.observe(float64(ev.CPUNS) / 1e9)
	}
	if calls {
		// With the requests the duration histogram counts: calls ÷ its count is per request.
		a.countDownstream(w, r.endpoint, &ds)
	}
}

// routeStats is what a master keeps of one method and endpoint: the duration of its requests, and
// the on-CPU time of those the kernel measured alone on their thread (events.FlagCPU).
type routeStats struct {
	duration, cpu Histogram
}

func (a *Aggregator) fail(w *worker, r *request, errorType string) {
	if a.ignore(w, r) {
		return
	}
	w.failed[failKey{r.method, r.endpoint}]++
	w.errors[errKey{r.method, r.endpoint, errorType}]++
}

// ignore counts a request to an --ignore-route template in ignored and says whether it was
// one. Such requests still count in in-flight and busy time (the kernel's): they occupy the
// worker.
func (a *Aggregator) ignore(w *worker, r *request) bool {
	if !r.ignored {
		return false
	}
	w.master.ignored[r.endpoint]++
	return true
}

// dropPending forgets what waits for a process's requests' ENDs: line pieces, downstream calls.
func (a *Aggregator) dropPending(pid uint32) {
	a.dropDownstream(pid)
	for k := range a.pieces {
		if k.tgid == pid {
			delete(a.pieces, k)
		}
	}
}

// signalNames are Gunicorn's names (SIG_NAMES: the signal module's names without SIG,
