package aggregate

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

func TestEndpointLabel(t *testing.T) {
	long := "/" + strings.Repeat("abcdefgh/", 16*1024/9) // ~16 KB, only short words
	multi := "/" + strings.Repeat("é", 8*1024)           // two-byte runes, the cut falls inside one
	for _, tc := range []struct {
		name         string
		line         string
		mode         EndpointMode
		routes       []string
		method, want string
	}{
		{name: "root", line: "GET /", method: "GET", want: "/"},
		{name: "static words kept", line: "GET /api/v1/users", method: "GET", want: "/api/v1/users"},
		{name: "trailing slash kept", line: "GET /api/users/", method: "GET", want: "/api/users/"},
		{name: "query cut", line: "GET /search?q=secret&token=abc", method: "GET", want: "/search"},
		{name: "fragment cut", line: "GET /page#top", method: "GET", want: "/page"},
		{name: "query then fragment", line: "GET /a?b#c", method: "GET", want: "/a"},
		{name: "digits", line: "GET /users/42/orders/7", method: "GET", want: "/users/{id}/orders/{id}"},
		{name: "digits with query", line: "DELETE /users/42?force=1", method: "DELETE", want: "/users/{id}"},
		{name: "uuid", line: "GET /items/123e4567-e89b-12d3-a456-426614174000", method: "GET", want: "/items/{id}"},
		{name: "upper-case uuid", line: "GET /items/123E4567-E89B-12D3-A456-426614174000/x", method: "GET", want: "/items/{id}/x"},
		{name: "long hex", line: "GET /blobs/deadbeef0123abcd", method: "GET", want: "/blobs/{id}"},
		{name: "sha1", line: "GET /git/da39a3ee5e6b4b0d3255bfef95601890afd80709", method: "GET", want: "/git/{id}"},
		{name: "long mixed token", line: "GET /s/aZ9xQ2mK7pL4vN8r", method: "GET", want: "/s/{id}"},
		{name: "short hex word kept", line: "GET /cafe/beef", method: "GET", want: "/cafe/beef"},
		{name: "short mixed kept", line: "GET /v2/h2o", method: "GET", want: "/v2/h2o"},
		{name: "long word kept", line: "GET /internationalization", method: "GET", want: "/internationalization"},
		{name: "long hex letters only kept", line: "GET /deadbeefcafebabe", method: "GET", want: "/deadbeefcafebabe"},
		{name: "dashed word kept", line: "GET /health-check", method: "GET", want: "/health-check"},
		{name: "file name kept", line: "GET /static/app.js", method: "GET", want: "/static/app.js"},
		{
			name: "route wins", line: "GET /users/alice/orders/abc",
			routes: []string{"/users/{id}/orders/{order}"}, method: "GET", want: "/users/{id}/orders/{order}",
		},
		{
			name: "route wins over the heuristic", line: "GET /users/42/orders/7",
			routes: []string{"/users/{user}/orders/{order}"}, method: "GET", want: "/users/{user}/orders/{order}",
		},
		{
			name: "route needs the literal segments", line: "GET /accounts/42/orders/7",
			routes: []string{"/users/{user}/orders/{order}"}, method: "GET", want: "/accounts/{id}/orders/{id}",
		},
		{
			name: "route needs the same length", line: "GET /users/42",
			routes: []string{"/users/{user}/orders/{order}"}, method: "GET", want: "/users/{id}",
		},
		{name: "raw", line: "GET /users/42/orders/7", mode: EndpointRaw, method: "GET", want: "/users/42/orders/7"},
		{name: "raw still cuts the query", line: "GET /users/42?x=1", mode: EndpointRaw, method: "GET", want: "/users/42"},
		{
			name: "raw keeps routes", line: "GET /users/42", mode: EndpointRaw,
			routes: []string{"/users/{user}"}, method: "GET", want: "/users/{user}",
		},
		{name: "absolute form", line: "GET http://example.com/users/42?x=1", method: "GET", want: "/users/{id}"},
		{name: "absolute https with port", line: "GET https://example.com:8443/a/b", method: "GET", want: "/a/b"},
		{name: "absolute form without path", line: "GET http://example.com", method: "GET", want: "/"},
		{name: "asterisk", line: "OPTIONS *", method: "OPTIONS", want: "*"},
		{name: "HEAD", line: "HEAD /", method: "HEAD", want: "/"},
		{name: "PATCH", line: "PATCH /x", method: "PATCH", want: "/x"},
		{name: "unknown method", line: "PROPFIND /dav/x", method: "OTHER", want: "/dav/x"},
		{name: "invalid utf-8", line: "GET /caf\xe9/\xff\xfe", method: "GET", want: "/caf\uFFFD/\uFFFD"},
		{name: "control bytes", line: "GET /a\x01b\tc\x7f", method: "GET", want: "/a\uFFFDb\uFFFDc\uFFFD"},
		{name: "valid utf-8 kept", line: "GET /café/日本", method: "GET", want: "/café/日本"},
		{name: "16 KB path", line: "GET " + long, method: "GET", want: long[:MaxEndpointLen]},
		{name: "cut on a rune boundary", line: "GET " + multi, method: "GET", want: multi[:MaxEndpointLen-1]},
		{name: "empty", line: "", method: "OTHER", want: EndpointUnknown},
		{name: "no space", line: "garbage", method: "OTHER", want: EndpointUnknown},
		{name: "method only", line: "GET", method: "OTHER", want: EndpointUnknown},
		{name: "nothing after the space", line: "GET ", method: "OTHER", want: EndpointUnknown},
		{name: "leading space", line: " /a", method: "OTHER", want: EndpointUnknown},
		{name: "lower-case method", line: "get /a", method: "OTHER", want: EndpointUnknown},
		{name: "binary", line: "\x16\x03\x01\x02\x00 \x01", method: "OTHER", want: EndpointUnknown},
		{name: "method too long", line: "ABCDEFGHIJKLMNOPQ /a", method: "OTHER", want: EndpointUnknown},
		{name: "target not a path", line: "GET hello", method: "GET", want: EndpointUnknown},
		{name: "connect authority", line: "CONNECT host:443", method: "CONNECT", want: EndpointUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mode := tc.mode
			if mode == "" {
				mode = EndpointNormalized
			}
			n := newNormalizer(mode, tc.routes, nil, 200)
			l := n.label([]byte(tc.line))
			method, endpoint := l.method, l.endpoint
			wantEq(t, "method", method, tc.method)
			wantEq(t, "endpoint", endpoint, tc.want)
			if !utf8.ValidString(endpoint) {
				t.Errorf("endpoint %q is not valid UTF-8", endpoint)
			}
			if len(endpoint) > MaxEndpointLen {
				t.Errorf("endpoint is %d bytes, more than %d", len(endpoint), MaxEndpointLen)
			}
			if strings.ContainsAny(endpoint, "?#") {
				t.Errorf("endpoint %q carries a query or fragment", endpoint)
			}
		})
	}
}

