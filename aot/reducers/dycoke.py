"""``dycoke``: DyCoke-style temporal token merging before the LLM.

DyCoke (Tao et al., CVPR 2025, arXiv 2411.15024) has two stages: temporal token merging (TTM)
before the LLM, which drops the tokens of a frame that repeat the token at the same position of a
reference frame (adjacent frame pairs, then frame pairs inside windows of 4, pruning ratio K =
0.7 of the later frames), and a dynamic KV-cache pruning inside the LLM while decoding. Only TTM
changes what the LLM receives, so only TTM is here (pre-LLM comparisons at one token count).

Our version (docs/reducers/dycoke.md): every frame f >= 1 is compared with frame f - 1 position
by position (cosine of the pooled projected features); frame 0 is the one reference frame and
keeps all its tokens; the rest of the budget is spread over the later frames, each keeping its
tokens least similar to the previous frame. A dropped token is averaged into the most recent kept
token at its position (``merge=True``, default) or simply dropped (``merge=False``, DyCoke's
released TTM). Chaining adjacent frames instead of DyCoke's fixed windows lets the budget go
below DyCoke's floor of one full frame in four.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..budget import spread
from ..config import AOTConfig, check_bool_fields
from ..ops import gather_rows, pack_left
from ..pooling import pool_grid
from ..result import ReducedVideo
from ..result import KIND_FRAME, KIND_KEPT
from ..temporal import lowest_k
from .common import (
    flatten_slots,
    make_result,
    resolve_budget,
    validate,
    work_dtype,
)
from .uniform import pool_to_counts

ALLOCATIONS = ("frame", "video")


@dataclass(frozen=True)
class DyCokeConfig:
    """Knobs of the DyCoke-style reducer.

    merge: average each dropped token into the most recent kept token at its position (True) or
        drop it (False, as DyCoke's released TTM does).
    allocation: ``"frame"`` (DyCoke: every later frame keeps the same count, a fixed pruning
        ratio) or ``"video"`` (the later frames' tokens compete for the budget together, so frames
        with motion keep more).
    """

    merge: bool = True
    allocation: str = "frame"

    def __post_init__(self) -> None:
        check_bool_fields(self)
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"DyCokeConfig.allocation={self.allocation!r}: "
                             f"expected one of {ALLOCATIONS}")


def previous_frame_similarity(values: torch.Tensor) -> torch.Tensor:
    """(F, P, D) -> (F, P) cosine of each token with the same position of the previous frame;
    frame 0 (no previous frame) gets -inf, so it ranks as least redundant."""
    similarity = F.cosine_similarity(values[1:], values[:-1], dim=-1)
    first = torch.full_like(values[:1, :, 0], -math.inf)
    return torch.cat([first, similarity], 0)


def keep_least_redundant(redundancy: torch.Tensor, budget: int, allocation: str) -> torch.Tensor:
    """Which tokens stay, when frame 0 is whole (budget >= P).

    Args:
        redundancy: (F, P) similarity to the previous frame (frame 0: -inf).
        budget: tokens to keep, P <= budget <= F * P.
        allocation: ``"frame"``: later frames keep ``spread(budget - P, F - 1)`` tokens each;
            ``"video"``: the ``budget - P`` least redundant tokens of all later frames.
    Returns:
        (F, P) bool with exactly ``budget`` True entries, frame 0 all True.
    """
    frames, pooled_count = redundancy.shape
    rest = budget - pooled_count
    keep = torch.zeros_like(redundancy, dtype=torch.bool)
    keep[0] = True
    if frames == 1:
        return keep
    later = redundancy[1:]
    valid = torch.ones_like(later, dtype=torch.bool)
    if allocation == "frame":
        counts = torch.tensor(spread(rest, frames - 1), device=later.device)
        keep[1:] = lowest_k(later, valid, counts)
    else:
        flat = lowest_k(later.reshape(1, -1), valid.reshape(1, -1),
                        torch.tensor([rest], device=later.device))
        keep[1:] = flat.reshape(frames - 1, pooled_count)
    return keep


def dycoke_frame_counts(config: AOTConfig, frames: int, pooled_count: int,
                        options: DyCokeConfig | None = None) -> list[int]:
    """Exact mode's tokens per frame (its registry entry's ``frame_counts``): frame 0 whole and
    ``spread(B - P, F - 1)`` over the later frames; below one frame (B < P) frame 0 pooled to B
    and nothing else.

    Raises:
        ValueError: ``allocation="video"``, which picks the later frames' tokens across frames
            by their content, so only the total is fixed.
    """
    options = options or DyCokeConfig()
    if options.allocation != "frame":
        raise ValueError(f"dycoke allocation={options.allocation!r} splits the budget over the "
                         "frames by content; a fixed per-frame count needs allocation='frame'")
    total = resolve_budget(config, frames, pooled_count, reducer="dycoke")
    if total < pooled_count or frames == 1:
        return [total] + [0] * (frames - 1)
    return [pooled_count] + spread(total - pooled_count, frames - 1)


def merge_into_kept(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Average every dropped token into the most recent kept token at its position.

    With frame 0 all kept, the tokens at position p form runs: a kept token and the dropped
    tokens after it (until the next kept one). Each kept token becomes the mean of its run.

    Args:
        values: (F, P, D); keep: (F, P) bool with keep[0] all True.
    Returns:
        (F, P, D): kept entries replaced by their run means (dropped entries unchanged).
    """
    frames, pooled_count, dim = values.shape
    run = torch.cumsum(keep.long(), 0) - 1  # (F, P): index of the run among kept tokens at p
    slot = (run * pooled_count + torch.arange(pooled_count, device=values.device)).reshape(-1)
    flat = values.reshape(-1, dim)
    sums = torch.zeros_like(flat).index_add_(0, slot, flat)
    counts = torch.zeros(flat.shape[0], dtype=values.dtype, device=values.device)
    counts.index_add_(0, slot, torch.ones_like(slot, dtype=values.dtype))
    means = (sums / counts.clamp(min=1)[:, None])[slot].reshape(frames, pooled_count, dim)
    return torch.where(keep[:, :, None], means, values)


