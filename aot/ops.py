"""Generic tensor helpers shared by the AOT stages and the baselines (one home for each).

Everything here is batched over a leading axis, sync-free (no ``.item()`` or data-dependent
shapes unless a width is not given) and breaks ties towards the lower index.
"""

from __future__ import annotations

import functools
import math

import torch

# Scratch memory of one chunk of a pass over a (F, ...) per-frame tensor (gathered rows, float32
# sums, the float32 copy of a half-precision input): a fixed budget, so the working memory of the
# chunked passes does not grow with the video (16 MiB = 0.05x of a 32 x 729 x 3584 float32
# input). Small chunks cost no speed on a CPU: a frame's 729 x 3584 x 126 product is large
# enough for the BLAS to run at full rate, and its operands stay in cache.
SCRATCH_BYTES = 16 * 2 ** 20
# The same budget on a GPU, where the passes are launch-bound (each chunk is a few kernel
# launches that the device finishes faster than the host issues them): larger chunks mean fewer
# launches, which matters most for a half-precision input, whose float32 copy is made chunk by
# chunk (the sweep that chose 256 MiB: docs/efficiency.md, "On the GPU"). Still a fixed budget:
# about 2.5% of a 1024 x 729 x 3584 float32 input.
ACCELERATOR_SCRATCH_BYTES = 256 * 2 ** 20


def scratch_bytes(device: torch.device | str | None = None) -> int:
    """The chunk budget of the passes on ``device``: :data:`SCRATCH_BYTES` on the CPU (or when
    not given), :data:`ACCELERATOR_SCRATCH_BYTES` on any other device."""
    if device is None or torch.device(device).type == "cpu":
        return SCRATCH_BYTES
    return ACCELERATOR_SCRATCH_BYTES


