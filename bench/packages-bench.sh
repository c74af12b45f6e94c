#!/usr/bin/env bash
# Benchmark: kiln-firstboot's packages phase against plain `dpkg --force-unsafe-io -i` of the same
# .debs (then `sync -f`, the same durability: kiln-firstboot syncs each filesystem once at the end
# of the phase), side by side in the same run, on the example's own base.
#
# Workload (fixed): the shipped example's hostgroup HOSTGROUP (default db: PostgreSQL 15 and its
# dependencies, 43 .debs) built with `kiln build --base debian-12` against the base in the kiln
# cache (KILN_CACHE_DIR, default $KILN_CACHE/kiln or /var/cache/kiln-ci/kiln; `kiln base build
# debian-12` makes it). Each side of each round gets a fresh copy of the base in a freshly made
# ext4 filesystem on a loop device, with the page cache dropped first.
#   kiln:     kiln-firstboot apply --root (offline: no dynamic step); the packages phase's own
#             time from state.json (the whole apply's time is printed too)
#   baseline: policy-rc.d exit 101, `chroot ROOT dpkg --force-unsafe-io --force-confdef
#             --force-confold -i DEBS...` (then `dpkg --configure -a` for what Pre-Depends left
#             unpacked), `sync -f`
#
# Usage: bench/packages-bench.sh [ROUNDS]     (default 3; medians and their ratio are reported)
set -euo pipefail
ROUNDS=${1:-3}
HOSTGROUP=${HOSTGROUP:-db}
WORK=${WORK:-/var/tmp/kiln-packages-bench}
here=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${KILN_CACHE_DIR:-${KILN_CACHE:-/var/cache/kiln-ci}/kiln}
[ "$(id -u)" = 0 ] || { echo "needs root (loop devices, chroot)" >&2; exit 1; }
cargo build --release -q --manifest-path "$here/Cargo.toml" -p kiln-builder -p kiln-firstboot
T=${CARGO_TARGET_DIR:-$here/target}/release
KILN=$T/kiln; FB=${FIRSTBOOT:-$T/kiln-firstboot}
BASE=$("$KILN" base build debian-12 --config "$here" --cache "$CACHE")
mkdir -p "$WORK/trust"
"$KILN" keygen --out "$WORK/key" --force > /dev/null
cp "$WORK/key.pub" "$WORK/trust/bench.pub"
rm -rf "$WORK/out"   # a version is built once: a new key makes new bytes
"$KILN" build "$HOSTGROUP" --config "$here" --base debian-12 --cache "$CACHE" --key "$WORK/key" \
  --out "$WORK/out" --version 1 > /dev/null
BUNDLE=$WORK/out/$HOSTGROUP-1.kiln
rm -rf "$WORK/debs"; mkdir -p "$WORK/debs"
zstd -dc "$BUNDLE" | tar -x -C "$WORK/debs" --wildcards 'blobs/*'
python3 - "$BUNDLE" "$WORK/debs" <<'PY'
import json, os, subprocess, sys
bundle, d = sys.argv[1], sys.argv[2]
m = json.loads(subprocess.run(f"zstd -dc {bundle} | tar -xO kiln/manifest.json", shell=True,
                              check=True, capture_output=True).stdout)
for p in m["packages"]:
    os.rename(f"{d}/blobs/{p['digest']}", f"{d}/{p['name']}_{p['version'].replace(':', '%3a')}.deb")
PY
rm -rf "$WORK/debs/blobs"
NDEBS=$(ls "$WORK/debs" | wc -l)

MNT=$WORK/mnt; IMG=$WORK/fs.img
fresh_root() { # -> $MNT/root, a copy of the base on a new ext4
  umount "$MNT" 2>/dev/null || true
  rm -f "$IMG"; truncate -s 4G "$IMG"; mkfs.ext4 -q -F "$IMG"
  mkdir -p "$MNT"; mount -o loop "$IMG" "$MNT"
  mkdir -p "$MNT/root"; cp -a "$BASE/." "$MNT/root/"
  sync -f "$MNT"; echo 3 > /proc/sys/vm/drop_caches
}
now() { date +%s.%N; }
kiln_side() {
  fresh_root
  local t0; t0=$(now)
  # Offline, so a hostgroup that reads Consul or Vault ends with 20 at its dynamic step: the
  # packages phase before it is what is measured.
  local rc=0
  "$FB" apply --root "$MNT/root" --bundle "$BUNDLE" --trust "$WORK/trust" > "$WORK/kiln.log" 2>&1 || rc=$?
  case $rc in 0|20) ;; *) tail -n 30 "$WORK/kiln.log" >&2; exit 1 ;; esac
  local t1; t1=$(now)
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(next(x["seconds"] for x in s["steps"] if x["name"]=="packages"))' \
    "$MNT/root/var/lib/kiln/state.json"
  echo "$t0 $t1" > "$WORK/kiln.total"
  umount "$MNT"
}
dpkg_side() {
  fresh_root
  printf '#!/bin/sh\nexit 101\n' > "$MNT/root/usr/sbin/policy-rc.d"; chmod 755 "$MNT/root/usr/sbin/policy-rc.d"
  mkdir -p "$MNT/root/var/tmp/debs"; cp "$WORK"/debs/*.deb "$MNT/root/var/tmp/debs/"
  sync -f "$MNT"; echo 3 > /proc/sys/vm/drop_caches
  local t0; t0=$(now)
  chroot "$MNT/root" sh -c 'dpkg --force-unsafe-io --force-confdef --force-confold -i /var/tmp/debs/*.deb || dpkg --force-unsafe-io --force-confdef --force-confold --configure -a' \
    > "$WORK/dpkg.log" 2>&1 || { tail -n 30 "$WORK/dpkg.log" >&2; exit 1; }
  sync -f "$MNT/root"
  local t1; t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
  umount "$MNT"
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "workload: $HOSTGROUP ($NDEBS .debs, $(du -sh "$WORK/debs" | cut -f1)) on $(basename "$(dirname "$BASE")"), $ROUNDS rounds, alternating sides"
: > "$WORK/k"; : > "$WORK/d"; : > "$WORK/kt"
for r in $(seq "$ROUNDS"); do
  k=$(kiln_side) || exit 1; read -r a b < "$WORK/kiln.total"; kt=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b - a }')
  d=$(dpkg_side) || exit 1
  echo "round $r: kiln-firstboot packages phase ${k}s (whole apply ${kt}s), dpkg --force-unsafe-io -i + sync -f ${d}s"
  echo "$k" >> "$WORK/k"; echo "$d" >> "$WORK/d"; echo "$kt" >> "$WORK/kt"
done
K=$(median < "$WORK/k"); D=$(median < "$WORK/d"); KT=$(median < "$WORK/kt")
awk -v k="$K" -v d="$D" -v kt="$KT" 'BEGIN {
  printf "median: packages phase %.2fs, dpkg --force-unsafe-io -i + sync -f %.2fs: ratio %.2fx (whole apply %.2fs)\n", k, d, k / d, kt }'
rm -f "$IMG"
