"""Peak memory and time per frame of ``aot.reduce_video`` on long videos (CPU, float32).

    python scripts/bench_memory.py [--frames 32 128 512 1024] [--dim 3584] [--preset NAME]

Each frame count runs in a fresh subprocess, so its peak resident set (``ru_maxrss``) belongs to
that video alone: "peak / input" = (peak RSS - RSS before the input existed) / input bytes, so
1.00 would mean the reducer needed no memory beyond its input. Inputs are the synthetic video of
scripts/bench_reducer.py lifted to width ``--dim``. 1024 x 729 x 3584 float32 is 10.7 GB: skip
the counts that do not fit the machine (``--frames``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(frames: int, dim: int, preset: str) -> dict:
    import torch

    import aot

    sys.path.insert(0, str(HERE))
    from bench_reducer import make_inputs

    torch.manual_seed(0)
    before_input = rss_bytes()
    feats, shallow, deep = make_inputs(frames, dim, "cpu", torch.float32)
    with_input = rss_bytes()
    input_bytes = feats.numel() * feats.element_size()
    start = time.perf_counter()
    result = aot.reduce_video(feats, shallow, deep, aot.AOTConfig.preset(preset))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"frames": frames, "input_gb": input_bytes / 1e9, "peak_gb": peak / 1e9,
            "peak_over_input": (peak - before_input) / input_bytes,
            "rise_over_input": (peak - with_input) / input_bytes,
            "seconds": seconds, "ms_per_frame": seconds * 1000 / frames,
            "tokens": result.num_tokens, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 128, 512, 1024])
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--preset", default="paper-ov-mvbench")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dim, args.preset)))
        return
    import torch

    print(f"aot.reduce_video memory, {args.preset}, width {args.dim}, float32, CPU "
          f"({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}")
    print("peak / input = (peak RSS - RSS before the input existed) / input bytes; "
          "rise = (peak - RSS with the input) / input bytes")
    print("\n| frames | input GB | peak RSS GB | peak / input | rise / input | seconds "
          "| ms per frame | tokens | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for frames in args.frames:
        proc = subprocess.run([sys.executable, __file__, "--child", str(frames), "--dim",
                               str(args.dim), "--preset", args.preset],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
            print(f"| {frames} | failed: {tail} |||||||")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {frames} | {r['input_gb']:.2f} | {r['peak_gb']:.2f} | "
              f"{r['peak_over_input']:.2f} | {r['rise_over_input']:.2f} | {r['seconds']:.1f} | "
              f"{r['ms_per_frame']:.1f} | {r['tokens']} | {r['load']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
