#!/usr/bin/env bash
# Build (or find in the cache) a debootstrapped Debian root filesystem for Kiln's tests.
#
#   tests/support/base-image.sh [--no-build] FLAVOR [OUTDIR]
#
# FLAVOR   minbase   debootstrap --variant=minbase bookworm (what package resolution and the offline
#                    install tests run against; see shared/reference/debian-packages.md)
#          bootable  minbase + a kernel, systemd, udev, ifupdown, initramfs-tools and cloud-init, for the
#                    QEMU first-boot test (see shared/reference/vm-boot-probe.sh)
# OUTDIR   cache directory for base images; default ${KILN_CACHE:-/var/cache/kiln-ci}/base
#
# The root is stored at OUTDIR/<key>/rootfs, where <key> is the first 16 hex digits of the sha256 of
# this script, the suite, the variant and the include list; OUTDIR/<flavor> is a symlink to the newest
# <key> of that flavor, for people. The last line printed on stdout is the rootfs path; progress goes to
# stderr. With --no-build, print the path if it is cached and exit 3 otherwise.
#
# The root is built in OUTDIR/.tmp-<key>-<pid> and renamed into place only when complete, so an
# interrupted build never leaves a half root behind. Treat the cached root as read-only: copy it per test
# (tests/support/copy-root.sh). Needs root (debootstrap makes device nodes and real-uid files).
set -euo pipefail
umask 022

NO_BUILD=0
if [ "${1:-}" = "--no-build" ]; then NO_BUILD=1; shift; fi
FLAVOR=${1:-}
SUITE=bookworm
VARIANT=minbase
case "$FLAVOR" in
  minbase)  INCLUDE="" ;;
  # debootstrap does not resolve virtual packages: python3-cryptography (pulled in by cloud-init) needs
  # python3-cffi-backend-api-*, provided by python3-cffi-backend, so it is listed explicitly.
  bootable) INCLUDE="systemd-sysv,udev,ifupdown,initramfs-tools,linux-image-amd64,cloud-init,python3-cffi-backend" ;;
  *) echo "usage: $0 [--no-build] minbase|bootable [OUTDIR]" >&2; exit 2 ;;
esac

CACHE=${KILN_CACHE:-/var/cache/kiln-ci}
OUTDIR=${2:-$CACHE/base}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"

FULLKEY=$( { sha256sum < "$SELF"; printf 'suite=%s\nvariant=%s\ninclude=%s\n' "$SUITE" "$VARIANT" "$INCLUDE"; } | sha256sum | cut -d' ' -f1)
KEY=${FULLKEY:0:16}

log() { echo "[base-image] $*" >&2; }

lookup() {
  if [ -f "$OUTDIR/$KEY/info" ] && [ -d "$OUTDIR/$KEY/rootfs/etc" ]; then
    echo "$OUTDIR/$KEY/rootfs"; return 0
  fi
  return 1
}

if [ "$NO_BUILD" = 1 ]; then
  [ -d "$OUTDIR" ] && OUTDIR=$(cd "$OUTDIR" && pwd -P) || exit 3
  lookup || exit 3
  exit 0
fi

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd -P)
if lookup; then
  # keep the human-friendly OUTDIR/<flavor> link on the current key (best effort)
  [ "$(readlink "$OUTDIR/$FLAVOR" 2>/dev/null)" = "$KEY" ] ||
    { ln -sfn "$KEY" "$OUTDIR/.$FLAVOR.new.$$" && mv -T "$OUTDIR/.$FLAVOR.new.$$" "$OUTDIR/$FLAVOR"; } 2>/dev/null || true
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "base-image.sh: building a base root needs root (debootstrap); run it with sudo, or point" >&2
  echo "KILN_CACHE at a cache a root run has already filled." >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "base-image.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

# Remove a directory that debootstrap may have left with /proc, /sys or /dev mounted inside:
# unmount everything below it first (deepest first), and never cross into another filesystem.
safe_rm() {
  local d=$1 m
  [ -e "$d" ] || return 0
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
    awk -v p="$d/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  rm -rf --one-file-system "$d"
}

