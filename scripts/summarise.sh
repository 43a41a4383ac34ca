#!/usr/bin/env bash
# Paper table (markdown + CSV) from result folders, with the paper's numbers and measured retention.
#   bash scripts/summarise.sh outputs/eval --out outputs/table
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m aot_eval.summarise "$@"
