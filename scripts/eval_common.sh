# Shared by scripts/eval_<backbone>_<benchmark>.sh: argument parsing, model_args, launch, checks.
# Source it and call:  aot_eval_run <backbone> <mvbench|egoschema|longvideobench|videomme> "$@"
# with a backbone of AOT_EVAL_BACKBONES (aot_eval_facts says what each one runs).
# Environment: PYTHON (default: the checkout's .venv/bin/python if it exists, else python),
# MASTER_PORT (default 29511), HF_HOME (datasets, videos).
# The reducer/retention/preset/ablation arguments are validated once, in Python
# (python -m aot_eval.preflight), before anything is launched (skipped when the caller, e.g.
# sweep.sh, already checked them and exported AOT_EVAL_ARGS_CHECKED=1).

# The backbones with eval scripts are the eval protocols of aot/backbones.py; every fact of one
# (stock model keys and defaults, script prefix, table rows, the paper's presets) is read from its
# record through `python -m aot_eval.preflight facts` (aot_eval_facts). Sourcing this file from
# anything but a per-benchmark script (sweep.sh, the SLURM scripts) also sets AOT_EVAL_BACKBONES
# and the tables of aot_eval_script_prefix / aot_eval_table_retentions (aot_eval_load_backbones).

aot_eval_usage() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local reducers
  reducers=$(PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
             "$(aot_eval_python "$root")" -m aot_eval.preflight reducers 2>/dev/null) ||
    reducers="    (the list needs this project's Python: python -m aot_eval.preflight reducers)"
  cat <<USAGE
Usage: $(basename "$0") (--retention R | --preset NAME | --reducer none) [options]

  --retention R      target share of visual tokens, 0 < R <= 1 (paper: 0.10 0.15 0.20 0.25)
  --preset NAME      released AOT setting instead of a ratio: paper-ov-mvbench,
                     paper-ov-videomme, paper-ov-egoschema, paper-ov-longvideobench, paper-video
  --reducer NAME     aot (default), none (unreduced model) or a reducer of the registry:
$reducers
  --reducer-opt K=V  a knob of the reducer's own options (repeat for several), e.g.
                     --reducer vidcom2 --reducer-opt count=released; tuples join items with
                     '+' (alphas=0.5+1+2); checked against the reducer's options before launch
  --ablation NAME    AOT ablation(s), '+'-joined: no-local no-global prune-only no-intra-ot
                     no-inter cosine-merge random-anchors
  --exact            exact token count per video (with --retention)
  --llm-stage NAME   reduction inside the language model after the reducer: fastv | flashvid |
                     holitom (docs/reducers/llm-stages.md)
  --llm-stage-opt KV a knob of the LLM stage, e.g. layer=3, retention=0.25, budget=157
                     (repeatable)
  --frames N         frames per video (default 32; LLaVA-Video: 64, the paper's; Qwen2.5-VL:
                     at most N of its 2-fps frames, as stock)
  --max-pixels N     Qwen2.5-VL / Qwen3-VL: max_pixels per frame (stock 1605632; qwen-vl-utils
                     caps it lower, docs/reproduce.md section 10)
  --fps F            Qwen3-VL: sample F frames per second, at most --frames (stock: uniform)
  --model PATH       checkpoint folder or hub id (default: the backbone's 7B/8B checkpoint)
  --nproc N          processes / GPUs (default 1); N > 1 launches with --launcher
  --launcher L       torchrun (default) | accelerate
  --output DIR       results folder (default: outputs/eval/<backbone>/<benchmark>/<tag>)
  --limit N          first N docs only (smoke tests; numbers are then not comparable)
  --dtype T          float16 | bfloat16 | float32 (default: float16 for ov/video, the
                     checkpoint's for llava_hf; Qwen: not settable, stock loads bfloat16)
  --attn A           sdpa (default) | flash_attention_2 | eager
  --device D         lmms-eval --device (default: cuda:0 if available, else cpu)
  --model-args KV    extra model_args appended verbatim, e.g. keep_ratio=0.2,sigma=2.0
  --task NAME        lmms-eval task id instead of the benchmark's (smoke tests)
  --include-path P   lmms-eval --include_path (local task definitions)
  --dry-run          print the command and exit
USAGE
}

aot_eval_die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# aot_eval_python ROOT: the interpreter the scripts run ($PYTHON, else ROOT/.venv/bin/python if
# it exists, else python).
aot_eval_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$1/.venv/bin/python" ]; then echo "$1/.venv/bin/python"
  else echo python; fi
}

