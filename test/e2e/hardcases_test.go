package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// Issue 3's hard cases, each against a real Gunicorn and the real binary.

// rawRequest writes req in pieces (with a pause between them) on a fresh connection and
// returns the status line of the answer ("" if none).
func rawRequest(t *testing.T, g *gunicorn, pieces []string, pause time.Duration) string {
	t.Helper()
	c := g.conn(t)
	defer c.Close()
	for _, p := range pieces {
		if _, err := c.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(pause) // the load's shape: a client that trickles its request
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

func chop(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

func TestSlowHeaders(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	req := "GET /slow-headers/abc?secret=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: trickle\r\nConnection: close\r\n\r\n"
	if st := rawRequest(t, g, chop(req, 3), 15*time.Millisecond); !strings.Contains(st, " 404 ") {
		t.Fatalf("status line %q, want a 404", st)
	}
	ms := p.waitMetric(t, "gunicorn_worker_requests_total", nil, 1)
	want := map[string]string{"method": "GET", "endpoint": "/slow-headers/abc", "status": "404"}
	if got := ms.sum("gunicorn_http_requests_total", want); got != 1 {
		t.Errorf("http_requests_total%v = %v, want 1; series: %v", want, got, ms.series("gunicorn_http_requests_total", nil))
	}
}

func TestSplitRequestAndLargeBody(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	const size = 3 << 20
	head := fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", size)
	pieces := []string{head[:20], head[20:]}
	body := strings.Repeat("b", size)
	pieces = append(pieces, chop(body, 256<<10)...)
	if st := rawRequest(t, g, pieces, 5*time.Millisecond); !strings.Contains(st, " 200 ") {
		t.Fatalf("status line %q, want 200", st)
	}
	ms := p.waitMetric(t, "gunicorn_worker_requests_total", nil, 1)
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"method": "POST", "endpoint": "/upload", "status": "200"}); got != 1 {
		t.Errorf("POST /upload counted %v times, want 1", got)
	}
	// The size histograms are recorded when the request ends (the socket is gone), which can
	// follow the count (the status line) by a round trip and a reader poll.
	ms = p.waitMetric(t, "gunicorn_worker_request_size_bytes", nil, 1)
	var in float64
	for _, m := range ms.series("gunicorn_worker_request_size_bytes", nil) {
		in += m.GetHistogram().GetSampleSum()
	}
	if in < size {
		t.Errorf("request bytes %v, want at least the %d-byte body", in, size)
	}
}

func TestSendfileDuration(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	// A client that reads slowly: the 10 MB sendfile takes well over 250 ms to drain.
	c := g.conn(t)
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	fmt.Fprintf(c, "GET /file/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	start := time.Now()
	buf := make([]byte, 256<<10)
	var got int
	for {
		n, err := c.Read(buf)
		got += n
		if err != nil {
			break
		}
		time.Sleep(8 * time.Millisecond) // the load's shape: a slow reader
	}
	c.Close()
	took := time.Since(start)
	if got < 10<<20 {
		t.Fatalf("read %d bytes, want 10 MB", got)
	}
	// The duration is recorded once the connection is gone (the worker closed it and the
	// client acknowledged), which can be a moment after the client read the last byte.
	ep := map[string]string{"endpoint": "/file/{id}", "method": "GET"}
	ms := p.waitMetric(t, "gunicorn_http_request_duration_seconds", ep, 1)
	series := ms.series("gunicorn_http_request_duration_seconds", ep)
	if len(series) != 1 || series[0].GetHistogram().GetSampleCount() != 1 {
		t.Fatalf("no single /file/{id} observation: %v", series)
	}
	d := series[0].GetHistogram().GetSampleSum()
	t.Logf("client took %v, observed duration %.3fs", took, d)
	if d < 0.25 || d > took.Seconds() {
		t.Errorf("observed duration %.3fs: want it to cover the whole send (client took %v)", d, took)
	}
	var out float64
	for _, m := range ms.series("gunicorn_worker_response_size_bytes", nil) {
		out += m.GetHistogram().GetSampleSum()
	}
	if out < 10<<20 {
		t.Errorf("response bytes %v, want >= 10 MB (sendfile counted)", out)
	}
}

func TestChunkedAndContinue(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	if s := get(t, g.URL()+"/chunked"); s != 200 {
		t.Fatalf("/chunked: %d", s)
	}
	// Expect: 100-continue: the interim 100 does not count, the final 200 does, once.
	c := g.conn(t)
	defer c.Close()
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	interim, _ := r.ReadString('\n')
	if !strings.Contains(interim, " 100 ") {
		t.Fatalf("interim %q, want 100 Continue", interim)
	}
	r.ReadString('\n')
	c.Write([]byte("0123456789"))
	final, _ := r.ReadString('\n')
	if !strings.Contains(final, " 200 ") {
		t.Fatalf("final %q, want 200", final)
	}
	ms := p.waitMetric(t, "gunicorn_worker_requests_total", nil, 2)
	for _, want := range []map[string]string{
		{"endpoint": "/chunked", "status": "200"},
		{"endpoint": "/upload", "method": "POST", "status": "200"},
	} {
		if got := ms.sum("gunicorn_http_requests_total", want); got != 1 {
			t.Errorf("http_requests_total%v = %v, want 1", want, got)
		}
	}
	if got := len(ms.series("gunicorn_http_requests_total", map[string]string{"status": "100"})); got != 0 {
		t.Errorf("an interim 100 was counted as a response")
	}
}

func TestClientLeavesBeforeResponse(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	c := g.conn(t)
	fmt.Fprintf(c, "GET /sleep/600 HTTP/1.1\r\nHost: x\r\n\r\n")
	// The worker has read the request (it is in flight) when the client leaves, long before
	// the worker answers.
	p.waitMetric(t, "gunicorn_worker_requests_in_flight", nil, 1)
	c.Close()
	get(t, g.URL()+"/ok")
	p.settle(t, "gunicorn_worker_failed_requests_total", nil, 1)
	g.idle(t) // the sleeping worker has answered into the void and closed the connection
	ms := p.quiet(t)
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/sleep/{id}"}); got != 0 {
		t.Errorf("phantom response counted for the request whose client left: %v", got)
	}
	want := map[string]string{"endpoint": "/sleep/{id}", "method": "GET", "error_type": "no_response"}
	if got := ms.sum("gunicorn_worker_error_handling_total", want); got != 1 {
		t.Errorf("error_handling_total%v = %v, want 1", want, got)
	}
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != 1 {
		t.Errorf("requests_total = %v, want 1 (only /ok was answered to a client)", got)
	}
}

func TestGarbageAndHugeURLs(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	garbage := []string{
		"\x00\x01\x02\xff\xfe binary \x80\x81\r\n\r\n",
		"SSH-2.0-OpenSSH_9.0\r\n",
		"get /lowercase HTTP/1.1\r\n\r\n",
		"GET /" + strings.Repeat("u", 16<<10) + " HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /\xc3\x28bad-utf8\xe2\x82 HTTP/1.1\r\nHost: x\r\n\r\n",
		"BREW /coffee HTTP/1.1\r\nHost: x\r\n\r\n",
	}
	for i := 0; i < 20; i++ {
		get(t, g.URL()+"/ok")
		rawRequest(t, g, []string{garbage[i%len(garbage)]}, 0)
	}
	for i := 0; i < 20; i++ {
		get(t, g.URL()+"/ok")
	}
	ms := p.settle(t, "gunicorn_http_requests_total", map[string]string{"endpoint": "/ok", "status": "200"}, 40)
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/ok", "method": "GET", "status": "200"}); got != 40 {
		t.Errorf("the real requests around the garbage: %v counted, want 40", got)
	}
	for _, f := range ms {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				v := l.GetValue()
				if !utf8.ValidString(v) {
					t.Errorf("%s{%s=%q}: not valid UTF-8", f.GetName(), l.GetName(), v)
				}
				if l.GetName() == "endpoint" && len(v) > 128 {
					t.Errorf("%s: endpoint label of %d bytes, longer than the 128-byte bound", f.GetName(), len(v))
				}
				if l.GetName() == "method" && v != "GET" && v != "OTHER" && v != "POST" {
					t.Errorf("%s: unexpected method label %q", f.GetName(), v)
				}
			}
		}
	}
	if p.cmd.ProcessState != nil {
		t.Fatalf("gpe-ebpf exited: %v", p.cmd.ProcessState)
	}
}