func TestMaxEndpoints(t *testing.T) {
	n := newNormalizer(EndpointNormalized, nil, nil, 3)
	for _, step := range []struct{ line, want string }{
		{"GET /a", "/a"},
		{"GET /b", "/b"},
		{"GET /users/1", "/users/{id}"},
		{"GET /c", EndpointOther},       // the fourth distinct value
		{"POST /a", "/a"},               // seen already: any method
		{"GET /users/2", "/users/{id}"}, // the same value once normalised
		{"GET /d?x=1", EndpointOther},   // still full
		{"garbage", EndpointUnknown},    // not a path: does not take a place
		{"GET /b#frag", "/b"},
		{"GET /users/3/x", EndpointOther},
	} {
		t.Run(step.line, func(t *testing.T) {
			wantEq(t, "endpoint", n.label([]byte(step.line)).endpoint, step.want)
		})
	}
}

func TestMaxEndpointsPerMaster(t *testing.T) {
	// The bound is per master: a second master has its own.
	a, _ := newTestAggregator(t, func(c *Config) { c.MaxEndpoints = 1 })
	a.AddMaster(200, epoch, "")
	feed(a, evFork(sec, 101, masterPID), evFork(sec, 201, 200))
	for i, w := range []uint32{101, 101, 201} {
		line := []string{"GET /a", "GET /b", "GET /b"}[i]
		seq := uint32(i + 1)
		ts := uint64(i+2) * sec
		feed(a, evReq(ts+ms, w, 5, seq, line, ts, ts+ms, 1, 1, 200, events.EndWait))
	}
	s := a.Snapshot(0)
	m1, m2 := masterOf(t, s, masterPID), masterOf(t, s, 200)
	wantEq(t, "master 1 /a", httpCount(m1, "GET", "/a", 200), uint64(1))
	wantEq(t, "master 1 other", httpCount(m1, "GET", EndpointOther, 200), uint64(1))
	wantEq(t, "master 2 /b", httpCount(m2, "GET", "/b", 200), uint64(1))
}

