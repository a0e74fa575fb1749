package aggregate

import (
	"net/netip"
	"sort"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// Downstream calls: the kernel sends what a request did with each of the worker's other
// connections (its calls to databases, caches, APIs) when the request is answered, before its
// END. The record waits here by worker and request id; the END gives it the request's
// endpoint, and it is counted under that endpoint and the peer's label, per master.

// Peer label values that are not addresses.
const (
	PeerOther = "other" // past MaxPeers distinct peers of a master
	// PeerUnixUnknown is a Unix peer whose path was not found: its socket was gone, in another
	// network namespace, or had no name, when the worker's /proc/PID/net/unix was read.
	PeerUnixUnknown = "unix:?"
	peerUnknown     = "unknown" // an address family the kernel side does not send
)

// DownstreamCount is gunicorn_http_downstream_calls_total and _seconds_total for one endpoint
// and peer.
type DownstreamCount struct {
	Endpoint, Peer string
	Calls          uint64
	Seconds        float64
}

type downstreamKey struct{ endpoint, peer string }

type downstreamStats struct {
	calls, ns uint64
}

// dsKey names a request as both its DOWNSTREAM and its END name it.
type dsKey struct{ tgid, seq uint32 }

// pendingDS is one DOWNSTREAM record waiting for its END, in a slot of a ring that is
// allocated once: larger than a map keeps inline, it would cost an allocation a request.
type pendingDS struct {
	key dsKey
	n   uint8 // entries in d; 0 for a free slot
	d   [events.PeersMax]events.Downstream
}

// maxPendingDS is the ring's slots. An END follows its DOWNSTREAM at once (the response's
// end, the next request on the connection, or the worker's next read); a record whose END
// never comes (lost) is overwritten when the ring comes round, or dropped at its worker's exit.
const maxPendingDS = 2048

// maxPeerCache bounds the peer labels kept by address or Unix inode.
const maxPeerCache = 4096

// SetUnixPaths gives the aggregator where it reads the paths of the Unix sockets a process
// sees (inode → path, /proc/PID/net/unix), to label Unix peers. Without it they are "unix:?".
func (a *Aggregator) SetUnixPaths(f func(pid uint32) (map[uint64]string, error)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.unixPaths = f
}

// downstream keeps a request's calls until its END.
func (a *Aggregator) downstream(ev *events.Event) {
	if w, ok := a.workers[ev.TGID]; !ok || w.state == StateExited || len(ev.Downstream) == 0 {
		return
	}
	if a.dsRing == nil {
		a.dsRing = make([]pendingDS, maxPendingDS)
	}
	k := dsKey{ev.TGID, ev.Seq}
	i, again := a.dsIndex[k]
	if !again {
		i = a.dsNext
		a.dsNext = (a.dsNext + 1) % len(a.dsRing)
		if old := &a.dsRing[i]; old.n != 0 {
			delete(a.dsIndex, old.key) // the oldest, never ended
		}
		a.dsIndex[k] = i
	}
	p := &a.dsRing[i]
	p.key = k
	p.n = uint8(copy(p.d[:], ev.Downstream))
}

// takeDownstream removes and returns the calls of the request an END ends, if any.
func (a *Aggregator) takeDownstream(ev *events.Event) (pendingDS, bool) {
	if len(a.dsIndex) == 0 {
		return pendingDS{}, false
	}
	k := dsKey{ev.TGID, ev.Seq}
	i, ok := a.dsIndex[k]
	if !ok {
		return pendingDS{}, false
	}
	delete(a.dsIndex, k)
	p := a.dsRing[i]
	a.dsRing[i].n = 0
	return p, true
}

// countDownstream counts a request's calls under its endpoint.
func (a *Aggregator) countDownstream(w *worker, endpoint string, p *pendingDS) {
	m := w.master
	for _, d := range p.d[:p.n] {
		if d.Calls == 0 {
			continue
		}
		k := downstreamKey{endpoint, a.peerLabel(m, w.pid, d.Peer)}
		s := m.downstream[k]
		s.calls += uint64(d.Calls)
		s.ns += d.NS
		m.downstream[k] = s
	}
}

// peerLabel is the label of a peer, bounded by MaxPeers per master.
func (a *Aggregator) peerLabel(m *master, pid uint32, p events.Peer) string {
	// Only what names the peer keys the cache.
	switch p.Family {
	case events.FamilyUnix:
		p = events.Peer{Family: p.Family, Ino: p.Ino}
	case events.FamilyInet:
		clear(p.Addr[4:])
		p.Ino = 0
	default:
		p.Ino = 0
	}
	l, ok := a.peerLabels[p]
	if !ok {
		var keep bool
		l, keep = a.formatPeer(pid, p)
		if keep {
			a.cachePeer(p, l)
		}
	}
	if _, ok := m.peers[l]; ok {
		return l
	}
	if a.cfg.MaxPeers > 0 && len(m.peers) >= a.cfg.MaxPeers {
		return PeerOther
	}
	m.peers[l] = struct{}{}
	return l
}

func (a *Aggregator) cachePeer(p events.Peer, label string) {
	if len(a.peerLabels) >= maxPeerCache {
		clear(a.peerLabels)
	}
	a.peerLabels[p] = label
}

// formatPeer is ip:port ([ip]:port for IPv6) or unix:<path>; keep says the label may be
// kept for the same address or inode.
func (a *Aggregator) formatPeer(pid uint32, p events.Peer) (label string, keep bool) {
	switch p.Family {
	case events.FamilyInet:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(p.Addr[:4])), p.Port).String(), true
	case events.FamilyInet6:
		// An IPv4 peer reached through an IPv6 socket is labelled as IPv4.
		return netip.AddrPortFrom(netip.AddrFrom16(p.Addr).Unmap(), p.Port).String(), true
	case events.FamilyUnix:
		return a.unixPeer(pid, p)
	}
	return peerUnknown, true
}

