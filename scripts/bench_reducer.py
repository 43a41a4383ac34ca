"""Milliseconds per video for AOT's reducer at the two real shapes (features after the projector).

    python scripts/bench_reducer.py [--device cpu|cuda] [--repeats 5] [--dtype float32]

Shapes: LLaVA-OV 32 frames x 729 x 3584 (paper-ov-mvbench: 126 anchors, temporal phase on) and
LLaVA-Video 64 frames x 729 x 3584 (paper-video: 180 anchors, average pooling, temporal off).
Inputs are a synthetic video lifted to width 3584 (random features, smooth attention maps);
timing does not depend on the values except through the Sinkhorn iteration count, printed too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import aot
from aot.synthetic import synthetic_video

SHAPES = (("ov", 32, "paper-ov-mvbench"), ("video", 64, "paper-video"))


def make_inputs(frames: int, dim: int, device: str, dtype: torch.dtype):
    feats, shallow, deep = synthetic_video(frames, dim=64, seed=0)
    lift = torch.randn(64, dim, generator=torch.Generator().manual_seed(1)) / 8
    return ((feats @ lift).to(device=device, dtype=dtype), shallow.to(device), deep.to(device))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - start) * 1000


def bench(backbone: str, frames: int, preset: str, args) -> dict:
    dtype = getattr(torch, args.dtype)
    feats, shallow, deep = make_inputs(frames, args.dim, args.device, dtype)
    cfg = aot.AOTConfig.preset(preset)
    intra_ms, inter_ms, total_ms = [], [], []
    for i in range(args.warmup + args.repeats):
        intra, t_intra = timed(lambda: aot.intra_stage(feats, shallow, deep, cfg), args.device)
        result, t_inter = timed(lambda: aot.inter_stage(intra, cfg), args.device)
        if i >= args.warmup:
            intra_ms.append(t_intra)
            inter_ms.append(t_inter)
            total_ms.append(t_intra + t_inter)
        print(f"  [{backbone}] run {i + 1}/{args.warmup + args.repeats}"
              f"{' (warm-up)' if i < args.warmup else ''}: {t_intra + t_inter:.1f} ms", flush=True)
    _, full_ms = timed(lambda: aot.reduce_video(feats, shallow, deep, cfg), args.device)
    return {"backbone": backbone, "shape": f"{frames}x729x{args.dim}", "preset": preset,
            "tokens": result.num_tokens, "retention": result.retention,
            "intra_ms": statistics.median(intra_ms), "inter_ms": statistics.median(inter_ms),
            "total_ms": statistics.median(total_ms), "min_ms": min(total_ms),
            "max_ms": max(total_ms), "reduce_video_ms": full_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--dim", type=int, default=3584, help="feature width (LLM hidden size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"AOT reducer benchmark on {name}, torch {torch.__version__}, {args.dtype}")
    rows = [bench(backbone, frames, preset, args) for backbone, frames, preset in SHAPES]
    print("\n| shape | preset | tokens out | retention | intra ms | inter ms | total ms (median) | min-max |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['preset']} | {r['tokens']} | {r['retention']:.3f} | "
              f"{r['intra_ms']:.1f} | {r['inter_ms']:.1f} | {r['total_ms']:.1f} | "
              f"{r['min_ms']:.1f}-{r['max_ms']:.1f} |")


if __name__ == "__main__":
    main()