# aot_eval_preflight PY ARGS...: `PY -m aot_eval.preflight ARGS`; on failure, exit 2 with its
# error line (the last one, after any warnings), or say how to get a usable interpreter.
aot_eval_preflight() {
  local py=$1 problem; shift
  problem=$("$py" -m aot_eval.preflight "$@" 2>&1 >/dev/null) && return 0
  problem=${problem##*$'\n'}
  case "$problem" in
    error:*) aot_eval_die "${problem#error: }" ;;
    *) aot_eval_die "cannot run '$py' with this project ($problem); run 'bash setup.sh --eval' and use .venv/bin/python, or set PYTHON" ;;
  esac
}

aot_eval_check_int() {
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || aot_eval_die "$1 '$2' must be a positive integer"
}

aot_eval_task_id() {
  case "$1" in
    mvbench) echo mvbench ;;
    egoschema) echo egoschema ;;
    longvideobench) echo longvideobench_val_v ;;
    videomme) echo videomme ;;
    *) aot_eval_die "unknown benchmark '$1' (expected mvbench, egoschema, longvideobench, videomme)" ;;
  esac
}

# aot_eval_facts PY ARGS...: the shell assignments of `PY -m aot_eval.preflight facts ARGS` on
# stdout; on failure, exit 2 saying why (aot_eval_preflight). With --backbone B, what B's scripts
# run, under the stock lmms-eval class's own key names (declare them local first):
#   model_id         our lmms-eval model (the stock class plus the AOT keys)
#   default_model    the checkpoint people evaluate
#   frames_key       frames per video (default_frames: the stock default; LLaVA-Video: the paper's)
#   dtype_key        weights' dtype ("" = fixed by the stock class), default_dtype ("" = stock's)
#   pixels_key       pixels-per-frame budget ("" = none), default_pixels (the stock default)
#   fps_key          frame-rate sampling ("" = none: stock qwen2_5_vl stores fps= but ignores it)
#   conv_template    LLaVA-NeXT conversation template ("" = the checkpoint's chat template)
#   paper_preset     the released preset for --benchmark ("" = the paper did not evaluate B)
#   args_error       the preflight `args` error of the key=value pairs given ("" = valid)
aot_eval_facts() {
  local py=$1; shift
  "$py" -m aot_eval.preflight facts "$@" 2>/dev/null && return 0
  aot_eval_preflight "$py" facts "$@"
  aot_eval_die "python -m aot_eval.preflight facts $* failed"
}

# aot_eval_load_backbones: AOT_EVAL_BACKBONES (the eval protocols' names) and the tables behind
# aot_eval_script_prefix and aot_eval_table_retentions, from the records.
aot_eval_load_backbones() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local facts
  facts=$(export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
          aot_eval_facts "$(aot_eval_python "$root")") || exit 2
  eval "$facts"
}

# aot_eval_script_prefix BACKBONE: the eval scripts' name prefix (eval_<prefix>_<benchmark>.sh);
# status 1 for an unknown backbone.
aot_eval_script_prefix() {
  [ -n "${AOT_EVAL_BACKBONES+set}" ] || aot_eval_load_backbones
  [ -n "$1" ] && [ -n "${AOT_EVAL_PREFIXES[$1]+set}" ] || return 1
  echo "${AOT_EVAL_PREFIXES[$1]}"
}

# aot_eval_table_retentions BACKBONE: a table's retention rows (the paper's for ov and video).
aot_eval_table_retentions() {
  [ -n "${AOT_EVAL_BACKBONES+set}" ] || aot_eval_load_backbones
  [ -n "$1" ] && echo "${AOT_EVAL_TABLE_RETENTIONS[$1]:-}"
}