func TestPipelinedRequests(t *testing.T) {
	requireE2E(t)
	// gevent answers both requests of the segment (20.1's gthread answers only the first).
	g := startGunicorn(t, gunicornOpts{WorkerClass: "gevent"})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	c := g.conn(t)
	defer c.Close()
	// Two requests in one segment.
	c.Write([]byte("GET /ok HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	all, _ := io.ReadAll(c)
	answered := strings.Count(string(all), "HTTP/1.1 ")
	if answered != 2 {
		t.Fatalf("Gunicorn answered %d of the 2 pipelined requests: %q", answered, all)
	}
	ms := p.settle(t, "gunicorn_worker_requests_total", nil, float64(answered))
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != float64(answered) {
		t.Errorf("requests_total = %v, Gunicorn answered %d", got, answered)
	}
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/ok", "status": "200"}); got != 1 {
		t.Errorf("the first pipelined request (/ok) counted %v times, want 1", got)
	}
	// The second request line was in the same segment and is not read again: it is counted
	// with its status, and labelled method OTHER, endpoint unknown (README).
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"status": "404"}); got != 1 {
		t.Errorf("the second pipelined request (404) counted %v times, want 1", got)
	}
}

func TestUnixSocket(t *testing.T) {
	requireE2E(t)
	sock := filepath.Join(t.TempDir(), "gunicorn.sock")
	g := startGunicorn(t, gunicornOpts{Bind: "unix:" + sock})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(_ context.Context, _, _ string) (net.Conn, error) { return net.Dial("unix", sock) },
	}}
	for i := 0; i < 30; i++ {
		path := "/ok"
		if i%3 == 0 {
			path = "/status/503"
		}
		resp, err := client.Get("http://gunicorn" + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	ms := p.waitMetric(t, "gunicorn_worker_requests_total", nil, 30)
	if got := ms.sum("gunicorn_worker_error_handling_total", map[string]string{"error_type": "http_503"}); got != 10 {
		t.Errorf("503s over the unix socket: %v, want 10", got)
	}
}

// TestTLS: with --tls-uprobes off, a TLS connection is recognised from its first bytes and left
// alone: nothing is counted, and no made-up label is produced.
func TestTLS(t *testing.T) {
	requireE2E(t)
	cert, key, _ := selfSigned(t)
	g := startGunicorn(t, gunicornOpts{Args: []string{"--certfile", cert, "--keyfile", key}})
	// Without the libssl uprobes (tls_test.go measures TLS with them): only the ciphertext.
	p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--tls-uprobes", "off")
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
	for i := 0; i < 20; i++ {
		resp, err := client.Get("https://" + g.Addr + "/status/503")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Fatalf("status %d over TLS", resp.StatusCode)
		}
	}
	g.idle(t)
	ms := p.quiet(t)
	// Encrypted bytes are recognised and left alone: no request series, and above all no
	// series with a made-up method, endpoint or status.
	for _, name := range []string{"gunicorn_http_requests_total", "gunicorn_worker_failed_requests_total", "gunicorn_worker_error_handling_total"} {
		if s := ms.series(name, nil); len(s) != 0 {
			t.Errorf("%s has series for TLS traffic: %v", name, s)
		}
	}
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != 0 {
		t.Errorf("requests_total over TLS with --tls-uprobes off = %v: the README says they are not measured", got)
	}
	if len(ms.series("gunicorn_worker_state", map[string]string{"state": "running"})) != 2 {
		t.Errorf("the workers of a TLS server are still observed")
	}
}

