"""Efficiency benchmark: what AOT saves at each frame count and retention, in one run.

    python -m aot_bench.efficiency --out outputs/efficiency            # GPU: 7B shapes, bf16
    python -m aot_bench.efficiency --preset cpu --out outputs/eff_cpu  # CPU: reduced widths
    python -m aot_bench.efficiency --checkpoint lmms-lab/llava-onevision-qwen2-7b-ov ...
    python -m aot_bench.efficiency --backbones NAME --frames 32 64 \
        --retentions full 0.25 0.10                   # NAME: a backbone on Qwen2.5-VL-7B shapes

``--backbones`` takes the registered backbones (:mod:`aot.backbones`) that have ``bench_shapes``.
For every backbone x frame count x retention (``full`` = the unreduced model) it runs warm-up
passes, then ``--repeats`` timed passes of video + prompt -> first token (+ decode), and records
per-stage medians and spreads, peak memory, token counts, prefill FLOPs (analytic and counted
with ``torch.utils.flop_counter`` on eager attention) and ratios against the full model of the
same run. The ``llava`` backbones share one random-weight model of this project's ``llava/``
(or ``--checkpoint``); a backbone whose ``bench_shapes`` is ``qwen_vit`` is transformers' own
``Qwen2_5_VLForConditionalGeneration`` at the preset's Qwen2.5-VL shapes, reduced by
:func:`aot_integrations.hf.apply` (exact budget) on frames of ``--qwen-frame-size`` (``S`` or
``HxW`` px). Outputs: ``efficiency.json``, ``efficiency.md``, ``latency_breakdown.png``,
``ttft_vs_frames.png`` in ``--out``.

``--llm-stage NAME`` (``fastv``, ``flashvid``, ``holitom``; :mod:`aot.llm_stages`) with
``--llm-stage-opt KEY=VALUE`` knobs adds, after every grid point, the same point with that stage
installed on the language model (:func:`aot_integrations.llm_stage.install`): layers before K
see all tokens, layers K.. the kept ones. Its row has ``llm_stage`` (the stage's fields), the
kept count measured and expected (:func:`aot.llm_stages.kept_count`), analytic prefill FLOPs
from :func:`aot_bench.flops.llm_stage_prefill_flops`, and ratios against the stage-free full row.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time

import torch

import aot
from aot.llm_stages import kept_count

from .configs import BACKBONES, Shape, get_shape, hf_bench_backbones
from .flops import (
    counted_prefill_flops,
    llm_prefill_flops,
    llm_stage_prefill_flops,
    paper_prefill_flops,
    qwen_vision_flops,
    vision_flops,
)
from .models import (
    load_checkpoint,
    random_model,
    random_qwen_model,
    resolve_device,
    resolve_dtype,
    set_backbone,
)
from .pipeline import (
    STAGES,
    make_input_ids,
    VIDEO_DELIMITER_TOKENS,
    make_qwen_inputs,
    qwen_grid,
    qwen_ttft_pass,
    ttft_pass,
)
from .timing import summarise

DEFAULT_FRAMES = (16, 32, 64, 128)
DEFAULT_RETENTIONS = ("full", "0.25", "0.20", "0.15", "0.10")


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help`` lists them)."""
    parser = argparse.ArgumentParser(prog="python -m aot_bench.efficiency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES),
                        choices=sorted(BACKBONES) + list(hf_bench_backbones()))
    parser.add_argument("--qwen-frame-size", default="448",
                        help="frames of the backbones on Qwen2.5-VL shapes (bench_shapes "
                             "qwen_vit): S (square) or HxW px, multiples of 28 (448 -> "
                             "16x16 tokens per two frames; 560x1008 = the stock video "
                             "processor's size for a 16:9 video)")
    parser.add_argument("--frames", nargs="+", type=int, default=list(DEFAULT_FRAMES))
    parser.add_argument("--retentions", nargs="+", default=list(DEFAULT_RETENTIONS),
                        help="'full' and/or fractions in (0, 1]")
    parser.add_argument("--preset", default="auto", choices=["auto", "7b", "cpu", "tiny"],
                        help="model shapes with random weights (auto: 7b on CUDA, cpu on CPU)")
    parser.add_argument("--checkpoint", default=None,
                        help="a real lmms-lab checkpoint folder / cached hub id instead of "
                             "random weights (its backbone is read from its config)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"],
                        help="LLM attention kernel for the timed runs")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--text-tokens", type=int, default=64,
                        help="prompt tokens around the video placeholder")
    parser.add_argument("--vision-chunk", type=int, default=8, help="frames per tower call")
    parser.add_argument("--no-count-flops", action="store_true",
                        help="skip FlopCounterMode (meta device; normally takes seconds)")
    parser.add_argument("--max-context", type=int, default=None,
                        help="LLM context in tokens (default: the model's, 32768 for 7B); "
                             "longer sequences are reported as over_context, not run")
    parser.add_argument("--llm-stage", default=None, metavar="NAME",
                        help="also run every point with this LLM stage installed (fastv, "
                             "flashvid, holitom; docs/reducers/llm-stages.md)")
    parser.add_argument("--llm-stage-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a knob of --llm-stage (layer, retention, budget, count_rule, "
                             "merge, newline_is_text, final_retention); repeatable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/efficiency")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    args.retentions = [parse_retention(r) for r in args.retentions]
    args.llm_stage = parse_stage(args.llm_stage, args.llm_stage_opt)
    for frames in args.frames:
        if frames < 1:
            parser.error(f"--frames {frames}: expected positive frame counts")
    if args.max_context is not None and args.max_context < 1:
        parser.error(f"--max-context {args.max_context}: expected a positive token count")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    try:
        args.qwen_frame_size = parse_frame_size(args.qwen_frame_size)
    except ValueError as error:
        parser.error(str(error))
    hf = hf_backbones(args.backbones)
    if args.checkpoint and hf:
        parser.error(f"--checkpoint loads lmms-lab llava/ checkpoints; {' and '.join(hf)} "
                     f"{'runs' if len(hf) == 1 else 'run'} with random weights at the preset's "
                     "shapes")
    return args


