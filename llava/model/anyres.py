"""LLaVA-OneVision's high-resolution images ("anyres"), as the lmms-lab checkpoints define them.

An image of (width, height) pixels is seen twice by the tower (``image_aspect_ratio:
anyres_max_9`` with ``mm_patch_merge_type: spatial_unpad``):

1. the base view: the whole image squashed to the tower's base resolution S (384);
2. crops: the image is resized to fit the best grid resolution of ``image_grid_pinpoints``
   (aspect kept, centred on black), then cut into ``rows x cols`` tiles of S x S.

Each tile gives a ``g x g`` patch grid (g = 27). The crops' grids are stitched into one
``(rows*g) x (cols*g)`` map, the rows/columns that only saw the black padding are cut off
(unpadding), and if the map still holds more than ``max_tiles`` tiles' worth of patches (by more
than 10 %) it is bilinearly shrunk to about that size. The LLM then reads the base view's ``g*g``
tokens followed by the map row by row, each row ending in the learned ``image_newline``.

Sizes are (width, height) as PIL reports them, and pinpoints are [width, height] pairs, as in
LLaVA-NeXT (transformers' LlavaOnevision reads both as (height, width); the published pinpoint
lists are symmetric, so the two agree on them). Geometry only here: the PIL side is
:func:`llava.mm_utils.process_images`, the model side ``LlavaMetaForCausalLM.image_tokens``.
"""

from __future__ import annotations

import ast
import math
import re

import torch
import torch.nn.functional as F

#: How much larger than ``max_tiles`` tiles the unpadded map may be before it is shrunk.
DOWNSCALE_TOLERANCE = 1.1


def max_tiles_of(aspect_ratio) -> int | None:
    """``"anyres_max_9"`` -> 9; ``"anyres"`` -> None (no limit).

    Raises ValueError for any other ``image_aspect_ratio`` (single-view images never get here).
    """
    text = str(aspect_ratio)
    if text == "anyres":
        return None
    match = re.fullmatch(r"anyres_max_(\d+)", text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"image_aspect_ratio={aspect_ratio!r}: expected 'anyres' or "
                         "'anyres_max_<N>' (N >= 1) for high-resolution crops")
    return int(match.group(1))


def is_anyres(aspect_ratio) -> bool:
    """Whether ``image_aspect_ratio`` asks for base view + crops."""
    return str(aspect_ratio) == "anyres" or str(aspect_ratio).startswith("anyres_max")


def parse_pinpoints(pinpoints, base: int) -> list[tuple[int, int]]:
    """Candidate (width, height) resolutions of ``image_grid_pinpoints``.

    Accepts the three forms checkpoints use: a list of [w, h] pairs, the same list as a string,
    or a tile range ``"(1x1),...,(6x6)"`` (every grid from the first to the last, in multiples
    of ``base``).
    """
    if isinstance(pinpoints, str) and "x" in pinpoints:
        ends = re.findall(r"\((\d+)x(\d+)\)", pinpoints)
        if len(ends) < 1:
            raise ValueError(f"image_grid_pinpoints={pinpoints!r}: expected '(AxB),...,(CxD)'")
        (w0, h0), (w1, h1) = map(int, ends[0]), map(int, ends[-1])
        return [(i * base, j * base) for i in range(w0, w1 + 1) for j in range(h0, h1 + 1)]
    if isinstance(pinpoints, str):
        pinpoints = ast.literal_eval(pinpoints)
    try:
        out = [(int(w), int(h)) for w, h in pinpoints]
    except (TypeError, ValueError):
        raise ValueError(f"image_grid_pinpoints={pinpoints!r}: expected [[width, height], ...]")
    if not out or any(w < base or h < base for w, h in out):
        raise ValueError(f"image_grid_pinpoints={pinpoints!r}: expected a non-empty list of "
                         f"resolutions of at least {base}x{base}")
    return out


