#!/usr/bin/env bash
# run.sh ROOT PROGRAM [ARG...]: run PROGRAM from a root built by build.sh, in the host's network
# namespace (a server it starts listens on the host's loopback) but a mount namespace of its own:
# /proc and /dev are mounted inside the root there and vanish with the program, so nothing stays
# mounted on the host. The program runs as root in the root's / (chroot); pass paths inside the
# root (a test writes its files under ROOT/tmp and passes /tmp/...).
set -euo pipefail
root=${1:?usage: run.sh ROOT PROGRAM [ARG...]}
shift
[ -f "$root/.done" ] || { echo "run.sh: $root is not a root built by build.sh" >&2; exit 1; }
exec unshare --mount --propagation private -- /bin/sh -c '
	root=$1; shift
	mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" || exit 1
	exec chroot "$root" "$@"' run.sh "$root" "$@"
