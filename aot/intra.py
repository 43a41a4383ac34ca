"""Intra-frame aggregation (aot-method.md §3): fold every non-anchor token into the anchors.

All frames of a video are one batch: every frame has the same number of anchors, so anchors and
sources gather into dense (F, N, D) and (F, M, D) tensors and the transport runs once.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .config import AOTConfig
from .sinkhorn import sinkhorn


def grid_coordinates(grid: int, device=None) -> torch.Tensor:
    """(grid*grid, 2) coordinates ``(col, row) / (grid - 1)`` in [0, 1], row-major tokens."""
    steps = torch.arange(grid, device=device, dtype=torch.float32) / max(grid - 1, 1)
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)


@functools.lru_cache(maxsize=8)
def _grid_distances(grid: int, device: torch.device) -> torch.Tensor:
    xy = grid_coordinates(grid, device)
    return (xy[:, None, :] - xy[None, :, :]).pow(2).sum(-1).sqrt()


def grid_distances(grid: int, device=None) -> torch.Tensor:
    """(T, T) Euclidean distances between the scaled grid coordinates of every token pair."""
    return _grid_distances(grid, torch.device(device or "cpu"))


def split_by_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the True and False entries per row, each in ascending order.

    Args:
        mask: (F, T) bool with the same number of True entries in every row.
    Returns:
        (F, N) indices of True entries, (F, T - N) indices of False entries.
    """
    counts = mask.sum(1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(f"split_by_mask: rows hold different numbers of anchors {counts.tolist()}")
    n = int(counts[0]) if counts.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    return order[:, :n], order[:, n:]


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(F, M, D), (F, N, D) -> (F, M, N) cosine similarities."""
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)


def intra_cost(similarity: torch.Tensor, distance: torch.Tensor,
               spatial_weight: float) -> torch.Tensor:
    """Cost of moving each source token to each anchor (code-only spatial term included).

    ``C[m, n] = (1 - cos(u_m, a_n)) + spatial_weight * ||p(u_m) - p(a_n)||_2``.

    Args:
        similarity: (F, M, N) cosine similarity of sources and anchors.
        distance: (F, M, N) grid distance of sources and anchors (:func:`grid_distances`).
    Returns:
        (F, M, N) cost.
    """
    return (1 - similarity) + spatial_weight * distance


def merge_weights(plan: torch.Tensor, similarity: torch.Tensor, config: AOTConfig):
    """The intra merge written as one linear map, so one batched matmul applies it.

    ``anchor_n <- self_n * a_n + sum_m W[m, n] * u_m`` where the OT part is
    ``ot_n = (a_n + s * sum_m T[m, n] u_m) / (1 + s * max(load_n, 1e-9))`` and the code-only
    hard part is ``hard_n = (s * a_n + sum_{m -> n} u_m) / (s + count_n)`` with m -> n the
    anchor of highest cosine similarity (first on ties), blended ``(1 - w) * ot + w * hard``.

    Args:
        plan: (F, M, N) transport plan, or None for the cosine ablation (hard part only).
        similarity: (F, M, N) cosine similarity of sources and anchors.
    Returns:
        (W (F, M, N), self_weight (F, N)).
    """
    s = config.intra_scale
    nearest = torch.zeros_like(similarity).scatter_(2, similarity.argmax(-1, keepdim=True), 1.0)
    hard_denominator = s + nearest.sum(1)  # (F, N)
    if plan is None:
        return nearest / hard_denominator[:, None, :], s / hard_denominator
    w = config.hard_merge_weight
    ot_denominator = 1 + s * plan.sum(1).clamp(min=1e-9)
    weights = (1 - w) * s * plan / ot_denominator[:, None, :]
    self_weight = (1 - w) / ot_denominator
    if w > 0:
        weights = weights + w * nearest / hard_denominator[:, None, :]
        self_weight = self_weight + w * s / hard_denominator
    return weights, self_weight


def intra_merge(features: torch.Tensor, anchor_mask: torch.Tensor, grid: int,
                config: AOTConfig) -> torch.Tensor:
    """Features with every anchor replaced by its aggregate of the frame's other tokens.

    Args:
        features: (F, T, D) projected features of all patches, T = grid * grid.
        anchor_mask: (F, T) bool, the same number of anchors in every frame.
        grid: side of the patch grid.
        config: uses intra_merge, intra_epsilon, spatial_weight, intra_scale, hard_merge_weight,
            and the Sinkhorn knobs.
    Returns:
        (F, T, D) in the dtype of ``features``; non-anchor rows are unchanged. The arithmetic
        runs in float32 (float64 stays float64).

    ``"ot"``: anchor = (1 - w) * OT merge + w * hard merge (w = hard_merge_weight; see
    :func:`merge_weights`), cost from :func:`intra_cost`, uniform marginals, one Sinkhorn over all
    frames. ``"cosine"``: the hard merge alone. ``"prune"``: features unchanged.
    """
    if config.intra_merge == "prune":
        return features
    anchor_idx, source_idx = split_by_mask(anchor_mask)
    frames, num_anchors = anchor_idx.shape
    num_sources = source_idx.shape[1]
    if num_anchors == 0 or num_sources == 0:
        return features
    work = torch.promote_types(features.dtype, torch.float32)
    x = features.to(work)
    rows = torch.arange(frames, device=features.device)[:, None]
    anchors = x[rows, anchor_idx]  # (F, N, D)
    # Similarity of every token to the anchors straight from x: cheaper than gathering the
    # M source rows of a (F, 729, 3584) tensor, and the anchor rows are simply not used.
    eps = 1e-12  # F.normalize's floor on the norm
    norms = x.norm(dim=-1).clamp(min=eps)
    similarity = (x @ anchors.transpose(1, 2)) / (norms[:, :, None] * norms[rows, anchor_idx][:, None, :])
    similarity = similarity[rows, source_idx]  # (F, M, N)

    plan = None
    if config.intra_merge == "ot":
        distance = grid_distances(grid, features.device).to(work)[
            source_idx[:, :, None], anchor_idx[:, None, :]]
        cost = intra_cost(similarity, distance, config.spatial_weight)
        a = torch.full((frames, num_sources), 1.0 / num_sources, dtype=work, device=features.device)
        b = torch.full((frames, num_anchors), 1.0 / num_anchors, dtype=work, device=features.device)
        plan = sinkhorn(a, b, cost, config.intra_epsilon, max_iter=config.sinkhorn_iterations,
                        stop_threshold=config.sinkhorn_tolerance,
                        stopping="batch" if config.sinkhorn_stopping == "video" else "problem",
                        log_domain=config.log_domain).plan
    weights, self_weight = merge_weights(plan, similarity, config)
    # Scatter the source rows back to token positions (anchor rows stay 0): one bmm over x.
    full = torch.zeros(frames, x.shape[1], num_anchors, dtype=work, device=features.device)
    full[rows, source_idx] = weights
    merged = self_weight[:, :, None] * anchors + full.transpose(1, 2) @ x

    out = features.clone()
    out[rows, anchor_idx] = merged.to(features.dtype)
    return out
