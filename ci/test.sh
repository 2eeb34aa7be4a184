#!/usr/bin/env bash
# The README's test command: install gsa-ops with its test extras on a fresh
# machine and run the whole test suite. Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# The CPU wheel first: a bare `torch` requirement would pull GBs of CUDA packages.
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[test,triton]"

$PY -m pytest -q -ra "$@"