func TestWorkerTimeout(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{Args: []string{"--timeout", "2", "--graceful-timeout", "1"}})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	p.waitMetric(t, "gunicorn_master_timeout_seconds", nil, 2) // what the heartbeat alert compares with
	c := g.conn(t)
	defer c.Close()
	fmt.Fprintf(c, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
	ms := p.waitMetric(t, "gunicorn_worker_exits_total", map[string]string{"reason": "timeout"}, 1)
	want := map[string]string{"endpoint": "/hang", "method": "GET", "error_type": "worker_timeout"}
	if got := ms.sum("gunicorn_worker_error_handling_total", want); got != 1 {
		t.Errorf("error_handling_total%v = %v, want 1", want, got)
	}
	if got := ms.sum("gunicorn_worker_failed_requests_total", map[string]string{"endpoint": "/hang"}); got != 1 {
		t.Errorf("failed_requests_total{/hang} = %v, want 1", got)
	}
	ms = p.waitMetric(t, "gunicorn_master_worker_restarts_total", nil, 1)
	if !strings.Contains(p.out.String(), "state=aborting") {
		t.Errorf("gpe-ebpf never logged the worker passing through state aborting")
	}
	if got := ms.sum("gunicorn_master_signals_total", map[string]string{"signal": "chld"}); got < 1 {
		t.Errorf("the master's SIGCHLD was not counted")
	}
}
