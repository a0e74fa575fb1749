// Package agent is gpe-ebpf's tracking policy: which processes the kernel side tracks and for
// how long. It checks the target (--pid, --pid-file), attaches to a master and the workers it
// already has, turns kernel events into aggregate updates, samples the workers, follows the
// pid file, --discover's masters and USR2 upgrades, and decides what happens when a master
// exits (README "Attaching", "Failure behaviour"). The kernel sits behind the Kernel
// interface and /proc behind a configurable root, so all of it is tested without root.
package agent