def parse_stage(name: str | None, options: list[str]):
    """``--llm-stage`` and its ``--llm-stage-opt KEY=VALUE`` knobs -> an
    :class:`aot.llm_stages.LLMStageConfig` (None without a stage), parsed by
    :func:`aot.llm_stages.stage_from_text` as the eval scripts' knobs are, so both take the same
    names and values; a bad one exits with one line naming it."""
    from aot.llm_stages import stage_from_text

    knobs = {}
    for option in options:
        key, equals, value = option.partition("=")
        if not equals or not key.strip():
            raise SystemExit(f"--llm-stage-opt {option!r}: must be KEY=VALUE (e.g. layer=2)")
        knobs[key.strip()] = value.strip()
    try:
        return stage_from_text(name, knobs, stage_key="--llm-stage")
    except (ValueError, TypeError) as error:
        raise SystemExit(f"--llm-stage: {error}") from None


def stage_label(stage) -> str:
    """``fastv(K=2, r=0.5)``: the stage as the eval summaries show it."""
    from aot.llm_stages import describe_stage

    return describe_stage(stage)


def stage_candidates(model, stage, visual: int, newlines: int) -> int:
    """Columns of one video that compete in ``stage``: its visual and newline tokens, less
    the single trailing newline of ``one_token`` packing when the stage keeps it as text
    (what :func:`aot_integrations.llm_stage.install` reads from the kinds of the sequence)."""
    if not (stage.newline_is_text and newlines):
        return visual + newlines
    if hasattr(model, "item_kinds"):
        kinds = model.item_kinds(visual + newlines, "video")
        return int((kinds == 1).sum())
    return visual + newlines


def stage_fields(stage, shape: Shape, reference: Shape | None, seq_len: int,
                 candidates: int, unreduced: int) -> dict:
    """The row fields of ``stage`` on one sequence: its knobs, the kept count
    (:func:`aot.llm_stages.kept_count`), the length layers K.. see, and prefill FLOPs with the
    stage (:func:`llm_stage_prefill_flops`) in place of the stage-free ones; FLOPs counted by
    FlopCounterMode and the paper's convention are of the stage-free model, so left out."""
    kept = kept_count(candidates, stage, unreduced)
    after = seq_len - candidates + kept
    fields = {"llm_stage": dataclasses.asdict(stage), "llm_stage_label": stage_label(stage),
              "llm_stage_candidates": candidates, "llm_stage_kept_expected": kept,
              "seq_len_after_stage": after,
              "prefill_flops_analytic": llm_stage_prefill_flops(shape, seq_len, stage.layer,
                                                                after),
              "prefill_flops_counted": None}
    if reference is not None:
        fields.update(prefill_flops_7b_analytic=llm_stage_prefill_flops(
            reference, seq_len, stage.layer, after), prefill_flops_7b_counted=None,
            prefill_flops_7b_paper_convention=None)
    else:
        fields["prefill_flops_paper_convention"] = None
    return fields


