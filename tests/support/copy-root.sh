#!/usr/bin/env bash
# Copy a cached base root (tests/support/base-image.sh) to a fresh directory for one test.
#
#   tests/support/copy-root.sh SRC DST
#
# DST must not exist, or be an empty directory. Ownership, modes, hard links, device nodes, symlinks
# and xattrs are kept (cp -a); on a filesystem with reflinks (btrfs, xfs) the copy shares blocks.
# Needs root to keep uids/gids and device nodes. A minbase root (~210 MB) copies in about a second.
# Tests may run the same `cp -a --reflink=auto SRC/. DST/` themselves; this script adds the checks.
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 SRC DST" >&2; exit 2; fi
SRC=${1%/}; DST=${2%/}
[ -f "$SRC/etc/os-release" ] || { echo "copy-root.sh: $SRC does not look like a root filesystem (no etc/os-release)" >&2; exit 1; }
if [ -e "$DST" ]; then
  [ -d "$DST" ] && [ -z "$(ls -A "$DST")" ] || { echo "copy-root.sh: $DST exists and is not an empty directory" >&2; exit 1; }
else
  mkdir -p "$DST"
fi
cp -a --reflink=auto "$SRC/." "$DST/"
