#!/usr/bin/env bash
# Qwen3-VL-8B-Instruct (stock lmms-eval qwen3_vl protocol: 32 frames, max_pixels 1605632)
# on egoschema with AOT, through lmms-eval. Example:
#   bash scripts/eval_qwen3_vl_egoschema.sh --retention 0.10 --nproc 8
# Options: --help (scripts/eval_common.sh). Results: outputs/eval/qwen3_vl/egoschema/<tag>/ unless --output.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/eval_common.sh"
aot_eval_run qwen3_vl egoschema "$@"
