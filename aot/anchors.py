"""Anchor selection: attention received per token -> local and global anchors (the rules:
docs/architecture.md, "The method in one pass"; the knobs: docs/knobs.md).

All functions are batched over frames and break ties by the lower token index (stable sorts), so
the selection is deterministic on any device.
"""

from __future__ import annotations

import functools

import torch

from .config import AOTConfig
from .pooling import check_grid_tokens, grid_shape


def received_attention(attention_probs: torch.Tensor) -> torch.Tensor:
    """Attention each token receives: sum over queries, mean over heads.

    Args:
        attention_probs: (B, heads, queries, keys) softmax attention of one layer.
    Returns:
        (B, keys) float32. SigLIP has no [CLS] token; this is AOT's stand-in for [CLS] attention.
    """
    if attention_probs.dim() != 4:
        raise ValueError(f"received_attention: expected (B, heads, queries, keys), got "
                         f"{tuple(attention_probs.shape)}")
    return attention_probs.float().sum(2).mean(1)


#: Float32 logits of one query block of :func:`attend_and_receive`: the (B, heads, queries,
#: keys) probabilities of a layer are never held whole (32 SigLIP frames: 1.1 GB in float32).
RECEIVED_BLOCK_BYTES = 64 * 2 ** 20


def attend_and_receive(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None,
                       scaling: float, attention_mask: torch.Tensor | None = None, *,
                       block_bytes: int = RECEIVED_BLOCK_BYTES
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention each key receives, and optionally the attention output, one block of queries
    at a time.

    The softmax normalises a query's row over all keys, so the blocks are blocks of queries:
    each block's logits are computed in float32 (the block and the keys upcast, as the full
    float32 capture does), normalised, their column sums added to a float32 total and, with
    ``value``, multiplied by the values in ``value``'s dtype. Equal to
    ``received_attention(softmax(q k^T * scaling + mask))`` up to the order of the float32 sums.

    Args:
        query: (B, heads, Q, d); key: (B, heads, K, d); value: (B, heads, K, dv) or None.
        scaling: the logits' scale (``d ** -0.5`` for SigLIP and the Qwen ViTs).
        attention_mask: additive, broadcastable to (B, heads, Q, K), or None.
        block_bytes: float32 logits held at a time (at least one query per block).
    Returns:
        received (B, K) float32 (sum over queries, mean over heads); the output
        (B, heads, Q, dv) in ``value``'s dtype, or None without ``value``.
    """
    batch, heads, queries, _ = query.shape
    keys = key.shape[2]
    block = max(1, block_bytes // max(batch * heads * keys * 4, 1))
    key_t = key.float().transpose(-1, -2)
    total = torch.zeros(batch, heads, keys, dtype=torch.float32, device=query.device)
    outputs = []
    for start in range(0, queries, block):
        stop = min(start + block, queries)
        logits = torch.matmul(query[:, :, start:stop].float(), key_t).mul_(scaling)
        if attention_mask is not None:
            mask = attention_mask[..., start:stop, :] if attention_mask.shape[-2] > 1 \
                else attention_mask
            logits.add_(mask)
        probs = logits.softmax(dim=-1)
        total += probs.sum(2)
        if value is not None:  # (a list, not out=: the output may carry gradients)
            outputs.append(torch.matmul(probs.to(value.dtype), value))
    out = None if value is None else outputs[0] if len(outputs) == 1 else torch.cat(outputs, 2)
    return total.mean(1), out


def anchor_counts(config: AOTConfig, num_windows: int) -> tuple[int, int]:
    """(local anchors per window, global anchors) for the configured V and global share.

    Released rule: ``k = floor(int(V * (1 - g)) / windows)`` per window, global =
    ``V - int(V * (1 - g))``. With local anchors off, every one of the V anchors is global; with
    global anchors off, every window gets ``floor(V / windows)``.
    """
    v = config.anchors_per_frame
    if not config.local_anchors:
        return 0, v
    if not config.global_anchors:
        return v // num_windows, 0
    local_share = int(v * (1 - config.global_share))
    return local_share // num_windows, v - local_share


def window_spans(length: int, window: int) -> list[tuple[int, int]]:
    """How one grid axis of ``length`` tokens is cut into windows of at most ``window``.

    ``n = ceil(length / window)`` spans ``[floor(i * length / n), floor((i + 1) * length / n))``:
    they cover the axis, never exceed ``window``, and differ in length by at most one. When
    ``window`` divides ``length`` these are the released windows (27 / 9: three spans of 9).
    """
    count = -(-length // window)
    bounds = [i * length // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def window_index(grid, window: int, device=None) -> torch.Tensor:
    """(rows*cols,) long: the local-anchor window of every token, windows in row-major order.

    A window is a block of a row span and a column span of :func:`window_spans`, so any
    ``rows x cols`` grid is tiled by ``ceil(rows / window) * ceil(cols / window)`` windows of at
    most ``window x window`` tokens, each token in exactly one window.
    """
    rows, cols = grid_shape(grid)

    def span_of(length: int) -> torch.Tensor:
        spans = window_spans(length, window)
        return torch.repeat_interleave(torch.arange(len(spans)),
                                       torch.tensor([stop - start for start, stop in spans]))

    row_span, col_span = span_of(rows), span_of(cols)
    windows_per_row = int(col_span[-1]) + 1
    index = row_span[:, None] * windows_per_row + col_span[None, :]
    return index.reshape(-1).to(device)


def select_anchors(shallow_attention: torch.Tensor, deep_attention: torch.Tensor,
                   grid, config: AOTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Local and global anchor masks per frame.

    Args:
        shallow_attention: (F, T) attention received at the shallow layer (local anchors),
            T = rows * cols.
        deep_attention: (F, T) attention received at the deep layer (global anchors).
        grid: the patch grid, a square's side (27 for SigLIP-384) or ``(rows, cols)``.
        config: uses anchors_per_frame, global_share, window, local/global/random switches, seed.
    Returns:
        (local_mask, global_mask), each (F, T) bool, disjoint.

    Local: the grid is tiled by windows of at most ``window x window`` tokens
    (:func:`window_index`; on 27x27 with window 9 the released 3x3 windows of 9x9); each window
    contributes its top-k tokens by shallow attention, k from :func:`anchor_counts`. A window
    with fewer than k tokens gives all of them and its shortfall goes to the global anchors
    (when they are on), so a frame never gets more than V anchors and every frame of a grid gets
    the same count. Global: the top tokens by deep attention among the non-local ones (the
    released code zeroes the local scores instead; received attention is positive, so the two
    agree, and excluding them also holds for arbitrary scores).

    Raises:
        ValueError: the settings give no anchor at all on this grid (e.g. global anchors off and
            fewer anchors than windows), which would silently drop every token.
    """
    frames, tokens = shallow_attention.shape
    if config.random_anchors:
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
        noise = torch.rand(frames, tokens, generator=generator).to(shallow_attention.device)
        picked = _top_indices(noise, config.anchors_per_frame)
        mask = _indices_to_mask(picked, tokens)
        return torch.zeros_like(mask), mask

    rows, cols = check_grid_tokens(grid, tokens, "shallow_attention")
    layout = _window_layout((rows, cols), config.window, config.anchors_per_frame,
                            config.global_share, config.local_anchors, config.global_anchors,
                            shallow_attention.device)
    if layout.local_total + layout.global_count == 0:
        raise ValueError(
            f"anchors_per_frame={config.anchors_per_frame} gives no anchor on the {rows}x{cols} "
            f"grid: its {layout.num_windows} windows of at most {config.window}x{config.window} "
            f"get {layout.per_window} local anchors each and there are no global anchors "
            f"(global_anchors={config.global_anchors}, global_share={config.global_share}); "
            f"give at least {layout.num_windows} anchors per frame, a larger window or global "
            f"anchors")

    if layout.per_window == 0:
        local = torch.zeros(frames, tokens, dtype=torch.bool, device=shallow_attention.device)
    elif layout.by_window is not None:
        local = _top_in_equal_windows(shallow_attention.float(), layout)
    else:
        local = _top_per_window(shallow_attention.float(), layout.window_of, layout.sizes,
                                layout.local_counts)
    if layout.global_count == 0:
        return local, torch.zeros_like(local)
    scores = deep_attention.float().masked_fill(local, -torch.inf)
    return local, _indices_to_mask(_top_indices(scores, layout.global_count), tokens)


