package aggregate

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

const workerPID = 101

func inet(a, b, c, d byte, port uint16) events.Peer {
	return events.Peer{Family: events.FamilyInet, Port: port, Addr: [16]byte{a, b, c, d}}
}

func inet6(addr [16]byte, port uint16) events.Peer {
	return events.Peer{Family: events.FamilyInet6, Port: port, Addr: addr}
}

func unixPeer(ino uint32) events.Peer { return events.Peer{Family: events.FamilyUnix, Ino: ino} }

// evDS is a request's DOWNSTREAM record.
func evDS(ts uint64, pid, seq uint32, d ...events.Downstream) events.Event {
	ev := events.Event{Kind: events.KindDownstream, TGID: pid, TS: ts, Seq: seq}
	ev.SetDownstream(d)
	return ev
}

func call(p events.Peer, calls uint32, ns uint64) events.Downstream {
	return events.Downstream{Peer: p, Calls: calls, NS: ns}
}

// answered is a request's END: answered with status, 10 ms long.
func answered(pid, seq uint32, line string, status uint16) events.Event {
	return evReq(sec+uint64(seq)*sec+10*ms, pid, 5, seq, line, sec+uint64(seq)*sec, sec+uint64(seq)*sec+10*ms, 100, 200, status, events.EndClose)
}

func dsOf(m MasterSnapshot, endpoint, peer string) (DownstreamCount, bool) {
	for _, d := range m.Downstream {
		if d.Endpoint == endpoint && d.Peer == peer {
			return d, true
		}
	}
	return DownstreamCount{}, false
}

func newDSAggregator(t *testing.T, tweak func(*Config)) *Aggregator {
	t.Helper()
	a, _ := newTestAggregator(t, tweak)
	a.SeedWorkers(masterPID, []uint32{workerPID}, []time.Time{epoch})
	return a
}

// fakeUnix is /proc/PID/net/unix of the worker: inode → path, and how often it was read.
type fakeUnix struct {
	paths map[uint64]string
	err   error
	reads int
}

func (f *fakeUnix) read(pid uint32) (map[uint64]string, error) {
	f.reads++
	if pid != workerPID {
		return nil, errors.New("no such process")
	}
	return f.paths, f.err
}

// TestDownstreamLabels: a request's calls are counted under its endpoint (as its own metrics
// label it) and each peer's label: ip:port, [ip6]:port, an IPv4-mapped address as IPv4, a Unix
// peer by the path its inode has in the worker's net/unix, unix:? for one not there.
func TestDownstreamLabels(t *testing.T) {
	a := newDSAggregator(t, nil)
	unix := &fakeUnix{paths: map[uint64]string{4242: "/run/postgresql/.s.PGSQL.5432", 4243: "", 77: "@abstract"}}
	a.SetUnixPaths(unix.read)
	v6 := [16]byte{15: 1}
	mapped := [16]byte{10: 0xff, 11: 0xff, 12: 10, 15: 1}
	feed(a,
		evDS(sec, workerPID, 1, call(inet(127, 0, 0, 1, 6379), 10, 2*ms), call(inet6(v6, 5432), 3, 6*ms),
			call(inet6(mapped, 80), 1, ms), call(unixPeer(4242), 2, 3*ms)),
		answered(workerPID, 1, "GET /users/12345", 200),
		evDS(sec, workerPID, 2, call(unixPeer(4243), 1, ms), call(unixPeer(9999), 1, ms), call(unixPeer(77), 1, ms)),
		answered(workerPID, 2, "POST /orders", 201),
	)
	m := masterOf(t, a.Snapshot(0), masterPID)
	for _, want := range []DownstreamCount{
		{"/users/{id}", "127.0.0.1:6379", 10, 0.002},
		{"/users/{id}", "[::1]:5432", 3, 0.006},
		{"/users/{id}", "10.0.0.1:80", 1, 0.001},
		{"/users/{id}", "unix:/run/postgresql/.s.PGSQL.5432", 2, 0.003},
		{"/orders", "unix:?", 2, 0.002}, // a nameless socket, and an inode not listed
		{"/orders", "unix:@abstract", 1, 0.001},
	} {
		got, ok := dsOf(m, want.Endpoint, want.Peer)
		if !ok || got != want {
			t.Errorf("downstream %s %s = %+v (found %v), want %+v", want.Endpoint, want.Peer, got, ok, want)
		}
	}
	wantEq(t, "series", len(m.Downstream), 6)
}