def check_stage_layer(stage, shapes: dict) -> None:
    """Exit with one line when ``stage``'s layer K is outside 1..layers-1 of a benchmarked
    language model, before any row runs (install would refuse it mid-run)."""
    for backbone, shape in shapes.items():
        if not 1 <= stage.layer < shape.lm_layers:
            raise SystemExit(f"--llm-stage-opt layer={stage.layer}: out of range for {backbone}'s "
                             f"language model of {shape.lm_layers} layers (preset "
                             f"{shape.name!r}; expected 1..{shape.lm_layers - 1})")


def hf_backbones(names) -> list[str]:
    """The backbones of ``names`` benchmarked through transformers' class (their record's
    ``bench_shapes`` is ``qwen_vit``), each once, in the order given."""
    hf = hf_bench_backbones()
    return [name for name in dict.fromkeys(names) if name in hf]


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"448"`` -> (448, 448); ``"560x1008"`` -> (560, 1008); each side a positive multiple of
    28 px (14-px patches merged 2x2), else a ValueError naming the value."""
    parts = str(text).lower().split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or any(side < 28 or side % 28 for side in sides):
        raise ValueError(f"--qwen-frame-size {text!r}: expected S or HxW in px, each a positive "
                         "multiple of 28 (14-px patches merged 2x2)")
    return sides[0], sides[1]


def parse_retention(text: str) -> float | None:
    """``full`` -> None (no reduction); otherwise a fraction in (0, 1]."""
    if str(text).lower() in ("full", "none", "1", "1.0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"--retentions: {text!r} is neither 'full' nor a number") from None
    return aot.config.check_retention(value, "--retentions value")


def log(message: str) -> None:
    """Progress line on stderr with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def aot_config(retention: float | None, backbone: str, frames: int, shape: Shape):
    """The AOT config for ``retention`` (exact token count), with the tower's AOT layers."""
    if retention is None:
        return None
    return aot.settings_for(backbone, retention, exact=True, frames=frames,
                            layers=(shape.shallow_layer, shape.deep_layer))


