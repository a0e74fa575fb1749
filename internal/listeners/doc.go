// Package listeners reads the listening sockets of Gunicorn masters at scrape time: the
// accept-queue length, the backlog and (for TCP) the drop count of every TCP and Unix socket a
// master listens on. The sockets are found from the master's file descriptors
// (/proc/PID/fd → socket:[inode], read through proc.FS) and matched by inode with sock_diag
// netlink replies (INET_DIAG for TCP, UNIX_DIAG for Unix sockets), queried in the master's own
// network namespace.
//
// It is a package of its own because it is neither eBPF (probes) nor event aggregation
// (aggregate): it is a pull-time read of kernel socket state, like /proc sampling, but over
// netlink and across network namespaces.
package listeners
