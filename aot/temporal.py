"""Inter-frame aggregation (aot-method.md §5): keyframe anchors absorb what later frames repeat.

Clips are independent, so step k of every clip (its k-th frame against its current anchors) runs
as one batch; the loop is over positions inside a clip (3 steps at 32 frames, 7 at 64), because
anchors are updated frame after frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .budget import first_in_order
from .clips import Clip
from .config import AOTConfig
from .intra import cosine_similarity
from .sinkhorn import sinkhorn, uniform_marginals

# Kinds of output tokens (AOTResult.token_kind).
KIND_FRAME = 0   # a surviving pooled token emitted as it is (keyframe original, or inter off)
KIND_KEPT = 1    # a token of a later frame kept as temporal dynamics
KIND_ANCHOR = 2  # a keyframe token after absorbing the merged tokens of its clip


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
    counts = survivors.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    positions = torch.argsort((~survivors).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=pooled.device)[None, :] < counts[:, None]
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
    cost = 1 - similarity.clamp(-1 + 1e-6, 1 - 1e-6)
    lowest = cost.masked_fill(~valid, math.inf).amin(dim=(1, 2), keepdim=True)
    cost = torch.where(valid, cost - torch.where(torch.isfinite(lowest), lowest, 0.0), 0.0)
    return cost * (1 - math.exp(-(offset ** 2) / (2 * sigma ** 2)))


def quantile_threshold(scores: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row linear-interpolation quantile over the valid entries, in float64.

    Equals ``torch.quantile(scores[i][valid[i]].double(), q)`` for every row i (NaN for a row
    without valid entries).

    Args:
        scores: (B, M); valid: (B, M) bool.
    Returns:
        (B,) float64.
    """
    values = scores.double().masked_fill(~valid, math.inf).sort(dim=1).values
    count = valid.sum(1)
    pos = (count - 1).clamp(min=0).double() * q
    low = pos.floor().long()
    high = torch.minimum(low + 1, (count - 1).clamp(min=0))
    below = values.gather(1, low[:, None])[:, 0]
    above = values.gather(1, high[:, None])[:, 0]
    threshold = torch.lerp(below, above, pos - low.double())
    return torch.where(count > 0, threshold, torch.full_like(threshold, math.nan))


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
    frames, _, dim = pooled.shape
    work = torch.promote_types(pooled.dtype, torch.float32)
    tokens, positions, valid = packed_survivors(pooled, survivors)
    width = tokens.shape[1]
    kept = torch.zeros(frames, width, dtype=torch.bool, device=pooled.device)

    multi = [clip for clip in clips if clip[1] - clip[0] >= 2]
    keyframes = torch.tensor([start for start, _ in multi], dtype=torch.long, device=pooled.device)
    anchors = tokens[keyframes].to(work)  # (clips, S, D), updated in place step by step
    anchor_valid = valid[keyframes]
    longest = max((stop - start for start, stop in multi), default=0)
    for step in range(1, longest):
        active = torch.tensor([i for i, (s, e) in enumerate(multi) if e - s > step],
                              dtype=torch.long, device=pooled.device)
        frame_ids = keyframes[active] + step
        x, x_valid = tokens[frame_ids].to(work), valid[frame_ids]
        y, y_valid = anchors[active], anchor_valid[active]
        entry_valid = x_valid[:, :, None] & y_valid[:, None, :]
        similarity = cosine_similarity(x, y)

        if config.inter_merge == "cosine":
            # Ablation: judged and merged by plain cosine similarity, no transport plan.
            best = similarity.masked_fill(~entry_valid, -math.inf).max(2)
            score = torch.where(x_valid, best.values, 0.0)
            assign = torch.zeros_like(similarity).scatter_(2, best.indices[:, :, None], 1.0)
            assign = assign * entry_valid
        else:
            cost = temporal_cost(similarity, entry_valid, step, config.sigma)
            plan = sinkhorn(uniform_marginals(x_valid, work), uniform_marginals(y_valid, work),
                            cost, config.temporal_epsilon, max_iter=config.sinkhorn_iterations,
                            stop_threshold=config.sinkhorn_tolerance, stopping="problem",
                            log_domain=config.log_domain).plan
            row_mass = plan.sum(2, keepdim=True)
            assign = torch.where(row_mass > 0, plan / torch.where(row_mass > 0, row_mass, 1.0), 0.0)
            score = assign.max(2).values  # q_i: how well the anchors explain token i

        # Tokens of high score are explained by the anchors; the least explained are kept.
        if keep_counts is not None:
            keep = lowest_k(score, x_valid, keep_counts[frame_ids])
        else:
            threshold = quantile_threshold(score, x_valid, config.keep_ratio)
            keep = x_valid & (score.double() < threshold[:, None])
            # A keyframe with no surviving token leaves nothing to merge into: keep everything.
            keep = torch.where(~y_valid.any(1)[:, None], x_valid, keep)
        kept[frame_ids] = keep

        if config.inter_merge != "prune":
            weights = assign * (x_valid & ~keep)[:, :, None]
            scale = config.inter_scale
            if config.inter_merge == "cosine":
                summed = weights.transpose(1, 2) @ x
                count = weights.sum(1)[:, :, None]
                updated = (scale * y + summed) / (scale + count)
            else:
                updated = (y + scale * (weights.transpose(1, 2) @ x)) / (
                    1 + scale * weights.sum(1)[:, :, None])
            anchors[active] = torch.where(y_valid[:, :, None], updated, y)

    merged = valid.clone()
    merged[keyframes] = False
    single = [start for start, stop in clips if stop - start == 1]
    merged[single] = False
    merged &= ~kept
    return _emit(tokens, positions, valid, kept, merged, anchors, anchor_valid, clips, multi,
                 pooled.shape[1])


