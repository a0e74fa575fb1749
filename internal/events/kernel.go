package events

import (
	"errors"
	"time"
)

// What the kernel side (internal/probes) answers the agent, beside events: plain values, so
// that the agent needs neither root nor cilium/ebpf to be built and tested.

// ErrClosed is returned by the kernel side's Read once it has been closed.
var ErrClosed = errors.New("probes closed")

// ErrTLSOff is returned by AttachTLS when the TLS programs were not loaded (--tls-uprobes off).
var ErrTLSOff = errors.New("tls observation is off")

// TLSAttach is what attaching the TLS uprobes did for one process.
type TLSAttach struct {
	// Lib is the libssl the process has mapped, as the process names it ("" if none).
	Lib string
	// Probes is how many uprobes and uretprobes were attached.
	Probes int
	// Took is how long finding the library and attaching took.
	Took time.Duration
	// Already says the process had its uprobes already: nothing was done.
	Already bool
}
