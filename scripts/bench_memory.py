"""Peak memory and time per frame of one ``aot.reduce_video`` call on long videos (float32).

    python scripts/bench_memory.py [--frames 32 128 512 1024] [--dim 3584] [--preset NAME]
                                   [--fixed-mmap-threshold] [--device cpu|cuda] [--repeats N]

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

Where the time goes on CPU: besides wall time, each row splits the call's CPU time into user
time (the arithmetic; linear in frames if the code is) and system time (mostly the kernel
handing the process fresh pages: every new tensor above glibc's mmap threshold is faulted in
page by page), with the minor page faults per frame, and "touch ms/GB": the wall time to fault
in 1 GB of fresh memory with a plain ``torch.empty().fill_()`` in the same process just before
the call. That last column measures the machine, not AOT: on a virtual machine whose host backs
guest memory lazily, a fault costs several times more once the process holds several GB, and
the call's system time grows with it (docs/efficiency.md, "Memory and long videos").

``--device cuda``: the peak is ``torch.cuda.max_memory_allocated`` (the caching allocator's
live tensors; no page faults), time is wall with ``torch.cuda.synchronize``, and the CPU
columns are left empty. ``--repeats N`` times N calls after the warm-up and reports the median
(the peak is over all of them).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
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


def touch_ms_per_gb(gigabytes: float = 1.0) -> float:
    """Wall ms per GB to fault in ``gigabytes`` of fresh memory (a plain fill), freed after."""
    import torch

    block = torch.empty(int(gigabytes * 2**30) // 4)
    start = time.perf_counter()
    block.fill_(1.0)
    seconds = time.perf_counter() - start
    del block
    return seconds * 1000 / gigabytes


def child(frames: int, dim: int, preset: str, device: str, repeats: int) -> dict:
    import torch

    import aot

    sys.path.insert(0, str(HERE))
    from bench_reducer import make_inputs, sync

    config = aot.AOTConfig.preset(preset)
    cuda = device.startswith("cuda")
    before_input = status_bytes("VmRSS")
    feats, shallow, deep = make_inputs(frames, dim, device, torch.float32)
    input_bytes = feats.numel() * feats.element_size()
    warm = make_inputs(4, dim, device, torch.float32)
    aot.reduce_video(*warm, config)
    del warm
    touch = None if cuda else touch_ms_per_gb()
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before_call = torch.cuda.memory_allocated()
    else:
        before_call = status_bytes("VmRSS")
        reset_peak()
    load_start = os.getloadavg()[0]
    walls, cpu_user, cpu_sys, faults = [], 0.0, 0.0, 0
    for _ in range(repeats):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        result = aot.reduce_video(feats, shallow, deep, config)
        sync(device)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_user += after.ru_utime - usage.ru_utime
        cpu_sys += after.ru_stime - usage.ru_stime
        faults += after.ru_minflt - usage.ru_minflt
        tokens = result.num_tokens
        del result
    peak = torch.cuda.max_memory_allocated() if cuda else status_bytes("VmHWM")
    seconds = statistics.median(walls)
    per_frame = 1000 / (frames * repeats)  # CPU counters summed over the repeats
    return {"frames": frames, "input_gb": input_bytes / 1e9,
            "peak_over_input": (input_bytes + peak - before_call) / input_bytes,
            "working_over_input": (peak - before_call) / input_bytes,
            "process_over_input": None if cuda else (peak - before_input) / input_bytes,
            "seconds": seconds, "ms_per_frame": seconds * 1000 / frames,
            "user_ms_per_frame": None if cuda else cpu_user * per_frame,
            "sys_ms_per_frame": None if cuda else cpu_sys * per_frame,
            "faults_per_frame": None if cuda else faults / (frames * repeats),
            "touch_ms_per_gb": touch, "tokens": tokens,
            "load": f"{load_start:.1f} -> {os.getloadavg()[0]:.1f}"}


def cell(value, fmt: str) -> str:
    """A table cell; empty for a value the device does not have."""
    return "" if value is None else format(value, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 128, 512, 1024])
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--preset", default="paper-ov-mvbench")
    parser.add_argument("--fixed-mmap-threshold", action="store_true",
                        help="run the children with MALLOC_MMAP_THRESHOLD_=1048576 (glibc)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per frame count")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected >= 1")
    if args.child:
        print(json.dumps(child(args.child, args.dim, args.preset, args.device, args.repeats)))
        return
    if not os.access("/proc/self/clear_refs", os.W_OK):
        parser.error("needs Linux: the peak of one call is read with /proc/self/clear_refs")
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    env = dict(os.environ)
    if args.fixed_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    where = (torch.cuda.get_device_name(args.device) if cuda else
             f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    print(f"aot.reduce_video memory, {args.preset}, width {args.dim}, float32, {where}, "
          f"torch {torch.__version__}, median of {args.repeats} call(s)"
          + (", MALLOC_MMAP_THRESHOLD_=1048576" if args.fixed_mmap_threshold else ""))
    if cuda:
        print("peak / input = (input + max_memory_allocated during the calls - "
              "memory_allocated before them) / input")
    else:
        print("peak / input = (input + VmHWM during the call - VmRSS before it) / input; "
              "process / input = (VmHWM - VmRSS before the input existed) / input; user / sys "
              "= CPU ms per frame; faults = minor page faults per frame; touch = ms to fault "
              "in 1 GB of fresh memory in the same process (the machine, not AOT)")
    print("\n| frames | input GB | peak / input | working / input | process / input | seconds "
          "| ms per frame | user ms per frame | sys ms per frame | faults per frame "
          "| touch ms/GB | tokens | load (1 min) start -> end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for frames in args.frames:
        proc = subprocess.run([sys.executable, __file__, "--child", str(frames), "--dim",
                               str(args.dim), "--preset", args.preset, "--device", args.device,
                               "--repeats", str(args.repeats)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
            print(f"| {frames} | failed: {tail} |||||||||||||", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {frames} | {r['input_gb']:.2f} | {r['peak_over_input']:.2f} | "
              f"{r['working_over_input']:.2f} | {cell(r['process_over_input'], '.2f')} | "
              f"{r['seconds']:.2f} | {r['ms_per_frame']:.2f} | "
              f"{cell(r['user_ms_per_frame'], '.1f')} | {cell(r['sys_ms_per_frame'], '.1f')} | "
              f"{cell(r['faults_per_frame'], '.0f')} | {cell(r['touch_ms_per_gb'], '.0f')} | "
              f"{r['tokens']} | {r['load']} |", flush=True)


if __name__ == "__main__":
    main()