func TestEndpointThroughAggregator(t *testing.T) {
	// The line as the kernel hands it over, and one it should have cut but did not.
	for _, tc := range []struct{ line, method, endpoint string }{
		{"GET /users/42", "GET", "/users/{id}"},
		{"GET /login?password=hunter2", "GET", "/login"},
		{"", "OTHER", EndpointUnknown}, // not a request line: the kernel sends none
		{"BREW /pot", "OTHER", "/pot"},
	} {
		t.Run(tc.line, func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			feed(a, evFork(sec, 101, masterPID),
				evReq(3*sec, 101, 5, 1, tc.line, 2*sec, 3*sec, 10, 10, 400, events.EndClose))
			m := masterOf(t, a.Snapshot(0), masterPID)
			wantEq(t, "http", httpCount(m, tc.method, tc.endpoint, 400), uint64(1))
			wantEq(t, "routes", len(m.Routes), 1)
			wantEq(t, "route", fmt.Sprint(m.Routes[0].Method, " ", m.Routes[0].Endpoint), tc.method+" "+tc.endpoint)
		})
	}
}

func TestIsIdentifier(t *testing.T) {
	for _, tc := range []struct {
		seg  string
		want bool
	}{
		{"", false}, {"0", true}, {"123456", true}, {"users", false}, {"v1", false},
		{"abc123", false}, {"deadbeef01", false}, {"deadbeef0123", true}, {"DEADBEEF0123", true},
		{"deadbeefcafe", false}, {"a1b2c3d4e5f6g7h8", true}, {"abcdefghijklmnop", false},
		{"aZ9xQ2mK7pL4vN8r", true}, {"aZ9xQ2mK7pL4vN8", false}, {"12-34", false},
		{"123e4567-e89b-12d3-a456-426614174000", true}, {"123e4567-e89b-12d3-a456-42661417400z", true},
		{"file.txt", false}, {"{id}", false},
	} {
		t.Run(tc.seg, func(t *testing.T) {
			wantEq(t, "isIdentifier", isIdentifier(tc.seg), tc.want)
		})
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		s    string
		max  int
		want string
	}{
		{"abc", 5, "abc"}, {"abcdef", 3, "abc"}, {"aé", 2, "a"}, {"aé", 3, "aé"},
		{"日本", 4, "日"}, {"日本", 5, "日"}, {"日本", 6, "日本"}, {"日", 2, ""},
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.s, tc.max), func(t *testing.T) {
			got := truncate(tc.s, tc.max)
			wantEq(t, "truncate", got, tc.want)
			if !utf8.ValidString(got) {
				t.Errorf("%q is not valid UTF-8", got)
			}
		})
	}
}
