"""Peak memory and time per frame of one ``aot.reduce_video`` call on long videos (CPU, float32).

    python scripts/bench_memory.py [--frames 32 128 512 1024] [--dim 3584] [--preset NAME]
                                   [--fixed-mmap-threshold]

Each frame count runs in a fresh subprocess that builds the input, warms the library up with a
4-frame call (thread pools, cached grids), then resets the peak resident set
(``/proc/self/clear_refs`` <- 5) and reads ``VmHWM`` after the call, so the peak belongs to the
call alone:

* "peak / input" = (input bytes + VmHWM - VmRSS just before the call) / input bytes: the input
  counted once plus everything the call added; 1.00 would mean no memory beyond the input.
* "working / input" = the part the call added (peak / input - 1).
* "process / input" = (VmHWM - VmRSS before the input existed) / input bytes: also counts what
  building the input and the warm-up left in the process (glibc keeps freed heap memory).

glibc's malloc raises its mmap threshold after large frees and then keeps freed blocks resident,
so resident memory exceeds the live tensors by a few percent of the input;
``--fixed-mmap-threshold`` runs the children with ``MALLOC_MMAP_THRESHOLD_=1048576`` (big blocks
always returned to the system), which shows the live set. Inputs are the synthetic video of
scripts/bench_reducer.py lifted to width ``--dim``. 1024 x 729 x 3584 float32 is 10.7 GB: skip
the counts that do not fit the machine (``--frames``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    """Start VmHWM again from the current resident set (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def child(frames: int, dim: int, preset: str) -> dict:
    import torch

    import aot

    sys.path.insert(0, str(HERE))
    from bench_reducer import make_inputs

    config = aot.AOTConfig.preset(preset)
    before_input = status_bytes("VmRSS")
    feats, shallow, deep = make_inputs(frames, dim, "cpu", torch.float32)
    input_bytes = feats.numel() * feats.element_size()
    warm = make_inputs(4, dim, "cpu", torch.float32)
    aot.reduce_video(*warm, config)
    del warm
    before_call = status_bytes("VmRSS")
    reset_peak()
    load_start = os.getloadavg()[0]
    start, start_cpu = time.perf_counter(), time.process_time()
    result = aot.reduce_video(feats, shallow, deep, config)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak = status_bytes("VmHWM")
    return {"frames": frames, "input_gb": input_bytes / 1e9,
            "peak_over_input": (input_bytes + peak - before_call) / input_bytes,
            "working_over_input": (peak - before_call) / input_bytes,
            "process_over_input": (peak - before_input) / input_bytes,
            "seconds": seconds, "ms_per_frame": seconds * 1000 / frames,
            "cpu_ms_per_frame": cpu_seconds * 1000 / frames, "tokens": result.num_tokens,
            "load": f"{load_start:.1f} -> {os.getloadavg()[0]:.1f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 128, 512, 1024])
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--preset", default="paper-ov-mvbench")
    parser.add_argument("--fixed-mmap-threshold", action="store_true",
                        help="run the children with MALLOC_MMAP_THRESHOLD_=1048576 (glibc)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dim, args.preset)))
        return
    if not os.access("/proc/self/clear_refs", os.W_OK):
        parser.error("needs Linux: the peak of one call is read with /proc/self/clear_refs")
    import torch

    env = dict(os.environ)
    if args.fixed_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    print(f"aot.reduce_video memory, {args.preset}, width {args.dim}, float32, CPU "
          f"({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}"
          + (", MALLOC_MMAP_THRESHOLD_=1048576" if args.fixed_mmap_threshold else ""))
    print("peak / input = (input + VmHWM during the call - VmRSS before it) / input; "
          "process / input = (VmHWM - VmRSS before the input existed) / input")
    print("\n| frames | input GB | peak / input | working / input | process / input | seconds "
          "| ms per frame | cpu ms per frame | tokens | load (1 min) start -> end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for frames in args.frames:
        proc = subprocess.run([sys.executable, __file__, "--child", str(frames), "--dim",
                               str(args.dim), "--preset", args.preset],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
            print(f"| {frames} | failed: {tail} |||||||||", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {frames} | {r['input_gb']:.2f} | {r['peak_over_input']:.2f} | "
              f"{r['working_over_input']:.2f} | {r['process_over_input']:.2f} | "
              f"{r['seconds']:.1f} | {r['ms_per_frame']:.1f} | {r['cpu_ms_per_frame']:.1f} | "
              f"{r['tokens']} | {r['load']} |", flush=True)


if __name__ == "__main__":
    main()
