#!/usr/bin/env bash
# LLaVA-Video-7B-Qwen2 (64 frames, 1 fps) on mvbench with AOT, through lmms-eval. Example:
#   bash scripts/eval_vid_mvbench.sh --retention 0.10 --nproc 8
# Options: --help (scripts/eval_common.sh). Results: outputs/eval/video/mvbench/<tag>/ unless --output.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/eval_common.sh"
aot_eval_run video mvbench "$@"
