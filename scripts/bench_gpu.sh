#!/usr/bin/env bash
# The GPU checks and numbers of docs/efficiency.md in one run, for a machine with one CUDA GPU:
#   1. tests/test_cuda.py (same tokens as the CPU, no host sync in the loops, CUDA-graph replay,
#      torch.compile, half precision)
#   2. scripts/bench_reducer.py --device cuda, float32 and bfloat16, OV 32 and Video 64 frames,
#      ms per call with the card's name: the default (CUDA-graph intra stage) and --eager
#   3. knob sweeps of bench_reducer: sinkhorn_check_every 1..10, chunk budget (aot.ops.scratch_bytes) 16..256 MiB
#   4. scripts/bench_memory.py --device cuda at 32..1024 frames (peak / input, ms per frame)
#   5. one call under torch.profiler (kernel launches, syncs, GPU time per kernel)
#   6. with --efficiency: the efficiency benchmark at 7B shapes (LLaVA-OV, LLaVA-Video,
#      Qwen2.5-VL), random weights, bfloat16
# Usage: bash scripts/bench_gpu.sh [--out DIR] [--efficiency] [--skip-tests] [--quick]
# Each step's output goes to DIR/<step>.txt (default outputs/gpu) and to stdout; a failing step
# is reported and the next one still runs; the exit status is that of the first failure.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=outputs/gpu efficiency=0 tests=1 quick=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --efficiency) efficiency=1; shift ;;
        --skip-tests) tests=0; shift ;;
        --quick) quick=1; shift ;;
        *) echo "bench_gpu.sh: unknown option '$1' (expected --out DIR, --efficiency, --skip-tests, --quick)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench_gpu.sh: $PY sees no CUDA device (torch.cuda.is_available() is False)" >&2
    exit 2
fi
mkdir -p "$out"
status=0
step() {  # step NAME COMMAND...: run, tee to $out/NAME.txt, remember the first failure
    local name=$1; shift
    echo "=== $name: $* ($(date -u +%H:%M:%S))"
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc ($(date -u +%H:%M:%S))"
    [ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
}
step environment "$PY" -c "import torch, transformers; print(torch.cuda.get_device_name(), \
torch.__version__, torch.version.cuda, 'transformers', transformers.__version__)"
frames=(32 128 256 512 1024) repeats=20
[ "$quick" = 1 ] && frames=(32 256) repeats=5
[ "$tests" = 1 ] && step tests "$PY" -m pytest tests/test_cuda.py -q -p no:warnings -p no:cacheprovider
step reducer_float32 "$PY" scripts/bench_reducer.py --device cuda --repeats "$repeats" --warmup 3
step reducer_bfloat16 "$PY" scripts/bench_reducer.py --device cuda --dtype bfloat16 \
    --repeats "$repeats" --warmup 3 --reference-repeats 0
# the same shapes with the eager intra stage (AOTConfig(cuda_graphs=False)), same machine
for dtype in float32 bfloat16; do
    step "reducer_eager_$dtype" "$PY" scripts/bench_reducer.py --device cuda --dtype "$dtype" \
        --repeats "$repeats" --warmup 3 --reference-repeats 0 --eager
done
step sweep_check_every "$PY" scripts/bench_reducer.py --device cuda --repeats 10 --warmup 2 \
    --reference-repeats 0 --check-every 1 2 3 5 10
for dtype in float32 bfloat16; do
    step "sweep_scratch_$dtype" "$PY" scripts/bench_reducer.py --device cuda --dtype "$dtype" \
        --repeats 10 --warmup 2 --reference-repeats 0 --scratch-mib 16 64 256
done
step memory "$PY" scripts/bench_memory.py --device cuda --frames "${frames[@]}" --repeats 3
step profile "$PY" scripts/bench_reducer.py --device cuda --repeats 2 --reference-repeats 0 \
    --profile 25
if [ "$efficiency" = 1 ]; then
    step efficiency "$PY" -m aot_bench.efficiency --backbones ov video qwen2_5_vl \
        --frames 32 64 --retentions full 0.25 0.10 --repeats 3 --warmup 1 \
        --out "$out/efficiency"
fi
exit "$status"