# One builder per key at a time; a second caller waits and then finds the result.
exec 9>"$OUTDIR/.lock-$KEY"
if ! flock -n 9; then log "waiting for another build of $FLAVOR ($KEY)"; flock 9; fi
if lookup; then exit 0; fi

# Holding the lock, any temp dir of this key is left over from an interrupted build.
for d in "$OUTDIR"/.tmp-"$KEY"-*; do [ -e "$d" ] && { log "removing stale $d"; safe_rm "$d"; }; done
# A final dir without its info file cannot come from this script (info is written before the rename);
# move it out of the way rather than trust it.
if [ -e "$OUTDIR/$KEY" ]; then log "removing incomplete $OUTDIR/$KEY"; safe_rm "$OUTDIR/$KEY"; fi

TMP="$OUTDIR/.tmp-$KEY-$$"
trap 'safe_rm "$TMP"' EXIT
trap 'exit 130' INT TERM HUP
mkdir -p "$TMP"

MIRROR=$(bash "$HERE/debian-mirror.sh")
# Downloaded .debs are kept between builds (any key) so a rebuild mostly reads from disk.
DEBCACHE="$CACHE/debootstrap-debs"
mkdir -p "$DEBCACHE"
exec 8>"$DEBCACHE/.lock"
flock 8

log "debootstrap --variant=$VARIANT ${INCLUDE:+--include=$INCLUDE }$SUITE from $MIRROR -> $OUTDIR/$KEY/rootfs (log: $TMP/debootstrap.log)"
t0=$(date +%s)
if ! debootstrap --variant="$VARIANT" ${INCLUDE:+--include="$INCLUDE"} --cache-dir="$DEBCACHE" \
      "$SUITE" "$TMP/rootfs" "$MIRROR" > "$TMP/debootstrap.log" 2>&1 < /dev/null; then
  echo "base-image.sh: debootstrap failed; last lines of its log:" >&2
  tail -n 40 "$TMP/debootstrap.log" >&2
  [ -f "$TMP/rootfs/debootstrap/debootstrap.log" ] && tail -n 40 "$TMP/rootfs/debootstrap/debootstrap.log" >&2
  exit 1
fi
t1=$(date +%s)
flock -u 8

R="$TMP/rootfs"
# debootstrap leaves its downloaded .debs in the root: they are in $DEBCACHE already.
rm -f "$R"/var/cache/apt/archives/*.deb
# Sanity: a Debian 12 root with dpkg that runs in a chroot.
grep -q '^VERSION_ID="12"' "$R/etc/os-release" || { echo "base-image.sh: $R/etc/os-release is not Debian 12" >&2; exit 1; }
chroot "$R" /usr/bin/dpkg-query -W -f='${Package}\t${Version}\t${Architecture}\n' > "$TMP/packages.tsv"
if [ "$FLAVOR" = bootable ]; then
  ls "$R"/boot/vmlinuz-* "$R"/boot/initrd.img-* >/dev/null || { echo "base-image.sh: no kernel/initrd in $R/boot" >&2; exit 1; }
fi

{
  printf 'flavor=%s\nkey=%s\nfull_key=%s\nsuite=%s\nvariant=%s\ninclude=%s\nmirror=%s\n' \
    "$FLAVOR" "$KEY" "$FULLKEY" "$SUITE" "$VARIANT" "$INCLUDE" "$MIRROR"
  printf 'built=%s\ndebootstrap_seconds=%s\ndebootstrap_version=%s\npackages=%s\nsize=%s\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((t1 - t0))" \
    "$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo unknown)" \
    "$(wc -l < "$TMP/packages.tsv")" "$(du -sh --one-file-system "$R" | cut -f1)"
} > "$TMP/info.new"
mv "$TMP/info.new" "$TMP/info"

mv -T "$TMP" "$OUTDIR/$KEY"
trap - EXIT
ln -sfn "$KEY" "$OUTDIR/.$FLAVOR.new.$$" && mv -T "$OUTDIR/.$FLAVOR.new.$$" "$OUTDIR/$FLAVOR"
log "built $FLAVOR in $((t1 - t0))s: $(grep '^size=' "$OUTDIR/$KEY/info" | cut -d= -f2), $(grep '^packages=' "$OUTDIR/$KEY/info" | cut -d= -f2) packages"
echo "$OUTDIR/$KEY/rootfs"
