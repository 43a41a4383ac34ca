#!/usr/bin/env bash
# Efficiency benchmark: vision encoder (with / without AOT's attention capture), reducer, LLM
# prefill, time to first token, decode tokens/s, peak memory, tokens and prefill FLOPs (analytic
# and counted) for LLaVA-OV / LLaVA-Video (and transformers' Qwen2.5-VL through aot_integrations.hf with
# --backbones qwen2_5_vl) at several frame counts and retentions, with ratios against the full
# model of the same run. Writes efficiency.{json,md} and two PNG plots.
#
#   bash scripts/bench_efficiency.sh                          # GPU: 7B shapes, random weights, bf16
#   bash scripts/bench_efficiency.sh --preset cpu --frames 16 32 64 --repeats 2   # CPU, reduced
#   bash scripts/bench_efficiency.sh --checkpoint lmms-lab/llava-onevision-qwen2-7b-ov
#   bash scripts/bench_efficiency.sh --out outputs/eff --frames 32 64 --retentions full 0.1
#   bash scripts/bench_efficiency.sh --backbones qwen2_5_vl --frames 32 64 --retentions full 0.25 0.10
#       # Qwen2.5-VL-7B shapes (GPU; reduced widths on CPU), 448x448 frames (--qwen-frame-size)
#
# Every option of `python -m aot_bench.efficiency --help` passes through. Progress goes to
# stderr; the output folder defaults to outputs/efficiency.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
python_bin="${PYTHON:-python}"
if ! command -v "$python_bin" >/dev/null 2>&1; then
    echo "bench_efficiency.sh: python interpreter '$python_bin' not found; set PYTHON=..." >&2
    exit 2
fi
case " $* " in
    *" --out "*|*" --out="*) ;;
    *) set -- --out "$root/outputs/efficiency" "$@" ;;
esac
echo "bench_efficiency.sh: $python_bin -m aot_bench.efficiency $*" >&2
"$python_bin" -m aot_bench.efficiency "$@"
