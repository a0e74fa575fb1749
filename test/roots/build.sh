#!/usr/bin/env bash
# build.sh [-a ARCH] [-d DIR] NAME [SUITE [PACKAGE...]]: make sure a cached Debian root filesystem
# exists, a `debootstrap --variant=minbase SUITE` tree with PACKAGE... included, and print its
# path on stdout. Given NAME alone, SUITE and the packages are read from test/roots/NAME.root
# (`suite=` and `packages=` lines): the roots the tests share are declared there, once. The tests use it to run user space newer (or older) than the host's: sid's
# Prometheus 3 and victoria-metrics, a bookworm root to install the .deb in, a Gunicorn matrix.
#
# The root is DIR (default $GPE_ROOTS_CACHE/NAME, GPE_ROOTS_CACHE defaulting to .cache/roots at
# the repository root, gitignored). It is keyed by suite, architecture and package list: DIR.key
# holds them, and a root whose key differs is built again. The versions dpkg found are written to
# DIR.versions (`package version`, one a line) so a test can say what it ran against.
# Run a program from the root with run.sh.
#
# Exit 0 with the path, or non-zero with the reason on stderr (debootstrap's log tail): a root that
# cannot be built fails clearly. Needs root and debootstrap (make deps).
set -euo pipefail

usage="usage: build.sh [-a ARCH] [-d DIR] NAME [SUITE [PACKAGE...]]"
arch=$(dpkg --print-architecture)
dir=
while getopts a:d: opt; do
	case $opt in
	a) arch=$OPTARG ;;
	d) dir=$OPTARG ;;
	*) echo "$usage" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
name=${1:?$usage}
shift
repo=$(cd "$(dirname "$0")/../.." && pwd)
if [ $# -eq 0 ]; then
	decl=$repo/test/roots/$name.root
	[ -f "$decl" ] || { echo "build.sh: no suite given and no $decl" >&2; exit 2; }
	suite=$(sed -n 's/^suite=//p' "$decl")
	# shellcheck disable=SC2046 # the package list is words
	set -- $(sed -n 's/^packages=//p' "$decl")
else
	suite=$1
	shift
fi
[ -n "$suite" ] || { echo "$usage" >&2; exit 2; }
cache=${GPE_ROOTS_CACHE:-$repo/.cache/roots}
dir=${dir:-$cache/$name}
mirror=${GPE_ROOTS_MIRROR:-http://deb.debian.org/debian}

log() { echo "build.sh $name: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "needs root (debootstrap, chroot)"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap is not installed (make deps)"; exit 1; }

mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9 # two test processes never build the same root at once

packages=$(printf '%s\n' "$@" | sort -u | paste -sd, -)
key="suite=$suite arch=$arch packages=$packages"
if [ -f "$dir/.done" ] && [ "$(cat "$dir.key" 2>/dev/null)" = "$key" ]; then
	echo "$dir"
	exit 0
fi

if [ "$arch" != "$(dpkg --print-architecture)" ]; then
	# debootstrap's second stage runs the foreign arch's binaries through qemu-user-static.
	[ -f /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	update-binfmts --enable "qemu-${arch/arm64/aarch64}" >/dev/null 2>&1 || true
	[ -f "/proc/sys/fs/binfmt_misc/qemu-${arch/arm64/aarch64}" ] ||
		{ log "binfmt for $arch is not registered (install qemu-user-static and binfmt-support)"; exit 1; }
fi

tmp=$dir.tmp
cleanup() {
	for m in proc sys dev/pts dev; do umount -l "$tmp/$m" 2>/dev/null || true; done
	rm -rf --one-file-system "$tmp"
}
cleanup
trap cleanup EXIT
log "debootstrap $suite $arch ($key) into $tmp"
start=$(date +%s)
include=()
[ -n "$packages" ] && include=(--include="$packages")
debootstrap --arch "$arch" --variant=minbase "${include[@]}" "$suite" "$tmp" "$mirror" >"$dir.log" 2>&1 ||
	{ log "debootstrap failed, the end of $dir.log:"; tail -n 20 "$dir.log" >&2; exit 1; }
log "debootstrap took $(($(date +%s) - start)) s"
rm -f "$tmp"/var/cache/apt/archives/*.deb
chroot "$tmp" dpkg-query -W -f '${Package} ${Version}\n' >"$dir.versions.tmp"
rm -rf --one-file-system "$dir" && mv "$tmp" "$dir"
trap - EXIT
mv "$dir.versions.tmp" "$dir.versions"
echo "$key" >"$dir.key"
touch "$dir/.done"
echo "$dir"
