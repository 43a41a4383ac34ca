#!/usr/bin/env bash
# Milliseconds per video of AOT's reducer at the two real shapes (CPU, or GPU when present).
# Usage: scripts/bench_reducer.sh [--device cpu|cuda] [--repeats N] [--dtype float32|float16|bfloat16]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
exec "$PY" scripts/bench_reducer.py "$@"
