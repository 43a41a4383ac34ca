"""Milliseconds per video for AOT's reducer at the two real shapes, against a plain reference
and against the floor of the method's arithmetic.

    python scripts/bench_reducer.py [--device cpu|cuda] [--repeats 5] [--reference-repeats 3]
                                    [--dtype float32] [--threads N] [--before DIR] [--profile 20]
                                    [--check-every N [N ...]] [--scratch-mib M [M ...]]
                                    [--release DIR [--release-repeats 3]] [--shapes ov video]
                                    [--reducers all|NAME [NAME ...]] [--retention 0.10]

Shapes: LLaVA-OV 32 frames x 729 x 3584 (paper-ov-mvbench: 126 anchors, temporal phase on) and
LLaVA-Video 64 frames x 729 x 3584 (paper-video: 180 anchors, average pooling, temporal off).
Inputs are a synthetic video lifted to width 3584 (random features, smooth attention maps);
timing does not depend on the values except through the Sinkhorn iteration count.

``--release DIR`` times the authors' released functions themselves, loaded from a checkout of
github.com/TyroneLi/AOT that the user provides (scripts/release_reducer.py; nothing of it is
copied here), side by side with ``aot.reduce_video`` on the same inputs, checking the tokens.

"reference" is NOT the authors' released code: it is our plain rewrite in
its structure (scripts/reference_reducer.py: Python loops over frames, windows, anchors and
tokens, a host sync per selected index and per Sinkhorn iteration). Each row checks that the
reference and ``aot.reduce_video`` give the same tokens, and times both in the same run, with
the machine load printed. ``--before DIR`` also times the ``aot`` package
found in DIR (e.g. a ``git worktree`` of an older commit) on the same inputs.

Knob sweeps (one row per value and shape, same inputs): ``--check-every`` sets
``AOTConfig.sinkhorn_check_every`` (Sinkhorn iterations between host syncs; None = 3 on CPU, 10 on
CUDA), ``--scratch-mib`` sets the chunk budget of the passes over the features on the benchmarked
device (:func:`aot.ops.scratch_bytes`: ``SCRATCH_BYTES`` on CPU, ``ACCELERATOR_SCRATCH_BYTES``
elsewhere) for the run. Neither changes the tokens (tests/test_hot_path.py): only the time.

``--reducers all`` (or names) also times registry reducers, AOT included, on the same inputs at
both shapes, each at the backbone's exact budget for ``--retention`` (``aot.settings_for(backbone,
r, exact=True)``: the same token count for every reducer) with its default options, in one table
(``all``: every registry name but the ``aot:<ablation>`` variants). Each reducer gets the inputs
its registry entry declares (``ReducerInfo.inputs``), made like the path's: the attention maps
of the synthetic video (``last_attention`` and any other declared ``*_attention`` input: another
smooth map of the same video), ``head_features`` as frame means of another draw, and no
``frame_features`` (the video path passes none; AOT then
uses the frame means). A reducer declaring an input with no maker here is listed as skipped.

"floor" is the work no implementation of the method can skip, timed in the same run on the
same device (interleaved with ``aot.reduce_video``, so both see the same load): the two batched
products at the call's exact shapes, on operands already laid out for them (the M sources x the
N anchors of each frame: ``sources @ anchors^T`` for the cosines, ``T^T @ sources`` for the OT
aggregation), plus one read of the (F, 729, D) features. reference / floor is then the largest
speed-up over the reference that any implementation with the same outputs could show here
(one that aggregates only the anchors feeding a surviving pooled token could trim the second
product by the share of unused anchors; docs/efficiency.md gives that share on these shapes).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import statistics
import sys
import time

import torch

# This checkout's package, not whichever one the interpreter has installed (the registry timed
# must be the one beside this script).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import aot  # noqa: E402
from aot.intra import split_by_mask
from aot.ops import gather_rows  # noqa: E402
from aot.synthetic import synthetic_video  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reference_reducer import reference_reduce_video
from release_reducer import load_release, release_reduce_video

SHAPES = (("ov", 32, "paper-ov-mvbench"), ("video", 64, "paper-video"))


def make_inputs(frames: int, dim: int, device: str, dtype: torch.dtype):
    feats, shallow, deep = synthetic_video(frames, dim=64, seed=0)
    lift = torch.randn(64, dim, generator=torch.Generator().manual_seed(1)) / 8
    # lifted on the target device: 1024 frames at width 3584 is 10.7 GB, slow to build on a CPU
    return ((feats.to(device) @ lift.to(device)).to(dtype), shallow.to(device), deep.to(device))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, cpu_times: list | None = None):
    """``fn()`` and its wall-clock ms; its process CPU ms (all threads) go to ``cpu_times``."""
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    if cpu_times is not None:
        cpu_times.append((time.process_time() - start_cpu) * 1000)
    return out, (time.perf_counter() - start) * 1000


def floor_work(feats: torch.Tensor, shallow: torch.Tensor, deep: torch.Tensor, cfg):
    """The bare minimum of one call at these shapes, as a function to time (see the module doc).

    The operands are built outside the timed function: the (F, M, D) sources and (F, N, D)
    anchors of the call's own anchor selection, contiguous, and an (F, N, M) plan.
    """
    work = torch.promote_types(feats.dtype, torch.float32)
    local, global_ = aot.select_anchors(shallow, deep, 27, cfg)
    anchor_idx, source_idx = split_by_mask(local | global_)
    sources = gather_rows(feats.to(work), source_idx)
    anchors = gather_rows(feats.to(work), anchor_idx)
    plan_t = torch.rand(anchors.shape[0], anchors.shape[1], sources.shape[1], dtype=work,
                        device=feats.device)

    def run():
        torch.bmm(sources, anchors.transpose(1, 2))  # (F, M, N) dot products for the cosines
        torch.bmm(plan_t, sources)  # (F, N, D) OT aggregation T^T U
        return feats.sum(dtype=work)  # one read of the features (norms, finiteness)

    return run


def load_package(directory: str, name: str = "aot_before"):
    """Import the ``aot`` package of another checkout under another module name."""
    init = pathlib.Path(directory) / "aot" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--before {directory}: no aot/__init__.py there")
    spec = importlib.util.spec_from_file_location(name, init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def attention_map(frames: int, seed: int, device: str) -> torch.Tensor:
    """(F, 729) positive smooth attention of the synthetic video (another draw per seed)."""
    return synthetic_video(frames, dim=8, seed=seed)[2].to(device)


#: Declared input -> how the registry benchmark makes it: a keyword argument (a function of
#: frames and device), or None for an input the video path does not pass.
INPUT_MAKERS = {
    "shallow_attention": None,  # positional, always passed
    "deep_attention": None,
    "frame_features": None,  # the path passes none (AOT then uses the frame means)
    "last_attention": lambda frames, device: attention_map(frames, 2, device),
    # FastVID's per-frame global features (the SigLIP pooling head's output): frame means of
    # another draw of the synthetic video, so consecutive frames drift as in a real one
    "head_features": lambda frames, device: synthetic_video(frames, dim=64, seed=3)[0].mean(1)
    .to(device),
    # the last layer's keys averaged over heads (SigLIP so400m: 72 channels per head): another
    # draw of the synthetic video, so similar patches have similar keys as in a real tower
    "last_keys": lambda frames, device: synthetic_video(frames, dim=72, seed=4)[0].to(device),
}


def keyword_inputs(info, frames: int, device: str):
    """The keyword inputs of a registry reducer (``info.inputs``), or the name of the first
    declared input the benchmark cannot make (then the reducer is skipped)."""
    kwargs = {}
    for seed, name in enumerate(info.inputs, start=10):
        if name in INPUT_MAKERS:
            maker = INPUT_MAKERS[name]
        elif name.endswith("_attention"):  # an attention map at another layer or head
            maker = lambda frames, device, seed=seed: attention_map(frames, seed, device)  # noqa: E731
        else:
            return name
        if maker is not None:
            kwargs[name] = maker(frames, device)
    return kwargs


def registry_names(requested: list[str]) -> list[str]:
    """``--reducers`` values -> registry names (``all``: every name but the ablations)."""
    from aot.reducers import ABLATION_PREFIX, reducer_info, reducer_names

    if requested == ["all"]:
        return [name for name in reducer_names() if not name.startswith(ABLATION_PREFIX)]
    for name in requested:
        reducer_info(name)  # an unknown name: the registry's error, listing the known ones
    return list(requested)


def bench_registry(backbone: str, frames: int, names: list[str], args) -> list[dict]:
    """Median wall / CPU ms of each registry reducer on one shape, at the exact budget."""
    from aot.reducers import get_reducer, reducer_info

    dtype = getattr(torch, args.dtype)
    feats, shallow, deep = make_inputs(frames, args.dim, args.device, dtype)
    cfg = aot.settings_for(backbone, args.retention, exact=True, frames=frames)
    rows = []
    for name in names:
        info = reducer_info(name)
        row = {"reducer": name, "shape": f"{backbone} {frames}x729x{args.dim}",
               "inputs": ", ".join(info.inputs) or "features", "load_start": load()}
        kwargs = keyword_inputs(info, frames, args.device)
        if isinstance(kwargs, str):
            rows.append({**row, "skipped": f"no synthetic maker for input {kwargs!r}"})
            print(f"  [{backbone}] {name}: skipped (input {kwargs!r})", flush=True)
            continue
        reducer = get_reducer(name)
        times, cpu = [], []
        for i in range(args.warmup + args.repeats):
            timing = i >= args.warmup
            result, t = timed(lambda: reducer(feats, shallow, deep, cfg, **kwargs), args.device,
                              cpu if timing else None)
            if timing:
                times.append(t)
            print(f"  [{backbone}] {name} run {i + 1}/{args.warmup + args.repeats}"
                  f"{' (warm-up)' if not timing else ''}: {t:.1f} ms", flush=True)
        rows.append({**row, "tokens": result.num_tokens, "ms": statistics.median(times),
                     "min_ms": min(times), "max_ms": max(times), "cpu_ms": statistics.median(cpu),
                     "load_end": load()})
    return rows


def print_registry(rows: list[dict], args) -> None:
    print(f"\nregistry reducers at exact retention {args.retention:g} (default options; "
          f"median of {args.repeats}, wall and process CPU ms):")
    print("\n| reducer | shape | inputs | tokens out | wall ms | min-max | cpu ms "
          "| / aot wall | load 1/5/15 start -> end |")
    print("|---|---|---|---|---|---|---|---|---|")
    aot_ms = {r["shape"]: r["ms"] for r in rows if r["reducer"] == "aot" and "ms" in r}
    for r in rows:
        if "skipped" in r:
            print(f"| {r['reducer']} | {r['shape']} | {r['inputs']} | skipped: {r['skipped']} "
                  f"| | | | | {r['load_start']} |")
            continue
        ratio = (f"{r['ms'] / aot_ms[r['shape']]:.2f}x" if r["shape"] in aot_ms else "-")
        print(f"| {r['reducer']} | {r['shape']} | {r['inputs']} | {r['tokens']} | "
              f"{r['ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} | {r['cpu_ms']:.1f} | "
              f"{ratio} | {r['load_start']} -> {r['load_end']} |")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def bench(backbone: str, frames: int, preset: str, args, before, check_every=None,
          scratch_mib=None, released=None) -> dict:
    dtype = getattr(torch, args.dtype)
    feats, shallow, deep = make_inputs(frames, args.dim, args.device, dtype)
    cfg = aot.AOTConfig.preset(preset).replace(sinkhorn_check_every=check_every,
                                               cuda_graphs=not args.eager)
    knobs = ([f"check_every {check_every}"] if check_every is not None else []) + \
        ([f"scratch {scratch_mib} MiB"] if scratch_mib is not None else [])
    row = {"backbone": backbone, "preset": preset, "load_start": load(),
           "shape": f"{frames}x729x{args.dim}" + (f" ({', '.join(knobs)})" if knobs else "")}
    floor = floor_work(feats, shallow, deep, cfg)
    ours, ours_cpu, intra_ms, inter_ms, floor_ms, floor_cpu = [], [], [], [], [], []
    for i in range(args.warmup + args.repeats):
        timing = i >= args.warmup
        intra, t_intra = timed(lambda: aot.intra_stage(feats, shallow, deep, cfg), args.device)
        result, t_inter = timed(lambda stage=intra: aot.inter_stage(stage, cfg), args.device)
        del intra  # the next call's peak should not hold this one's output
        _, t_total = timed(lambda: aot.reduce_video(feats, shallow, deep, cfg), args.device,
                           ours_cpu if timing else None)
        _, t_floor = timed(floor, args.device, floor_cpu if timing else None)
        if timing:
            intra_ms.append(t_intra)
            inter_ms.append(t_inter)
            ours.append(t_total)
            floor_ms.append(t_floor)
        print(f"  [{backbone}] aot run {i + 1}/{args.warmup + args.repeats}"
              f"{' (warm-up)' if i < args.warmup else ''}: {t_total:.1f} ms "
              f"(floor {t_floor:.1f} ms)",
              flush=True)
    row.update(tokens=result.num_tokens, retention=result.retention,
               intra_ms=statistics.median(intra_ms), inter_ms=statistics.median(inter_ms),
               total_ms=statistics.median(ours), min_ms=min(ours), max_ms=max(ours),
               cpu_ms=statistics.median(ours_cpu), floor_ms=statistics.median(floor_ms),
               floor_cpu_ms=statistics.median(floor_cpu))
    if before is not None:
        times, cpu = [], []
        for i in range(args.repeats):
            old, t = timed(lambda: before.reduce_video(feats, shallow, deep,
                                                       before.AOTConfig.preset(preset)),
                           args.device, cpu)
            times.append(t)
            print(f"  [{backbone}] --before run {i + 1}/{args.repeats}: {t:.1f} ms", flush=True)
        row["before_ms"] = statistics.median(times)
        row["before_cpu_ms"] = statistics.median(cpu)
        row["before_diff"] = _diff(old.tokens, result.tokens)
    if released is not None:
        times, cpu = [], []
        for i in range(args.release_repeats):
            rel, t = timed(lambda: release_reduce_video(released, feats.float(), shallow.float(),
                                                        deep.float(), cfg), args.device, cpu)
            times.append(t)
            print(f"  [{backbone}] released run {i + 1}/{args.release_repeats}: {t:.1f} ms "
                  f"(load {load()})", flush=True)
        row["release_ms"] = statistics.median(times)
        row["release_cpu_ms"] = statistics.median(cpu)
        row["release_diff"] = _diff(rel, result.tokens)
    if args.reference_repeats:
        times, cpu = [], []
        for i in range(args.reference_repeats):
            ref, t = timed(lambda: reference_reduce_video(feats.float(), shallow.float(),
                                                          deep.float(), cfg), args.device, cpu)
            times.append(t)
            print(f"  [{backbone}] reference run {i + 1}/{args.reference_repeats}: {t:.1f} ms",
                  flush=True)
        row["reference_ms"] = statistics.median(times)
        row["reference_cpu_ms"] = statistics.median(cpu)
        row["reference_diff"] = _diff(ref, result.tokens)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        cuda = args.device.startswith("cuda")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities, record_shapes=not cuda) as prof:
            aot.reduce_video(feats, shallow, deep, cfg)
            sync(args.device)
        print(f"\nprofile of one aot.reduce_video call, {row['shape']} ({preset}):")
        events = prof.key_averages(group_by_input_shape=not cuda)
        if cuda:  # launch-bound or not: how many kernels and host waits one call makes
            calls = {e.key: e.count for e in events}
            print("CUDA runtime calls: " + ", ".join(
                f"{name} {calls.get(name, 0)}" for name in
                ("cudaLaunchKernel", "cudaLaunchKernelExC", "cudaStreamSynchronize",
                 "cudaMemcpyAsync", "cudaDeviceSynchronize")))
        print(events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                           row_limit=args.profile, max_name_column_width=40,
                           max_shapes_column_width=58))
    row["load_end"] = load()
    return row


def _diff(expected: torch.Tensor, got: torch.Tensor) -> str:
    if expected.shape != got.shape:
        return f"DIFFERENT ({expected.shape[0]} vs {got.shape[0]} tokens)"
    return f"{(expected.float() - got.float()).abs().max().item():.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--dim", type=int, default=3584, help="feature width (LLM hidden size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reference-repeats", type=int, default=3,
                        help="timed runs of the plain reference (0 = skip it)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="also print the top ROWS operators of one call (torch.profiler)")
    parser.add_argument("--before", default=None,
                        help="a checkout whose aot package is timed too (e.g. an older commit)")
    parser.add_argument("--eager", action="store_true",
                        help="AOTConfig(cuda_graphs=False): the eager intra stage on CUDA")
    parser.add_argument("--release", default=None, metavar="DIR",
                        help="a checkout of the authors' repository (github.com/TyroneLi/AOT): "
                             "its released reducer functions are timed side by side "
                             "(scripts/release_reducer.py; nothing is copied)")
    parser.add_argument("--release-repeats", type=int, default=3,
                        help="timed runs of the released functions (with --release)")
    parser.add_argument("--shapes", nargs="+", default=[name for name, _, _ in SHAPES],
                        choices=[name for name, _, _ in SHAPES], help="shapes to run")
    parser.add_argument("--check-every", type=int, nargs="+", default=None,
                        help="AOTConfig.sinkhorn_check_every values to time (one row each)")
    parser.add_argument("--scratch-mib", type=int, nargs="+", default=None,
                        help="chunk budgets in MiB to time (aot.ops.scratch_bytes; one row each)")
    parser.add_argument("--reducers", nargs="+", default=None, metavar="NAME",
                        help="also time these registry reducers at both shapes ('all': every "
                             "name but the aot:<ablation> variants)")
    parser.add_argument("--retention", type=float, default=0.10,
                        help="exact retention of the --reducers table (default 0.10)")
    parser.add_argument("--no-aot-table", action="store_true",
                        help="skip AOT's own table (floor, reference): only --reducers")
    args = parser.parse_args()
    if not 0 < args.retention <= 1:
        parser.error(f"--retention {args.retention}: expected a share in (0, 1]")
    try:
        names = registry_names(args.reducers) if args.reducers else []
    except ValueError as error:
        parser.error(f"--reducers: {error}")
    if args.no_aot_table and not names:
        parser.error("--no-aot-table leaves nothing to time: give --reducers")
    for value in args.check_every or []:
        if value < 0:
            parser.error(f"--check-every {value}: expected >= 0 (0 = never sync)")
    for value in args.scratch_mib or []:
        if value < 1:
            parser.error(f"--scratch-mib {value}: expected >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    before = load_package(args.before) if args.before else None
    released = load_release(args.release) if args.release else None
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({os.cpu_count()} cores), {torch.get_num_threads()} threads"
    mode = "eager" if args.eager or not args.device.startswith("cuda") else "CUDA graph"
    print(f"AOT reducer benchmark on {name} ({mode} intra stage), torch {torch.__version__}, "
          f"{args.dtype}; median of {args.repeats}"
          + ("" if args.no_aot_table else f" (reference: {args.reference_repeats})")
          + f"; load average 1/5/15 min at start {load()}")
    if not args.no_aot_table:
        print("reference = our plain rewrite in the released code's structure "
              "(scripts/reference_reducer.py), not the released code itself")
    if names:
        registry = [row for backbone, frames, _ in SHAPES if backbone in args.shapes
                    for row in bench_registry(backbone, frames, names, args)]
        print_registry(registry, args)
        if args.no_aot_table:
            return
    rows = []
    for check_every in args.check_every or [None]:
        for scratch_mib in args.scratch_mib or [None]:
            if scratch_mib is not None:
                name = ("SCRATCH_BYTES" if torch.device(args.device).type == "cpu"
                        else "ACCELERATOR_SCRATCH_BYTES")  # the budget aot.ops.scratch_bytes reads
                setattr(aot.ops, name, scratch_mib * 2 ** 20)
            rows += [bench(backbone, frames, preset, args, before, check_every, scratch_mib,
                           released)
                     for backbone, frames, preset in SHAPES if backbone in args.shapes]
    print("\nwall = elapsed ms (median); cpu = process CPU ms summed over threads (median), "
          "less sensitive to other jobs on a shared machine")
    print("floor = the two batched products at the call's shapes + one read of the features "
          "(timed interleaved with aot); reference / floor = the largest ratio any "
          "implementation with the same outputs could reach here")
    print("\n| shape | preset | tokens out | retention | intra ms | inter ms | total ms "
          "| min-max | cpu ms | floor ms | floor cpu ms | aot / floor wall (cpu) "
          "| reference ms | reference cpu ms | reference / aot wall (cpu) "
          "| reference / floor wall (cpu) | ref. max abs diff | load 1/5/15 start -> end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = r.get("reference_ms")
        print(f"| {r['shape']} | {r['preset']} | {r['tokens']} | {r['retention']:.3f} | "
              f"{r['intra_ms']:.1f} | {r['inter_ms']:.1f} | {r['total_ms']:.1f} | "
              f"{r['min_ms']:.1f}-{r['max_ms']:.1f} | {r['cpu_ms']:.1f} | "
              f"{r['floor_ms']:.1f} | {r['floor_cpu_ms']:.1f} | "
              f"{r['total_ms'] / r['floor_ms']:.2f}x ({r['cpu_ms'] / r['floor_cpu_ms']:.2f}x) | "
              + (f"{ref:.0f} | {r['reference_cpu_ms']:.0f} | {ref / r['total_ms']:.1f}x "
                 f"({r['reference_cpu_ms'] / r['cpu_ms']:.1f}x) | {ref / r['floor_ms']:.1f}x "
                 f"({r['reference_cpu_ms'] / r['floor_cpu_ms']:.1f}x) | {r['reference_diff']} | "
                 if ref is not None else "- | - | - | - | - | ")
              + f"{r['load_start']} -> {r['load_end']} |")
    if released is not None:
        print("\nreleased = the authors' functions from the --release checkout, run by "
              "scripts/release_reducer.py; same inputs, same run")
        print("\n| shape | released ms | aot ms | released / aot wall | released cpu ms "
              "| aot cpu ms | released / aot cpu | max abs diff | load 1/5/15 start -> end |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['shape']} | {r['release_ms']:.0f} | {r['total_ms']:.1f} | "
                  f"{r['release_ms'] / r['total_ms']:.1f}x | {r['release_cpu_ms']:.0f} | "
                  f"{r['cpu_ms']:.1f} | {r['release_cpu_ms'] / r['cpu_ms']:.1f}x | "
                  f"{r['release_diff']} | {r['load_start']} -> {r['load_end']} |")
    if before is not None:
        print("\n| shape | --before ms | aot ms | speed-up wall | --before cpu ms | aot cpu ms "
              "| speed-up cpu | max abs diff |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['shape']} | {r['before_ms']:.0f} | {r['total_ms']:.0f} | "
                  f"{r['before_ms'] / r['total_ms']:.2f}x | {r['before_cpu_ms']:.0f} | "
                  f"{r['cpu_ms']:.0f} | {r['before_cpu_ms'] / r['cpu_ms']:.2f}x | "
                  f"{r['before_diff']} |")


if __name__ == "__main__":
    main()
