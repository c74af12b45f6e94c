#!/usr/bin/env bash
# Install (or find in the cache) the SPDX validator Kiln's tests check every SBOM with: the PyPI
# package spdx-tools (the SPDX project's own parser and validator), whose `pyspdxtools -i FILE`
# parses an SPDX document and validates it against the SPDX 2.3 specification (exit 0 when valid).
#
#   tests/support/spdx-tools.sh [--no-build] [OUTDIR]     (see pip-tool.sh; prints pyspdxtools' path)
exec bash "$(dirname "${BASH_SOURCE[0]}")/pip-tool.sh" spdx-tools "spdx-tools==0.8.5" pyspdxtools "$@"
