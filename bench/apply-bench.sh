#!/usr/bin/env bash
# Benchmark: `kiln-firstboot apply --root` of a generated bundle against `zstd -dc | tar -x` of the
# same files into the same kind of directory, side by side in the same run; then a bundle with
# twice the files, and one with the same files each twice as large. Prints ratios and peak RSS.
#
# Workload (fixed, generated into $WORK, default /var/tmp/kiln-apply-bench): FILES files (default
# 20,000) of about 10 KB (1-20 KB, half random, half text) in 100 directories, ~200 MB; then 2x
# the files; then the FILES files at 2-40 KB. ONLY_ONE=1 runs the first workload alone, NO_X2=1
# the first two.
#
# Each side of each round writes into a freshly made ext4 filesystem (mkfs.ext4 defaults, so with
# a journal, like a VM's root) on a loop device: no side inherits the other's dirty pages or
# freshly deleted inodes (on an ext4 without a journal, inodes deleted in the last 30 s are
# skipped one by one when allocating, which made whichever side ran after an `rm -rf` slower).
# The baseline is timed twice: `zstd -dc | tar -x` alone, and followed by `sync -f` (kiln-firstboot
# syncs the filesystem before it renames files into place and again at the end, so the second
# is the like-for-like durability).
#
# Usage: bench/apply-bench.sh [ROUNDS]     (default 3; the median of each side is reported)
# FIRSTBOOT=PATH measures that kiln-firstboot binary (e.g. the static musl build that ships)
# instead of the release build of this tree.
set -euo pipefail
ROUNDS=${1:-3}
FILES=${FILES:-20000}
WORK=${WORK:-/var/tmp/kiln-apply-bench}
here=$(cd "$(dirname "$0")/.." && pwd)
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
cargo build --release -q --manifest-path "$here/Cargo.toml" -p kiln-builder -p kiln-firstboot
T=${CARGO_TARGET_DIR:-$here/target}/release
KILN=$T/kiln; FB=${FIRSTBOOT:-$T/kiln-firstboot}
mkdir -p "$WORK"
"$KILN" keygen --out "$WORK/key" --force > /dev/null
mkdir -p "$WORK/trust"; cp "$WORK/key.pub" "$WORK/trust/bench.pub"

gen() { # N [SCALE] -> config dir with hostgroup "bench" of N files (sizes x SCALE), the bundle, the tar.zst
  local n=$1 x=${2:-1} cfg=$WORK/config-$1; [ "$x" = 1 ] || cfg=$cfg-x$x
  if [ ! -f "$cfg/.complete" ]; then
    echo "generating $n files in $cfg ..." >&2
    rm -rf "$cfg"; mkdir -p "$cfg/hostgroups" "$cfg/files/bench"
    python3 - "$cfg" "$n" "$x" <<'PY'
import os, random, sys
cfg, n, x = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(7)
text = b"".join(b"%06d kiln apply benchmark line of text\n" % i for i in range(20000))
open(f"{cfg}/hostgroups/default.yaml", "w").write("vars: {}\n")
lines = ["directories:", "  /srv/bench: {}"] + [f"  /srv/bench/d{d:02d}: {{}}" for d in range(100)]
lines.append("files:")
for i in range(n):
    d = i % 100
    os.makedirs(f"{cfg}/files/bench/d{d:02d}", exist_ok=True)
    size = rnd.randrange(1024, 20 * 1024) * x
    half = size // 2
    off = rnd.randrange(0, len(text) - half)
    with open(f"{cfg}/files/bench/d{d:02d}/f{i:06d}", "wb") as f:
        f.write(rnd.randbytes(half) + text[off:off + size - half])
    lines.append(f"  /srv/bench/d{d:02d}/f{i:06d}: {{from: bench/d{d:02d}/f{i:06d}}}")
open(f"{cfg}/hostgroups/bench.yaml", "w").write("\n".join(lines) + "\n")
PY
    touch "$cfg/.complete"
  fi
  rm -rf "$WORK/b$n-x$x"
  SOURCE_DATE_EPOCH=$(date +%s) "$KILN" build bench --config "$cfg" --key "$WORK/key" --out "$WORK/b$n-x$x" --version 1 > /dev/null
  tar -C "$cfg/files/bench" -cf - . | zstd -3 -T0 -q -f -o "$WORK/b$n-x$x/bench.tar.zst"
}

