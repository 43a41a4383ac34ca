"""``uniform``: every frame's pooled grid average-pooled down to its share of the budget.

The honest floor of any reducer comparison: no attention, no similarity, only spatial averaging.
A count k that is not a square still gets exactly k tokens: the grid is cut into h bands of rows
(:func:`band_count`: ``ceil(sqrt(k))`` on a square grid, more bands on a portrait grid, fewer on a
landscape one, so regions stay about square), band i holds ``w_i`` tokens (k spread over the
bands, earlier bands taking the extra one, so ``w_i`` is ``ceil(k / h)`` or one less), and each
token averages its band's rows over an adaptive-pooling column range. On a square grid, square k
gives plain ``adaptive_avg_pool2d`` to ``sqrt(k) x sqrt(k)``; k = rows * cols is the identity.
"""

from __future__ import annotations

import functools
import math

import torch

from ..config import AOTConfig
from ..pooling import grid_shape, pool_grid
from ..result import ReducedVideo
from ..result import KIND_FRAME
from .common import flatten_slots, frame_counts, make_result, resolve_budget, validate, work_dtype


def _bounds(index: torch.Tensor, parts: torch.Tensor, size: int):
    """Adaptive-pooling range of output ``index`` of ``parts`` over ``size`` inputs (as torch's
    adaptive pooling): ``[floor(i * size / parts), ceil((i + 1) * size / parts))``."""
    start = torch.div(index * size, parts, rounding_mode="floor")
    stop = torch.div((index + 1) * size + parts - 1, parts, rounding_mode="floor")
    return start, stop


def band_count(grid, count: int) -> int:
    """Bands of rows that ``count`` region tokens of a ``(rows, cols)`` grid are laid out in.

    The smallest b with ``b^2 * cols >= count * rows`` (regions about as tall as wide, so
    ``ceil(sqrt(count))`` on a square grid), kept within ``ceil(count / cols) .. min(rows,
    count)`` so that no band holds more regions than it has columns or none at all, nor are
    there more bands than rows.
    """
    rows, cols = grid_shape(grid)
    bands = math.isqrt(count * rows // cols)
    while bands * bands * cols < count * rows:
        bands += 1
    return max(min(bands, rows, count), -(-count // cols))


def pooling_matrix(grid, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights that average a pooled grid into exactly ``count`` region tokens.

    Args:
        grid: the pooled grid, a square's side (14 for LLaVA-OV, 13 for LLaVA-Video) or
            ``(rows, cols)`` (a native-resolution Qwen frame, e.g. (12, 20)).
        count: tokens wanted, 1 <= count <= rows * cols.
    Returns:
        weights (count, rows*cols) float32, each row a uniform average over a rectangle (rows
        sum to 1), and centres (count,) long: the row-major grid index of each rectangle's
        centre cell (distinct, ascending), used as the token's position.
    """
    return _pooling_matrix(grid_shape(grid), count)


@functools.lru_cache(maxsize=512)
def _pooling_matrix(grid: tuple[int, int], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = grid
    if not 1 <= count <= rows * cols:
        raise ValueError(f"pooling_matrix: count={count} outside [1, {rows * cols}] for the "
                         f"{rows}x{cols} grid")
    bands = band_count(grid, count)
    widths = torch.tensor([count // bands + (i < count % bands) for i in range(bands)])
    band = torch.repeat_interleave(torch.arange(bands), widths)  # (count,) band of each token
    offsets = torch.cumsum(widths, 0) - widths
    column = torch.arange(count) - offsets[band]
    row_start, row_stop = _bounds(band, torch.tensor(bands), rows)
    col_start, col_stop = _bounds(column, widths[band], cols)
    in_rows = (torch.arange(rows)[None] >= row_start[:, None]) & \
        (torch.arange(rows)[None] < row_stop[:, None])
    in_cols = (torch.arange(cols)[None] >= col_start[:, None]) & \
        (torch.arange(cols)[None] < col_stop[:, None])
    weights = (in_rows[:, :, None] & in_cols[:, None, :]).reshape(count, rows * cols).float()
    weights = weights / weights.sum(1, keepdim=True)
    centres = ((row_start + row_stop - 1) // 2) * cols + (col_start + col_stop - 1) // 2
    return weights, centres


def pool_to_counts(pooled: torch.Tensor, grid, counts: torch.Tensor):
    """Average-pool each frame's grid to its own token count.

    Args:
        pooled: (F, rows*cols, D) pooled features.
        grid: the pooled grid, a square's side or ``(rows, cols)``.
        counts: (F,) long, tokens per frame (0 allowed); at most two distinct values in practice.
    Returns:
        tokens (F, S, D), positions (F, S) long, valid (F, S) bool with S = max(counts).
    """
    frames, _, dim = pooled.shape
    width = int(counts.max()) if frames else 0
    tokens = pooled.new_zeros(frames, width, dim)
    positions = torch.zeros(frames, width, dtype=torch.long, device=pooled.device)
    # One batched matmul per distinct count (a budget spread over frames has at most two).
    for count in torch.unique(counts).tolist():
        if count == 0:
            continue
        ids = torch.nonzero(counts == count).flatten()
        weights, centres = pooling_matrix(grid, count)
        weights = weights.to(device=pooled.device, dtype=pooled.dtype)
        tokens[ids, :count] = weights @ pooled[ids]
        positions[ids, :count] = centres.to(pooled.device)
    valid = torch.arange(width, device=pooled.device)[None, :] < counts[:, None]
    return tokens, positions, valid


def reduce_uniform(features: torch.Tensor, shallow_attention: torch.Tensor,
                   deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                   budget: int | None = None, frame_features: torch.Tensor | None = None,
                   grid=None) -> ReducedVideo:
    """Uniform spatial pooling of every frame to its share of the budget.

    Args:
        features: (F, T, D) projected patch features, T = rows * cols.
        shallow_attention, deep_attention: (F, T); only validated (uniform ignores attention).
        config: uses ``pooling`` and ``exact_retention`` (default :class:`AOTConfig`).
        budget: exact token count; overrides ``config.exact_retention``.
        frame_features: ignored (accepted for AOT's signature).
        grid: the patch grid, ``(rows, cols)`` or a square's side (as :func:`aot.reduce_video`).
    Returns:
        :class:`ReducedVideo` with exactly the budget's tokens, frame-major; frame f gets
        ``spread(budget, F)[f]`` tokens. ``token_position`` / ``survivors`` mark the centre
        cell of each pooled region.
    """
    config = config or AOTConfig()
    grid, pooled_grid = validate(features, shallow_attention, deep_attention, config, grid)
    pooled_count = pooled_grid[0] * pooled_grid[1]
    frames = features.shape[0]
    total = resolve_budget(config, frames, pooled_count, budget, reducer="uniform")
    counts = frame_counts(total, frames, features.device)
    pooled = pool_grid(features.to(work_dtype(features)), grid, config.pooling)
    tokens, positions, valid = pool_to_counts(pooled, pooled_grid, counts)
    kinds = torch.full_like(positions, KIND_FRAME)
    out, frame_ids, token_position, token_kind = flatten_slots(tokens, positions, kinds, valid)
    survivors = torch.zeros(frames, pooled_count, dtype=torch.bool, device=features.device)
    survivors[frame_ids, token_position] = True
    return make_result(out.to(features.dtype), frame_ids, token_position, token_kind,
                       frames=frames, grid=grid, pooled=pooled_grid, survivors=survivors)