def select_best_resolution(image_size: tuple[int, int],
                           resolutions: list[tuple[int, int]]) -> tuple[int, int]:
    """The (width, height) candidate that keeps the most of the image's pixels when it is
    resized into it (aspect kept, never enlarged beyond the original pixel count), ties broken
    by the least padding, then by list order."""
    width, height = image_size
    best, best_kept, best_waste = None, 0, math.inf
    for cand_w, cand_h in resolutions:
        scale = min(cand_w / width, cand_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (cand_w, cand_h), kept, waste
    return best


def fit_within(image_size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the image resized to fit ``target`` with its aspect kept (the side
    that limits is exact, the other rounded up and capped)."""
    width, height = image_size
    target_w, target_h = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return target_w, min(math.ceil(height * scale_w), target_h)
    return min(math.ceil(width * scale_h), target_w), target_h


def grid_shape(image_size: tuple[int, int], pinpoints, base: int) -> tuple[int, int]:
    """(cols, rows) of crops for an image of ``image_size`` = (width, height)."""
    width, height = select_best_resolution(image_size, parse_pinpoints(pinpoints, base))
    return width // base, height // base


def num_tiles(image_size: tuple[int, int], pinpoints, base: int) -> int:
    """Tiles the tower sees for one image: 1 base view + cols * rows crops."""
    cols, rows = grid_shape(image_size, pinpoints, base)
    return 1 + cols * rows


def unpadded_bounds(map_height: int, map_width: int,
                    image_size: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of a (map_height, map_width) crop map that hold the image rather than
    the black padding of :func:`fit_within`.

    LLaVA-NeXT's rule, kept exactly: the padded side keeps ``int(side * scale)`` plus the odd
    remainder (the cut is ``(padded - kept) // 2`` at both ends); ``int`` truncates without
    rounding (transformers rounds to 7 decimals first, which can keep one more row or column
    when the product lands a hair below an integer).
    """
    width, height = image_size
    if width / height > map_width / map_height:
        kept = int(height * (map_width / width))
        cut = (map_height - kept) // 2
        return slice(cut, map_height - cut), slice(0, map_width)
    kept = int(width * (map_height / height))
    cut = (map_width - kept) // 2
    return slice(0, map_height), slice(cut, map_width - cut)


def downscaled_size(height: int, width: int, max_tiles: int | None,
                    grid: int) -> tuple[int, int] | None:
    """The anyres_max rule: (height, width) to shrink an unpadded (height, width) map to, or
    None when it holds at most ``max_tiles`` tiles of ``grid x grid`` patches (10 % slack)."""
    if max_tiles is None:
        return None
    times = math.sqrt(height * width / (max_tiles * grid ** 2))
    if times <= DOWNSCALE_TOLERANCE:
        return None
    return int(height // times), int(width // times)


def stitch_crops(crops: torch.Tensor, cols: int, rows: int) -> torch.Tensor:
    """Crop features in reading order -> one feature map.

    Args:
        crops: (rows * cols, g * g, D), crop r * cols + c at grid row r, column c.
    Returns:
        (D, rows * g, cols * g).
    """
    tiles, tokens, dim = crops.shape
    grid = math.isqrt(tokens)
    if tiles != rows * cols or grid * grid != tokens:
        raise ValueError(f"{tiles} crops of {tokens} tokens do not form a {rows}x{cols} grid of "
                         "square patch grids")
    x = crops.reshape(rows, cols, grid, grid, dim)
    return x.permute(4, 0, 2, 1, 3).reshape(dim, rows * grid, cols * grid)


def pack_image(tiles: torch.Tensor, image_size: tuple[int, int], pinpoints, base: int,
               max_tiles: int | None, newline: torch.Tensor | None) -> torch.Tensor:
    """One anyres image's projected tile features -> its token sequence for the LLM.

    Args:
        tiles: (1 + rows * cols, g * g, D); tile 0 is the base view, then the crops in
            reading order (as :func:`llava.mm_utils.process_images` makes them).
        image_size: the original (width, height).
        pinpoints / base: ``image_grid_pinpoints`` and the tower's input side (384).
        max_tiles: N of ``anyres_max_N`` or None for plain ``anyres``.
        newline: (D,) appended to every row of the crop map, or None (no newlines).
    Returns:
        (g * g + h * (w + [1]), D): base view tokens, then the unpadded (and maybe shrunk)
        h x w crop map row by row.
    """
    cols, rows = grid_shape(image_size, pinpoints, base)
    if tiles.shape[0] != 1 + rows * cols:
        raise ValueError(
            f"an image of size {tuple(image_size)} (width, height) needs 1 + {rows}x{cols} tiles "
            f"with image_grid_pinpoints={pinpoints}, but {tiles.shape[0]} were given; preprocess "
            "it with llava.mm_utils.process_images and pass image_sizes=[image.size]")
    base_view, grid = tiles[0], math.isqrt(tiles.shape[1])
    crop_map = stitch_crops(tiles[1:], cols, rows)
    row_slice, col_slice = unpadded_bounds(crop_map.shape[1], crop_map.shape[2], image_size)
    crop_map = crop_map[:, row_slice, col_slice]
    shrunk = downscaled_size(crop_map.shape[1], crop_map.shape[2], max_tiles, grid)
    if shrunk is not None:
        crop_map = F.interpolate(crop_map[None], list(shrunk), mode="bilinear")[0]
    dim, height, width = crop_map.shape
    if newline is not None:
        line_end = newline.to(crop_map.dtype)[:, None, None].expand(dim, height, 1)
        crop_map = torch.cat([crop_map, line_end], dim=2)
    return torch.cat([base_view, crop_map.flatten(1).transpose(0, 1)], dim=0)


def image_token_count(image_size: tuple[int, int], pinpoints, base: int, grid: int,
                      max_tiles: int | None, newline: bool = True) -> int:
    """Length of :func:`pack_image`'s output, from the geometry alone (no features)."""
    cols, rows = grid_shape(image_size, pinpoints, base)
    row_slice, col_slice = unpadded_bounds(rows * grid, cols * grid, image_size)
    height = len(range(rows * grid)[row_slice])
    width = len(range(cols * grid)[col_slice])
    shrunk = downscaled_size(height, width, max_tiles, grid)
    if shrunk is not None:
        height, width = shrunk
    return grid * grid + height * (width + int(newline))