def qwen_aot_config(model, retention: float | None, grid: tuple[int, int, int], shape: Shape):
    """:func:`aot_integrations.hf.config_for` at ``retention`` (exact) for the merged grid of ``grid``, with
    the preset's AOT layers (None: the stock model)."""
    from aot_integrations.hf import config_for

    if retention is None:
        return None
    merged = (grid[1] // shape.merge_size, grid[2] // shape.merge_size)
    return config_for(model, retention, grid=merged, shallow_layer=shape.shallow_layer,
                             deep_layer=shape.deep_layer)


def expected_visual_tokens(backbone: str, frames: int, retention: float | None,
                           grid: tuple[int, int, int] | None = None) -> tuple[int, int]:
    """(visual tokens without newlines, newline tokens) that the model will produce; for a
    backbone of :func:`hf_backbones` ``grid`` is the video's (t, h, w) patch grid."""
    if hf_backbones([backbone]):
        from aot_integrations.hf import reduced_token_count

        full = grid[0] * grid[1] * grid[2] // 4
        tokens = full if retention is None else reduced_token_count(backbone, grid, retention)
        return tokens, 0
    facts = BACKBONES[backbone]
    denominator = frames * facts.pooled_per_frame()
    tokens = denominator if retention is None else aot.exact_budget(retention, frames,
                                                                    facts.pooled_per_frame())
    return tokens, facts.newlines(frames)


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA OOM and CPU allocation failures."""
    text = str(error).lower()
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text or \
        "can't allocate memory" in text


def measure_point(model, pixels, input_ids, args, device, one_pass=None) -> dict:
    """Warm-up + repeats of one configuration; per-stage statistics (seconds). ``one_pass``:
    ``qwen_ttft_pass`` for transformers' Qwen2.5-VL class (``pixels`` = the processor-shaped
    inputs), else the llava ``ttft_pass``."""
    if one_pass is None:
        def one_pass(model, pixels, decode_tokens):
            return ttft_pass(model, pixels, input_ids, decode_tokens=decode_tokens)
    for _ in range(args.warmup):
        one_pass(model, pixels, decode_tokens=min(args.decode_tokens, 2))
    passes = [one_pass(model, pixels, decode_tokens=args.decode_tokens)
              for _ in range(args.repeats)]
    first = passes[0]
    stats = {stage: summarise([p.stages.get(stage, 0.0) for p in passes]) for stage in STAGES}
    stats["ttft"] = summarise([p.ttft for p in passes])
    row = {"status": "ok", "visual_tokens": first.visual_tokens,
           "newline_tokens": first.newline_tokens, "seq_len": first.seq_len,
           "seconds": stats, "peak_memory_bytes": max(p.peak_bytes for p in passes),
           "peak_memory_rise_bytes": max(p.peak_rise_bytes for p in passes),
           "memory_kind": first.extra["memory_kind"]}
    if args.decode_tokens > 0:
        rates = [p.decode_tokens / p.decode_seconds for p in passes if p.decode_seconds > 0]
        row["decode_tokens_per_s"] = summarise(rates) if rates else None
    return row


def vision_cost(shape: Shape, backbone: str, frames: int, grid=None) -> int:
    """Analytic FLOPs of the vision encoder (+ projector / merger) for one video."""
    if hf_backbones([backbone]):
        return qwen_vision_flops(shape, grid)
    return vision_flops(shape, frames)


def flops_fields(shape: Shape, reference: Shape | None, frames: int, visual: int,
                 seq_len: int, count: bool, backbone: str | None = None, grid=None) -> dict:
    """Prefill FLOPs (analytic, counted) for the benchmarked shapes and, when those are reduced,
    for the 7B shapes at the same sequence length; the paper's convention for 7B."""
    fields = {"prefill_flops_analytic": llm_prefill_flops(shape, seq_len),
              "vision_flops_analytic": vision_cost(shape, backbone, frames, grid)}
    if count:
        fields["prefill_flops_counted"] = counted_prefill_flops(shape, seq_len)
    if reference is not None:
        fields["prefill_flops_7b_analytic"] = llm_prefill_flops(reference, seq_len)
        fields["vision_flops_7b_analytic"] = vision_cost(reference, backbone, frames, grid)
        if count:
            fields["prefill_flops_7b_counted"] = counted_prefill_flops(reference, seq_len)
        fields["prefill_flops_7b_paper_convention"] = paper_prefill_flops(reference, visual)
    else:
        fields["prefill_flops_paper_convention"] = paper_prefill_flops(shape, visual)
    return fields


def add_ratios(rows: list[dict]) -> None:
    """Ratios of every row against the full row of the same backbone and frames: unreduced
    and without an LLM stage, so a stage row's ratios are what vision reducer + stage save."""
    full = {(r["backbone"], r["frames"]): r for r in rows
            if r["retention"] is None and not r.get("llm_stage") and r["status"] == "ok"}
    for row in rows:
        base = full.get((row["backbone"], row["frames"]))
        if row["status"] != "ok" or base is None:
            row["ratios"] = None
            continue
        s, b = row["seconds"], base["seconds"]
        ratios = {"ttft_speedup": b["ttft"]["median"] / s["ttft"]["median"],
                  "prefill_speedup": b["prefill"]["median"] / s["prefill"]["median"],
                  "tokens": row["visual_tokens"] / base["visual_tokens"],
                  "sequence_after_stage": (row.get("seq_len_after_stage", row["seq_len"])
                                           / base["seq_len"]),
                  "prefill_flops": row["prefill_flops_analytic"] / base["prefill_flops_analytic"],
                  "vision_capture_overhead": s["vision"]["median"] / b["vision"]["median"],
                  "reducer_share_of_ttft": s["reduce"]["median"] / s["ttft"]["median"],
                  "peak_memory": row["peak_memory_bytes"] / base["peak_memory_bytes"]}
        if "prefill_flops_7b_analytic" in row:
            ratios["prefill_flops_7b"] = (row["prefill_flops_7b_analytic"]
                                          / base["prefill_flops_7b_analytic"])
        if row.get("decode_tokens_per_s") and base.get("decode_tokens_per_s"):
            ratios["decode_speedup"] = (row["decode_tokens_per_s"]["median"]
                                        / base["decode_tokens_per_s"]["median"])
        row["ratios"] = ratios


