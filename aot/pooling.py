"""The backbones' native 2x2 pooling, applied alike to features and to anchor masks (§4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import POOLING_MODES


def pooled_side(grid: int, mode: str) -> int:
    """Side of the pooled grid: ceil(grid / 2) for bilinear (OV), floor(grid / 2) for average,
    the grid itself for none."""
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling={mode!r}: expected one of {POOLING_MODES}")
    if mode == "none":
        return grid
    return math.ceil(grid / 2) if mode == "bilinear" else max(grid // 2, 1)


def pool_grid(values: torch.Tensor, grid: int, mode: str) -> torch.Tensor:
    """Pool per-token values laid out on a square grid.

    Args:
        values: (F, grid*grid, D) token features, or (F, grid*grid) scalars (masks, scores).
        grid: side of the grid.
        mode: ``"bilinear"``: resize to ceil(grid/2) with ``align_corners=False`` (LLaVA-OV);
            ``"average"``: 2x2 average pool, stride 2, dropping an odd last row/column
            (LLaVA-Video); a 1x1 grid stays as it is; ``"none"``: unchanged.
    Returns:
        (F, side*side, D) or (F, side*side), row-major, in the input dtype.
    """
    if mode == "none":
        return values
    squeeze = values.dim() == 2
    x = values[..., None] if squeeze else values
    frames, tokens, dim = x.shape
    side = pooled_side(grid, mode)
    x = x.reshape(frames, grid, grid, dim).permute(0, 3, 1, 2)
    if mode == "bilinear":
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    elif grid >= 2:
        x = F.avg_pool2d(x, kernel_size=2, stride=2)
    x = x.permute(0, 2, 3, 1).reshape(frames, side * side, dim)
    return x[..., 0] if squeeze else x
