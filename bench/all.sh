#!/usr/bin/env bash
# Every apply benchmark in one run, then one summary table: files (bench/apply-bench.sh: 20,000
# and 40,000 files against `zstd -dc | tar -x`, alone and with `sync -f`), packages
# (bench/packages-bench.sh: the example db's .debs against `dpkg --force-unsafe-io -i` +
# `sync -f`) and memory (bench/memory-bench.sh: peak RSS of a bundle of MEM_ENTRIES entries,
# default 1,000,000). Needs root.
#
# Usage: bench/all.sh [ROUNDS]     (default 3; each bench reports medians)
# FIRSTBOOT=PATH measures that kiln-firstboot binary (passed on to each bench).
set -euo pipefail
ROUNDS=${1:-3}
here=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
echo "files: 20,000 and 40,000 files ..." >&2
NO_X2=1 bash "$here/apply-bench.sh" "$ROUNDS" | tee "$log/files"
echo "packages ..." >&2
bash "$here/packages-bench.sh" "$ROUNDS" | tee "$log/packages"
echo "memory: ${MEM_ENTRIES:-1000000} entries ..." >&2
bash "$here/memory-bench.sh" ${MEM_ENTRIES:-1000000} | tee "$log/memory"

echo
echo "| workload | kiln-firstboot | baseline | ratio | peak RSS |"
echo "|---|---|---|---|---|"
python3 - "$log" <<'PY'
import re, sys
d = sys.argv[1]
for line in open(f"{d}/files"):
    m = re.match(r"files=(\d+) sizes x1 .*median ([\d.]+)s, zstd -dc \| tar -x median ([\d.]+)s \(ratio ([\d.]+)x\), with sync -f median ([\d.]+)s \(ratio ([\d.]+)x\), peak RSS (\d+) KiB", line)
    if m:
        n, k, t, rt, s, rs, rss = m.groups()
        mib = f"{int(rss) / 1024:.1f} MiB"
        print(f"| {int(n):,} files | {k} s | `zstd -dc \\| tar -x` {t} s | {rt}x | {mib} |")
        print(f"| {int(n):,} files | {k} s | `zstd -dc \\| tar -x && sync -f` {s} s | **{rs}x** | {mib} |")
for line in open(f"{d}/packages"):
    m = re.match(r"median: packages phase ([\d.]+)s, dpkg --force-unsafe-io -i \+ sync -f ([\d.]+)s: ratio ([\d.]+)x", line)
    if m:
        k, b, r = m.groups()
        print(f"| packages (example db) | {k} s | `dpkg --force-unsafe-io -i` + `sync -f` {b} s | **{r}x** | |")
for line in open(f"{d}/memory"):
    m = re.match(r"entries=(\d+) .*exit (\d+)(.*) in (\S+), peak RSS (\d+) KiB", line)
    if m:
        n, st, why, t, rss = m.groups()
        note = "" if st == "0" else f" (exit {st}{why})"
        print(f"| {int(n):,} entries | {t}{note} | | | **{int(rss) / 1024:.1f} MiB** |")
PY