def environment(args, device, dtype, shape: Shape, source: str) -> dict:
    """What the numbers were measured on (device, versions, shapes, settings)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, " \
               f"{torch.get_num_threads()} threads)"
    import transformers

    return {"device": name, "device_type": device.type, "dtype": str(dtype).replace("torch.", ""),
            "attn": args.attn, "model_source": source, "preset": shape.name,
            "shape": shape.to_dict(), "shape_description": shape.describe(),
            "reduced_widths": shape.name != "7b" and source == "random",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "warmup": args.warmup,
            "repeats": args.repeats, "decode_tokens": args.decode_tokens,
            "text_tokens": args.text_tokens, "vision_chunk": args.vision_chunk,
            "frames": args.frames, "backbones": args.backbones,
            "qwen_frame_size": list(args.qwen_frame_size),
            "retentions": ["full" if r is None else r for r in args.retentions],
            "llm_stage": (None if args.llm_stage is None
                          else dataclasses.asdict(args.llm_stage)),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m aot_bench.efficiency " + " ".join(sys.argv[1:])}


def build(args, device, dtype):
    """(model, shape, backbones, source) of the llava backbones of the options (random weights
    or checkpoint); None when only transformers backbones are benchmarked."""
    llava = [b for b in args.backbones if b in BACKBONES]
    if not llava:
        return None
    if args.checkpoint:
        log(f"loading checkpoint {args.checkpoint} on {device} ({dtype})")
        model, shape, backbone = load_checkpoint(args.checkpoint, device, dtype, args.attn)
        if args.max_context:
            shape = dataclasses.replace(shape, max_context=args.max_context)
        if llava != [backbone]:
            log(f"checkpoint is a {backbone!r} model; benchmarking backbone {backbone!r} only")
        return model, shape, [backbone], "checkpoint"
    shape = get_shape(preset_name(args, device), llava[0])
    if args.max_context:
        shape = dataclasses.replace(shape, max_context=args.max_context)
    log(f"building random-weight model, preset {shape.name!r}: {shape.describe()}")
    model = random_model(shape, llava[0], device, dtype, args.attn, args.seed)
    return model, shape, llava, "random"


def preset_name(args, device) -> str:
    """``--preset``, with ``auto`` = 7b on CUDA, cpu elsewhere."""
    return args.preset if args.preset != "auto" else ("7b" if device.type == "cuda" else "cpu")


def build_qwen(args, device, dtype, backbone: str):
    """(model, shape) of transformers' Qwen2.5-VL at ``backbone``'s shapes of the preset, random
    weights."""
    shape = get_shape(preset_name(args, device), backbone)
    if args.max_context:
        shape = dataclasses.replace(shape, max_context=args.max_context)
    log(f"building random-weight Qwen2.5-VL, preset {shape.name!r}: {shape.describe()}")
    return random_qwen_model(shape, device, dtype, args.attn, args.seed), shape


def run(args) -> dict:
    """The whole benchmark; returns the report dict (also written by :func:`main`)."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(args.seed)
    built = build(args, device, dtype)
    grid: list[tuple] = []
    shapes: dict[str, Shape] = {}
    env_shape, source = None, "random"
    # each point stage-free, then (with --llm-stage) the same point with the stage installed
    stages = [None] if args.llm_stage is None else [None, args.llm_stage]
    if built is not None:
        model, shape, llava, source = built
        model.vision_chunk_size = args.vision_chunk
        reference = (get_shape("7b", llava[0]) if shape.name != "7b" and source == "random"
                     else None)
        input_ids = make_input_ids(args.text_tokens, shape.vocab, device, args.seed)
        env_shape = shape
        for backbone in llava:
            shapes[backbone] = shape
            grid += [(backbone, f, r, model, shape, reference, input_ids, stage)
                     for f in args.frames for r in args.retentions for stage in stages]
    for backbone in hf_backbones(args.backbones):
        qwen, shape = build_qwen(args, device, dtype, backbone)
        reference = get_shape("7b", backbone) if shape.name != "7b" else None
        shapes[backbone] = shape
        env_shape = env_shape or shape
        grid += [(backbone, f, r, qwen, shape, reference, None, stage)
                 for f in args.frames for r in args.retentions for stage in stages]
    backbones = [b for b in args.backbones if b in shapes]
    if args.llm_stage is not None:
        check_stage_layer(args.llm_stage, shapes)
    rows: list[dict] = []
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    for index, (backbone, frames, retention, model, shape, reference, input_ids, stage) in \
            enumerate(grid, 1):
        if hf_backbones([backbone]):
            row = run_qwen_point(model, shape, reference, frames, retention, args, device, dtype,
                                 backbone, stage)
        else:
            if source == "random":
                set_backbone(model, backbone)
            row = run_point(model, shape, reference, backbone, frames, retention, input_ids,
                            args, device, dtype, stage)
        rows.append(row)
        log(f"[{index}/{len(grid)}] {progress_line(row)}")
    add_ratios(rows)
    elapsed = time.perf_counter() - started
    log(f"done in {elapsed:.1f} s")
    env = environment(args, device, dtype, env_shape, source)
    env["backbones"] = backbones
    env["shapes"] = {b: s.to_dict() for b, s in shapes.items()}
    env["shape_descriptions"] = {b: s.describe() for b, s in shapes.items()}
    env["load_average_at_start"] = load_at_start
    env["benchmark_seconds"] = round(elapsed, 1)
    return {"environment": env, "rows": rows}