aot_eval_run() {
  local backbone=$1 benchmark=$2; shift 2
  local retention="" preset="" reducer=aot ablation="" exact=0 frames="" model="" nproc=1
  local launcher=torchrun output="" limit="" dtype="" attn=sdpa device="" extra="" task=""
  local include_path="" dry_run=0 max_pixels="" fps="" llm_stage=""
  local -a llm_stage_args=() reducer_opts=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --retention) [ $# -ge 2 ] || aot_eval_die "--retention needs a value"; retention=$2; shift 2 ;;
      --preset) [ $# -ge 2 ] || aot_eval_die "--preset needs a value"; preset=$2; shift 2 ;;
      --reducer) [ $# -ge 2 ] || aot_eval_die "--reducer needs a value"; reducer=$2; shift 2 ;;
      --ablation) [ $# -ge 2 ] || aot_eval_die "--ablation needs a value"; ablation=$2; shift 2 ;;
      --reducer-opt) [ $# -ge 2 ] || aot_eval_die "--reducer-opt needs a value"
        [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*=[^,=[:space:]]+$ ]] ||
          aot_eval_die "--reducer-opt '$2' must be KEY=VALUE (one knob; no commas or spaces)"
        reducer_opts+=("$2"); shift 2 ;;
      --exact) exact=1; shift ;;
      --llm-stage) [ $# -ge 2 ] || aot_eval_die "--llm-stage needs a value"; llm_stage=$2; shift 2 ;;
      --llm-stage-opt) [ $# -ge 2 ] || aot_eval_die "--llm-stage-opt needs a value"
        [[ "$2" =~ ^[a-z_]+=[^,]+$ ]] || aot_eval_die "--llm-stage-opt '$2' must be KEY=VALUE (e.g. layer=3)"
        llm_stage_args+=("llm_stage.$2"); shift 2 ;;
      --frames) [ $# -ge 2 ] || aot_eval_die "--frames needs a value"; frames=$2; shift 2 ;;
      --max-pixels) [ $# -ge 2 ] || aot_eval_die "--max-pixels needs a value"; max_pixels=$2; shift 2 ;;
      --fps) [ $# -ge 2 ] || aot_eval_die "--fps needs a value"; fps=$2; shift 2 ;;
      --model) [ $# -ge 2 ] || aot_eval_die "--model needs a value"; model=$2; shift 2 ;;
      --nproc) [ $# -ge 2 ] || aot_eval_die "--nproc needs a value"; nproc=$2; shift 2 ;;
      --launcher) [ $# -ge 2 ] || aot_eval_die "--launcher needs a value"; launcher=$2; shift 2 ;;
      --output) [ $# -ge 2 ] || aot_eval_die "--output needs a value"; output=$2; shift 2 ;;
      --limit) [ $# -ge 2 ] || aot_eval_die "--limit needs a value"; limit=$2; shift 2 ;;
      --dtype) [ $# -ge 2 ] || aot_eval_die "--dtype needs a value"; dtype=$2; shift 2 ;;
      --attn) [ $# -ge 2 ] || aot_eval_die "--attn needs a value"; attn=$2; shift 2 ;;
      --device) [ $# -ge 2 ] || aot_eval_die "--device needs a value"; device=$2; shift 2 ;;
      --model-args) [ $# -ge 2 ] || aot_eval_die "--model-args needs a value"; extra=$2; shift 2 ;;
      --task) [ $# -ge 2 ] || aot_eval_die "--task needs a value"; task=$2; shift 2 ;;
      --include-path) [ $# -ge 2 ] || aot_eval_die "--include-path needs a value"; include_path=$2; shift 2 ;;
      --dry-run) dry_run=1; shift ;;
      -h|--help) aot_eval_usage; exit 0 ;;
      *) aot_eval_die "unknown option '$1' (see --help)" ;;
    esac
  done

  local task_id; task_id=$(aot_eval_task_id "$benchmark")
  [ -n "$task" ] && task_id=$task

  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local py; py=$(aot_eval_python "$root")
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # aot_eval, aot, llava from this checkout
  # The backbone's facts and the check of the AOT arguments by the parser the model uses (one
  # rule everywhere), in one Python start; its error is reported below, after the shell checks.
  local -a check=(reducer="$reducer")
  [ -z "$retention" ] || check+=(retention="$retention")
  [ -z "$preset" ] || check+=(preset="$preset")
  [ -z "$ablation" ] || check+=(ablation="$ablation")
  local opt
  for opt in ${reducer_opts[@]+"${reducer_opts[@]}"}; do check+=("reducer.$opt"); done
  [ "$exact" = 0 ] || check+=(exact=true)
  [ -z "$llm_stage" ] || check+=(llm_stage="$llm_stage")
  check+=(${llm_stage_args[@]+"${llm_stage_args[@]}"})
  [ -z "$frames" ] || check+=(frames="$frames")  # approximate settings hold for this count
  [ "${AOT_EVAL_ARGS_CHECKED:-0}" = 0 ] || check=()
  local model_id default_model frames_key default_frames dtype_key default_dtype pixels_key
  local default_pixels fps_key conv_template paper_preset args_error facts
  # A sweep that checked the arguments once exported every protocol's facts (aot_eval_facts
  # without --backbone): read them instead of starting Python for each cell.
  local cached=AOT_EVAL_FACTS_${backbone}_${benchmark}
  if [ ${#check[@]} = 0 ] && [[ $cached =~ ^[A-Za-z0-9_]+$ ]] && [ -n "${!cached:-}" ]; then
    facts=${!cached}
  else
    facts=$(aot_eval_facts "$py" --backbone "$backbone" --benchmark "$benchmark" \
            ${check[@]+"${check[@]}"}) ||
      exit 2
  fi
  eval "$facts"
  model=${model:-$default_model}
  frames=${frames:-$default_frames}

  case "$launcher" in torchrun|accelerate) ;; *) aot_eval_die "unknown launcher '$launcher' (expected torchrun or accelerate)" ;; esac
  if [ -n "$dtype" ]; then
    case "$dtype" in float16|bfloat16|float32) ;; *) aot_eval_die "unknown dtype '$dtype' (expected float16, bfloat16, float32)" ;; esac
    [ -n "$dtype_key" ] || aot_eval_die "--dtype is not a setting of $backbone (stock lmms-eval $backbone always loads bfloat16)"
  fi
  dtype=${dtype:-$default_dtype}
  if [ -n "$max_pixels" ]; then
    [ -n "$pixels_key" ] || aot_eval_die "--max-pixels is not a setting of $backbone (its stock wrapper resizes frames to the vision tower's fixed size)"
    aot_eval_check_int --max-pixels "$max_pixels"
  fi
  max_pixels=${max_pixels:-$default_pixels}
  if [ -n "$fps" ]; then
    [ -n "$fps_key" ] || aot_eval_die "--fps is not a setting of $backbone (only qwen3_vl samples by frame rate; use --frames)"
    [[ "$fps" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] && [[ "$fps" =~ [1-9] ]] ||
      aot_eval_die "--fps '$fps' must be a positive number (frames per second)"
  fi
  aot_eval_check_int --frames "$frames"
  aot_eval_check_int --nproc "$nproc"
  [ -z "$limit" ] || aot_eval_check_int --limit "$limit"
  if [ "$reducer" != none ] && [ -z "$retention$preset" ]; then
    [ "$reducer" = aot ] || aot_eval_die "--reducer $reducer needs --retention"
    [ -n "$paper_preset" ] || aot_eval_die "give --retention R (e.g. 0.10) or --reducer none; the paper has no setting for $backbone"
    aot_eval_die "give --retention R (e.g. 0.10) or --preset NAME (the paper's setting for this benchmark: $paper_preset), or --reducer none"
  fi
  [ -z "$args_error" ] || aot_eval_die "$args_error"

  # model_args: the stock wrapper's protocol settings under its own names, then the reducer.
  local margs="pretrained=$model"
  [ -z "$conv_template" ] || margs+=",conv_template=$conv_template"
  margs+=",$frames_key=$frames"
  [ -z "$pixels_key" ] || margs+=",$pixels_key=$max_pixels"
  [ -z "$fps" ] || margs+=",$fps_key=$fps"
  [ -z "$dtype" ] || margs+=",$dtype_key=$dtype"
  margs+=",attn_implementation=$attn,reducer=$reducer"
  local tag
  if [ "$reducer" = none ]; then
    tag=full
  elif [ -n "$retention" ]; then
    margs+=",retention=$retention"; tag="${reducer}_r$retention"
    [ "$exact" = 0 ] || { margs+=",exact=true"; tag+="_exact"; }
  else
    margs+=",preset=$preset"; tag="${reducer}_$preset"
  fi
  [ -z "$ablation" ] || { margs+=",ablation=$ablation"; tag+="_$ablation"; }
  for opt in ${reducer_opts[@]+"${reducer_opts[@]}"}; do
    margs+=",reducer.$opt"; tag+="_${opt/=/-}"
  done
  if [ -n "$llm_stage" ]; then
    margs+=",llm_stage=$llm_stage"; tag+="_llm-$llm_stage"
    local knob
    for knob in ${llm_stage_args[@]+"${llm_stage_args[@]}"}; do
      margs+=",$knob"; tag+="_${knob#llm_stage.}"
    done
  fi
  [ -z "$extra" ] || { margs+=",$extra"; tag+="_custom"; }
  output=${output:-outputs/eval/$backbone/$benchmark/$tag}

  local -a eval_args=(--model "$model_id" --model_args "$margs" --tasks "$task_id" --batch_size 1
                      --log_samples --log_samples_suffix "$tag" --output_path "$output")
  [ -z "$limit" ] || eval_args+=(--limit "$limit")
  [ -z "$device" ] || eval_args+=(--device "$device")
  [ -z "$include_path" ] || eval_args+=(--include_path "$include_path")

  local -a cmd
  if [ "$nproc" = 1 ]; then
    cmd=("$py" -m aot_eval "${eval_args[@]}")
  elif [ "$launcher" = torchrun ]; then
    cmd=("$py" -m torch.distributed.run --nproc_per_node "$nproc" --master_addr 127.0.0.1
         --master_port "${MASTER_PORT:-29511}" -m aot_eval "${eval_args[@]}")
  else
    # 'python -m accelerate.commands.launch' = 'accelerate launch' (the CLI entry point needs timm)
    cmd=("$py" -m accelerate.commands.launch --num_processes "$nproc"
         --main_process_port "${MASTER_PORT:-29511}" -m aot_eval "${eval_args[@]}")
  fi

  echo "[eval] $backbone / $benchmark ($task_id): $tag, $frames frames, $nproc process(es)"
  echo "[eval] command: ${cmd[*]}"
  if [ "$dry_run" = 1 ]; then return 0; fi
  aot_eval_preflight "$py" launch --backbone "$backbone" --model "$model" --nproc "$nproc" \
    ${device:+--device "$device"}

  mkdir -p "$output"
  local stamp; stamp=$(mktemp); trap 'rm -f "$stamp"' RETURN
  "${cmd[@]}"
  aot_eval_report "$output" "$stamp" "$benchmark" "$py"
}