MNT=$WORK/mnt
cleanup() { mountpoint -q "$MNT" && umount "$MNT"; rm -f "$WORK/fs.img"; }
trap cleanup EXIT
fresh_fs() { # N -> a new, empty ext4 for N files mounted at $MNT
  cleanup; truncate -s $(($1 / 10000 + 1))G "$WORK/fs.img"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$WORK/fs.img"; mkdir -p "$MNT"; mount -o loop "$WORK/fs.img" "$MNT"
}
fake_root() { # a target root that passes the os-release/arch checks (no base image needed)
  mkdir -p "$1/etc" "$1/var/lib/dpkg" "$1/srv"
  printf 'ID=debian\nVERSION_ID="12"\n' > "$1/etc/os-release"
  echo amd64 > "$1/var/lib/dpkg/arch"
  printf 'root:x:0:0:root:/root:/bin/bash\n' > "$1/etc/passwd"
  printf 'root:x:0:\n' > "$1/etc/group"
}
measure() { local out; out=$(mktemp); /usr/bin/time -f '%e %M' -o "$out" "$@" > /dev/null 2>&1 || { cat "$out" >&2; echo "FAILED: $*" >&2; exit 1; }; cat "$out"; rm -f "$out"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run() { # N
  local n=$1 x=${2:-1} kt=() tt=() st=() km=()
  gen "$n" "$x"
  local b=$WORK/b$n-x$x
  for r in $(seq "$ROUNDS"); do
    fresh_fs $((n * x)); fake_root "$MNT/root"; sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    read -r t m < <(measure "$FB" apply --bundle "$b/bench-1.kiln" --root "$MNT/root" --trust "$WORK/trust")
    kt+=("$t"); km+=("$m")
    rm -rf "$WORK/applied"; cp -a "$MNT/root/srv/bench" "$WORK/applied"
    fresh_fs $((n * x)); fake_root "$MNT/root"; mkdir -p "$MNT/root/srv/bench"; sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    read -r t _ < <(measure bash -c "zstd -dc '$b/bench.tar.zst' | tar -x -C '$MNT/root/srv/bench'")
    tt+=("$t")
    # Same bytes on disk either way.
    diff -r "$WORK/applied" "$MNT/root/srv/bench" > /dev/null || { echo "trees differ" >&2; exit 1; }
    fresh_fs $((n * x)); fake_root "$MNT/root"; mkdir -p "$MNT/root/srv/bench"; sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    read -r t _ < <(measure bash -c "zstd -dc '$b/bench.tar.zst' | tar -x -C '$MNT/root/srv/bench' && sync -f '$MNT/root/srv/bench'")
    st+=("$t")
    echo "files=$n x$x round $r: kiln-firstboot ${kt[-1]}s (peak RSS ${km[-1]} KiB), zstd|tar ${tt[-1]}s, zstd|tar+sync ${st[-1]}s" >&2
  done
  local k t s m; k=$(median "${kt[@]}"); t=$(median "${tt[@]}"); s=$(median "${st[@]}"); m=$(median "${km[@]}")
  echo "files=$n sizes x$x bundle $(stat -c %s "$b/bench-1.kiln") bytes: kiln-firstboot apply median ${k}s, zstd -dc | tar -x median ${t}s (ratio $(python3 -c "print(f'{$k/$t:.2f}')")x), with sync -f median ${s}s (ratio $(python3 -c "print(f'{$k/$s:.2f}')")x), peak RSS ${m} KiB"
}
echo "kiln-firstboot: $FB ($(stat -c %s "$FB") bytes)"
run "$FILES"
[ "${ONLY_ONE:-}" ] && exit 0
run $((FILES * 2))        # twice the files (and bytes)
[ "${NO_X2:-}" ] && exit 0
run "$FILES" 2            # the same files, each twice as large: memory stays flat