def _emit(tokens, positions, valid, kept, merged, anchors, anchor_valid, clips, multi,
          pooled_count) -> TemporalOutput:
    """Gather the output sequence clip by clip (see :func:`temporal_merge` for the order)."""
    frames, width, dim = tokens.shape
    device = tokens.device
    bank = torch.cat([tokens.reshape(-1, dim), anchors.to(tokens.dtype).reshape(-1, dim)])
    clip_index = {clip: i for i, clip in enumerate(multi)}
    rows, frame_of, kind_of = [], [], []

    def emit(frame: int, mask: torch.Tensor, kind: int, offset: int) -> None:
        slots = torch.nonzero(mask).flatten()
        rows.append(offset + slots)
        frame_of.append(torch.full_like(slots, frame))
        kind_of.append(torch.full_like(slots, kind))

    for start, stop in clips:
        emit(start, valid[start], KIND_FRAME, start * width)
        if stop - start < 2:
            continue
        for f in range(start + 1, stop):
            emit(f, kept[f], KIND_KEPT, f * width)
        slot = clip_index[(start, stop)]
        emit(start, anchor_valid[slot], KIND_ANCHOR, frames * width + slot * width)

    index = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=device)
    frame_ids = torch.cat(frame_of) if frame_of else index
    kinds = torch.cat(kind_of) if kind_of else index
    slot_in_frame = index % width if width else index
    token_position = positions[frame_ids, slot_in_frame] if index.numel() else index
    return TemporalOutput(
        tokens=bank[index],
        token_frame=frame_ids,
        token_position=token_position,
        token_kind=kinds.to(torch.int8),
        kept=_unpack(kept, positions, pooled_count),
        merged=_unpack(merged, positions, pooled_count),
    )


def _unpack(packed: torch.Tensor, positions: torch.Tensor, pooled_count: int) -> torch.Tensor:
    """(F, S) packed flags -> (F, P) flags on the pooled grid."""
    out = torch.zeros(packed.shape[0], pooled_count, dtype=torch.bool, device=packed.device)
    return out.scatter_(1, positions, packed) if packed.shape[1] else out
