#!/usr/bin/env bash
# Peak memory / input size and time per frame of aot.reduce_video at 32..1024 frames (CPU).
# Usage: scripts/bench_memory.sh [--frames 32 128 512 1024] [--dim 3584] [--preset NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
exec "$PY" scripts/bench_memory.py "$@"