def record_oom(row: dict, error: BaseException, device: torch.device) -> None:
    """Mark ``row`` as out of memory (and free the CUDA cache); any other error is re-raised."""
    if not is_out_of_memory(error) and not isinstance(error, MemoryError):
        raise error
    row["status"] = "oom"
    row["error"] = str(error).splitlines()[0][:200]
    if device.type == "cuda":
        torch.cuda.empty_cache()


def install_stage(model, stage):
    """:func:`aot_integrations.llm_stage.install` of ``stage`` (None: nothing, returns None)."""
    if stage is None:
        return None
    from aot_integrations import llm_stage

    return llm_stage.install(model, stage)


def check_stage_row(row: dict, handle, label: str) -> None:
    """Record what the installed stage did in the last prefill (candidates, kept, the length
    layers K.. saw) and fail loudly when it is not what the row's analytic FLOPs assumed."""
    record = handle.last
    if record is None:
        raise RuntimeError(f"{label}: the LLM stage {row['llm_stage_label']} did not run in "
                           "the prefill (it found no visual tokens)")
    row["llm_stage_kept"] = record.kept[0]
    measured = (record.candidates[0], record.kept[0], int(record.keep[0].sum()))
    expected = (row["llm_stage_candidates"], row["llm_stage_kept_expected"],
                row["seq_len_after_stage"])
    if measured != expected:
        raise RuntimeError(f"{label}: the LLM stage saw (candidates, kept, sequence after it) "
                           f"= {measured}, expected {expected}")


