#!/usr/bin/env bash
# Install (or find in the cache) the JSON Schema validator Kiln's tests check every shipped
# hostgroup and layer file against `kiln schema` with: the PyPI package check-jsonschema (built on
# the python-jsonschema reference implementation), whose `check-jsonschema --schemafile SCHEMA
# FILE...` reads YAML or JSON files and exits 0 when every one is valid.
#
#   tests/support/check-jsonschema.sh [--no-build] [OUTDIR]     (see pip-tool.sh; prints the path)
exec bash "$(dirname "${BASH_SOURCE[0]}")/pip-tool.sh" check-jsonschema "check-jsonschema==0.39.0" check-jsonschema "$@"
