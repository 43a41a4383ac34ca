"""Anchor selection (aot-method.md §1-§2): attention received per token -> local and global anchors.

All functions are batched over frames and break ties by the lower token index (stable sorts), so
the selection is deterministic on any device.
"""

from __future__ import annotations

import torch

from .config import AOTConfig


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


def select_anchors(shallow_attention: torch.Tensor, deep_attention: torch.Tensor,
                   grid: int, config: AOTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Local and global anchor masks per frame.

    Args:
        shallow_attention: (F, grid*grid) attention received at the shallow layer (local anchors).
        deep_attention: (F, grid*grid) attention received at the deep layer (global anchors).
        grid: side of the square patch grid (27 for SigLIP-384).
        config: uses anchors_per_frame, global_share, window, local/global/random switches, seed.
    Returns:
        (local_mask, global_mask), each (F, grid*grid) bool, disjoint.

    Local: the grid is cut into ``window x window`` windows; each window contributes its top-k
    tokens by shallow attention. Global: the top tokens by deep attention among the non-local
    ones (the released code zeroes the local scores instead; received attention is positive, so
    the two agree, and excluding them also holds for arbitrary scores).
    """
    frames, tokens = shallow_attention.shape
    if config.random_anchors:
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
        noise = torch.rand(frames, tokens, generator=generator).to(shallow_attention.device)
        picked = _top_indices(noise, config.anchors_per_frame)
        mask = _indices_to_mask(picked, tokens)
        return torch.zeros_like(mask), mask

    if grid % config.window:
        raise ValueError(f"window={config.window} does not divide the {grid}x{grid} patch grid; "
                         f"pick a divisor of {grid} (e.g. {_divisors(grid)})")
    num_windows = (grid // config.window) ** 2
    per_window, global_count = anchor_counts(config, num_windows)

    local = torch.zeros(frames, tokens, dtype=torch.bool, device=shallow_attention.device)
    if per_window > 0:
        window_scores, window_tokens = _windows(shallow_attention, grid, config.window)
        best = _top_indices(window_scores, per_window)  # (F, windows, k) positions in window
        chosen = torch.gather(window_tokens.expand(frames, -1, -1), 2, best)
        local = _indices_to_mask(chosen.reshape(frames, -1), tokens)

    global_mask = torch.zeros_like(local)
    if global_count > 0:
        scores = deep_attention.float().masked_fill(local, -torch.inf)
        global_mask = _indices_to_mask(_top_indices(scores, global_count), tokens)
    return local, global_mask


def _windows(scores: torch.Tensor, grid: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores regrouped per window.

    Returns (F, windows, window*window) scores and the (1, windows, window*window) token index
    of every entry, windows in row-major order, tokens row-major inside each window.
    """
    frames = scores.shape[0]
    per_side = grid // window
    index = torch.arange(grid * grid, device=scores.device).reshape(1, grid, grid)

    def regroup(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], per_side, window, per_side, window).permute(0, 1, 3, 2, 4)
        return x.reshape(x.shape[0], per_side * per_side, window * window)

    return regroup(scores.float().reshape(frames, grid, grid)), regroup(index)


def _top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries along the last axis; ties go to the lower index."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :k]


def _indices_to_mask(indices: torch.Tensor, size: int) -> torch.Tensor:
    """(F, k) indices -> (F, size) bool mask."""
    mask = torch.zeros(indices.shape[0], size, dtype=torch.bool, device=indices.device)
    return mask.scatter_(1, indices, True)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
