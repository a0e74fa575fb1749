package e2e

import (
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// TestTLSAsyncio: uvicorn's worker serving TLS runs libssl over asyncio's memory BIOs (no
// SSL_set_fd, no socket call inside SSL_read): each SSL is tied to the socket whose ciphertext
// its thread read just before its first SSL_read, and every request is counted with its
// endpoint and status, on fresh connections and on a keep-alive one.
func TestTLSAsyncio(t *testing.T) {
	requireE2E(t)
	g := startTLSGunicorn(t, gunicornOpts{WorkerClass: "uvicorn.workers.UvicornWorker", App: "asgi:app"})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	p.waitTLSAttached(t, g.Workers())
	const fresh, missing, kept = 20, 10, 10
	for i := 0; i < fresh; i++ {
		if st := g.get(t, "/ok"); st != 200 {
			t.Fatalf("GET /ok: %d", st)
		}
	}
	for i := 0; i < missing; i++ {
		if st := g.get(t, "/missing"); st != 404 {
			t.Fatalf("GET /missing: %d", st)
		}
	}
	ka := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: g.Client.Transport.(*http.Transport).TLSClientConfig.Clone(), MaxIdleConnsPerHost: 1}}
	for i := 0; i < kept; i++ {
		resp, err := ka.Get(g.Base + "/ok")
		if err != nil {
			t.Fatalf("keep-alive GET /ok: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	ka.CloseIdleConnections()
	ms := p.settle(t, "gunicorn_worker_requests_total", nil, fresh+missing+kept)
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != fresh+missing+kept {
		t.Errorf("requests counted %v, want %d", got, fresh+missing+kept)
	}
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/ok", "status": "200"}); got != fresh+kept {
		t.Errorf("/ok 200 counted %v, want %d", got, fresh+kept)
	}
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/missing", "status": "404"}); got != missing {
		t.Errorf("/missing 404 counted %v, want %d", got, missing)
	}
	if got := ms.sum("gunicorn_worker_requests_in_flight", nil); got != 0 {
		t.Errorf("in flight %v after every answer, want 0", got)
	}
}