// TestDownstreamOnlyWithItsRequest: calls wait for the END of their own request (same worker,
// same id), and are counted only with the requests the duration histogram counts: not for an
// ignored route, a TLS connection, an unanswered request or one whose client had left.
func TestDownstreamOnlyWithItsRequest(t *testing.T) {
	a := newDSAggregator(t, func(c *Config) { c.IgnoreRoutes = []string{"/healthz"} })
	redis := call(inet(127, 0, 0, 1, 6379), 1, ms)
	tls := answered(workerPID, 4, "", 200)
	tls.Flags = events.FlagTLS
	gone := answered(workerPID, 5, "GET /gone", 200)
	gone.Flags = events.FlagClientGone
	feed(a,
		evDS(sec, workerPID, 1, redis),
		answered(workerPID, 2, "GET /other", 200), // another request: not its calls
		answered(102, 1, "GET /other", 200),       // another process
		evDS(sec, workerPID, 3, redis), answered(workerPID, 3, "GET /healthz", 200),
		evDS(sec, workerPID, 4, redis), tls,
		evDS(sec, workerPID, 5, redis), gone,
		evDS(sec, workerPID, 6, redis), answered(workerPID, 6, "GET /fail", 500),
		answered(workerPID, 1, "GET /mine", 200),
		answered(workerPID, 7, "GET /mine", 200), // no calls
	)
	m := masterOf(t, a.Snapshot(0), masterPID)
	want := []DownstreamCount{
		{"/fail", "127.0.0.1:6379", 1, 0.001},
		{"/mine", "127.0.0.1:6379", 1, 0.001},
	}
	if len(m.Downstream) != len(want) {
		t.Fatalf("downstream %+v, want %+v", m.Downstream, want)
	}
	for i := range want {
		if m.Downstream[i] != want[i] {
			t.Errorf("downstream[%d] = %+v, want %+v", i, m.Downstream[i], want[i])
		}
	}
	wantEq(t, "pending after every END", len(a.dsIndex), 0)
}

// TestDownstreamLineInPieces: the END of a request whose line came in pieces has the whole
// line by then; its calls get the whole endpoint.
func TestDownstreamLineInPieces(t *testing.T) {
	a := newDSAggregator(t, nil)
	feed(a,
		evLine(sec, workerPID, 5, 1, "ers/42"),
		evDS(sec, workerPID, 1, call(inet(10, 0, 0, 2, 443), 2, 40*ms)),
		answered(workerPID, 1, "GET /us", 200),
	)
	m := masterOf(t, a.Snapshot(0), masterPID)
	if _, ok := dsOf(m, "/users/{id}", "10.0.0.2:443"); !ok {
		t.Errorf("downstream %+v, want /users/{id}", m.Downstream)
	}
}

// TestDownstreamBounds: at most MaxPeers peers a master (a peer once given keeps its label),
// endpoints bounded as the request's own (--max-endpoints: other).
func TestDownstreamBounds(t *testing.T) {
	a := newDSAggregator(t, func(c *Config) { c.MaxPeers, c.MaxEndpoints = 2, 1 })
	p1, p2, p3 := inet(10, 0, 0, 1, 1), inet(10, 0, 0, 2, 1), inet(10, 0, 0, 3, 1)
	feed(a,
		evDS(sec, workerPID, 1, call(p1, 1, ms), call(p2, 1, ms), call(p3, 1, ms)),
		answered(workerPID, 1, "GET /a", 200),
		evDS(sec, workerPID, 2, call(p3, 1, ms), call(p1, 1, ms)),
		answered(workerPID, 2, "GET /b", 200),
	)
	m := masterOf(t, a.Snapshot(0), masterPID)
	for _, want := range []DownstreamCount{
		{"/a", "10.0.0.1:1", 1, 0.001},
		{"/a", "10.0.0.2:1", 1, 0.001},
		{"/a", PeerOther, 1, 0.001},
		{EndpointOther, PeerOther, 1, 0.001},
		{EndpointOther, "10.0.0.1:1", 1, 0.001},
	} {
		if got, ok := dsOf(m, want.Endpoint, want.Peer); !ok || got != want {
			t.Errorf("downstream %s %s = %+v, want %+v", want.Endpoint, want.Peer, got, want)
		}
	}
	wantEq(t, "series", len(m.Downstream), 5)
}

