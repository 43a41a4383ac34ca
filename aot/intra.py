"""Intra-frame aggregation: fold every non-anchor token into the anchors (the rules:
docs/architecture.md, "The method in one pass"; the knobs: docs/knobs.md).

All frames of a video are one batch: every frame has the same number of anchors, so the anchors
gather into a dense (F, N, D) tensor and the transport runs once over all frames.

Cost model. The (F, T, D) patch tensor is the only large object (32 x 729 x 3584 float32 =
334 MB); everything else is (F, T, N) or smaller. The stage reads it three times: one norm
pass, the similarity product ``x @ anchors^T`` and the merge product ``W @ x``. It never writes a
tensor of that size: its result is the (F, N, D) merged anchors, and the pooling reads the
surviving tokens from the input and those anchors (:func:`aot.pooling.pool_at`).

Memory. Besides its (F, N, D) result, the stage holds one (F, M, N) matrix (0.03x of the
input), the similarity, which becomes the cost, the kernel, the plan and the merge weights in
turn, each step in place, and the (F, N, T) merge operator. Fewer new tensors are fewer page
faults, which cost more per page as the process grows (docs/efficiency.md). The similarity
pass runs over chunks of frames sized by a fixed byte budget (:func:`aot.ops.scratch_bytes`: the
gathered anchors, and the float32 copy of a half-precision input, exist for one chunk at a
time), so its scratch does not grow with the video; chunking does not change a single bit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .config import AOTConfig
from .ops import (
    check_finite,
    chunk_ranges,
    frame_columns,
    constant,
    frame_offsets,
    frames_per_chunk,
    unit_rows,
)
from .pooling import grid_shape
from .sinkhorn import sinkhorn, working_dtype

# Largest patch norm whose dot products and norm products stay finite in float32 (1e34 < 3e38).
SAFE_NORM = 1e17


def grid_coordinates(grid, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(rows*cols, 2) coordinates ``(col / (cols - 1), row / (rows - 1))`` in [0, 1], row-major
    tokens; ``grid`` is a square's side or ``(rows, cols)``. Each axis is scaled on its own (a
    landscape frame's columns and rows both span [0, 1]); an axis of length 1 is 0."""
    rows, cols = grid_shape(grid)
    row_steps = torch.arange(rows, device=device, dtype=dtype) / max(rows - 1, 1)
    col_steps = torch.arange(cols, device=device, dtype=dtype) / max(cols - 1, 1)
    row_at, col_at = torch.meshgrid(row_steps, col_steps, indexing="ij")
    return torch.stack([col_at.reshape(-1), row_at.reshape(-1)], dim=-1)


@functools.lru_cache(maxsize=8)
def _grid_distances(grid: tuple[int, int], device: torch.device,
                    dtype: torch.dtype) -> torch.Tensor:
    xy = grid_coordinates(grid, device, dtype)
    return (xy[:, None, :] - xy[None, :, :]).pow(2).sum(-1).sqrt()


@functools.lru_cache(maxsize=8)
def _scaled_distances(grid: tuple[int, int], device: torch.device, dtype: torch.dtype,
                      cost_dtype: torch.dtype, weight: float) -> torch.Tensor:
    return _grid_distances(grid, device, dtype).to(cost_dtype).mul(weight)


