#!/usr/bin/env bash
# Run a whole table (retentions x benchmarks, plus the unreduced row) and summarise it.
#   bash scripts/sweep.sh --backbone ov --output outputs/table-ov -- --nproc 8
#   bash scripts/sweep.sh --backbone video --retentions "0.25 0.15" --reducers "aot visionzip"
#   bash scripts/sweep.sh --backbone qwen2_5_vl --output outputs/table-qwen2_5_vl -- --nproc 8
# Options:
#   --backbone B                ov (default), video, qwen2_5_vl, qwen3_vl, llava_hf
#   --retentions "R ..."        (default: the paper's rows, video: 0.25 0.15; else 0.25 0.20 0.15 0.10)
#   --benchmarks "B ..."        (default: mvbench egoschema longvideobench videomme)
#   --reducers "NAME ..."       (default: aot)
#   --no-full                   skip the unreduced row
#   --output DIR                (default: outputs/sweep/<backbone>)
#   --dry-run                   print the runs only
# Anything after '--' goes to every eval script (e.g. -- --nproc 8 --limit 16, or a reducer's
# knob: --reducers vidcom2 -- --reducer-opt count=released).
# A failed run does not stop the sweep; the exit status is 1 if any run failed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
backbone=ov retentions="" benchmarks="mvbench egoschema longvideobench videomme" reducers=aot
full=1 output="" dry_run=0
passthrough=()
die() { echo "sweep.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --backbone) [ $# -ge 2 ] || die "--backbone needs a value"; backbone=$2; shift 2 ;;
    --retentions) [ $# -ge 2 ] || die "--retentions needs a value"; retentions=$2; shift 2 ;;
    --benchmarks) [ $# -ge 2 ] || die "--benchmarks needs a value"; benchmarks=$2; shift 2 ;;
    --reducers) [ $# -ge 2 ] || die "--reducers needs a value"; reducers=$2; shift 2 ;;
    --no-full) full=0; shift ;;
    --output) [ $# -ge 2 ] || die "--output needs a value"; output=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n 2,15p "$0"; exit 0 ;;
    --) shift; passthrough=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
# shellcheck source=scripts/eval_common.sh
. "$here/eval_common.sh"
prefix=$(aot_eval_script_prefix "$backbone") ||
  die "unknown backbone '$backbone' (expected one of: $AOT_EVAL_BACKBONES)"
retentions=${retentions:-$(aot_eval_table_retentions "$backbone")}
output=${output:-outputs/sweep/$backbone}
for bench in $benchmarks; do
  [ -f "$here/eval_${prefix}_${bench}.sh" ] || die "unknown benchmark '$bench' (expected mvbench egoschema longvideobench videomme)"
done

runs=()
for bench in $benchmarks; do
  [ "$full" = 0 ] || runs+=("$bench|--reducer none|full")
  for reducer in $reducers; do
    for r in $retentions; do runs+=("$bench|--reducer $reducer --retention $r|${reducer}_r$r"); done
  done
done

# Check every reducer/retention once, in one Python call (the same parser the model uses); the
# eval scripts then skip their own per-run check.
root=$(cd "$here/.." && pwd)
py=$(aot_eval_python "$root")
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# Knobs passed through (-- --reducer-opt K=V) go to every reducer's run: check them with each.
opts=""
for ((i = 0; i < ${#passthrough[@]}; i++)); do
  [ "${passthrough[$i]}" != --reducer-opt ] || opts+=" reducer.${passthrough[$((i + 1))]:-}"
done
checks=()
for reducer in $reducers; do
  for r in $retentions; do checks+=(--set "reducer=$reducer retention=$r$opts"); done
done
aot_eval_preflight "$py" args --backbone "$backbone" "${checks[@]}"
export AOT_EVAL_ARGS_CHECKED=1

failed=()
for run in "${runs[@]}"; do
  IFS='|' read -r bench args tag <<<"$run"
  # shellcheck disable=SC2206
  cmd=(bash "$here/eval_${prefix}_${bench}.sh" $args --output "$output/$bench/$tag")
  cmd+=(${passthrough[@]+"${passthrough[@]}"})
  if [ "$dry_run" = 1 ]; then
    "${cmd[@]}" --dry-run
    continue
  fi
  echo "[sweep] ${cmd[*]}"
  "${cmd[@]}" || failed+=("$bench $tag")
done
[ "$dry_run" = 0 ] || exit 0

"$py" -m aot_eval.summarise "$output" --out "$output/table" || true
echo "[sweep] table: $output/table.md and $output/table.csv"
if [ ${#failed[@]} -gt 0 ]; then
  printf '[sweep] FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
