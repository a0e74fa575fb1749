package listeners

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The sock_diag ABI (linux/inet_diag.h, linux/unix_diag.h, linux/sock_diag.h) that
// golang.org/x/sys/unix does not define.
const (
	tcpListen = 10 // TCP_LISTEN; Unix listeners report the same state value

	inetDiagSKMemInfo = 7 // INET_DIAG_SKMEMINFO: u32 sk_meminfo[SK_MEMINFO_VARS]

	unixDiagName   = 0 // UNIX_DIAG_NAME: the bound path
	unixDiagRQLen  = 4 // UNIX_DIAG_RQLEN: struct unix_diag_rqlen
	udiagShowName  = 0x01
	udiagShowRQLen = 0x10

	sizeofInetDiagReqV2 = 56
	sizeofInetDiagMsg   = 72
	sizeofUnixDiagReq   = 24
	sizeofUnixDiagMsg   = 16
)

// diagSocket is one listening socket from a sock_diag reply.
type diagSocket struct {
	inode    uint64
	name     string
	unix     bool
	rqueue   uint32 // connections waiting to be accepted
	wqueue   uint32 // for a listener: the backlog
	drops    uint64 // sk_drops (TCP only)
	hasDrops bool
}

// inetRequest is a struct inet_diag_req_v2 asking for the LISTEN sockets of family with their
// sk_meminfo (for SK_MEMINFO_DROPS).
func inetRequest(family uint8) []byte {
	b := make([]byte, sizeofInetDiagReqV2)
	b[0] = family
	b[1] = unix.IPPROTO_TCP
	b[2] = 1 << (inetDiagSKMemInfo - 1)
	binary.NativeEndian.PutUint32(b[4:], 1<<tcpListen)
	return b // the socket id stays zero: no filter, a dump of the namespace's listeners
}

// unixRequest is a struct unix_diag_req asking for the listening Unix sockets with their
// name and queue lengths.
func unixRequest() []byte {
	b := make([]byte, sizeofUnixDiagReq)
	b[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(b[4:], 1<<tcpListen)
	binary.NativeEndian.PutUint32(b[12:], udiagShowName|udiagShowRQLen)
	return b
}

// parseInetMsg decodes one struct inet_diag_msg and its attributes.
func parseInetMsg(b []byte) (diagSocket, error) {
	if len(b) < sizeofInetDiagMsg {
		return diagSocket{}, fmt.Errorf("inet_diag_msg of %d bytes", len(b))
	}
	family := b[0]
	port := binary.BigEndian.Uint16(b[4:6])
	var addr netip.Addr
	switch family {
	case unix.AF_INET:
		addr = netip.AddrFrom4([4]byte(b[8:12]))
	case unix.AF_INET6:
		addr = netip.AddrFrom16([16]byte(b[8:24]))
	default:
		return diagSocket{}, fmt.Errorf("inet_diag_msg of family %d", family)
	}
	s := diagSocket{
		inode:  uint64(binary.NativeEndian.Uint32(b[68:72])),
		name:   net.JoinHostPort(addr.String(), strconv.Itoa(int(port))),
		rqueue: binary.NativeEndian.Uint32(b[56:60]),
		wqueue: binary.NativeEndian.Uint32(b[60:64]),
	}
	ad, err := netlink.NewAttributeDecoder(b[sizeofInetDiagMsg:])
	if err != nil {
		return s, fmt.Errorf("inet_diag attributes: %w", err)
	}
	for ad.Next() {
		if ad.Type() == inetDiagSKMemInfo {
			if v := ad.Bytes(); len(v) >= 4*(unix.SK_MEMINFO_DROPS+1) {
				s.drops = uint64(binary.NativeEndian.Uint32(v[4*unix.SK_MEMINFO_DROPS:]))
				s.hasDrops = true
			}
		}
	}
	return s, ad.Err()
}

// parseUnixMsg decodes one struct unix_diag_msg and its attributes.
func parseUnixMsg(b []byte) (diagSocket, error) {
	if len(b) < sizeofUnixDiagMsg {
		return diagSocket{}, fmt.Errorf("unix_diag_msg of %d bytes", len(b))
	}
	s := diagSocket{unix: true, inode: uint64(binary.NativeEndian.Uint32(b[4:8]))}
	ad, err := netlink.NewAttributeDecoder(b[sizeofUnixDiagMsg:])
	if err != nil {
		return s, fmt.Errorf("unix_diag attributes: %w", err)
	}
	for ad.Next() {
		switch ad.Type() {
		case unixDiagName:
			s.name = unixName(ad.Bytes())
		case unixDiagRQLen:
			if v := ad.Bytes(); len(v) >= 8 {
				s.rqueue = binary.NativeEndian.Uint32(v[0:4])
				s.wqueue = binary.NativeEndian.Uint32(v[4:8])
			}
		}
	}
	if s.name == "" {
		// Not bound to a name (a socketpair's end cannot listen, so this is rare).
		s.name = "unix:[" + strconv.FormatUint(s.inode, 10) + "]"
	}
	return s, ad.Err()
}

// unixName is the path of a bound Unix socket as ss prints it: an abstract name (leading NUL)
// becomes @name.
func unixName(b []byte) string {
	if len(b) > 0 && b[0] == 0 {
		return "@" + strings.TrimRight(string(b[1:]), "\x00")
	}
	return strings.TrimRight(string(b), "\x00")
}

// dumpListeners asks the namespace of c for its listening TCP (v4, v6) and Unix sockets,
// by inode.
func dumpListeners(c *netlink.Conn) (map[uint64]diagSocket, error) {
	out := make(map[uint64]diagSocket)
	queries := []struct {
		what  string
		req   []byte
		parse func([]byte) (diagSocket, error)
	}{
		{"tcp", inetRequest(unix.AF_INET), parseInetMsg},
		{"tcp6", inetRequest(unix.AF_INET6), parseInetMsg},
		{"unix", unixRequest(), parseUnixMsg},
	}
	var errs []error
	for _, q := range queries {
		msgs, err := c.Execute(netlink.Message{
			Header: netlink.Header{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: netlink.Request | netlink.Dump},
			Data:   q.req,
		})
		if err != nil {
			// IPv6 may be disabled; the other families still count.
			errs = append(errs, fmt.Errorf("sock_diag %s: %w", q.what, err))
			continue
		}
		for _, m := range msgs {
			s, err := q.parse(m.Data)
			if err != nil {
				errs = append(errs, fmt.Errorf("sock_diag %s: %w", q.what, err))
				continue
			}
			out[s.inode] = s
		}
	}
	return out, errors.Join(errs...)
}
