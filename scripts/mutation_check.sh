#!/usr/bin/env bash
# Mutation check: every knob of AOTConfig and of the baselines, hard-coded to its default in a
# temporary copy of the code, must turn some test red. Prints knob -> killed-by-test / SURVIVED.
# Usage: scripts/mutation_check.sh [knob ...] [--list]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
exec "$PY" scripts/mutation_check.py "$@"
