#!/usr/bin/env bash
# Benchmark: `kiln build --all` against packing the same files per hostgroup with
# `tar --sort=name -c | zstd -3 -T0`, side by side in the same run. Prints the ratio and peak RSS.
#
# Workload (fixed, generated once into $WORK, default /var/tmp/kiln-bench): 200 hostgroups x 50 files,
# per hostgroup 40 files of 8 KiB, 8 of 200 KiB and 2 of 1.5 MiB (~4.9 MiB), about 1 GB in all;
# half of each file is random bytes and half repeated text, so zstd has real work to do.
#
# Usage: bench/build-bench.sh [ROUNDS]    (default 3 rounds; the median of each side is reported)
set -euo pipefail
ROUNDS=${1:-3}
HOSTGROUPS=${HOSTGROUPS:-200}
WORK=${WORK:-/var/tmp/kiln-bench}
here=$(cd "$(dirname "$0")/.." && pwd)
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

cargo build --release -q --manifest-path "$here/Cargo.toml" -p kiln-builder
KILN=$here/target/release/kiln

cfg=$WORK/config-$HOSTGROUPS
if [ ! -f "$cfg/.complete" ]; then
  echo "generating workload in $cfg ..." >&2
  rm -rf "$cfg"; mkdir -p "$cfg/hostgroups" "$cfg/files"
  python3 - "$cfg" "$HOSTGROUPS" <<'PY'
import os, random, sys
cfg, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
text = b"".join(b"line %06d: the quick brown fox jumps over the lazy dog\n" % i for i in range(40000))
sizes = [8 << 10] * 40 + [200 << 10] * 8 + [1536 << 10] * 2
open(f"{cfg}/hostgroups/default.yaml", "w").write("vars: {}\n")
for h in range(n):
    name = f"hg-{h:03d}"
    d = f"{cfg}/files/{name}"
    os.makedirs(d)
    lines = ["files:"]
    for i, size in enumerate(sizes):
        half = size // 2
        off = rnd.randrange(0, len(text) - half)
        data = rnd.randbytes(half) + text[off:off + size - half]
        with open(f"{d}/f{i:02d}.bin", "wb") as f:
            f.write(data)
        lines.append(f"  /srv/data/f{i:02d}.bin: {{from: {name}/f{i:02d}.bin}}")
    open(f"{cfg}/hostgroups/{name}.yaml", "w").write("\n".join(lines) + "\n")
PY
  touch "$cfg/.complete"
fi
du -sh --apparent-size "$cfg/files" >&2
"$KILN" keygen --out "$WORK/key" --force >/dev/null

# Warm the page cache so neither side pays for the first read.
find "$cfg/files" -type f -exec cat {} + > /dev/null

measure() { # label, command... -> "seconds maxrss_kib"
  local out; out=$(mktemp)
  /usr/bin/time -f '%e %M' -o "$out" "${@:2}" > /dev/null
  cat "$out"; rm -f "$out"
}
baseline() {
  rm -rf "$WORK/tar"; mkdir -p "$WORK/tar"
  for d in "$cfg"/files/*/; do
    h=$(basename "$d")
    tar --sort=name -c -C "$d" . | zstd -3 -T0 -q -o "$WORK/tar/$h.tar.zst"
  done
}
export -f baseline; export WORK cfg
kiln_times=(); tar_times=(); kiln_rss=(); tar_rss=()
for r in $(seq "$ROUNDS"); do
  rm -rf "$WORK/out"
  read -r t m < <(measure kiln env SOURCE_DATE_EPOCH=1767225600 "$KILN" build --all --config "$cfg" --key "$WORK/key" --out "$WORK/out" --version 1 --expires 36500d)
  kiln_times+=("$t"); kiln_rss+=("$m")
  read -r t m < <(measure tar bash -c baseline)
  tar_times+=("$t"); tar_rss+=("$m")
  echo "round $r: kiln ${kiln_times[-1]}s (peak RSS ${kiln_rss[-1]} KiB), tar|zstd ${tar_times[-1]}s" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
kt=$(median "${kiln_times[@]}"); tt=$(median "${tar_times[@]}"); km=$(median "${kiln_rss[@]}")
kiln_bytes=$(du -sb "$WORK/out" | cut -f1); tar_bytes=$(du -sb "$WORK/tar" | cut -f1)
ratio=$(python3 -c "print(f'{$kt/$tt:.2f}')")
echo "workload: $HOSTGROUPS hostgroups x 50 files, $(du -sb "$cfg/files" | cut -f1) bytes"
echo "kiln build --all:       median ${kt}s, peak RSS ${km} KiB, output $kiln_bytes bytes"
echo "tar --sort=name | zstd: median ${tt}s, output $tar_bytes bytes"
echo "ratio kiln/baseline:    ${ratio}x (goal <= 1.2x)"