# aot_eval_report OUTPUT STAMPFILE BENCHMARK PYTHON: check files written after STAMPFILE, print paths.
aot_eval_report() {
  local output=$1 stamp=$2 benchmark=$3 py=${4:-python}
  local results retention submission
  results=$(find "$output" -name '*_results.json' -newer "$stamp" | sort | tail -n 1)
  retention=$(find "$output" -name '*_aot_retention.json' -newer "$stamp" | sort | tail -n 1)
  submission=$(find "$output" -path '*submissions*' -name '*.json' ! -name '*_aot_retention.json' -newer "$stamp" | sort | tail -n 1)
  if [ -z "$results" ] && [ -z "$submission" ]; then
    echo "[eval] ERROR: no results file under $output: the evaluation failed (see the log)" >&2
    exit 1
  fi
  [ -z "$results" ] || echo "[eval] results:   $results"
  if [ -n "$submission" ]; then
    echo "[eval] EgoSchema submission: $submission"
    [ -n "$results" ] || echo "[eval] EgoSchema was not scored (server unreachable?): POST the submission file, see docs/reproduce.md"
  fi
  if [ -z "$retention" ]; then
    echo "[eval] ERROR: no retention record (*_aot_retention.json) under $output" >&2
    exit 1
  fi
  echo "[eval] retention: $retention"
  "$py" -m aot_eval.summarise --brief "$retention"
}

# A per-benchmark script (eval_<prefix>_<benchmark>.sh) reads its one backbone's facts in
# aot_eval_run; any other script sourcing this file gets the list of backbones now.
case "$(basename -- "${BASH_SOURCE[1]:-}")" in
  eval_*_*.sh) ;;
  *) aot_eval_load_backbones ;;
esac
