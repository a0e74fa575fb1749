#!/usr/bin/env bash
# chroot.sh ROOT PROGRAM [ARG...]: run PROGRAM from a root built by build.sh under a plain chroot,
# in the host's own mount namespace (no unshare), as an old-style jail does: then the host's
# /proc/PID/maps names the root's libraries with ROOT in front. /proc and /dev (a non-recursive
# bind, made private so that nothing propagates) are mounted inside the root on the host and
# stay until `chroot.sh --unmount ROOT` (the test calls it when it stops the program).
set -euo pipefail
if [ "${1:-}" = --unmount ]; then
	root=${2:?usage: chroot.sh --unmount ROOT}
	for m in proc dev; do
		if mountpoint -q "$root/$m"; then umount -l "$root/$m"; fi
	done
	exit 0
fi
root=${1:?usage: chroot.sh ROOT PROGRAM [ARG...]}
shift
[ -f "$root/.done" ] || { echo "chroot.sh: $root is not a root built by build.sh" >&2; exit 1; }
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
if ! mountpoint -q "$root/dev"; then
	mount --bind /dev "$root/dev"
	mount --make-private "$root/dev"
fi
exec chroot "$root" "$@"