// TestDownstreamPendingBounded: records whose END never comes are forgotten, the oldest
// first, and a worker's at its exit; the most recent still meet their END.
func TestDownstreamPendingBounded(t *testing.T) {
	a := newDSAggregator(t, nil)
	redis := call(inet(127, 0, 0, 1, 6379), 1, ms)
	const n = 3 * maxPendingDS
	for seq := uint32(1); seq <= n; seq++ {
		feed(a, evDS(sec, workerPID, seq, redis))
	}
	if got := len(a.dsIndex); got != maxPendingDS {
		t.Errorf("%d records pending, want %d", got, maxPendingDS)
	}
	feed(a, answered(workerPID, 1, "GET /oldest", 200), answered(workerPID, n, "GET /newest", 200),
		answered(workerPID, n-maxPendingDS+1, "GET /oldest-kept", 200))
	m := masterOf(t, a.Snapshot(0), masterPID)
	if _, ok := dsOf(m, "/oldest", "127.0.0.1:6379"); ok {
		t.Error("the oldest record was kept")
	}
	for _, e := range []string{"/newest", "/oldest-kept"} {
		if _, ok := dsOf(m, e, "127.0.0.1:6379"); !ok {
			t.Errorf("the record of %s was forgotten", e)
		}
	}
	feed(a, evExit(100*sec, workerPID, 0))
	wantEq(t, "pending after the exit", len(a.dsIndex), 0)
}

// TestDownstreamUnixReads: net/unix is read once for the sockets it lists (one read labels a
// pool of connections), once for an inode it does not list, and again after a failed read.
func TestDownstreamUnixReads(t *testing.T) {
	a := newDSAggregator(t, nil)
	unix := &fakeUnix{paths: map[uint64]string{1: "/run/a.sock", 2: "/run/b.sock"}}
	a.SetUnixPaths(unix.read)
	seq := uint32(0)
	req := func(ino uint32) {
		seq++
		feed(a, evDS(sec, workerPID, seq, call(unixPeer(ino), 1, ms)), answered(workerPID, seq, "GET /", 200))
	}
	req(1)
	req(2)
	req(1)
	wantEq(t, "reads for listed sockets", unix.reads, 1)
	req(3)
	req(3)
	wantEq(t, "reads after an unlisted inode", unix.reads, 2)
	unix.err = errors.New("gone")
	req(4)
	req(4)
	wantEq(t, "reads after failed reads", unix.reads, 4)
	m := masterOf(t, a.Snapshot(0), masterPID)
	for peer, calls := range map[string]uint64{"unix:/run/a.sock": 2, "unix:/run/b.sock": 1, PeerUnixUnknown: 4} {
		if got, _ := dsOf(m, "/", peer); got.Calls != calls {
			t.Errorf("%s: %d calls, want %d", peer, got.Calls, calls)
		}
	}
}

// TestDownstreamUnixManySockets: a host listing more named sockets than the cache holds still
// labels the peer asked for, and the cache stays bounded.
func TestDownstreamUnixManySockets(t *testing.T) {
	a := newDSAggregator(t, nil)
	unix := &fakeUnix{paths: map[uint64]string{}}
	for ino := uint64(1); ino <= 3*maxPeerCache; ino++ {
		unix.paths[ino] = fmt.Sprintf("/run/s%d.sock", ino)
	}
	a.SetUnixPaths(unix.read)
	feed(a, evDS(sec, workerPID, 1, call(unixPeer(7777), 1, ms)), answered(workerPID, 1, "GET /", 200))
	m := masterOf(t, a.Snapshot(0), masterPID)
	if _, ok := dsOf(m, "/", "unix:/run/s7777.sock"); !ok {
		t.Errorf("downstream %+v, want unix:/run/s7777.sock", m.Downstream)
	}
	if n := len(a.peerLabels); n > maxPeerCache {
		t.Errorf("%d peer labels kept, want at most %d", n, maxPeerCache)
	}
}
