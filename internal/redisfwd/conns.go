package redisfwd

import (
	"context"
	"net"
	"sync"
	"time"
)

// connSet tracks the connections a client dials so that a command in flight
// can be abandoned when its context is cancelled. go-redis turns a context's
// deadline into a socket deadline but does not watch for cancellation, so
// without this a forward stuck on a Redis that accepts and never answers
// would hold shutdown for a whole attempt timeout (up to 5 s).
type connSet struct {
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

func newConnSet() *connSet { return &connSet{conns: map[*trackedConn]struct{}{}} }

// dial is a go-redis Options.Dialer that records what it dials.
func (s *connSet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: 30 * time.Second}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, set: s}
	s.mu.Lock()
	s.conns[tc] = struct{}{}
	s.mu.Unlock()
	return tc, nil
}

// closeAll closes every open connection: a blocked read or write returns at
// once, and go-redis drops the connections and dials afresh next time.
// Closing rather than setting a past deadline cannot race with go-redis
// setting its own deadline just before the next read.
func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// trackedConn removes itself from its set when closed. NetConn lets
// go-redis reach the socket for its idle-connection health check.
type trackedConn struct {
	net.Conn
	set  *connSet
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.set.mu.Lock()
		delete(c.set.conns, c)
		c.set.mu.Unlock()
	})
	return c.Conn.Close()
}

// NetConn returns the underlying connection.
func (c *trackedConn) NetConn() net.Conn { return c.Conn }
