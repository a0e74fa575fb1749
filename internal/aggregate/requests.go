package aggregate

import (
	"fmt"

	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
)

// The request state machine: a request per connection of a worker, from its START record to
// its END, with the counters, failures and histograms it feeds.

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

type request struct {
	seq       uint32
	line      []byte // the request line so far, until labelled
	labeled   bool
	ignored   bool // endpoint is an --ignore-route template: counted in ignored only
	method    string
	endpoint  string
	startNS   uint64
	status    uint16
	counted   bool // requests_total and the http_* counters already have it
	responded bool // in-flight no more (status line written)
	gone      bool // the client had left when the status line was written
}

// label turns the request line into labels, once: late enough that a line which arrived in
// pieces (REQ_LINE records) is whole.
func (r *request) label(n *normalizer) {
	if r.labeled {
		return
	}
	l := n.label(r.line)
	r.method, r.endpoint, r.ignored = l.method, l.endpoint, l.ignored
	r.labeled, r.line = true, r.line[:0] // the buffer stays for the request's reuse
}

type failKey struct{ method, endpoint string }
type errKey struct{ method, endpoint, errorType string }
type httpKey struct {
	method, endpoint string
	status           uint16
}
type routeKey struct{ method, endpoint string }

func (a *Aggregator) reqStart(ev *probes.Event) {
	w, ok := a.workers[ev.TGID]
	if !ok || w.state == StateExited {
		return
	}
	k := connKey{ev.TGID, ev.FD}
	if old, ok := a.inflight[k]; ok {
		// On keep-alive the previous request's END(next) follows this START: keep it until
		// then. If it holds no status yet, its RESP was lost; it is in flight no more anyway.
		if !old.responded {
			old.responded = true
			a.leaveFlight(w, ev.TS)
		}
		a.ending[reqKey{k, old.seq}] = old
	}
	a.inflight[k] = a.newRequest(ev.Seq, ev.StartNS, ev.Line)
	if ev.EstablishedNS != 0 && ev.StartNS >= ev.EstablishedNS {
		// The connection's first request: how long it waited in the accept queue.
		w.master.queue.observe(float64(ev.StartNS-ev.EstablishedNS) / 1e9)
	}
	w.inFlight++
	if w.inFlight == 1 {
		w.busySince = ev.StartNS
	}
}

// maxFree bounds the requests kept for reuse: more than the connections in flight at once is
// never needed.
const maxFree = 256

// newRequest takes a request (and its line buffer) from the free list, or allocates one: the
// free list saves two allocations, 330 bytes, per request on the per-event path.
func (a *Aggregator) newRequest(seq uint32, startNS uint64, line []byte) *request {
	var r *request
	var buf []byte
	if n := len(a.free); n > 0 {
		r, buf = a.free[n-1], a.free[n-1].line[:0]
		a.free = a.free[:n-1]
	} else {
		r, buf = new(request), make([]byte, 0, probes.LineMax)
	}
	*r = request{seq: seq, startNS: startNS, line: append(buf, line...)}
	return r
}

// recycle gives back a request no map holds any more.
func (a *Aggregator) recycle(r *request) {
	if len(a.free) < maxFree && cap(r.line) >= probes.LineMax {
		a.free = append(a.free, r)
	}
}

func (a *Aggregator) leaveFlight(w *worker, ts uint64) {
	if w.inFlight == 0 {
		return
	}
	w.inFlight--
	if w.inFlight == 0 && ts > w.busySince {
		w.busyNS += ts - w.busySince
	}
}

// request returns the in-flight request the event is about, or one standing in for it when
// its start was not seen (lost, or a pipelined request whose line the kernel did not read).
func (a *Aggregator) request(ev *probes.Event) *request {
	k := connKey{ev.TGID, ev.FD}
	if r, ok := a.inflight[k]; ok && r.seq == ev.Seq {
		return r
	}
	if r, ok := a.ending[reqKey{k, ev.Seq}]; ok {
		return r
	}
	return nil
}