def grid_distances(grid, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(T, T) Euclidean distances between the scaled grid coordinates of every token pair, in
    ``dtype`` (float32, as released, for every input dtype but float64)."""
    return _grid_distances(grid_shape(grid), torch.device(device or "cpu"), dtype)


def distance_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype grid distances are computed in for a cost of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def split_by_mask(mask: torch.Tensor, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the True and False entries per row, each in ascending order.

    Args:
        mask: (F, T) bool with the same number of True entries in every row.
        count: that number, when the caller knows it (no check, no host sync).
    Returns:
        (F, N) indices of True entries, (F, T - N) indices of False entries.
    """
    if count is None:
        counts = mask.sum(1).tolist()
        if counts and min(counts) != max(counts):
            raise ValueError(f"split_by_mask: rows hold different numbers of anchors {counts}")
        count = counts[0] if counts else 0
    order = split_order(mask)
    return order[:, :count], order[:, count:]


def split_order(mask: torch.Tensor) -> torch.Tensor:
    """(F, T) long: each row's True entries, then its False entries, each group ascending (the
    concatenation of :func:`split_by_mask`'s two results)."""
    # a stable descending sort of the flags: True entries first, each group in index order
    return torch.sort(mask.view(torch.uint8), dim=1, descending=True, stable=True).indices


def intra_cost(similarity: torch.Tensor, source_idx: torch.Tensor, anchor_idx: torch.Tensor,
               grid, spatial_weight: float, *, overwrite_similarity: bool = False,
               chunk_frames: int | None = None) -> torch.Tensor:
    """Cost of moving each source token to each anchor (code-only spatial term included).

    ``C[f, m, n] = (1 - cos(u_m, a_n)) + spatial_weight * ||p(u_m) - p(a_n)||_2``, p the scaled
    grid coordinates (:func:`grid_distances`).

    At most one (F, M, N) tensor is new: the spatial term is added in place, chunk by chunk
    (default: :func:`aot.ops.scratch_bytes` of gathered distances), with the same bits as the
    formula's three temporaries. Memory the process has not touched yet costs a page
    fault per 4 KB, which on a VM grows dearer with the process's footprint
    (docs/efficiency.md).

    Args:
        similarity: (F, M, N) cosine similarity of sources and anchors.
        source_idx: (F, M), anchor_idx: (F, N) token indices of the sources and anchors.
        grid: the patch grid, a square's side or ``(rows, cols)``.
        overwrite_similarity: write the cost over ``similarity`` (no new (F, M, N) tensor; the
            same numbers), for a similarity the caller no longer needs.
    Returns:
        (F, M, N) cost.
    """
    frames, num_sources, num_anchors = similarity.shape
    # float64 inputs get float64 distances: a float32 table would cap their precision at ~1e-8;
    # the table is scaled once (the same products as scaling each gathered distance)
    table = _scaled_distances(grid_shape(grid), similarity.device,
                              distance_dtype(similarity.dtype), similarity.dtype, spatial_weight)
    if chunk_frames is None:
        chunk_frames = frames_per_chunk(num_sources * num_anchors * similarity.itemsize, frames,
                                        device=similarity.device)
    # d - (s - 1) is (1 - s) + d to the bit: s - 1 is exactly -(1 - s) (rounding to nearest
    # is symmetric), and the sum is the same sum; one op less than negating
    shifted = similarity.sub_(1) if overwrite_similarity else similarity - 1
    for start, stop in chunk_ranges(frames, chunk_frames):
        torch.sub(table[source_idx[start:stop, :, None], anchor_idx[start:stop, None, :]],
                  shifted[start:stop], out=shifted[start:stop])
    cost = shifted
    return cost


def intra_cost_bound(spatial_weight: float) -> float:
    """A bound on |:func:`intra_cost`|: ``1 - cos`` lies in [0, 2] (0.5 of margin for the
    rounding of long dot products), grid distances in [0, sqrt(2)]."""
    return 2.5 + spatial_weight * math.sqrt(2)


def nearest_anchors(similarity: torch.Tensor) -> torch.Tensor:
    """(F, M, 1) long: each source's anchor of highest cosine similarity (first on ties), the
    target of the hard merge; ``similarity`` (F, M, N)."""
    return similarity.max(-1, keepdim=True).indices  # faster than argmax on CPU


def merge_weights(plan: torch.Tensor | None, nearest: torch.Tensor, config: AOTConfig, *,
                  out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The intra merge written as one linear map, so one batched matmul applies it.

    ``anchor_n <- self_n * a_n + sum_m W[m, n] * u_m`` where the OT part is
    ``ot_n = (a_n + s * sum_m T[m, n] u_m) / (1 + s * max(load_n, 1e-9))`` and the code-only
    hard part is ``hard_n = (s * a_n + sum_{m -> n} u_m) / (s + count_n)`` with m -> n the
    anchor of highest cosine similarity (first on ties), blended ``(1 - w) * ot + w * hard``.
    Both parts are convex combinations (``self_n + sum_m W[m, n] = 1``), so merged anchors stay
    within the range of the features. The hard part has one entry per source, so it is added
    where it lands instead of as a dense one-hot matrix (the same sums, bit for bit).

    Args:
        plan: (F, M, N) transport plan, or None for the cosine ablation (hard part only).
        nearest: (F, M, 1) long, m -> n (:func:`nearest_anchors`).
        out: (F, M, N) where W is written, in place: the plan itself, or a tensor the caller no
            longer needs (no new (F, M, N) tensor).
    Returns:
        (W (F, M, N), which is ``out``; self_weight (F, N)).
    """
    s = config.intra_scale
    frames, _, num_anchors = out.shape
    # An integer scale plus counts below 2 ** 24 is exact in any order, so the counts may be
    # added straight onto s (one op less than counting from 0 and adding s); otherwise s is
    # added to the exact counts, as the formula reads.
    exact = float(s).is_integer() and s + nearest.shape[1] < 2 ** 24
    count = torch.full((frames, num_anchors), s if exact else 0.0, dtype=out.dtype,
                       device=out.device)
    # cached 0-dim operands, broadcast: a Python number or a ones_like would each be one more op
    count.scatter_add_(1, nearest[:, :, 0],
                       constant(1.0, out.dtype, out.device).expand(nearest.shape[:2]))
    hard_denominator = count if exact else s + count  # (F, N)
    if plan is None:
        share = torch.div(constant(1.0, out.dtype, out.device),
                          hard_denominator).gather(1, nearest[:, :, 0])
        return out.zero_().scatter_(2, nearest, share[:, :, None]), s / hard_denominator
    w = config.hard_merge_weight
    load = plan.sum(1).clamp(min=1e-9)
    ot_denominator = 1 + (load if s == 1.0 else s * load)  # 1.0 * x is x: one op less
    weights = torch.mul(plan, (1 - w) * s, out=out).div_(ot_denominator[:, None, :])
    self_weight = (1 - w) / ot_denominator
    if w > 0:
        share = torch.div(constant(w, out.dtype, out.device), hard_denominator)
        weights.scatter_add_(2, nearest, share.gather(1, nearest[:, :, 0])[:, :, None])
        self_weight = self_weight + w * s / hard_denominator
    return weights, self_weight


@dataclass
class AnchorSimilarity:
    """similarity: (F, M, N) cosine of every source token (ascending index) to every anchor;
    norms: (F, T) L2 norm of every patch in the working dtype, floored at 1e-12 (inf when it
    overflows, NaN for NaN input)."""

    similarity: torch.Tensor
    norms: torch.Tensor


def anchor_similarity(features: torch.Tensor, anchor_idx: torch.Tensor, source_idx: torch.Tensor,
                      chunk_frames: int | None = None, *, rescale: bool = False,
                      order: torch.Tensor | None = None) -> AnchorSimilarity:
    """Cosine similarity of every source token to every anchor of its frame, in two reads.

    ``x @ anchors^T`` runs on all T rows of x (the anchor rows are computed and dropped):
    cheaper than gathering the M source rows of the big tensor into a copy; the result is then
    divided by the two norms. For features beyond ~1e17 in norm that product of norms (and the
    dot products) would overflow float32: :func:`aggregate_into_anchors` sees it in ``norms``
    and calls again with ``rescale=True``.

    Args:
        features: (F, T, D) patch features (any float dtype; computed in float32 or float64).
        anchor_idx: (F, N), source_idx: (F, M) long token indices (from :func:`split_by_mask`).
        chunk_frames: frames per pass (default: as many as fit :func:`aot.ops.scratch_bytes` of
            gathered anchors, products and upcast/rescaled copy; any value gives the same bits).
        rescale: scale every patch to unit norm first (overflow-free, two more passes).
        order: (F, T) ``cat([anchor_idx, source_idx], 1)`` when the caller has it (as
            :func:`split_order` gives it): their norms are then gathered in one operation
            instead of two.
    Returns:
        :class:`AnchorSimilarity`.
    """
    work = working_dtype(features.dtype)
    frames, tokens, dim = features.shape
    num_anchors = anchor_idx.shape[1]
    if chunk_frames is None:
        dense = work == features.dtype and features.is_contiguous()
        copied = 0 if dense and not rescale else tokens * dim  # upcast/rescaled/dense copy
        chunk_frames = frames_per_chunk(
            (num_anchors * dim + tokens * num_anchors + copied) * work.itemsize, frames,
            device=features.device)
    similarity = torch.empty(frames, source_idx.shape[1], num_anchors, dtype=work,
                             device=features.device)
    # Features read as they are: every norm in one pass (a row's norm does not depend on the
    # frames read with it), else chunk by chunk from the upcast or rescaled copy.
    whole = not rescale and work == features.dtype and features.is_contiguous()
    norms = torch.linalg.vector_norm(features, dim=-1) if whole else \
        torch.empty(frames, tokens, dtype=work, device=features.device)
    # One buffer for the gathered anchors and one for the products of every chunk: a new one
    # per chunk (13 MB at width 3584) may be fresh memory each time, paid in page faults
    # (docs/efficiency.md).
    chunk = min(chunk_frames, frames)
    anchor_rows = torch.empty(chunk, num_anchors, dim, dtype=work, device=features.device)
    products = torch.empty(chunk, tokens, num_anchors, dtype=work, device=features.device)
    # row indices inside a chunk's flattened (f * T, ...) rows, for every frame at once
    within = _chunk_offsets(frames, chunk, tokens, features.device)
    anchor_rows_at, source_rows_at = anchor_idx + within, source_idx + within
    for start, stop in chunk_ranges(frames, chunk_frames):
        x = features[start:stop].to(work)
        if rescale:
            x = unit_rows(x)
        f = stop - start
        if not whole:
            torch.linalg.vector_norm(x, dim=-1, out=norms[start:stop])
        anchors = torch.index_select(x.reshape(-1, dim), 0, anchor_rows_at[start:stop].reshape(-1),
                                     out=anchor_rows[:f].view(-1, dim)).view(f, num_anchors, dim)
        dots = torch.bmm(x, anchors.transpose(1, 2), out=products[:f])
        # the dot products of the sources land in their place and are divided there
        torch.index_select(dots.view(-1, num_anchors), 0, source_rows_at[start:stop].reshape(-1),
                           out=similarity[start:stop].view(-1, num_anchors))
    norms.clamp_(min=1e-12)  # F.normalize's floor
    if order is None:
        source_norms, anchor_norms = (torch.gather(norms, 1, source_idx),
                                      torch.gather(norms, 1, anchor_idx))
    else:
        ordered = torch.gather(norms, 1, order)
        source_norms, anchor_norms = ordered[:, num_anchors:], ordered[:, :num_anchors]
    similarity.div_(source_norms[:, :, None] * anchor_norms[:, None, :])
    return AnchorSimilarity(similarity, norms)


@functools.lru_cache(maxsize=16)
def _chunk_offsets(frames: int, chunk: int, tokens: int, device: torch.device) -> torch.Tensor:
    """(F, 1) long ``tokens * (f % chunk)``: where frame f's rows start in its chunk."""
    return (tokens * (torch.arange(frames, device=device) % chunk))[:, None]


@functools.lru_cache(maxsize=16)
def uniform_rows(rows: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(rows, size) ``1 / size``, the uniform marginals of the intra solves (made once per
    shape; read-only)."""
    return torch.full((rows, size), 1.0 / size, dtype=dtype, device=device)


def merge_operator(anchor_idx: torch.Tensor, source_idx: torch.Tensor, weights: torch.Tensor,
                   self_weight: torch.Tensor, tokens: int) -> torch.Tensor:
    """The merge as one matrix over token positions, so that ``operator @ x`` reads x as it is
    and no (F, N, D) copy of the anchors is needed.

    Args:
        anchor_idx: (F, N); source_idx: (F, M); weights: (F, M, N) merge weights of the sources;
        self_weight: (F, N) the anchors' own weight; tokens: T.
    Returns:
        (F, N, T), a transposed view of an (F, T, N) tensor whose row t holds the weights of
        token t: ``weights[m]`` at source m, ``self_weight[n]`` at anchor n's own column.
        The sources are written as whole rows (one ``index_put_`` on (frame, token) pairs, one
        contiguous copy per source instead of N scattered single entries); the product reads
        the result transposed for free.
    """
    frames, num_anchors = anchor_idx.shape
    by_token = torch.empty(frames * tokens, num_anchors, dtype=weights.dtype,
                           device=weights.device).view(frames, tokens, num_anchors)
    # (frame, token) index pairs address whole rows: no flattened row index to compute
    frame_of = frame_offsets(frames, 1, weights.device)  # (F, 1) frame ids
    by_token.index_put_((frame_of, source_idx), weights)
    # Anchor rows: zeros with the anchor's own weight in its own column, written where they
    # land rather than copied from an (F, N, N) diagonal matrix.
    by_token.index_put_((frame_of, anchor_idx), constant(0.0, weights.dtype, weights.device))
    own_column = frame_columns(frames, num_anchors, weights.device).view(frames, num_anchors)
    by_token.index_put_((frame_of, anchor_idx, own_column), self_weight)
    return by_token.transpose(1, 2)


def merge_product(features: torch.Tensor, operator: torch.Tensor,
                  chunk_frames: int | None = None) -> torch.Tensor:
    """``operator @ features``: the (F, N, D) merged anchors in the dtype of ``operator``.

    Features already in that dtype are read in place by one batched product; a half-precision
    input is upcast chunk by chunk (default chunk: :func:`aot.ops.scratch_bytes` of copy).
    """
    frames, tokens, dim = features.shape
    if features.dtype == operator.dtype:
        return torch.bmm(operator, features)
    if chunk_frames is None:
        chunk_frames = frames_per_chunk(tokens * dim * operator.dtype.itemsize, frames,
                                        device=features.device)
    merged = torch.empty(frames, operator.shape[1], dim, dtype=operator.dtype,
                         device=features.device)
    for start, stop in chunk_ranges(frames, chunk_frames):
        torch.bmm(operator[start:stop], features[start:stop].to(operator.dtype),
                  out=merged[start:stop])
    return merged


def merged_anchor_features(features: torch.Tensor, anchor_idx: torch.Tensor,
                           source_idx: torch.Tensor, grid, config: AOTConfig, *,
                           check_every: int | None = None,
                           chunk_frames: int | None = None,
                           similarity: torch.Tensor | None = None) -> torch.Tensor:
    """The merged anchor features of every frame (the intra stage without the mask split).

    Sync-free with ``check_every=0`` (fixed Sinkhorn iteration count, same result), so
    ``torch.compile(merged_anchor_features, fullgraph=True)`` traces it whole.

    Args:
        features: (F, T, D) projected features of all patches, T = rows * cols.
        anchor_idx: (F, N), source_idx: (F, M) ascending token indices, N + M = T, N, M >= 1.
        grid: the patch grid, a square's side or ``(rows, cols)`` (:func:`grid_coordinates`).
        config: uses intra_merge ("ot" or "cosine"), intra_epsilon, spatial_weight, intra_scale,
            hard_merge_weight and the Sinkhorn knobs.
        check_every: Sinkhorn iterations between host syncs (see :func:`aot.sinkhorn.sinkhorn`);
            default ``config.sinkhorn_check_every``.
        chunk_frames: frames per chunk of the passes over ``features`` (see
            :func:`anchor_similarity`) and of the distance gathers (:func:`intra_cost`); same
            result for any value.
        similarity: (F, M, N) from :func:`anchor_similarity`, when already computed; it is
            overwritten (its memory holds the cost, the plan and the merge weights in turn).
    Returns:
        (F, N, D) merged anchors in float32 (float64 for float64 input).
    """
    if check_every is None:
        check_every = config.sinkhorn_check_every
    if similarity is None:
        similarity = anchor_similarity(features, anchor_idx, source_idx, chunk_frames).similarity
    nearest = nearest_anchors(similarity)  # read before the similarity's memory is reused
    plan = None
    if config.intra_merge == "ot":
        frames, num_sources, num_anchors = similarity.shape
        a = uniform_rows(frames, num_sources, similarity.dtype, features.device)
        b = uniform_rows(frames, num_anchors, similarity.dtype, features.device)
        # The similarity becomes the cost, the kernel, the plan and (below) the merge weights
        # in turn, each step in place: the transport writes no new (F, M, N) tensor.
        cost = intra_cost(similarity, source_idx, anchor_idx, grid, config.spatial_weight,
                          overwrite_similarity=True, chunk_frames=chunk_frames)
        plan = sinkhorn(a, b, cost, config.intra_epsilon, max_iter=config.sinkhorn_iterations,
                        stop_threshold=config.sinkhorn_tolerance,
                        stopping="batch" if config.sinkhorn_stopping == "video" else "problem",
                        log_domain=config.log_domain, check_every=check_every,
                        overwrite_cost=True, cost_bound=intra_cost_bound(config.spatial_weight),
                        valid_counts=([num_sources] * frames, [num_anchors] * frames)).plan
        del cost
    weights, self_weight = merge_weights(plan, nearest, config,
                                         out=similarity if plan is None else plan)
    operator = merge_operator(anchor_idx, source_idx, weights, self_weight, features.shape[1])
    del similarity, plan, weights  # the merge product is the stage's peak: hold no more than needed
    return merge_product(features, operator, chunk_frames)


@dataclass
class AnchorMerge:
    """Result of :func:`aggregate_into_anchors`.

    anchor_idx: (F, N) long, anchor token indices in ascending order.
    merged: (F, N, D) merged anchor features in the dtype of the input, or None when nothing
        changes (mode ``"prune"``, no anchor or no other token).
    checked: whether the features were found finite on the way (their norms are), so that
        no separate scan is needed.
    """

    anchor_idx: torch.Tensor
    merged: torch.Tensor | None
    checked: bool


def aggregate_into_anchors(features: torch.Tensor, anchor_mask: torch.Tensor, grid,
                           config: AOTConfig, *, check_every: int | None = None,
                           chunk_frames: int | None = None,
                           anchor_count: int | None = None) -> AnchorMerge:
    """Intra-frame OT of a video: every anchor absorbs the other tokens of its frame.

    Args:
        features: (F, T, D) projected features of all patches, T = rows * cols.
        anchor_mask: (F, T) bool, the same number of anchors in every frame.
        grid: the patch grid, a square's side or ``(rows, cols)``.
        config: uses intra_merge (the mode), intra_epsilon, spatial_weight, intra_scale,
            hard_merge_weight, and the Sinkhorn knobs.
        check_every, chunk_frames: see :func:`merged_anchor_features` (same result for any value).
        anchor_count: the anchors of every frame when known (:func:`aot.anchors.anchors_per_frame`).
    Returns:
        :class:`AnchorMerge`.

    ``"ot"``: anchor = (1 - w) * OT merge + w * hard merge (w = hard_merge_weight; see
    :func:`merge_weights`), cost from :func:`intra_cost`, uniform marginals, one Sinkhorn over all
    frames. ``"cosine"``: the hard merge alone. ``"prune"``: features unchanged. The arithmetic
    runs in float32 (float64 stays float64). :func:`write_anchors` writes the result into a copy
    of the features; the pipeline instead pools it straight from the two tensors
    (:func:`aot.pooling.pool_at`).
    """
    if anchor_count is None:
        anchor_idx, source_idx = split_by_mask(anchor_mask)
        order = None
    else:
        order = split_order(anchor_mask)
        anchor_idx, source_idx = order[:, :anchor_count], order[:, anchor_count:]
    if config.intra_merge == "prune" or anchor_idx.shape[1] == 0 or source_idx.shape[1] == 0:
        return AnchorMerge(anchor_idx, None, False)
    # the similarity reads the first similarity_channels channels; the merge moves all of them
    similar = features[..., :config.similarity_channels]
    found = anchor_similarity(similar, anchor_idx, source_idx, chunk_frames, order=order)
    # Finite features of norm below 1e17 give finite dot products and norm products in float32
    # (NaN fails the test too): one host sync per video tells the rare cases apart.
    if not float(found.norms.amax()) < SAFE_NORM:  # NaN fails too
        check_finite("features", features)  # NaN or inf inside: a ValueError naming the frame
        found = anchor_similarity(similar, anchor_idx, source_idx, chunk_frames, rescale=True)
    merged = merged_anchor_features(features, anchor_idx, source_idx, grid, config,
                                    check_every=check_every, chunk_frames=chunk_frames,
                                    similarity=found.similarity)
    return AnchorMerge(anchor_idx, merged.to(features.dtype), True)


def write_anchors(features: torch.Tensor, anchor_idx: torch.Tensor,
                  merged: torch.Tensor | None) -> torch.Tensor:
    """(F, T, D) copy of ``features`` with the (F, N, D) ``merged`` rows written at the anchors
    (``features`` itself when ``merged`` is None)."""
    if merged is None:
        return features
    out = features.clone()
    rows = torch.arange(features.shape[0], device=features.device)[:, None]
    out[rows, anchor_idx] = merged.to(features.dtype)
    return out