def run_qwen_point(model, shape, reference, frames, retention, args, device, dtype,
                   backbone: str, stage=None) -> dict:
    """One row of a backbone on Qwen2.5-VL shapes: processor-shaped inputs for ``frames``
    frames, the stock model (``retention`` None) or :func:`aot_integrations.hf.apply` at the
    exact budget, with ``stage`` installed on the language model when given; OOM recorded."""
    from aot_integrations.hf import apply

    grid = qwen_grid(shape, frames, args.qwen_frame_size)
    visual, _ = expected_visual_tokens(backbone, frames, retention, grid)
    seq_len = visual + VIDEO_DELIMITER_TOKENS + args.text_tokens
    row = {"backbone": backbone, "frames": frames, "retention": retention,
           "visual_tokens": visual, "newline_tokens": 0, "seq_len": seq_len,
           "video_grid_thw": list(grid)}
    row.update(flops_fields(shape, reference, frames, visual, seq_len,
                            not args.no_count_flops and stage is None, backbone, grid))
    if stage is not None:
        # Qwen2.5-VL packs no newline tokens: every video token competes; unreduced = the grid
        row.update(stage_fields(stage, shape, reference, seq_len, visual,
                                grid[0] * grid[1] * grid[2] // shape.merge_size ** 2))
    if seq_len > shape.max_context:
        row["status"] = "over_context"
        return row
    inputs = make_qwen_inputs(shape, frames, args.qwen_frame_size, args.text_tokens, device,
                              dtype, args.seed + frames)
    config = qwen_aot_config(model, retention, grid, shape)
    handle = None if config is None else apply(model, config)
    staged = install_stage(model, stage)
    try:
        row.update(measure_point(model, inputs, None, args, device, qwen_ttft_pass))
        if staged is not None and row["status"] == "ok":
            check_stage_row(row, staged, f"{backbone} F={frames} r={retention}")
    except (RuntimeError, MemoryError) as error:
        record_oom(row, error, device)
    finally:
        if staged is not None:
            staged.remove()
        if handle is not None:
            handle.remove()
    if row["status"] == "ok" and (row["seq_len"], row["visual_tokens"]) != (seq_len, visual):
        raise RuntimeError(f"{backbone} F={frames} r={retention}: the LLM read "
                           f"{row['seq_len']} tokens ({row['visual_tokens']} video), expected "
                           f"{seq_len} ({visual})")
    return row


def run_point(model, shape, reference, backbone, frames, retention, input_ids, args, device,
              dtype, stage=None) -> dict:
    """One (backbone, frames, retention[, LLM stage]) row: skipped past the context, OOM
    recorded."""
    visual, newlines = expected_visual_tokens(backbone, frames, retention)
    seq_len = visual + newlines + args.text_tokens
    row = {"backbone": backbone, "frames": frames, "retention": retention,
           "visual_tokens": visual, "newline_tokens": newlines, "seq_len": seq_len}
    row.update(flops_fields(shape, reference, frames, visual, seq_len,
                            not args.no_count_flops and stage is None))
    if stage is not None:
        row.update(stage_fields(stage, shape, reference, seq_len,
                                stage_candidates(model, stage, visual, newlines),
                                frames * BACKBONES[backbone].pooled_per_frame()))
    if seq_len > shape.max_context:
        row["status"] = "over_context"
        return row
    config = aot_config(retention, backbone, frames, shape)
    staged = None
    try:
        model.set_aot(config)
        staged = install_stage(model, stage)
        generator = torch.Generator().manual_seed(args.seed + frames)
        pixels = (torch.rand(frames, 3, 384, 384, generator=generator) * 2 - 1).to(device, dtype)
        row.update(measure_point(model, pixels, input_ids, args, device))
        if staged is not None and row["status"] == "ok":
            check_stage_row(row, staged, f"{backbone} F={frames} r={retention}")
    except (RuntimeError, MemoryError) as error:
        record_oom(row, error, device)
    finally:
        if staged is not None:
            staged.remove()
        model.set_aot(None)
    if row["status"] == "ok" and row["seq_len"] != seq_len:
        raise RuntimeError(f"{backbone} F={frames} r={retention}: sequence of {row['seq_len']} "
                           f"tokens, expected {seq_len}")
    return row


def progress_line(row: dict) -> str:
    """A one-line summary of a finished row."""
    label = "full" if row["retention"] is None else f"{row['retention']:.2f}"
    if row.get("llm_stage"):
        label += f" + {row['llm_stage_label']}, {row['llm_stage_kept_expected']} of " \
                 f"{row['llm_stage_candidates']} kept from layer {row['llm_stage']['layer']}"
    head = f"{row['backbone']} F={row['frames']} r={label}: {row['visual_tokens']} visual tokens"
    if row["status"] != "ok":
        return f"{head}, {row['status']}"
    s = {k: v["median"] * 1e3 for k, v in row["seconds"].items()}
    return (f"{head}, TTFT {s['ttft']:.1f} ms (vision {s['vision']:.1f}, reduce "
            f"{s['reduce']:.1f}, prefill {s['prefill']:.1f}), spread "
            f"{row['seconds']['ttft']['spread'] * 100:.0f}%, prefill "
            f"{row['prefill_flops_analytic'] / 1e9:.3g} GFLOPs")


def main(argv=None) -> int:
    """Run, then write JSON, markdown and plots into ``--out``."""
    from .report import write_reports

    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    report = run(args)
    paths = write_reports(report, args.out, plots=not args.no_plots)
    for path in paths:
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
