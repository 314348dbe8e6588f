#!/usr/bin/env bash
# `make demo`: runs the most complete end-to-end path that exists (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${VENV:-.venv}/bin/python" scripts/demo.py "$@"
