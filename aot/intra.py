"""Intra-frame aggregation (aot-method.md §3): fold every non-anchor token into the anchors.

All frames of a video are one batch: every frame has the same number of anchors, so anchors and
sources gather into dense (F, N, D) and (F, M, D) tensors and the transport runs once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import AOTConfig
from .sinkhorn import sinkhorn


def grid_coordinates(grid: int, device=None) -> torch.Tensor:
    """(grid*grid, 2) coordinates ``(col, row) / (grid - 1)`` in [0, 1], row-major tokens."""
    steps = torch.arange(grid, device=device, dtype=torch.float32) / max(grid - 1, 1)
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)


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


def intra_cost(similarity: torch.Tensor, source_xy: torch.Tensor, anchor_xy: torch.Tensor,
               spatial_weight: float) -> torch.Tensor:
    """Cost of moving each source token to each anchor.

    ``C[m, n] = (1 - cos(u_m, a_n)) + spatial_weight * ||p(u_m) - p(a_n)||_2``.

    Args:
        similarity: (F, M, N) cosine similarity of sources and anchors.
        source_xy: (F, M, 2), anchor_xy: (F, N, 2) grid coordinates in [0, 1].
    Returns:
        (F, M, N) cost.
    """
    dist = (source_xy[:, :, None, :] - anchor_xy[:, None, :, :]).pow(2).sum(-1).sqrt()
    return (1 - similarity) + spatial_weight * dist


def hard_merge(sources: torch.Tensor, anchors: torch.Tensor, similarity: torch.Tensor,
               scale: float) -> torch.Tensor:
    """Average each source into its most similar anchor.

    ``hard_n = (scale * a_n + sum_{m -> n} u_m) / (scale + count_n)``.

    Args:
        sources: (F, M, D); anchors: (F, N, D); similarity: (F, M, N), argmax over N picks the
            anchor (first one on ties).
    Returns:
        (F, N, D).
    """
    target = similarity.argmax(-1)  # (F, M)
    summed = torch.zeros_like(anchors).scatter_add_(
        1, target[:, :, None].expand(-1, -1, sources.shape[-1]), sources)
    counts = torch.zeros(anchors.shape[:2], dtype=anchors.dtype, device=anchors.device)
    counts.scatter_add_(1, target, torch.ones_like(target, dtype=anchors.dtype))
    return (scale * anchors + summed) / (scale + counts)[:, :, None]


def ot_merge(sources: torch.Tensor, anchors: torch.Tensor, plan: torch.Tensor,
             scale: float) -> torch.Tensor:
    """Fold sources into anchors with a transport plan.

    ``ot_n = (a_n + scale * sum_m T[m, n] u_m) / (1 + scale * max(sum_m T[m, n], 1e-9))``.

    Args:
        sources: (F, M, D); anchors: (F, N, D); plan: (F, M, N).
    Returns:
        (F, N, D).
    """
    aggregated = plan.transpose(1, 2) @ sources
    load = plan.sum(1).clamp(min=1e-9)[:, :, None]
    return (anchors + scale * aggregated) / (1 + scale * load)


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

    ``"ot"``: anchor = (1 - w) * ot_merge + w * hard_merge with w = hard_merge_weight, cost from
    :func:`intra_cost`, uniform marginals, Sinkhorn over all frames at once.
    ``"cosine"``: anchor = hard_merge by cosine similarity. ``"prune"``: features unchanged.
    """
    if config.intra_merge == "prune":
        return features
    anchor_idx, source_idx = split_by_mask(anchor_mask)
    frames, num_anchors = anchor_idx.shape
    num_sources = source_idx.shape[1]
    if num_anchors == 0 or num_sources == 0:
        return features
    work = torch.promote_types(features.dtype, torch.float32)
    dim = features.shape[-1]
    anchors = torch.gather(features, 1, anchor_idx[:, :, None].expand(-1, -1, dim)).to(work)
    sources = torch.gather(features, 1, source_idx[:, :, None].expand(-1, -1, dim)).to(work)

    similarity = cosine_similarity(sources, anchors)
    if config.intra_merge == "cosine":
        merged = hard_merge(sources, anchors, similarity, config.intra_scale)
    else:
        xy = grid_coordinates(grid, features.device)
        cost = intra_cost(similarity, xy[source_idx], xy[anchor_idx], config.spatial_weight)
        a = torch.full((frames, num_sources), 1.0 / num_sources, dtype=work, device=features.device)
        b = torch.full((frames, num_anchors), 1.0 / num_anchors, dtype=work, device=features.device)
        plan = sinkhorn(a, b, cost, config.intra_epsilon, max_iter=config.sinkhorn_iterations,
                        stop_threshold=config.sinkhorn_tolerance,
                        stopping="batch" if config.sinkhorn_stopping == "video" else "problem",
                        log_domain=config.log_domain).plan
        merged = ot_merge(sources, anchors, plan, config.intra_scale)
        w = config.hard_merge_weight
        if w > 0:  # the code-only hard merge: nearest anchor by cosine (no spatial term)
            merged = (1 - w) * merged + w * hard_merge(sources, anchors, similarity,
                                                       config.intra_scale)

    out = features.clone()
    out.scatter_(1, anchor_idx[:, :, None].expand(-1, -1, dim), merged.to(features.dtype))
    return out