class _WindowLayout:
    """The windows of a grid and the anchor counts of a config, known before any value is read
    (made once per grid and config: no operation per call)."""

    def __init__(self, grid: tuple[int, int], window: int, anchors: int, global_share: float,
                 local_anchors: bool, global_anchors: bool, device: torch.device):
        config = AOTConfig(anchors_per_frame=anchors, global_share=global_share,
                           local_anchors=local_anchors, global_anchors=global_anchors)
        self.window_of = window_index(grid, window, device)
        sizes = torch.bincount(self.window_of.cpu())
        self.num_windows = sizes.shape[0]
        self.per_window, self.global_count = anchor_counts(config, self.num_windows)
        local_counts = sizes.clamp(max=self.per_window)
        self.local_total = int(local_counts.sum())
        if global_anchors:  # a window's shortfall goes to the global anchors
            self.global_count += self.per_window * self.num_windows - self.local_total
        self.sizes, self.local_counts = sizes.to(device), local_counts.to(device)
        # Equal windows: the tokens of window w, ascending, are by_window[w]; the top of every
        # window is then one sort of a (F, W, size) view.
        self.by_window = None
        if int(sizes.min()) == int(sizes.max()) and self.per_window <= int(sizes[0]):
            order = torch.sort(self.window_of.cpu(), stable=True).indices
            self.by_window = order.view(self.num_windows, -1).to(device)


