"""Patch-grid geometry and the backbones' native 2x2 pooling, applied alike to features and to
anchor masks (docs/knobs.md: ``pooling``).

A frame's patch grid is ``(rows, cols)``; tokens are laid out row-major (token ``r * cols + c``).
Every function that takes a ``grid`` accepts the side of a square grid (``27``, as the released
code) or a ``(rows, cols)`` pair (native-resolution backbones such as Qwen2.5-VL give e.g. 12x20
landscape or 20x12 portrait frames); :func:`grid_shape` is the one place that reads it.
"""

from __future__ import annotations

import functools
import math
import operator

import torch
import torch.nn.functional as F

from .config import POOLING_MODES
from .ops import frame_columns, frame_offsets, frames_per_chunk


def grid_shape(grid) -> tuple[int, int]:
    """``(rows, cols)`` of a patch grid given as a square's side or as a ``(rows, cols)`` pair.

    Raises:
        ValueError: not a positive side or a pair of positive integers.
    """
    try:
        if isinstance(grid, bool):
            raise TypeError
        if isinstance(grid, (tuple, list, torch.Size)):
            rows, cols = (operator.index(x) for x in grid)
        else:
            rows = cols = operator.index(grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid={grid!r}: expected the side of a square patch grid or a "
                         f"(rows, cols) pair of positive integers") from None
    if isinstance(rows, bool) or isinstance(cols, bool) or rows < 1 or cols < 1:
        raise ValueError(f"grid={grid!r}: expected positive rows and cols")
    return int(rows), int(cols)


def check_grid_tokens(grid, tokens: int, name: str = "features") -> tuple[int, int]:
    """:func:`grid_shape` of ``grid``, checked against a frame's token count."""
    rows, cols = grid_shape(grid)
    if rows * cols != tokens:
        raise ValueError(f"grid {rows}x{cols} has {rows * cols} tokens but {name} hold {tokens} "
                         f"tokens per frame")
    return rows, cols


