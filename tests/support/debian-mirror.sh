#!/usr/bin/env bash
# Print the Debian mirror this machine's apt uses for the main archive (not the security archive).
# Order: $KILN_DEBIAN_MIRROR, the first URIs: of a deb822 stanza in /etc/apt/sources.list.d/*.sources
# whose Suites are not *-security (comment lines such as the snapshot URL are ignored), the first
# `deb` line of /etc/apt/sources.list, then http://deb.debian.org/debian.
set -euo pipefail
if [ -n "${KILN_DEBIAN_MIRROR:-}" ]; then echo "${KILN_DEBIAN_MIRROR%/}"; exit 0; fi
m=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -r "$f" ] || continue
  m=$(awk 'BEGIN { RS = ""; FS = "\n" }
    {
      uris = ""; suites = ""; enabled = 1
      for (i = 1; i <= NF; i++) {
        line = $i
        if (line ~ /^[ \t]*#/) continue
        if (line ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", line); uris = line }
        if (line ~ /^Suites:/)  { sub(/^Suites:[ \t]*/, "", line); suites = line }
        if (line ~ /^Enabled:[ \t]*no/) enabled = 0
      }
      if (enabled && uris != "" && suites !~ /-security/ && uris !~ /security/) { split(uris, u, /[ \t]+/); print u[1]; exit }
    }' "$f")
  [ -n "$m" ] && break
done
if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
  m=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
fi
m=${m:-http://deb.debian.org/debian}
echo "${m%/}"
