"""Inter-frame aggregation: keyframe anchors absorb what later frames repeat (the rules:
docs/architecture.md, "The method in one pass"; the knobs: docs/knobs.md).

Clips are independent, so step k of every clip (its k-th frame against its current anchors) runs
as one batch; the loop is over positions inside a clip (3 steps at 32 frames, 7 at 64), because
anchors are updated frame after frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .clips import Clip
from .config import AOTConfig
from .result import KIND_ANCHOR, KIND_FRAME, KIND_KEPT
from .ops import cosine_similarity, first_in_order, pack_left
from .sinkhorn import sinkhorn, uniform_marginals


@dataclass
class TemporalOutput:
    """tokens (T, D); token_frame, token_position, token_kind (T,); kept, merged (F, P) bool."""

    tokens: torch.Tensor
    token_frame: torch.Tensor
    token_position: torch.Tensor
    token_kind: torch.Tensor
    kept: torch.Tensor
    merged: torch.Tensor


def packed_survivors(pooled: torch.Tensor, survivors: torch.Tensor):
    """Survivors of each frame packed to the left of a padded tensor.

    Args:
        pooled: (F, P, D); survivors: (F, P) bool.
    Returns:
        tokens (F, S, D), positions (F, S) long (ascending, padding repeats arbitrary positions),
        valid (F, S) bool, with S the largest survivor count.
    """
    positions, valid = pack_left(survivors)
    tokens = torch.gather(pooled, 1, positions[:, :, None].expand(-1, -1, pooled.shape[-1]))
    return tokens, positions, valid


def temporal_cost(similarity: torch.Tensor, valid: torch.Tensor, offset: int,
                  sigma: float) -> torch.Tensor:
    """Released inter-frame cost: shifted cosine cost scaled by a temporal decay.

    ``C = (C_sim - min C_sim) * (1 - exp(-offset^2 / (2 sigma^2)))`` with
    ``C_sim = 1 - clamp(cos, -1 + 1e-6, 1 - 1e-6)``, the minimum over the valid entries.

    Args:
        similarity: (B, M, N) cosine similarity of a later frame's tokens and the anchors.
        valid: (B, M, N) bool, entries that belong to the problem.
        offset: frames between the later frame and its keyframe (dt).
    Returns:
        (B, M, N) cost (padding entries are 0).
    """
    invalid = ~valid
    # Padding is set to inf for the minimum and back to 0 below, in place on the new tensor.
    cost = (1 - similarity.clamp(-1 + 1e-6, 1 - 1e-6)).masked_fill_(invalid, math.inf)
    lowest = cost.amin(dim=(1, 2), keepdim=True)  # inf for a problem without valid entries
    shift = lowest.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # 0 where not finite
    cost = torch.sub(cost, shift).masked_fill_(invalid, 0.0)
    return cost.mul_(1 - math.exp(-(offset ** 2) / (2 * sigma ** 2)))


def quantile_threshold(scores: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row linear-interpolation quantile over the valid entries, in float64.

    Equals ``torch.quantile(scores[i][valid[i]].double(), q)`` for every row i (NaN for a row
    without valid entries).

    Args:
        scores: (B, M); valid: (B, M) bool.
    Returns:
        (B,) float64.
    """
    values = scores.to(torch.float64, copy=True).masked_fill_(~valid, math.inf).sort(dim=1).values
    count = valid.sum(1)
    last = (count - 1).clamp(min=0)  # the last valid slot (0 for an empty row)
    pos = last.double() * q
    # pos >= 0: truncation is floor, and frac(pos) is exactly pos - floor(pos)
    low = pos.long()
    high = torch.minimum(low + 1, last)
    below = values.gather(1, low[:, None])[:, 0]
    above = values.gather(1, high[:, None])[:, 0]
    threshold = torch.lerp(below, above, pos.frac())
    return threshold.masked_fill_(count == 0, math.nan)


