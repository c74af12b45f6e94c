#!/usr/bin/env bash
# Benchmark: kiln-firstboot's peak RSS against the number of manifest entries. A bundle of
# ENTRIES entries (default 1,000,000: empty files of one shared blob and symlinks, half each, in
# directories of 1,000) is applied with `kiln-firstboot apply --root` to a fresh ext4 on a loop
# device; /usr/bin/time -v's "Maximum resident set size" is reported, with the apply's time and
# exit status (a bundle the reader refuses is reported as such, with its message).
#
# Usage: bench/memory-bench.sh [ENTRIES...]     (default 1000000)
# FIRSTBOOT=PATH measures that kiln-firstboot binary instead of the release build of this tree.
# DISTINCT=1 gives every file content of its own (`<i>\n`), so one blob per file: what an apply
# holds per distinct blob.
set -euo pipefail
WORK=${WORK:-/var/tmp/kiln-memory-bench}
here=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "needs root (loop devices)" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
cargo build --release -q --manifest-path "$here/Cargo.toml" -p kiln-builder -p kiln-firstboot
T=${CARGO_TARGET_DIR:-$here/target}/release
KILN=$T/kiln; FB=${FIRSTBOOT:-$T/kiln-firstboot}
mkdir -p "$WORK/trust"
[ -f "$WORK/key" ] || "$KILN" keygen --out "$WORK/key" --force > /dev/null
cp "$WORK/key.pub" "$WORK/trust/bench.pub"
MNT=$WORK/mnt
cleanup() { mountpoint -q "$MNT" && umount "$MNT"; rm -f "$WORK/fs.img"; }
trap cleanup EXIT

DISTINCT=${DISTINCT:-0}
tag() { if [ "$DISTINCT" = 1 ]; then echo "d$1"; else echo "$1"; fi; }

bundle() { # N -> $WORK/b$(tag N)/mem-1.kiln
  local n=$1 cfg=$WORK/config-$(tag $1) out=$WORK/b$(tag $1)
  [ -f "$out/mem-1.kiln" ] && return 0
  echo "generating a bundle of $n entries ..." >&2
  rm -rf "$cfg" "$out"; mkdir -p "$cfg/hostgroups" "$cfg/files" "$cfg/layers"
  echo "vars: {}" > "$cfg/hostgroups/default.yaml"
  # The files go into layers of 100,000 (a configuration file is at most 8 MiB).
  python3 - "$cfg" "$n" "$DISTINCT" <<'PY'
import sys
cfg, n, distinct = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
dirs = (n + 999) // 1000
files = n - dirs - 1
layers = [f"m{k:02d}" for k in range((files + 99999) // 100000)]
with open(f"{cfg}/hostgroups/mem.yaml", "w") as f:
    f.write(f"layers: [{', '.join(layers)}]\n")
    f.write("directories:\n  /srv/mem: {}\n")
    for d in range(dirs):
        f.write(f"  /srv/mem/d{d:04d}: {{}}\n")
for k, name in enumerate(layers):
    with open(f"{cfg}/layers/{name}.yaml", "w") as f:
        f.write("resources:\n  files:\n")
        for i in range(k * 100000, min(files, (k + 1) * 100000)):
            d = i % dirs
            if i % 2:
                f.write(f"    /srv/mem/d{d:04d}/s{i:07d}: {{symlink: f{i - 1:07d}}}\n")
            else:
                content = f"{i}\\n" if distinct else ""
                f.write(f"    /srv/mem/d{d:04d}/f{i:07d}: {{content: \"{content}\"}}\n")
PY
  SOURCE_DATE_EPOCH=$(date +%s) "$KILN" build mem --config "$cfg" --key "$WORK/key" --out "$out" --version 1 > /dev/null
}

for n in "${@:-1000000}"; do
  bundle "$n"
  cleanup; truncate -s $((n / 100000 + 1))G "$WORK/fs.img"
  mkfs.ext4 -q -F -N $((n + 100000)) "$WORK/fs.img"; mkdir -p "$MNT"; mount -o loop "$WORK/fs.img" "$MNT"
  r=$MNT/root; mkdir -p "$r/etc" "$r/var/lib/dpkg" "$r/srv"
  printf 'ID=debian\nVERSION_ID="12"\n' > "$r/etc/os-release"; echo amd64 > "$r/var/lib/dpkg/arch"
  printf 'root:x:0:0:root:/root:/bin/bash\n' > "$r/etc/passwd"; printf 'root:x:0:\n' > "$r/etc/group"
  out=$(mktemp); st=0
  /usr/bin/time -v -o "$out.time" "$FB" apply --bundle "$WORK/b$(tag $n)/mem-1.kiln" --root "$r" --trust "$WORK/trust" > /dev/null 2> "$out" || st=$?
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out.time")
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$out.time")
  why=""; [ "$st" = 0 ] || why=" ($(grep -m1 -i 'error\|refused' "$out" | cut -c1-200))"
  echo "entries=$n$([ "$DISTINCT" = 1 ] && echo ' (a blob per file)') bundle $(stat -c %s "$WORK/b$(tag $n)/mem-1.kiln") bytes: kiln-firstboot apply exit $st$why in ${secs}, peak RSS $rss KiB ($(python3 -c "print(f'{$rss/1024:.1f}')") MiB)"
  rm -f "$out" "$out.time"
done
