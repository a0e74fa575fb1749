package aggregate

import (
	"strings"
	"unicode/utf8"
)

// EndpointMode selects how request paths become endpoint labels.
type EndpointMode string

// Endpoint modes.
const (
	EndpointNormalized EndpointMode = "normalized" // identifier-looking segments become {id}
	EndpointRaw        EndpointMode = "raw"        // the path as it came (still bounded)
)

// Endpoint label values that are not paths.
const (
	EndpointOther   = "other"   // past MaxEndpoints distinct values
	EndpointUnknown = "unknown" // the request line was not seen or was not HTTP
)

// MaxEndpointLen bounds an endpoint label, in bytes.
const MaxEndpointLen = 128

var methods = map[string]string{
	"GET": "GET", "HEAD": "HEAD", "POST": "POST", "PUT": "PUT", "DELETE": "DELETE",
	"CONNECT": "CONNECT", "OPTIONS": "OPTIONS", "TRACE": "TRACE", "PATCH": "PATCH",
}

// route is a --route template split into segments; "{name}" segments match any one segment.
type route struct {
	template string
	segs     []string
}

func parseRoute(t string) route {
	return route{template: t, segs: strings.Split(strings.Trim(t, "/"), "/")}
}

func (r route) match(segs []string) bool {
	if len(segs) != len(r.segs) {
		return false
	}
	for i, s := range r.segs {
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
			continue
		}
		if s != segs[i] {
			return false
		}
	}
	return true
}

// normalizer maps request lines to (method, endpoint) labels and bounds their number.
type normalizer struct {
	mode    EndpointMode
	routes  []route
	ignores []route // --ignore-route: requests to these are not counted
	max     int
	seen    map[string]struct{}
	// cache maps whole request lines to their labels: a line always gets the same labels once
	// seen has them, or once seen is full ("other"), so the answer can be kept. Bounded so
	// that many distinct lines cost at most maxCache entries.
	cache map[string]labels
}

type labels struct {
	method, endpoint string
	ignored          bool // endpoint is the --ignore-route template it matched
}

const maxCache = 4096

func newNormalizer(mode EndpointMode, routes, ignores []string, max int) *normalizer {
	n := &normalizer{mode: mode, max: max, seen: make(map[string]struct{}), cache: make(map[string]labels)}
	for _, r := range routes {
		n.routes = append(n.routes, parseRoute(r))
	}
	for _, r := range ignores {
		n.ignores = append(n.ignores, parseRoute(r))
	}
	return n
}

// splitLine parses the kernel's cut request line, "METHOD /path". It accepts what the kernel
// accepts (an upper-case token of at most 16 letters, a space, then a target starting with
// '/', '*' or an absolute http(s) URL) so that bytes that are not a request line never give
// an endpoint.
func splitLine(line []byte) (method, path string, ok bool) {
	sp := -1
	for i, c := range line {
		if c == ' ' {
			sp = i
			break
		}
	}
	if sp <= 0 || sp > 16 || sp == len(line)-1 {
		return "OTHER", "", false
	}
	for _, c := range line[:sp] {
		if c < 'A' || c > 'Z' {
			return "OTHER", "", false
		}
	}
	m, known := methods[string(line[:sp])]
	if !known {
		m = "OTHER"
	}
	path = string(line[sp+1:])
	if path[0] != '/' && path != "*" && !strings.HasPrefix(path, "http://") && !strings.HasPrefix(path, "https://") {
		return m, "", false
	}
	return m, path, true
}

// label turns a request line into bounded, valid label values, or says which --ignore-route
// template it matched.
func (n *normalizer) label(line []byte) labels {
	if l, ok := n.cache[string(line)]; ok {
		return l
	}
	l := n.labelSlow(line)
	if len(n.cache) < maxCache {
		n.cache[string(line)] = l
	}
	return l
}

func (n *normalizer) labelSlow(line []byte) labels {
	method, path, ok := splitLine(line)
	if !ok {
		return labels{method: method, endpoint: EndpointUnknown}
	}
	endpoint, ignored := n.endpoint(path)
	if ignored {
		// Not a label value: it takes no place among --max-endpoints.
		return labels{method: method, endpoint: endpoint, ignored: true}
	}
	if _, ok := n.seen[endpoint]; ok {
		return labels{method: method, endpoint: endpoint}
	}
	if n.max > 0 && len(n.seen) >= n.max {
		return labels{method: method, endpoint: EndpointOther}
	}
	n.seen[endpoint] = struct{}{}
	return labels{method: method, endpoint: endpoint}
}

// endpoint normalises a path; ignored says it matched the --ignore-route template returned.
func (n *normalizer) endpoint(path string) (endpoint string, ignored bool) {
	// Absolute form (proxies): drop scheme and authority. The kernel already cut ? and #.
	if strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://") {
		rest := path[strings.Index(path, "//")+2:]
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			path = rest[i:]
		} else {
			path = "/"
		}
	}
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	if path == "" {
		path = "/"
	}
	path = printable(path)
	if path == "*" {
		return path, false
	}
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for _, r := range n.ignores {
		if r.match(segs) {
			return r.template, true
		}
	}
	for _, r := range n.routes {
		if r.match(segs) {
			return r.template, false
		}
	}
	if n.mode != EndpointRaw {
		changed := false
		for i, s := range segs {
			if isIdentifier(s) {
				segs[i] = "{id}"
				changed = true
			}
		}
		if changed {
			trail := ""
			if strings.HasSuffix(path, "/") {
				trail = "/"
			}
			path = "/" + strings.Join(segs, "/") + trail
		}
	}
	return truncate(path, MaxEndpointLen), false
}

// printable makes s a valid label value: valid UTF-8, control characters replaced.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '\uFFFD'
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}

// truncate cuts s to at most max bytes on a rune boundary.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	for max > 0 && !utf8.RuneStart(s[max]) {
		max--
	}
	return s[:max]
}

// isIdentifier says whether a path segment looks like an id: all digits, a UUID, a long hex
// string, or a long token mixing letters and digits.
func isIdentifier(s string) bool {
	if s == "" {
		return false
	}
	digits, letters, hex, other := 0, 0, 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
			hex++
		case c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F':
			letters++
			hex++
		case c >= 'g' && c <= 'z' || c >= 'G' && c <= 'Z':
			letters++
		case c == '-' || c == '_':
			other++
		default:
			return false
		}
	}
	switch {
	case digits == len(s):
		return true
	case isUUID(s):
		return true
	case hex == len(s) && len(s) >= 12 && digits > 0:
		return true
	case len(s) >= 16 && digits > 0 && letters > 0:
		return true
	}
	return false
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return false
			}
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}
