#!/usr/bin/env bash
# Submit one paper table as a SLURM array (retention x benchmark) plus a summary job after it.
#   bash scripts/slurm/submit_table.sh --backbone ov --output outputs/table-ov
#   bash scripts/slurm/submit_table.sh --backbone video --retentions "full 0.25 0.15" --gpus 4
#   bash scripts/slurm/submit_table.sh --backbone qwen3_vl --output outputs/table-qwen3_vl --gpus 8
# Options: --backbone ov|video|qwen2_5_vl|qwen3_vl|llava_hf, --retentions "full R ...",
#   --benchmarks "...", --reducer NAME,
#   --output DIR, --model PATH, --gpus N (per task, default 1), --extra "eval options",
#   --sbatch-args "site options, e.g. --partition=gpu --account=me", --dry-run.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
backbone=ov retentions="" benchmarks="mvbench egoschema longvideobench videomme" reducer=aot
output="" model="" gpus=1 extra="" sbatch_args="" dry_run=0
die() { echo "submit_table.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --backbone) [ $# -ge 2 ] || die "--backbone needs a value"; backbone=$2; shift 2 ;;
    --retentions) [ $# -ge 2 ] || die "--retentions needs a value"; retentions=$2; shift 2 ;;
    --benchmarks) [ $# -ge 2 ] || die "--benchmarks needs a value"; benchmarks=$2; shift 2 ;;
    --reducer) [ $# -ge 2 ] || die "--reducer needs a value"; reducer=$2; shift 2 ;;
    --output) [ $# -ge 2 ] || die "--output needs a value"; output=$2; shift 2 ;;
    --model) [ $# -ge 2 ] || die "--model needs a value"; model=$2; shift 2 ;;
    --gpus) [ $# -ge 2 ] || die "--gpus needs a value"; gpus=$2; shift 2 ;;
    --extra) [ $# -ge 2 ] || die "--extra needs a value"; extra=$2; shift 2 ;;
    --sbatch-args) [ $# -ge 2 ] || die "--sbatch-args needs a value"; sbatch_args=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
# shellcheck source=scripts/eval_common.sh
. "$here/../eval_common.sh"
aot_eval_script_prefix "$backbone" >/dev/null ||
  die "unknown backbone '$backbone' (expected one of: $AOT_EVAL_BACKBONES)"
retentions=${retentions:-full $(aot_eval_table_retentions "$backbone")}
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus '$gpus' must be a positive integer"
output=${output:-outputs/table-$backbone}
read -r -a rs <<<"$retentions"
read -r -a bs <<<"$benchmarks"
count=$(( ${#rs[@]} * ${#bs[@]} ))
[ "$count" -gt 0 ] || die "nothing to run"

export BACKBONE=$backbone RETENTIONS=$retentions BENCHMARKS=$benchmarks REDUCER=$reducer
export OUTPUT=$output MODEL=$model NPROC=$gpus EXTRA=$extra
AOT_REPO=$(cd "$here/../.." && pwd)
export AOT_REPO
python_bin=${PYTHON:-python}
# shellcheck disable=SC2206
array=(sbatch --parsable --array=0-$((count - 1)) --gres=gpu:$gpus --export=ALL $sbatch_args
       "$here/eval_array.sbatch")
echo "[submit] ${array[*]}"
echo "[submit] BACKBONE=$BACKBONE RETENTIONS='$RETENTIONS' BENCHMARKS='$BENCHMARKS' OUTPUT=$OUTPUT"
if [ "$dry_run" = 1 ]; then
  echo "[submit] then: sbatch --dependency=afterany:<job> --wrap '$python_bin -m aot_eval.summarise $output --out $output/table'"
  exit 0
fi
mkdir -p logs "$output"
job=$("${array[@]}")
# shellcheck disable=SC2086
summary=$(sbatch --parsable --dependency=afterany:"$job" --job-name=aot-table $sbatch_args \
  --output=logs/%x-%j.out --wrap "cd '$PWD' && { [ -f '$AOT_REPO/.venv/bin/activate' ] && . '$AOT_REPO/.venv/bin/activate'; true; } && PYTHONPATH='$AOT_REPO'\${PYTHONPATH:+:\$PYTHONPATH} '$python_bin' -m aot_eval.summarise '$output' --out '$output/table'")
echo "[submit] array job $job ($count tasks), summary job $summary -> $output/table.md"
