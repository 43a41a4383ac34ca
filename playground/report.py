"""Plain-text report of one demo run: token counts per phase, per clip, retention, stage times."""

from __future__ import annotations

import torch

import aot
from aot.result import KIND_ANCHOR, KIND_FRAME, KIND_KEPT


def clip_rows(result: aot.ReducedVideo) -> list[dict]:
    """Per clip of the temporal phase: frames, keyframe tokens, kept, merged anchors, total.

    Without a temporal phase (no clips) the list is empty.
    """
    frame = result.token_frame.cpu()
    kind = result.token_kind.cpu()
    rows = []
    for index, (start, stop) in enumerate(result.clips):
        inside = (frame >= start) & (frame < stop)
        rows.append({
            "clip": index, "start": start, "stop": stop,
            "keyframe": int((inside & (kind == KIND_FRAME)).sum()),
            "kept": int((inside & (kind == KIND_KEPT)).sum()),
            "anchors": int((inside & (kind == KIND_ANCHOR)).sum()),
            "merged": int(result.temporal_merged[start:stop].sum()),
            "tokens": int(inside.sum()),
            "full": (stop - start) * pooled_per_frame(result),
        })
    return rows


def patches_per_frame(result: aot.ReducedVideo) -> int:
    """Tokens of a frame's patch grid (rows x cols of the anchor masks: any H x W grid)."""
    return int(result.local_anchors.shape[1] * result.local_anchors.shape[2])


def pooled_per_frame(result: aot.ReducedVideo) -> int:
    """Tokens of a frame's pooled grid (rows x cols of the survivor masks)."""
    return int(result.survivors.shape[1] * result.survivors.shape[2])


def summary(result: aot.ReducedVideo) -> dict:
    """Token counts of ``result`` as plain numbers (what the table prints); grids may be
    H x W."""
    anchors_local = result.local_anchors.flatten(1).sum(1).float()
    anchors_global = result.global_anchors.flatten(1).sum(1).float()
    survivors = result.survivors.flatten(1).sum(1)
    return {
        "frames": result.num_frames,
        "patches_per_frame": patches_per_frame(result),
        "pooled_per_frame": pooled_per_frame(result),
        "patch_grid": list(result.local_anchors.shape[1:]),
        "pooled_grid": list(result.survivors.shape[1:]),
        "local_anchors_per_frame": float(anchors_local.mean()),
        "global_anchors_per_frame": float(anchors_global.mean()),
        "survivors_per_frame": [int(v) for v in survivors],
        "tokens_per_frame": [int(v) for v in result.tokens_per_frame()],
        "clips": clip_rows(result),
        "total": result.num_tokens,
        "denominator": result.num_frames * pooled_per_frame(result),
        "retention": result.num_tokens / (result.num_frames * pooled_per_frame(result)),
    }


def _spread(values: list[int]) -> str:
    tensor = torch.tensor(values, dtype=torch.float32)
    return f"mean {tensor.mean():.1f}, min {int(tensor.min())}, max {int(tensor.max())}"


def token_table(info: dict, reducer: str, pooling: str, newlines: int) -> list[str]:
    """Lines of the token table (see :func:`summary` for ``info``)."""
    frames, pooled, patches = info["frames"], info["pooled_per_frame"], info["patches_per_frame"]
    if pooling == "none":
        full = f"{patches} tokens, no pooling (the backbone's merger already pooled)"
    else:
        full = f"{patches} patches -> {pooled} after {pooling} 2x2 pooling"
    lines = [f"  {'frames':<40}{frames}", f"  {'tokens per frame, full model':<40}{full}"]
    local, global_ = info["local_anchors_per_frame"], info["global_anchors_per_frame"]
    if local + global_ > 0:
        lines.append(f"  {'anchors per frame (intra phase)':<40}{local + global_:.0f} = "
                     f"{local:.0f} local + {global_:.0f} global, of {patches} patches")
        label = "tokens per frame after intra + pooling"
    else:
        label = f"tokens per frame kept by {reducer}"
    lines.append(f"  {label:<40}{_spread(info['survivors_per_frame'])} (of {pooled})")
    if info["clips"]:
        lines.append(f"  after the temporal phase, per clip ({len(info['clips'])} clips):")
        lines.append(f"    {'clip':>4} {'frames':>7} {'keyframe':>9} {'kept':>5} "
                     f"{'merged->anchors':>16} {'tokens':>7} {'of full':>8}")
        for row in info["clips"]:
            span = f"{row['start']}-{row['stop'] - 1}"
            lines.append(f"    {row['clip']:>4} {span:>7} {row['keyframe']:>9} {row['kept']:>5} "
                         f"{str(row['merged']) + '->' + str(row['anchors']):>16} "
                         f"{row['tokens']:>7} {row['full']:>8}")
    else:
        lines.append(f"  {'temporal phase':<40}none (tokens per frame: "
                     f"{_spread(info['tokens_per_frame'])})")
    lines.append(f"  {'total visual tokens':<40}{info['total']} of {info['denominator']} "
                 f"(+{newlines} newline) -> retention {info['retention']:.4f} vs full")
    return lines


def time_table(times: dict[str, float]) -> list[str]:
    """Lines ``stage  seconds`` plus the total, in insertion order."""
    lines = [f"    {name:<36}{seconds:8.3f} s" for name, seconds in times.items()]
    lines.append(f"    {'total':<36}{sum(times.values()):8.3f} s")
    return lines