func (a *Aggregator) reqResp(ev *probes.Event) {
	w, ok := a.workers[ev.TGID]
	if !ok {
		return
	}
	r := a.request(ev)
	if r == nil {
		return // counted at its end, from the END record's status
	}
	r.status = ev.Status
	if ev.Flags&probes.FlagClientGone != 0 {
		r.gone = true
	}
	if !r.responded {
		r.responded = true
		a.leaveFlight(w, ev.TS)
	}
	a.count(w, r)
}

// count adds an answered request to the counters, once.
func (a *Aggregator) count(w *worker, r *request) {
	if r.counted || r.status == 0 || r.gone {
		return
	}
	r.label(w.master.norm)
	if a.ignore(w, r) {
		return
	}
	r.counted = true
	w.requests++
	w.master.http[httpKey{r.method, r.endpoint, r.status}]++
	if r.status >= 500 {
		a.fail(w, r, fmt.Sprintf("http_%d", r.status))
	}
}

func (a *Aggregator) fail(w *worker, r *request, errorType string) {
	r.label(w.master.norm)
	if a.ignore(w, r) {
		return
	}
	w.failed[failKey{r.method, r.endpoint}]++
	w.errors[errKey{r.method, r.endpoint, errorType}]++
}

// ignore counts a request to an --ignore-route template in ignored, once, and says whether it
// was one. Such requests still count in in-flight and busy time: they occupy the worker.
func (a *Aggregator) ignore(w *worker, r *request) bool {
	if !r.ignored {
		return false
	}
	if !r.counted {
		r.counted = true
		w.master.ignored[r.endpoint]++
	}
	return true
}

// reqLine appends a piece of a request line that arrived in several reads.
func (a *Aggregator) reqLine(ev *probes.Event) {
	r := a.request(ev)
	if r == nil || r.labeled {
		return
	}
	n := len(ev.Line)
	if room := probes.LineMax - len(r.line); n > room {
		n = room
	}
	r.line = append(r.line, ev.Line[:n]...)
}

func (a *Aggregator) reqEnd(ev *probes.Event) {
	w, ok := a.workers[ev.TGID]
	if !ok || w.state == StateExited {
		// The kernel closes a dead worker's connections after its exit, which already
		// counted the requests in flight.
		return
	}
	if ev.Flags&probes.FlagTLS != 0 {
		return
	}
	r := a.request(ev)
	if r == nil {
		// Its start was not seen (lost or not read): count what the end says, labels unknown.
		a.unpaired++
		r = &request{seq: ev.Seq, method: "OTHER", endpoint: EndpointUnknown, labeled: true, startNS: ev.StartNS, responded: true}
	} else {
		if k := (connKey{ev.TGID, ev.FD}); a.inflight[k] == r {
			delete(a.inflight, k)
		} else {
			delete(a.ending, reqKey{k, ev.Seq})
		}
		defer a.recycle(r) // no map holds it any more
	}
	if ev.Status != 0 && r.status == 0 {
		r.status = ev.Status
	}
	if !r.responded {
		r.responded = true
		a.leaveFlight(w, ev.TS)
	}
	if ev.Flags&probes.FlagClientGone != 0 {
		r.gone = true
	}
	if r.status == 0 || r.gone {
		errType := ErrNoResponse
		if w.state == StateAborting {
			errType = ErrWorkerTimeout
		} else if w.state == StateQuitting {
			errType = ErrWorkerExit
		}
		a.fail(w, r, errType)
		return
	}
	a.count(w, r)
	r.label(w.master.norm)
	if r.ignored {
		return // nor in the histograms
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
	h, ok := w.master.routes[rk]
	if !ok {
		nh := newHistogram(DurationBuckets)
		h = &nh
		w.master.routes[rk] = h
	}
	h.observe(d)
}

func (a *Aggregator) dropInflight(pid uint32) {
	for k := range a.inflight {
		if k.tgid == pid {
			delete(a.inflight, k)
		}
	}
	for k := range a.ending {
		if k.tgid == pid {
			delete(a.ending, k)
		}
	}
}

// signalNames are Gunicorn's names (SIG_NAMES: the signal module's names without SIG,
