"""From per-frame patch features to the visual token sequence the LLM reads (pure functions).

Layouts (``mm_newline_position`` of the LLaVA-NeXT config; ``newline=None`` means no newlines,
LLaVA-NeXT's ``flat`` patch merge):

* ``"one_token"`` (LLaVA-OneVision): all frames' tokens, then one newline after the whole video.
* ``"grid"`` (LLaVA-Video): per frame, row by row, each row followed by a newline
  (13 x (13 + 1) = 182 tokens per frame after 2x2 average pooling).
* ``"frame"``: each frame's tokens followed by one newline.
* ``"no_token"``: tokens only.

With AOT (:func:`pack_aot`) the tokens are those of an :class:`aot.ReducedVideo`. ``one_token`` and
``no_token`` keep AOT's order exactly (the released OV behaviour). ``grid`` and ``frame`` lay the
tokens out on their frames: tokens are sorted by (frame, row, position, kind) and every row (or
frame) gets its newline even when none of its tokens survived. With the temporal phase off this
is AOT's own order (frame by frame, row-major), which is the released LLaVA-Video behaviour. With
the temporal phase on (not released for LLaVA-Video) it is our rule: kept tokens sit on their own
frame's rows, and a clip's merged anchors sit on the keyframe's rows right after the keyframe's
original token at the same position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POOL_MODES = ("bilinear", "average", "max")
NEWLINE_POSITIONS = ("grid", "frame", "one_token", "no_token")


def pooled_side(grid: int, mode: str, stride: int = 2) -> int:
    """Side of the pooled grid: ceil(grid/stride) for bilinear, floor(grid/stride) otherwise.

    The checkpoint's rule (any ``mm_spatial_pool_stride``, ``max`` too, in the config's names);
    :func:`aot.pooling.pooled_side` is AOT's stride-2 rule in ``AOTConfig.pooling``'s names."""
    check_pooling(mode, stride)
    if stride == 1:
        return grid
    return math.ceil(grid / stride) if mode == "bilinear" else grid // stride


def check_pooling(mode: str, stride: int) -> None:
    if mode not in POOL_MODES:
        raise ValueError(f"mm_spatial_pool_mode={mode!r}: expected one of {POOL_MODES}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"mm_spatial_pool_stride={stride!r}: expected a positive integer")


def pool_frames(features: torch.Tensor, mode: str, stride: int = 2) -> torch.Tensor:
    """The backbone's spatial pooling.

    Args:
        features: (F, T, D) with T = grid * grid.
        mode: ``"bilinear"`` (resize to ceil(grid/stride), align_corners=False), ``"average"`` or
            ``"max"`` (kernel = stride = ``stride``, odd remainder dropped).
    Returns:
        (F, side, side, D).
    """
    frames, tokens, dim = features.shape
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"{tokens} tokens per frame do not form a square grid")
    side = pooled_side(grid, mode, stride)
    x = features.reshape(frames, grid, grid, dim).permute(0, 3, 1, 2)
    if stride > 1:
        if mode == "bilinear":
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        elif mode == "average":
            x = F.avg_pool2d(x, stride)
        else:
            x = F.max_pool2d(x, stride)
    return x.permute(0, 2, 3, 1).contiguous()


def check_newline_position(position: str) -> None:
    if position not in NEWLINE_POSITIONS:
        raise ValueError(f"mm_newline_position={position!r}: expected one of {NEWLINE_POSITIONS}")


def pack_frames(pooled: torch.Tensor, newline: torch.Tensor | None, position: str) -> torch.Tensor:
    """Unreduced video: pooled (F, side, side, D) -> (L, D) token sequence with newlines."""
    check_newline_position(position)
    frames, side, _, dim = pooled.shape
    if newline is None or position == "no_token":
        return pooled.reshape(-1, dim)
    newline = newline.to(device=pooled.device, dtype=pooled.dtype)
    if position == "grid":
        rows = torch.cat([pooled, newline.expand(frames, side, 1, dim)], dim=2)
        return rows.reshape(-1, dim)
    if position == "frame":
        flat = pooled.reshape(frames, side * side, dim)
        return torch.cat([flat, newline.expand(frames, 1, dim)], dim=1).reshape(-1, dim)
    return torch.cat([pooled.reshape(-1, dim), newline[None]], dim=0)


def pack_aot(result, newline: torch.Tensor | None, position: str,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """AOT-reduced video: ``result`` (an :class:`aot.ReducedVideo`) -> (L, D) sequence.

    L = result.num_tokens + newlines, newlines = F * side (grid), F (frame), 1 (one_token),
    0 (no_token or ``newline`` None).
    """
    check_newline_position(position)
    tokens = result.tokens if dtype is None else result.tokens.to(dtype)
    if newline is None or position == "no_token":
        return tokens
    newline = newline.to(device=tokens.device, dtype=tokens.dtype)
    if position == "one_token":
        return torch.cat([tokens, newline[None]], dim=0)
    frames, side = result.num_frames, result.pooled_grid
    device = tokens.device
    per_frame = side * side
    frame = result.token_frame.to(device=device, dtype=torch.long)
    spot = result.token_position.to(device=device, dtype=torch.long)
    kind = result.token_kind.to(device=device, dtype=torch.long)
    # Sort keys: (line, is_newline, position, kind) packed into one int64; a "line" is a row of
    # a frame (grid) or a whole frame (frame). Kinds are 0..2, so 3 slots per position.
    if position == "grid":
        line = frame * side + torch.div(spot, side, rounding_mode="floor")
        lines = frames * side
    else:
        line = frame
        lines = frames
    span = per_frame * 3
    token_keys = (line * 2) * span + spot * 3 + kind
    newline_keys = (torch.arange(lines, device=device) * 2 + 1) * span
    order = torch.argsort(torch.cat([token_keys, newline_keys]), stable=True)
    values = torch.cat([tokens, newline.expand(lines, -1)], dim=0)
    return values[order]
