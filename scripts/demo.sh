#!/usr/bin/env bash
# `make demo`: the whole product on one machine (see scripts/demo.py). DEMO_EXIT=1 exits after the rollout.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${VENV:-.venv}/bin/python" scripts/demo.py "$@"
