// Package proc reads /proc: it finds Gunicorn masters and their workers (attach and
// --discover), tells a master from a worker or another program, reads the links of a
// process's fds and namespaces (fd.go: the socket inodes behind the listening ports, the
// listeners and the Unix sweep of probes), reads what a master's command line and
// environment say of its Gunicorn settings and finds a worker's heartbeat file (gunicorn.go),
// names the Unix sockets a worker calls (unix.go),
// and samples workers' memory and CPU with gopsutil. It earns its own package because neither the kernel side (probes) nor the pure
// state (aggregate) should read the file system.
package proc