def frames_per_chunk(bytes_per_frame: int, frames: int, budget: int | None = None,
                     device: torch.device | str | None = None) -> int:
    """Frames per chunk so that one chunk's scratch stays within ``budget`` bytes (default
    :func:`scratch_bytes` of ``device``); at least 1, at most ``frames``."""
    budget = scratch_bytes(device) if budget is None else budget
    return max(1, min(frames, budget // max(bytes_per_frame, 1)))


def chunk_ranges(frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` frame ranges of ``chunk_frames`` frames covering ``frames``."""
    step = max(chunk_frames, 1)
    return [(start, min(start + step, frames)) for start in range(0, frames, step)]


def pack_left(mask: torch.Tensor, width: int | None = None, *,
              counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of each row's True entries packed to the left, in ascending order.

    Args:
        mask: (B, P) bool.
        width: slots to return (default: the largest row count, which costs one host sync).
        counts: ``mask.sum(1)`` when the caller has it.
    Returns:
        positions (B, S) long (slots past a row's count hold the row's False positions, in
        ascending order) and valid (B, S) bool, ``valid[b, s] = s < count[b]``.
    """
    counts = mask.sum(1) if counts is None else counts
    if width is None:
        width = int(counts.max()) if counts.numel() else 0
    # a stable descending sort of the flags: True entries first, each group in index order
    positions = torch.sort(mask.view(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
    valid = _arange(width, mask.device)[None, :] < counts[:, None]
    return positions, valid


@functools.lru_cache(maxsize=64)
def _arange(size: int, device: torch.device) -> torch.Tensor:
    """``torch.arange(size)`` on ``device``, made once (read-only)."""
    return torch.arange(size, device=device)


@functools.lru_cache(maxsize=64)
def constant(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """0-dim ``value`` on ``device`` (made once, read-only): a Python number given to
    ``torch.where`` or as a broadcast operand would be made into a new device tensor, one more
    operation, on every call."""
    return torch.full((), value, dtype=dtype, device=device)


def first_in_order(order: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, M) bool: True for the first ``counts[b]`` entries of row b in ``order``.

    Args:
        order: (B, M) a permutation of 0..M-1 per row (e.g. a stable sort's indices).
        counts: (B,) how many to take per row.
    """
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank < counts.to(order.device)[:, None]


def gather_rows(values: torch.Tensor, index: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) values, (B, K) long row indices -> (B, K, D) ``values[b, index[b, k]]``.

    One ``index_select`` on the flattened rows (faster on CPU than advanced indexing or
    ``torch.gather`` with an expanded index), into ``out`` when given (a contiguous (B, K, D)
    tensor, e.g. a scratch reused by every chunk of a pass).
    """
    batch, rows, dim = values.shape
    flat = index + rows * torch.arange(batch, device=index.device)[:, None]
    selected = torch.index_select(values.reshape(batch * rows, dim), 0, flat.reshape(-1),
                                  out=None if out is None else out.view(-1, dim))
    return selected.view(batch, index.shape[1], dim)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm; zero rows stay zero.

    Overflow-safe: rows are first divided by their largest absolute entry, so features of any
    finite magnitude (even 3e38) give finite unit vectors, where ``x / x.norm()`` would give
    ``inf / inf = NaN``.

    Args:
        x: (..., D) floating point.
    Returns:
        (..., D) same dtype.
    """
    # A zero row has a zero peak and norm: raised to the smallest positive float, they divide
    # its zeros into zeros, and any positive peak or norm is left as it is (the released
    # ``where(v > 0, v, 1)`` in one op instead of three).
    floor = torch.finfo(x.dtype).tiny * torch.finfo(x.dtype).eps  # smallest subnormal
    peak = torch.linalg.vector_norm(x, ord=math.inf, dim=-1, keepdim=True)  # max |x|, no copy
    scaled = x / peak.clamp_(min=floor)
    norm = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    return scaled.div_(norm.clamp_(min=floor))


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, M, D), (B, N, D) -> (B, M, N) cosine similarities (0 against a zero row).

    Overflow-safe (see :func:`unit_rows`); meant for the small token sets of a frame or a clip.
    For the full (F, 729, D) patch tensor, :func:`aot.intra.anchor_similarity` avoids the
    normalised copy of the features.
    """
    return unit_rows(x) @ unit_rows(y).transpose(1, 2)


def check_finite(name: str, x: torch.Tensor) -> None:
    """ValueError naming the first frame of ``x`` (F, ...) that holds NaN or inf.

    A float32 sum is NaN/inf when any entry is, in one read (``isfinite`` would also write a
    bool tensor as large as the input and reduce it); it can also overflow for huge finite
    values, so the exact scan runs only to confirm and to name the frame. One host sync.
    """
    if math.isfinite(float(x.sum(dtype=torch.float32))):
        return
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    if bool(bad.any()):
        frame = int(torch.nonzero(bad)[0])
        raise ValueError(f"{name} holds NaN or inf values (first in frame {frame})")


def check_all_finite(*named: tuple[str, torch.Tensor]) -> None:
    """:func:`check_finite` of several ``(name, tensor)`` pairs with one host sync: their float32
    sums are read together, and only when one is not finite are they checked one by one, in
    order (so the error names the first bad tensor, as separate checks would)."""
    if not named:
        return
    sums = torch.stack([x.sum(dtype=torch.float32) for _, x in named]).tolist()
    if all(math.isfinite(total) for total in sums):
        return
    for name, x in named:
        check_finite(name, x)


@functools.lru_cache(maxsize=16)
def frame_offsets(frames: int, tokens: int, device: torch.device) -> torch.Tensor:
    """(F, 1) long ``tokens * f``: where frame f's rows start in the flattened video (cached
    per shape; read-only)."""
    return (tokens * torch.arange(frames, device=device))[:, None]


@functools.lru_cache(maxsize=16)
def frame_columns(frames: int, count: int, device: torch.device) -> torch.Tensor:
    """(F * count,) long ``0..count-1`` repeated per frame (cached per shape; read-only)."""
    return torch.arange(count, device=device).repeat(frames)