def pooled_side(grid: int, mode: str) -> int:
    """Length of one pooled axis: ceil(n / 2) for bilinear (OV), floor(n / 2) (at least 1) for
    average, n itself for none."""
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling={mode!r}: expected one of {POOLING_MODES}")
    if mode == "none":
        return grid
    return math.ceil(grid / 2) if mode == "bilinear" else max(grid // 2, 1)


def pooled_shape(grid, mode: str) -> tuple[int, int]:
    """``(rows, cols)`` of the pooled grid: :func:`pooled_side` applied to each axis."""
    rows, cols = grid_shape(grid)
    return pooled_side(rows, mode), pooled_side(cols, mode)


def pool_grid(values: torch.Tensor, grid, mode: str) -> torch.Tensor:
    """Pool per-token values laid out on a patch grid.

    Args:
        values: (F, rows*cols, D) token features, or (F, rows*cols) scalars (masks, scores).
        grid: the square's side or ``(rows, cols)``.
        mode: ``"bilinear"``: resize each axis to ceil(n/2) with ``align_corners=False``
            (LLaVA-OV); ``"average"``: 2x2 average pool, stride 2, dropping an odd last
            row/column (LLaVA-Video); an axis of length 1 is not pooled (a 1x1 grid stays as it
            is); ``"none"``: unchanged (Qwen, whose merger already pooled).
    Returns:
        (F, pr*pc, D) or (F, pr*pc), row-major, in the input dtype, (pr, pc) =
        :func:`pooled_shape`.
    """
    if mode == "none":
        return values
    squeeze = values.dim() == 2
    x = values[..., None] if squeeze else values
    frames, tokens, dim = x.shape
    rows, cols = check_grid_tokens(grid, tokens, "values")
    out_rows, out_cols = pooled_shape((rows, cols), mode)
    x = x.reshape(frames, rows, cols, dim).permute(0, 3, 1, 2)
    if mode == "bilinear":
        x = F.interpolate(x, size=(out_rows, out_cols), mode="bilinear", align_corners=False)
    else:
        kernel = (2 if rows >= 2 else 1, 2 if cols >= 2 else 1)
        if kernel != (1, 1):
            x = F.avg_pool2d(x, kernel_size=kernel, stride=kernel)
    x = x.permute(0, 2, 3, 1).reshape(frames, out_rows * out_cols, dim)
    return x[..., 0] if squeeze else x


@functools.lru_cache(maxsize=16)
def _pooling_taps(grid: tuple[int, int], mode: str,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = grid[0] * grid[1]
    matrix = pool_grid(torch.eye(tokens, dtype=torch.float64)[None], grid, mode)[0]  # (P, T)
    width = int((matrix != 0).sum(1).max())
    taps = torch.sort(torch.topk(matrix.abs(), width, dim=1).indices, dim=1).values
    return taps.to(device), matrix.gather(1, taps).to(device)


def pooling_taps(grid, mode: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooling as a stencil: pooled token p = sum_k weights[p, k] * token taps[p, k].

    Read off :func:`pool_grid` applied to the identity, so it is the same operation by
    construction (bilinear 27 -> 14: 4 taps per pooled token; average: 4 taps of 1/4).

    Returns:
        taps (P, K) long, weights (P, K) float64 (a zero weight pads a shorter stencil),
        P = pooled tokens per frame.
    """
    return _pooling_taps(grid_shape(grid), mode, torch.device(device or "cpu"))


@functools.lru_cache(maxsize=16)
def _taps_in(grid: tuple[int, int], mode: str, device: torch.device,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pooling_taps` with the weights in ``dtype`` (made once; read-only)."""
    taps, weights = _pooling_taps(grid, mode, device)
    return taps, weights.to(dtype)


def pool_at(features: torch.Tensor, positions: torch.Tensor, grid, mode: str, *,
            anchor_idx: torch.Tensor | None = None, merged: torch.Tensor | None = None,
            chunk_frames: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Selected pooled tokens of the features with the anchor rows replaced by ``merged``.

    ``pool_at(x, pos, ...)[f, s] == pool_grid(x', grid, mode)[f, pos[f, s]]`` where x' is x with
    ``x'[f, anchor_idx[f, n]] = merged[f, n]``, but neither x' nor the full pooled grid is
    written: each requested token is a weighted sum (:func:`pooling_taps`) of rows read from
    ``features`` (ordinary tokens) or from ``merged`` (anchors). Only the taps of the requested
    tokens are read (about 15% of the patch rows for the ~27 survivors of 196 on OV).

    Args:
        features: (F, T, D) patch features, T = rows * cols of ``grid``.
        positions: (F, S) long pooled-token indices to compute.
        anchor_idx: (F, N) long; merged: (F, N, D), or both None (plain pooling).
        chunk_frames: frames per gather (default: as many as fit
            :func:`aot.ops.scratch_bytes` of float32 sums and upcast copy of a half-precision
            input); the result does not depend on it.
        out: an (F, S, D) tensor in the dtype of ``features`` to write the result into (e.g.
            the head of a buffer that also holds other rows).
    Returns:
        (F, S, D) in the dtype of ``features``; sums are taken in float32 (float64 stays).
    """
    frames, tokens, dim = features.shape
    work = torch.float64 if features.dtype == torch.float64 else torch.float32
    if chunk_frames is None:  # the sums of a chunk (two per token) and its dense copy, if any
        copied = tokens * dim if work != features.dtype or not features.is_contiguous() else 0
        chunk_frames = frames_per_chunk((2 * positions.shape[1] * dim + copied) * work.itemsize,
                                        frames, device=features.device)
    taps, weights = _taps_in(grid_shape(grid), mode, torch.device(features.device), work)
    width = taps.shape[1]
    # Every requested token's taps, their weights and which of them are anchors, for all frames
    # at once; the chunks below only gather.
    tap = taps[positions]  # (F, S, K) token index of each tap
    w = weights[positions]
    dense = work == features.dtype and features.is_contiguous()
    rows_at = tap + frame_offsets(frames, tokens, features.device)[:, :, None] if dense else tap
    if merged is None:
        own_weight, merged_weight, slot_at = w, None, None
    else:
        slot = torch.full((frames, tokens), -1, dtype=torch.long, device=features.device)
        slot.scatter_(1, anchor_idx, frame_columns(frames, anchor_idx.shape[1], features.device)
                      .view_as(anchor_idx))
        tap_slot = torch.gather(slot, 1, tap.reshape(frames, -1)).view_as(tap)
        is_anchor = tap_slot >= 0
        # w - own is w on anchor taps and exactly +0 elsewhere, as a masked fill would give
        own_weight = w.masked_fill(is_anchor, 0.0)
        merged_weight = w.sub_(own_weight)
        slot_at = tap_slot.clamp_(min=0).add_(
            frame_offsets(frames, merged.shape[1], features.device)[:, :, None])
        merged_rows = merged.to(work).reshape(-1, dim)
    # dense rows: a strided table takes another kernel, whose sums differ in the last bit
    table = features.reshape(-1, dim) if dense else None
    if out is None:
        out = torch.empty(frames, positions.shape[1], dim, dtype=features.dtype,
                          device=features.device)
    for start in range(0, frames, chunk_frames):
        stop = min(start + chunk_frames, frames)
        if dense:
            rows, chunk_table = rows_at[start:stop], table
        else:  # the chunk's upcast (or dense) copy, indexed from its own first row
            rows = rows_at[start:stop] + frame_offsets(stop - start, tokens,
                                                        features.device)[:, :, None]
            chunk_table = features[start:stop].to(work).reshape(-1, dim).contiguous()
        # bags of ``width`` taps: flat indices with their offsets, as the 2-D form makes them
        bags = _bag_offsets((stop - start) * positions.shape[1], width, features.device)
        pooled = F.embedding_bag(rows.reshape(-1), chunk_table, bags,
                                 per_sample_weights=own_weight[start:stop].reshape(-1),
                                 mode="sum").view(stop - start, -1, dim)
        if merged is None:
            out[start:stop] = pooled
        else:  # the two sums added in the working dtype, rounded once into the output
            torch.add(pooled, F.embedding_bag(
                slot_at[start:stop].reshape(-1), merged_rows, bags,
                per_sample_weights=merged_weight[start:stop].reshape(-1),
                mode="sum").view(stop - start, -1, dim), out=out[start:stop])
    return out


@functools.lru_cache(maxsize=16)
def _bag_offsets(bags: int, width: int, device: torch.device) -> torch.Tensor:
    """(bags,) long ``0, width, 2 * width, ...``: where each bag starts (read-only)."""
    return torch.arange(0, bags * width, width, device=device)
