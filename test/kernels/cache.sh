#!/usr/bin/env bash
# cache.sh ARCH SUITE: make sure the kernel matrix's cache holds what one guest boots from, and
# print two lines, `kernel=PATH` (an uncompressed-or-gzip kernel image qemu's -kernel accepts)
# and `rootfs=PATH` (a gzipped newc cpio of a debootstrap tree: python3, Debian's gunicorn, curl,
# bpftool). ARCH is amd64 or arm64, SUITE is bookworm (Debian 12's 6.1), bookworm-backports
# (6.12), bullseye or bullseye-security (Debian 11's 5.10) or sid (7.x, whatever sid has when the
# cache is built). Everything lives under $GPE_KERNELS_CACHE (default: .cache/kernels at the repository
# root, gitignored); a piece that is already there is reused, so only the first run downloads.
#
# The kernels come from a dedicated apt configuration inside the cache (its own sources list,
# lists and archives), so the host's apt sources are never changed.
set -euo pipefail

arch=${1:?usage: cache.sh amd64|arm64 bookworm|bookworm-backports|bullseye|bullseye-security|sid}
suite=${2:?usage: cache.sh amd64|arm64 bookworm|bookworm-backports|bullseye|bullseye-security|sid}
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${GPE_KERNELS_CACHE:-$root/.cache/kernels}
mirror=${GPE_KERNELS_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # two test processes never build the same piece at once

log() { echo "cache.sh: $*" >&2; }

case $arch in
amd64) meta=linux-image-cloud-amd64 ;;
# The generic arm64 image: its PL011 serial console is built in, which qemu's virt board has.
arm64) meta=linux-image-arm64 ;;
*) log "unknown arch $arch"; exit 2 ;;
esac
case $suite in bookworm | bookworm-backports | bullseye | bullseye-security | sid) ;; *) log "unknown suite $suite"; exit 2 ;; esac

# --- the kernel: the suite's metapackage names the versioned image package; download and unpack it.
apt_dir=$cache/apt
apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o "Dir::Etc::sourceparts=$apt_dir/none"
	-o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
	-o "APT::Architectures=amd64,arm64" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
kdir=$cache/kernel-$arch-$suite
if [ ! -f "$kdir/.done" ]; then
	mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/none"
	# Debian 11's 5.10: bullseye-security has the newest builds (the mirror serves its amd64 images;
	# its arm64 ones answer 404, so arm64 takes bullseye's own).
	cat >"$apt_dir/sources.list.new" <<EOF
deb [signed-by=$keyring] $mirror bookworm main
deb [signed-by=$keyring] $mirror bookworm-backports main
deb [signed-by=$keyring] $mirror bullseye main
deb [signed-by=$keyring] ${mirror%/debian}/debian-security bullseye-security main
deb [signed-by=$keyring] $mirror sid main
EOF
	# A sources list that changed (a suite added) needs its lists fetched again.
	cmp -s "$apt_dir/sources.list.new" "$apt_dir/sources.list" || rm -f "$apt_dir/.updated"
	mv "$apt_dir/sources.list.new" "$apt_dir/sources.list"
	if [ ! -f "$apt_dir/.updated" ]; then
		log "apt-get update (dedicated lists in $apt_dir)"
		apt-get "${apt_opts[@]}" -qq update >&2
		touch "$apt_dir/.updated"
	fi
	# The first linux-image-* the metapackage depends on (sid's depends on linux-base-* first).
	dep=$(apt-cache "${apt_opts[@]}" show "$meta:$arch/$suite" | sed -n 's/^Depends: //p' | head -n 1 |
		grep -o 'linux-image-[^ ,]*' | head -n 1 || true)
	[ -n "$dep" ] || { log "no kernel image package behind $meta:$arch in $suite"; exit 1; }
	log "downloading $dep:$arch ($suite)"
	rm -rf "$kdir" && mkdir -p "$kdir/deb"
	# sid's image package holds no kernel: it depends on linux-binary-RELEASE, which has it.
	bin=$(apt-cache "${apt_opts[@]}" show "$dep:$arch/$suite" | sed -n 's/^Depends: //p' | head -n 1 |
		grep -o 'linux-binary-[^ ,]*' | head -n 1 || true)
	(cd "$kdir/deb" && apt-get "${apt_opts[@]}" -qq download "$dep:$arch/$suite" ${bin:+"$bin:$arch/$suite"} >&2)
	for deb in "$kdir"/deb/*.deb; do dpkg-deb -x "$deb" "$kdir/x"; done
	# /boot/vmlinuz-RELEASE (bookworm, bullseye) or /usr/lib/modules/RELEASE/vmlinuz (sid)
	img=$(ls "$kdir"/x/boot/vmlinuz-* "$kdir"/x/usr/lib/modules/*/vmlinuz 2>/dev/null | head -n 1 || true)
	[ -n "$img" ] || { log "no vmlinuz in $dep${bin:+ or $bin}"; exit 1; }
	cp "$img" "$kdir/vmlinuz"
	case $img in
	*/boot/vmlinuz-*) basename "$img" | sed 's/^vmlinuz-//' ;;
	*) basename "$(dirname "$img")" ;;
	esac >"$kdir/release"
	rm -rf "$kdir/x" "$kdir/deb" # the modules are not needed: the guest boots from an initramfs
	touch "$kdir/.done"
fi

# --- the root filesystem: debootstrap once per arch (test/roots/build.sh, which the other test
# roots use too: it rebuilds the tree when the package list changes), then one cpio.gz of it.
tree=$cache/rootfs-$arch
bash "$root/test/roots/build.sh" -a "$arch" -d "$tree" "rootfs-$arch" bookworm python3 gunicorn curl bpftool >/dev/null
cpio=$cache/rootfs-$arch.cpio.gz
if [ ! -f "$cpio" ] || [ "$tree/.done" -nt "$cpio" ]; then
	log "packing $cpio"
	# Documentation, manuals, locales and apt's lists are not needed in a guest that only runs tests.
	(cd "$tree" && find . -xdev \( -path ./usr/share/doc -o -path ./usr/share/man -o -path ./usr/share/locale \
		-o -path ./var/lib/apt/lists -o -path ./var/cache -o -name .done \) -prune -o -print |
		cpio -o -H newc --quiet | gzip -1 >"$cpio.tmp")
	mv "$cpio.tmp" "$cpio"
fi

echo "kernel=$kdir/vmlinuz"
echo "release=$(cat "$kdir/release")"
echo "rootfs=$cpio"