// unixPeer finds the path of a Unix peer's socket (the server's accepted socket, which
// /proc/PID/net/unix shows with its listener's path) in the worker's network namespace. One
// read labels the named sockets listed (up to half the cache), so a pool of connections to one
// server costs one read.
func (a *Aggregator) unixPeer(pid uint32, p events.Peer) (string, bool) {
	if a.unixPaths == nil {
		return PeerUnixUnknown, false
	}
	paths, err := a.unixPaths(pid)
	if err != nil {
		return PeerUnixUnknown, false // read again for the next request
	}
	for ino, path := range paths {
		if len(a.peerLabels) >= maxPeerCache/2 {
			break // a host with thousands of named sockets: leave room for the peers in use
		}
		if path != "" && ino <= uint64(^uint32(0)) {
			a.cachePeer(events.Peer{Family: events.FamilyUnix, Ino: uint32(ino)}, unixLabel(path))
		}
	}
	if path := paths[uint64(p.Ino)]; path != "" {
		return unixLabel(path), true
	}
	// Gone or nameless now, so for good: not read again for this inode.
	return PeerUnixUnknown, true
}

// unixLabel is a path as a label value.
func unixLabel(path string) string {
	return "unix:" + truncate(printable(path), MaxEndpointLen)
}

// dropDownstream forgets the pending calls of a process's requests.
func (a *Aggregator) dropDownstream(pid uint32) {
	for k, i := range a.dsIndex {
		if k.tgid == pid {
			a.dsRing[i].n = 0
			delete(a.dsIndex, k)
		}
	}
}

// downstreamCounts is a master's counts, sorted by endpoint and peer.
func downstreamCounts(m *master) []DownstreamCount {
	out := make([]DownstreamCount, 0, len(m.downstream))
	for k, s := range m.downstream {
		out = append(out, DownstreamCount{Endpoint: k.endpoint, Peer: k.peer, Calls: s.calls, Seconds: float64(s.ns) / 1e9})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Endpoint != out[j].Endpoint {
			return out[i].Endpoint < out[j].Endpoint
		}
		return out[i].Peer < out[j].Peer
	})
	return out
}
