"""Shared plumbing of the baseline reducers: budgets, per-frame counts, packing the output.

Every reducer in :mod:`aot.reducers` has AOT's call signature and returns an
:class:`aot.ReducedVideo`, so model code, the demo and the benchmarks treat all reducers alike. The
helpers here turn a token budget into per-frame counts and per-frame padded selections into the
flat, frame-major token sequence that ``ReducedVideo`` describes.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..budget import exact_budget, spread
from ..config import AOTConfig
from ..pooling import pooled_shape
from ..reduce import check_inputs
from ..result import ReducedVideo


def validate(features: torch.Tensor, shallow_attention: torch.Tensor,
             deep_attention: torch.Tensor, config: AOTConfig, grid=None
             ) -> tuple[tuple[int, int], tuple[int, int]]:
    """AOT's input checks for a reducer that does not pick AOT anchors.

    Args:
        grid: the patch grid, ``(rows, cols)`` or a square's side (None: the square grid of the
            features' token count), as :func:`aot.reduce_video`.
    Returns:
        (grid, pooled): (rows, cols) of the patch grid and of the backbone's pooled grid.
    """
    if not isinstance(config, AOTConfig):
        raise TypeError(f"config must be an AOTConfig, got {type(config).__name__}")
    # The anchor count only matters to AOT; a baseline on a small grid must not trip over it.
    grid = check_inputs(features, shallow_attention, deep_attention,
                        config.replace(intra=False) if config.intra else config, grid)
    return grid, pooled_shape(grid, config.pooling)


def resolve_budget(config: AOTConfig, frames: int, pooled_per_frame: int,
                   budget=None, *, reducer: str = "reducer") -> int:
    """The number of tokens a reducer must emit for this video.

    Precedence: an explicit ``budget`` (an int), else exact mode ``config.exact_retention``
    (``aot.exact_budget``: ``floor(r * frames * pooled + 0.5)``, the same count AOT's exact mode
    emits). Without either there is no defined count to match, so this raises.

    Raises:
        ValueError: the budget is not an integer in [1, frames * pooled_per_frame], or none is set.
    """
    available = frames * pooled_per_frame
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
            raise ValueError(
                f"budget={budget!r}: expected an integer token count in [1, {available}]; "
                f"for a retention fraction set config.exact_retention instead")
        budget = int(budget)
        if not 1 <= budget <= available:
            raise ValueError(
                f"budget={budget} tokens is outside [1, {available}]: the video has {frames} "
                f"frame(s) x {pooled_per_frame} pooled tokens")
        return budget
    if config.exact_retention is not None:
        return exact_budget(config.exact_retention, frames, pooled_per_frame)
    raise ValueError(
        f"{reducer}: no token budget; set config.exact_retention (e.g. "
        f"aot.settings_for('ov', 0.1)) or pass budget=<tokens> "
        f"(aot.reducers.matched_budget gives AOT's count for a video)")


def spread_frame_counts(config: AOTConfig, frames: int, pooled_per_frame: int) -> list[int]:
    """Exact mode's tokens per frame of the reducers that spread the budget over the frames
    (``uniform``, ``visionzip``, ``visionzip-release``): :func:`frame_counts` of the exact
    budget, a pure function of the settings and the video's shape (their registry entries'
    ``frame_counts``)."""
    return spread(resolve_budget(config, frames, pooled_per_frame), frames)


def frame_counts(budget: int, frames: int, device=None) -> torch.Tensor:
    """(F,) long: ``budget`` spread over the frames as evenly as possible, earlier frames first
    (the same rule as AOT's exact mode without a temporal phase)."""
    return torch.tensor(spread(budget, frames), dtype=torch.long, device=device)


def retention_for_budget(budget: int, frames: int, pooled_per_frame: int) -> float:
    """An ``exact_retention`` r with ``exact_budget(r, frames, pooled) == budget``.

    ``budget / available`` already rounds back to ``budget`` (floor(B + 0.5 - tiny) = B); the
    loop guards against a float landing on the wrong side and never runs more than a few steps.
    """
    available = frames * pooled_per_frame
    if not 1 <= budget <= available:
        raise ValueError(f"budget={budget} tokens is outside [1, {available}]")
    r = budget / available
    for _ in range(8):
        got = exact_budget(r, frames, pooled_per_frame)
        if got == budget:
            return r
        r = min(1.0, math.nextafter(r, math.inf if got < budget else 0.0))
    raise ValueError(f"budget={budget}: no retention maps exactly to it "
                     f"({frames} frames x {pooled_per_frame})")


def flatten_slots(tokens: torch.Tensor, positions: torch.Tensor, kinds: torch.Tensor,
                  valid: torch.Tensor):
    """Per-frame padded slots -> the flat frame-major sequence of ReducedVideo.

    Args:
        tokens: (F, S, D); positions, kinds: (F, S); valid: (F, S) bool.
    Returns:
        tokens (T, D), token_frame (T,), token_position (T,), token_kind (T,) int8, in frame
        order and slot order inside a frame.
    """
    frame_ids, slots = torch.nonzero(valid, as_tuple=True)  # row-major = frame-major
    return (tokens[frame_ids, slots], frame_ids, positions[frame_ids, slots],
            kinds[frame_ids, slots].to(torch.int8))


def make_result(tokens, token_frame, token_position, token_kind, *, frames: int,
                grid: tuple[int, int], pooled: tuple[int, int], survivors: torch.Tensor,
                kept: torch.Tensor | None = None, merged: torch.Tensor | None = None,
                clips=None) -> ReducedVideo:
    """A ReducedVideo for a reducer without AOT anchors (anchor masks all False).

    grid, pooled: (rows, cols) of the patch grid and of the pooled grid.
    survivors / kept / merged: (F, pooled_rows * pooled_cols) bool on the pooled grid (kept /
    merged default to all False: no temporal phase).
    """
    device = tokens.device
    no_anchor = torch.zeros(frames, *grid, dtype=torch.bool, device=device)
    pooled_square = (frames, *pooled)
    none = torch.zeros(pooled_square, dtype=torch.bool, device=device)
    return ReducedVideo(
        tokens=tokens, token_frame=token_frame, token_position=token_position,
        token_kind=token_kind, local_anchors=no_anchor, global_anchors=no_anchor.clone(),
        survivors=survivors.reshape(pooled_square),
        temporal_kept=none if kept is None else kept.reshape(pooled_square),
        temporal_merged=none.clone() if merged is None else merged.reshape(pooled_square),
        clips=list(clips or []), grid_shape=tuple(grid), pooled_shape=tuple(pooled))


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half inputs (similarities and averages), float64 stays float64."""
    return torch.promote_types(x.dtype, torch.float32)


def density_peaks(points: torch.Tensor, knn: int, noise: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN's density-peak scores, as HoliTom, FlashVID and FastVID release them.

    Args:
        points: (..., n, C) one or more point sets (e.g. a frame's tokens per leading index).
        knn: neighbours of the density, the point itself included (at most n).
        noise: (..., n) added to the densities (the releases' ``rand * 1e-6`` tie breaker).
    Returns:
        scores (..., n) ``density * delta`` and distances (..., n, n) ``cdist / sqrt(C)``, with
        density = ``exp(-mean of the knn smallest d^2)`` and delta = the distance to the nearest
        denser point of the set (the set's largest distance for its densest point).
    """
    distance = torch.cdist(points, points) / math.sqrt(points.shape[-1])          # (..., n, n)
    nearest = torch.topk(distance, knn, dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp() + noise.to(distance)            # (..., n)
    denser = density[..., None, :] > density[..., :, None]          # [..., i, j]: j denser
    farthest = distance.flatten(-2).max(dim=-1).values[..., None, None]
    delta = torch.where(denser, distance, farthest).min(dim=-1).values
    return delta * density, distance