def lowest_k(scores: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, M) bool: the k[i] valid entries of row i with the lowest scores (ties: lower index)."""
    order = torch.sort(scores.masked_fill(~valid, math.inf), dim=1, stable=True).indices
    return valid & first_in_order(order, k)


def temporal_merge(pooled: torch.Tensor, survivors: torch.Tensor, clips: list[Clip],
                   config: AOTConfig, keep_counts: torch.Tensor | None = None) -> TemporalOutput:
    """Run the temporal phase and emit the LLM token sequence in the released order.

    Args:
        pooled: (F, P, D) pooled features of every frame (after the intra merge).
        survivors: (F, P) bool, pooled tokens that survived the anchor mask.
        clips, config, keep_counts: as :func:`temporal_merge_packed`.
    Returns:
        :class:`TemporalOutput` (see :func:`temporal_merge_packed`).
    """
    tokens, positions, valid = packed_survivors(pooled, survivors)
    return temporal_merge_packed(tokens, positions, valid, pooled.shape[1], clips, config,
                                 keep_counts)


@dataclass
class ClipSteps:
    """The clips with two or more frames and the frames of each step, as index tensors.

    keyframes: (C,) long first frame of each such clip; lengths: python list of their lengths;
    frame_ids[k - 1]: (C_k,) long the frame at position k (1, 2, ...) of each clip that has one;
    clip_ids[k - 1]: (C_k,) long those clips, or None when every clip has a frame there (equal
    clips, the usual case: the anchors then need no gather and no scatter);
    later: (F,) bool, the frames that are not the first of their clip.
    They are known from the clips alone and reach the device in two copies, not one per step.
    """

    keyframes: torch.Tensor
    lengths: list[int]
    frame_ids: list[torch.Tensor]
    clip_ids: list[torch.Tensor | None]
    later: torch.Tensor

    @classmethod
    def of(cls, clips: list[Clip], frames: int, device: torch.device) -> ClipSteps:
        """The steps of ``clips``, consecutive (start, stop) frame ranges of ``frames`` frames."""
        multi = [clip for clip in clips if clip[1] - clip[0] >= 2]
        starts = [start for start, _ in multi]
        lengths = [stop - start for start, stop in multi]
        rows = [starts]  # keyframes, then per step: frame ids, clip ids (empty: all clips)
        for step in range(1, max(lengths, default=0)):
            ids = [i for i, length in enumerate(lengths) if length > step]
            rows += [[starts[i] + step for i in ids], [] if len(ids) == len(multi) else ids]
        flat = torch.tensor([i for row in rows for i in row], dtype=torch.long)
        keyframes, *per_step = flat.to(device, non_blocking=True).split([len(r) for r in rows])
        later = [True] * frames
        for start, _ in clips:
            later[start] = False
        return cls(keyframes, lengths, per_step[0::2],
                   [ids if row else None for ids, row in zip(per_step[1::2], rows[2::2])],
                   torch.tensor(later, dtype=torch.bool).to(device, non_blocking=True))


def transport_scores(x: torch.Tensor, x_valid: torch.Tensor, y: torch.Tensor,
                     y_valid: torch.Tensor, offset: int, config: AOTConfig, *,
                     check_every: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """How well the anchors explain each token of a later frame, and where it would go.

    Args:
        x: (B, S, D) tokens of the later frames; y: (B, S', D) current anchors; *_valid: bool.
        offset: frames between the later frame and its keyframe.
        config: uses inter_merge, temporal_epsilon, sigma and the Sinkhorn knobs.
        check_every: Sinkhorn iterations between host syncs; default
            ``config.sinkhorn_check_every``.
    Returns:
        score (B, S): q_i = max_j P[i, j] of the row-normalised plan (``"cosine"``: the best
        cosine); assign (B, S, S'): P (``"cosine"``: one-hot best anchor), 0 on padding.
    """
    entry_valid = x_valid[:, :, None] & y_valid[:, None, :]
    channels = config.similarity_channels  # None: all (the rest ride along, e.g. DeepStack)
    similarity = cosine_similarity(x[..., :channels], y[..., :channels])
    if config.inter_merge == "cosine":
        # Ablation: judged and merged by plain cosine similarity, no transport plan.
        best = similarity.masked_fill_(~entry_valid, -math.inf).max(2)
        score = best.values.masked_fill_(~x_valid, 0.0)
        assign = torch.zeros_like(similarity).scatter_(2, best.indices[:, :, None], 1.0)
        return score, assign * entry_valid
    cost = temporal_cost(similarity, entry_valid, offset, config.sigma)
    if check_every is None:
        check_every = config.sinkhorn_check_every
    plan = sinkhorn(uniform_marginals(x_valid, x.dtype), uniform_marginals(y_valid, x.dtype),
                    cost, config.temporal_epsilon, max_iter=config.sinkhorn_iterations,
                    stop_threshold=config.sinkhorn_tolerance, stopping="problem",
                    log_domain=config.log_domain, check_every=check_every).plan
    row_mass = plan.sum(2, keepdim=True)
    # Rows without mass: 0 / 0 is NaN, set to 0 (as are rows whose mass is NaN).
    assign = plan.div_(row_mass).masked_fill_(~(row_mass > 0), 0.0)
    return assign.max(2).values, assign


def select_kept(score: torch.Tensor, x_valid: torch.Tensor, y_valid: torch.Tensor,
                config: AOTConfig, keep_counts: torch.Tensor | None) -> torch.Tensor:
    """(B, S) bool: the tokens kept as temporal dynamics (the least explained ones).

    Released rule: ``q < quantile(q, keep_ratio)``; exact mode: the ``keep_counts[b]`` lowest.
    A keyframe with no surviving token leaves nothing to merge into: everything is kept.
    """
    if keep_counts is not None:
        return lowest_k(score, x_valid, keep_counts)
    threshold = quantile_threshold(score, x_valid, config.keep_ratio)
    keep = x_valid & (score < threshold[:, None])  # compared in float64 (type promotion)
    return torch.where(y_valid.any(1)[:, None], keep, x_valid)


def update_anchors(y: torch.Tensor, y_valid: torch.Tensor, x: torch.Tensor,
                   assign: torch.Tensor, merge: torch.Tensor, config: AOTConfig) -> torch.Tensor:
    """Anchors after folding in the merged tokens of one later frame.

    ``"ot"``: ``y_j <- (y_j + s * sum_i P[i, j] x_i) / (1 + s * sum_i P[i, j])``;
    ``"cosine"``: ``y_j <- (s * y_j + sum_{i -> j} x_i) / (s + count_j)``; sums over merged i.

    Args:
        y: (B, S', D); y_valid: (B, S'); x: (B, S, D); assign: (B, S, S'); merge: (B, S) bool.
    Returns:
        (B, S', D); padded anchors unchanged.
    """
    weights = assign * merge[:, :, None]
    scale = config.inter_scale
    summed = weights.transpose(1, 2) @ x
    load = weights.sum(1)[:, :, None]
    # In place on the new ``summed`` (sums commute exactly): one (B, S', D) tensor per step.
    if config.inter_merge == "cosine":
        updated = summed.add_(scale * y).div_(scale + load)  # (s * y + agg) / (s + count)
    else:
        updated = summed.mul_(scale).add_(y).div_(1 + scale * load)  # (y + s agg) / (1 + s load)
    return torch.where(y_valid[:, :, None], updated, y, out=updated)


def temporal_step(x: torch.Tensor, x_valid: torch.Tensor, y: torch.Tensor, y_valid: torch.Tensor,
                  offset: int, config: AOTConfig, keep_counts: torch.Tensor | None = None, *,
                  check_every: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One position of every clip: score the later frame's tokens, keep the least explained,
    fold the rest into the anchors. Sync-free with ``check_every=0`` (compiles whole).

    Args:
        x: (B, S, D) tokens of the later frames, x_valid (B, S); y: (B, S', D) current anchors,
        y_valid (B, S'); offset: frames from the keyframe; keep_counts: (B,) or None.
    Returns:
        keep (B, S) bool, updated anchors (B, S', D).
    """
    score, assign = transport_scores(x, x_valid, y, y_valid, offset, config,
                                     check_every=check_every)
    keep = select_kept(score, x_valid, y_valid, config, keep_counts)
    if config.inter_merge == "prune":
        return keep, y
    merge = x_valid > keep  # x_valid and not keep, in one op (False < True)
    return keep, update_anchors(y, y_valid, x, assign, merge, config)


def temporal_merge_packed(tokens: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                          pooled_count: int, clips: list[Clip], config: AOTConfig,
                          keep_counts: torch.Tensor | None = None, *,
                          check_every: int | None = None) -> TemporalOutput:
    """The temporal phase on survivors already packed to the left (:func:`packed_survivors`).

    Step k of every clip (its k-th frame against the clip's current anchors) runs as one batch;
    no host sync happens inside the loop except Sinkhorn's every ``check_every`` iterations
    (``check_every=0``: none; the emission at the end syncs once for the output length).

    Args:
        tokens: (F, S, D) survivors; positions: (F, S) their pooled positions; valid: (F, S).
        pooled_count: P, pooled tokens per frame.
        clips: consecutive (start, stop) frame ranges covering the video.
        config: uses keep_ratio, temporal_epsilon, sigma, inter_scale, inter_merge and the
            Sinkhorn knobs (each step's problems stop on their own, as if solved one by one).
        keep_counts: (F,) long, exact number of tokens to keep in each later frame (exact-budget
            mode); ``None`` = released rule ``q < quantile(q, keep_ratio)``.
    Returns:
        :class:`TemporalOutput`. Per clip of two or more frames: the keyframe's surviving tokens
        as they are, then every later frame's kept tokens in frame order, then the clip's merged
        anchors (so the keyframe appears twice, as in the released code). A clip of one frame
        emits its survivors once.
    """
    work = torch.promote_types(tokens.dtype, torch.float32)
    kept = torch.zeros_like(valid)
    steps = ClipSteps.of(clips, tokens.shape[0], tokens.device)
    anchors = tokens[steps.keyframes].to(work)  # (C, S, D), updated step by step
    anchor_valid = valid[steps.keyframes]
    for step, (frame_ids, clip_ids) in enumerate(zip(steps.frame_ids, steps.clip_ids), start=1):
        counts = keep_counts[frame_ids] if keep_counts is not None else None
        # No step's copies outlive the step (its inputs are passed, not held).
        if clip_ids is None:  # every clip has a frame at this step
            keep, anchors = temporal_step(
                tokens[frame_ids].to(work), valid[frame_ids], anchors, anchor_valid, step,
                config, counts, check_every=check_every)
        else:
            keep, anchors[clip_ids] = temporal_step(
                tokens[frame_ids].to(work), valid[frame_ids], anchors[clip_ids],
                anchor_valid[clip_ids], step, config, counts, check_every=check_every)
        kept[frame_ids] = keep

    # The survivors of later frames that were not kept (kept holds later frames only).
    merged = (valid & steps.later[:, None]) > kept  # ... and not kept, in one op (False < True)
    return _emit(tokens, positions, valid, kept, merged, anchors, anchor_valid, clips,
                 pooled_count)


def _emit(tokens, positions, valid, kept, merged, anchors, anchor_valid, clips,
          pooled_count) -> TemporalOutput:
    """Gather the output sequence (order: see :func:`temporal_merge_packed`) with one sync.

    Every candidate slot (each frame's packed slots, then each clip's anchor slots) has a place
    in the released order, known from the clips alone; one mask in that order and one
    ``nonzero`` select the emitted ones.
    """
    frames, width, dim = tokens.shape
    device = tokens.device
    # One block of ``width`` candidate slots per frame and per clip's anchors, in the released
    # order: where its flags lie in cat(valid, kept, anchor_valid) (a clip's first frame emits
    # its survivors, a later frame its kept tokens, then the anchors), where its rows lie in
    # cat(tokens, anchors), its frame and its kind. Known from the clips: one copy to the device.
    flag_base, row_base, frame_of, kind_of = [], [], [], []
    anchor_slot = 0
    for start, stop in clips:
        for f in range(start, stop):
            flag_base.append((f if f == start else frames + f) * width)
            row_base.append(f * width)
            frame_of.append(f)
            kind_of.append(KIND_FRAME if f == start else KIND_KEPT)
        if stop - start >= 2:
            flag_base.append((2 * frames + anchor_slot) * width)
            row_base.append((frames + anchor_slot) * width)
            frame_of.append(start)
            kind_of.append(KIND_ANCHOR)
            anchor_slot += 1
    if not frame_of or width == 0:
        index = torch.zeros(0, dtype=torch.long, device=device)
        frame_ids, kinds, token_position = index, index, index
    else:
        table = torch.tensor([flag_base, row_base, frame_of, kind_of]).to(device)
        flags = torch.cat([valid.reshape(-1), kept.reshape(-1), anchor_valid.reshape(-1)])
        candidates = (table[0, :, None] + torch.arange(width, device=device)).reshape(-1)
        chosen = torch.nonzero(flags[candidates]).flatten()  # the one host sync of the phase
        block, slot = chosen // width, chosen % width
        index = table[1][block] + slot
        frame_ids = table[2][block]
        kinds = table[3][block]
        token_position = positions[frame_ids, slot]
    return TemporalOutput(
        tokens=_rows_of_two(tokens.reshape(-1, dim), anchors.to(tokens.dtype).reshape(-1, dim),
                            index),
        token_frame=frame_ids,
        token_position=token_position,
        token_kind=kinds.to(torch.int8),
        kept=_unpack(kept, positions, pooled_count),
        merged=_unpack(merged, positions, pooled_count),
    )


def _rows_of_two(first: torch.Tensor, second: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``torch.cat([first, second])[index]`` without writing the concatenation.

    Args:
        first: (A, D); second: (B, D); index: (K,) long rows of the concatenation.
    Returns:
        (K, D).
    """
    if index.numel() == 0 or second.shape[0] == 0:
        return first[index]
    rows = first.index_select(0, index.clamp(max=first.shape[0] - 1))
    in_second = (index >= first.shape[0])[:, None]
    later = second.index_select(0, (index - first.shape[0]).clamp(min=0))
    return torch.where(in_second, later, rows, out=rows)


def _unpack(packed: torch.Tensor, positions: torch.Tensor, pooled_count: int) -> torch.Tensor:
    """(F, S) packed flags -> (F, P) flags on the pooled grid."""
    out = torch.zeros(packed.shape[0], pooled_count, dtype=torch.bool, device=packed.device)
    return out.scatter_(1, positions, packed) if packed.shape[1] else out
