#!/usr/bin/env bash
# LLaVA-OneVision-7B in transformers (llava-hf; stock lmms-eval llava_hf protocol: 32 frames)
# on egoschema with AOT, through lmms-eval. Example:
#   bash scripts/eval_llava_hf_egoschema.sh --retention 0.10 --nproc 8
# Options: --help (scripts/eval_common.sh). Results: outputs/eval/llava_hf/egoschema/<tag>/ unless --output.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/eval_common.sh"
aot_eval_run llava_hf egoschema "$@"