def reduce_dycoke(features: torch.Tensor, shallow_attention: torch.Tensor,
                  deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                  budget: int | None = None, frame_features: torch.Tensor | None = None,
                  options: DyCokeConfig | None = None, grid=None) -> ReducedVideo:
    """DyCoke-style temporal merging of tokens that repeat the previous frame.

    Args:
        features: (F, T, D) projected patch features, T = rows * cols.
        shallow_attention, deep_attention: (F, T); only validated (DyCoke's TTM uses no
            attention).
        config: uses ``pooling`` and ``exact_retention``.
        budget: exact token count; overrides ``config.exact_retention``.
        frame_features: ignored (accepted for AOT's signature).
        options: :class:`DyCokeConfig`.
        grid: the patch grid, ``(rows, cols)`` or a square's side (as :func:`aot.reduce_video`).
    Returns:
        :class:`ReducedVideo`, frame-major, kept tokens in ascending position; frame 0's tokens are
        ``KIND_FRAME``, later frames' ``KIND_KEPT``; ``temporal_kept`` / ``temporal_merged`` mark
        later-frame tokens kept / merged away; ``clips`` = [(0, F)].

    A budget below one frame (``budget < P``, e.g. one frame, or very few frames at a small
    retention) cannot keep frame 0 whole: then frame 0 alone is average-pooled to the budget
    (the ``uniform`` rule) and the later frames are dropped.
    """
    config = config or AOTConfig()
    options = options or DyCokeConfig()
    grid, pooled = validate(features, shallow_attention, deep_attention, config, grid)
    frames, pooled_count = features.shape[0], pooled[0] * pooled[1]
    total = resolve_budget(config, frames, pooled_count, budget, reducer="dycoke")
    values = pool_grid(features.to(work_dtype(features)), grid, config.pooling)
    clips = [(0, frames)] if frames >= 2 else []
    device = features.device

    if total < pooled_count:  # not even one whole frame: pool frame 0 (documented fallback)
        counts = torch.zeros(frames, dtype=torch.long, device=device)
        counts[0] = total
        tokens, positions, valid = pool_to_counts(values, pooled, counts)
        keep = torch.zeros(frames, pooled_count, dtype=torch.bool, device=device)
        keep[0, positions[0, :total]] = True
        kinds = torch.full_like(positions, KIND_FRAME)
        out, frame_ids, token_position, token_kind = flatten_slots(tokens, positions, kinds, valid)
        return make_result(out.to(features.dtype), frame_ids, token_position, token_kind,
                           frames=frames, grid=grid, pooled=pooled, survivors=keep, clips=clips)

    redundancy = previous_frame_similarity(values[..., :config.similarity_channels])
    keep = keep_least_redundant(redundancy, total, options.allocation)
    if options.merge:
        values = merge_into_kept(values, keep)
    positions, valid = pack_left(keep)
    tokens = gather_rows(values, positions)
    kinds = torch.full_like(positions, KIND_KEPT)
    kinds[0] = KIND_FRAME
    out, frame_ids, token_position, token_kind = flatten_slots(tokens, positions, kinds, valid)
    later = torch.ones_like(keep)
    later[0] = False
    # survivors: what reaches the output or is folded into it (all, when merging).
    return make_result(out.to(features.dtype), frame_ids, token_position, token_kind,
                       frames=frames, grid=grid, pooled=pooled,
                       survivors=torch.ones_like(keep) if options.merge else keep,
                       kept=keep & later, merged=(~keep & later) if options.merge else None,
                       clips=clips)

