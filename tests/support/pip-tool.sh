#!/usr/bin/env bash
# Install (or find in the cache) a Python command-line tool from PyPI that Kiln's tests use, in a
# venv of its own. The tools' own scripts (spdx-tools.sh, check-jsonschema.sh) call this with
# their package, pin and command.
#
#   tests/support/pip-tool.sh NAME PIN COMMAND [--no-build] [OUTDIR]
#
# NAME     the PyPI distribution (spdx-tools); PIN its exact requirement (spdx-tools==0.8.5);
#          COMMAND the script it installs (pyspdxtools)
# OUTDIR   default ${KILN_CACHE:-/var/cache/kiln-ci}/NAME
#
# Makes a venv at OUTDIR/<key>/venv with PIN installed. <key> is the first 16 hex digits of the
# sha256 of this script, the pin and the Python used. The wheels (the tool and its dependencies)
# are kept in ${KILN_CACHE}/pip/wheels, so a rebuild installs offline. The last line printed on
# stdout is the path of COMMAND. With --no-build, print it if cached or exit 3.
#
# Built in OUTDIR/.tmp-<key>-<pid> and renamed into place when complete (the venv's scripts are
# rewritten to the final path first).
set -euo pipefail
umask 022

[ $# -ge 3 ] || { echo "usage: $0 NAME PIN COMMAND [--no-build] [OUTDIR]" >&2; exit 2; }
NAME=$1 PIN=$2 BIN=$3
shift 3
PY=${KILN_PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=$(command -v python3)

NO_BUILD=0
if [ "${1:-}" = "--no-build" ]; then NO_BUILD=1; shift; fi
CACHE=${KILN_CACHE:-/var/cache/kiln-ci}
OUTDIR=${1:-$CACHE/$NAME}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
PYVER=$("$PY" -c 'import sys; print(sys.version.split()[0])')
FULLKEY=$( { sha256sum < "$SELF"; printf 'pin=%s\npython=%s %s\n' "$PIN" "$PY" "$PYVER"; } | sha256sum | cut -d' ' -f1)
KEY=${FULLKEY:0:16}

log() { echo "[$NAME] $*" >&2; }
lookup() {
  [ -f "$OUTDIR/$KEY/info" ] && [ -x "$OUTDIR/$KEY/venv/bin/$BIN" ] || return 1
  echo "$OUTDIR/$KEY/venv/bin/$BIN"
}

if [ "$NO_BUILD" = 1 ]; then
  [ -d "$OUTDIR" ] && OUTDIR=$(cd "$OUTDIR" && pwd -P) || exit 3
  lookup || exit 3
  exit 0
fi
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd -P)
if lookup; then exit 0; fi

exec 9>"$OUTDIR/.lock-$KEY"
if ! flock -n 9; then log "waiting for another install ($KEY)"; flock 9; fi
if lookup; then exit 0; fi
rm -rf "$OUTDIR"/.tmp-"$KEY"-* "$OUTDIR/$KEY"

TMP="$OUTDIR/.tmp-$KEY-$$"
FINAL="$OUTDIR/$KEY"
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM HUP
mkdir -p "$TMP" "$CACHE/pip"

t0=$(date +%s)
"$PY" -m venv "$TMP/venv"
export PIP_CACHE_DIR="$CACHE/pip" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
WHEELS="$CACHE/pip/wheels"
mkdir -p "$WHEELS"
# First try the wheels already kept; download (with dependencies) only when they are not enough.
if ! "$TMP/venv/bin/python" -m pip install -q --no-index --find-links "$WHEELS" "$PIN" > "$TMP/pip.log" 2>&1 < /dev/null; then
  log "pip download $PIN (and its dependencies) -> $WHEELS"
  rm -rf "$WHEELS/.tmp-$NAME-$$"
  "$TMP/venv/bin/python" -m pip download -q -d "$WHEELS/.tmp-$NAME-$$" "$PIN" >> "$TMP/pip.log" 2>&1 < /dev/null ||
    { echo "$NAME: pip download $PIN failed:" >&2; tail -n 30 "$TMP/pip.log" >&2; rm -rf "$WHEELS/.tmp-$NAME-$$"; exit 1; }
  mv -f "$WHEELS/.tmp-$NAME-$$"/* "$WHEELS/" && rm -rf "$WHEELS/.tmp-$NAME-$$"
  log "python -m venv + pip install $PIN -> $FINAL/venv (wheels from $WHEELS)"
  "$TMP/venv/bin/python" -m pip install -q --no-index --find-links "$WHEELS" "$PIN" >> "$TMP/pip.log" 2>&1 < /dev/null ||
    { echo "$NAME: pip install $PIN failed:" >&2; tail -n 30 "$TMP/pip.log" >&2; exit 1; }
fi
[ -x "$TMP/venv/bin/$BIN" ] || { echo "$NAME: no $BIN in the venv" >&2; exit 1; }
V=$("$TMP/venv/bin/python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$NAME")
[ "$V" = "${PIN##*==}" ] || { echo "$NAME: installed $NAME $V, wanted ${PIN##*==}" >&2; exit 1; }
t1=$(date +%s)

grep -rlI --null -F "$TMP" "$TMP/venv/bin" "$TMP/venv/pyvenv.cfg" | xargs -0 -r sed -i "s|$TMP|$FINAL|g"
printf 'pin=%s\nkey=%s\nfull_key=%s\npython=%s %s\nversion=%s\nbuilt=%s\nseconds=%s\n' \
  "$PIN" "$KEY" "$FULLKEY" "$PY" "$PYVER" "$V" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((t1 - t0))" > "$TMP/info"
mv -T "$TMP" "$FINAL"
trap - EXIT
log "installed $NAME $V in $((t1 - t0))s"
lookup