def anchors_per_frame(grid, config: AOTConfig) -> int:
    """How many anchors :func:`select_anchors` gives every frame of ``grid`` under ``config``
    (known from the settings alone: every frame of a grid gets the same count)."""
    if config.random_anchors:
        return config.anchors_per_frame
    layout = _window_layout(grid_shape(grid), config.window, config.anchors_per_frame,
                            config.global_share, config.local_anchors, config.global_anchors,
                            torch.device("cpu"))
    return layout.local_total + layout.global_count


@functools.lru_cache(maxsize=32)
def _window_layout(grid, window, anchors, global_share, local_anchors, global_anchors,
                   device) -> _WindowLayout:
    return _WindowLayout(grid, window, anchors, global_share, local_anchors, global_anchors,
                         device)


def _top_in_equal_windows(scores: torch.Tensor, layout: _WindowLayout) -> torch.Tensor:
    """(F, T) bool: in every window its ``per_window`` highest scores (ties: lower token index),
    for windows of one size: one gather, one stable sort, one scatter."""
    frames, tokens = scores.shape
    by_window = layout.by_window  # (W, size) token ids, ascending in each window
    grouped = scores[:, by_window]  # (F, W, size)
    best = torch.sort(grouped, dim=2, descending=True, stable=True).indices[..., :layout.per_window]
    chosen = torch.gather(by_window.expand(frames, -1, -1), 2, best)
    return _indices_to_mask(chosen.reshape(frames, -1), tokens)


@functools.lru_cache(maxsize=32)
def _window_index(grid: tuple[int, int], window: int, device: torch.device) -> torch.Tensor:
    return window_index(grid, window, device)


def _top_per_window(scores: torch.Tensor, window_of: torch.Tensor, sizes: torch.Tensor,
                    counts: torch.Tensor) -> torch.Tensor:
    """(F, T) bool: in every window w its counts[w] highest scores (ties: lower token index).

    Two stable sorts group the tokens by window, best first inside each window, so any tiling
    (windows of unequal sizes included) is one batched operation.

    Args:
        scores: (F, T); window_of: (T,) window of each token; sizes, counts: (W,) long.
    """
    frames, tokens = scores.shape
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    by_window = torch.sort(window_of[order], dim=1, stable=True)
    order = torch.gather(order, 1, by_window.indices)     # grouped by window, best first
    window = by_window.values
    start = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(tokens, device=scores.device)[None, :] - start[window]
    chosen = rank < counts[window]
    return torch.zeros(frames, tokens, dtype=torch.bool, device=scores.device).scatter_(
        1, order, chosen)


def _top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries along the last axis; ties go to the lower index."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :k]


def _indices_to_mask(indices: torch.Tensor, size: int) -> torch.Tensor:
    """(F, k) indices -> (F, size) bool mask."""
    mask = torch.zeros(indices.shape[0], size, dtype=torch.bool, device=indices.device)
    return mask.scatter_(1, indices, True)
