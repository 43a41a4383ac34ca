"""Inter-frame aggregation: keyframe anchors absorb what later frames repeat (the rules:
docs/architecture.md, "The method in one pass"; the knobs: docs/knobs.md).

Clips are independent, so step k of every clip (its k-th frame against its current anchors) runs
as one batch; the loop is over positions inside a clip (3 steps at 32 frames, 7 at 64), because
anchors are updated frame after frame.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .clips import Clip
from .config import AOTConfig
from .result import KIND_ANCHOR, KIND_FRAME, KIND_KEPT
from .ops import constant, first_in_order, pack_left, unit_rows
from .sinkhorn import _float32, sinkhorn, uniform_marginals, working_dtype


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
                  sigma: float, *, invalid: torch.Tensor | None = None,
                  every_problem_valid: bool = False) -> torch.Tensor:
    """Released inter-frame cost: shifted cosine cost scaled by a temporal decay.

    ``C = (C_sim - min C_sim) * (1 - exp(-offset^2 / (2 sigma^2)))`` with
    ``C_sim = 1 - clamp(cos, -1 + 1e-6, 1 - 1e-6)``, the minimum over the valid entries.

    Args:
        similarity: (B, M, N) cosine similarity of a later frame's tokens and the anchors.
        valid: (B, M, N) bool, entries that belong to the problem.
        offset: frames between the later frame and its keyframe (dt).
        invalid: ``~valid`` when the caller has it already.
        every_problem_valid: the caller knows that every problem has a valid entry (then
            every minimum is finite and needs no guard).
    Returns:
        (B, M, N) cost (padding entries are 0), in [0, 2] (:data:`COST_BOUND`).
    """
    invalid = ~valid if invalid is None else invalid
    # Padding is set to inf for the minimum and back to 0 below, in place on the new tensor.
    cost = (1 - similarity.clamp(-1 + 1e-6, 1 - 1e-6)).masked_fill_(invalid, math.inf)
    lowest = cost.amin(dim=(1, 2), keepdim=True)  # inf for a problem without valid entries
    shift = lowest if every_problem_valid else \
        lowest.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # 0 where not finite
    cost = torch.sub(cost, shift).masked_fill_(invalid, 0.0)
    return cost.mul_(1 - math.exp(-(offset ** 2) / (2 * sigma ** 2)))


#: |temporal cost| <= 2: a clamped cosine cost lies in [0, 2] after its shift, the decay in [0, 1].
COST_BOUND = 2.0

#: The released clamp of the cosine: [-1 + 1e-6, 1 - 1e-6].
_COSINE_RANGE = (-1 + 1e-6, 1 - 1e-6)
#: Added to a padding entry's cosine cost so that it lies above every clamped one (see
#: :func:`_padded_cost`).
_PADDING_BASE = 3.0


@functools.lru_cache(maxsize=4)
def _cost_range(dtype: torch.dtype) -> tuple[float, float]:
    """``(1 - hi, 1 - lo)`` rounded to ``dtype``, with ``lo, hi`` the cosine clamp rounded to
    ``dtype`` as ``clamp`` rounds it: ``clamp(1 - s, *this) == 1 - clamp(s, lo, hi)`` bit for
    bit, since ``s -> fl(1 - s)`` is monotone (an input beyond a bound lands on that bound's
    image either way). Both differences are exact in double, so one rounding gives the float32
    result."""
    rounded = float if dtype == torch.float64 else _float32
    low, high = (rounded(bound) for bound in _COSINE_RANGE)
    return rounded(1 - high), rounded(1 - low)


def _padded_cost(similarity: torch.Tensor, base: torch.Tensor, offset: int,
                 sigma: float) -> torch.Tensor:
    """:func:`temporal_cost` on the valid entries, written over ``similarity``, in five
    operations instead of seven.

    Args:
        similarity: (B, M, N) cosine similarity, float32 or float64 (overwritten).
        base: (B, M, N) 1 on the valid entries, :data:`_PADDING_BASE` on padding.
    Returns:
        (B, M, N) cost: the released values on the valid entries; a padding entry holds
        ``(hi' - lowest) * decay`` in [0, 2] (``hi'`` the cost's upper clamp) instead of 0.

    Why the padding may differ: ``base - s`` clamped to :func:`_cost_range` is the released
    ``1 - clamp(s)`` on valid entries and the upper bound, not below any valid entry, on
    padding, so the minimum over the matrix is the valid entries' minimum (the upper bound for a
    problem without valid entries, whose cost is then 0, as released). Sinkhorn gives padded
    rows and columns a zero scaling (the deferred loop from their zero marginal, every other
    path masks the padding first), so a padding entry's cost only has to keep the kernel entry
    finite and positive, as any value in [0, 2] does: the plan is the same to the bit.
    """
    cost = torch.sub(base, similarity, out=similarity).clamp_(*_cost_range(similarity.dtype))
    lowest = cost.amin(dim=(1, 2), keepdim=True)
    return cost.sub_(lowest).mul_(1 - math.exp(-(offset ** 2) / (2 * sigma ** 2)))


@dataclass
class QuantilePositions:
    """Where the linear-interpolation quantile of each row's valid entries lies, known from the
    valid counts alone (so computed once for every frame of a video).

    index: (B, 2) long, the two sorted slots it interpolates; frac: (B,) float64, the weight of
    the upper one; empty: (B,) bool, rows without valid entries (their quantile is NaN), or None
    when every row has one.
    """

    index: torch.Tensor
    frac: torch.Tensor
    empty: torch.Tensor

    @classmethod
    def of(cls, count: torch.Tensor, q: float) -> QuantilePositions:
        """count: (B,) long valid entries per row."""
        last = (count - 1).clamp(min=0)  # the last valid slot (0 for an empty row)
        pos = last.double() * q
        # pos >= 0: truncation is floor, and frac(pos) is exactly pos - floor(pos)
        low = pos.long()
        return cls(torch.stack([low, torch.minimum(low + 1, last)], 1), pos.frac(), count == 0)

    def rows(self, index) -> QuantilePositions:
        """The positions of some rows (a slice or an index tensor)."""
        return QuantilePositions(self.index[index], self.frac[index],
                                 None if self.empty is None else self.empty[index])


def quantile_at(scores: torch.Tensor, invalid: torch.Tensor,
                positions: QuantilePositions) -> torch.Tensor:
    """(B,) float64 quantiles of each row's valid scores; scores (B, M), invalid (B, M) bool."""
    values = scores.to(torch.float64, copy=True).masked_fill_(invalid, math.inf).sort(dim=1).values
    ends = values.gather(1, positions.index)
    threshold = torch.lerp(ends[:, 0], ends[:, 1], positions.frac)
    return threshold if positions.empty is None else threshold.masked_fill_(positions.empty,
                                                                           math.nan)


def _quantile_padding_first(scores: torch.Tensor,
                            positions: QuantilePositions) -> torch.Tensor:
    """:func:`quantile_at` for scores that are +0 on every invalid entry and >= +0 (not NaN)
    on the valid ones, as the transport's are (a padded row of a plan is 0, and so is its
    score), with ``positions`` shifted past the row's invalid entries: sorted, those come first
    and hold the value 0, so slot ``S - count + k`` holds the k-th smallest valid score (a valid
    0 ties with them in value), with no masked copy. Sorted in the scores' dtype; the two ends
    are converted exactly."""
    ends = scores.sort(dim=1).values.gather(1, positions.index).double()
    threshold = torch.lerp(ends[:, 0], ends[:, 1], positions.frac)
    return threshold if positions.empty is None else threshold.masked_fill_(positions.empty,
                                                                           math.nan)


def quantile_threshold(scores: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row linear-interpolation quantile over the valid entries, in float64.

    Equals ``torch.quantile(scores[i][valid[i]].double(), q)`` for every row i (NaN for a row
    without valid entries).

    Args:
        scores: (B, M); valid: (B, M) bool.
    Returns:
        (B,) float64.
    """
    return quantile_at(scores, ~valid, QuantilePositions.of(valid.sum(1), q))


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
    later: (F,) bool, the frames that are not the first of their clip;
    stride: L when the clips are all of one length L >= 2 and cover the video (the released
    clips): then keyframes are frames ``0::L`` and step k's frames ``k::L``, views, not gathers.
    They are known from the clips alone and reach the device in two copies, not one per step
    (and are cached: the same clips give the same tensors).
    """

    keyframes: torch.Tensor
    lengths: list[int]
    frame_ids: list[torch.Tensor]
    clip_ids: list[torch.Tensor | None]
    later: torch.Tensor
    stride: int | None = None

    @classmethod
    def of(cls, clips: list[Clip], frames: int, device: torch.device) -> ClipSteps:
        """The steps of ``clips``, consecutive (start, stop) frame ranges of ``frames`` frames."""
        return _clip_steps(tuple(map(tuple, clips)), frames, torch.device(device))

    def keyframe_rows(self):
        """What selects the keyframes' rows: a slice when strided, else the index tensor."""
        return slice(0, None, self.stride) if self.stride else self.keyframes

    def step_rows(self, step: int):
        """What selects the rows of step ``step`` (1, 2, ...)."""
        return slice(step, None, self.stride) if self.stride else self.frame_ids[step - 1]


@functools.lru_cache(maxsize=64)
def _clip_steps(clips: tuple[Clip, ...], frames: int, device: torch.device) -> ClipSteps:
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
    stride = lengths[0] if multi and len(multi) == len(clips) and len(set(lengths)) == 1 \
        and lengths[0] * len(multi) == frames else None
    return ClipSteps(keyframes, lengths, per_step[0::2],
                     [ids if row else None for ids, row in zip(per_step[1::2], rows[2::2])],
                     torch.tensor(later, dtype=torch.bool).to(device, non_blocking=True), stride)


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
    channels = config.similarity_channels  # None: all (the rest ride along, e.g. DeepStack)
    invalid = ~(x_valid[:, :, None] & y_valid[:, None, :])
    return _scores(unit_rows(x[..., :channels]), uniform_marginals(x_valid, x.dtype),
                   unit_rows(y[..., :channels]), uniform_marginals(y_valid, x.dtype), invalid,
                   x_valid, offset, config, check_every=check_every)


def _scores(x_unit: torch.Tensor, x_marginal: torch.Tensor, y_unit: torch.Tensor,
            y_marginal: torch.Tensor, invalid: torch.Tensor | None, x_valid: torch.Tensor,
            offset: int, config: AOTConfig, *, check_every: int | None,
            valid_counts: tuple[list[int], list[int]] | None = None,
            base: torch.Tensor | None = None, workspace: dict | None = None):
    """:func:`transport_scores` from unit rows (:func:`aot.ops.unit_rows`), uniform marginals
    and the (B, S, S') ``invalid`` entries, which a video computes once for all its steps;
    ``valid_counts``: the valid rows and columns of each problem when known on the host;
    ``base``: (B, S, S') the padding base of :func:`_padded_cost`, used instead of
    ``invalid`` by the transport (``"cosine"`` reads ``invalid``); ``workspace``: Sinkhorn's,
    kept across the steps of a video (:func:`aot.sinkhorn.sinkhorn`)."""
    similarity = torch.bmm(x_unit, y_unit.transpose(1, 2))
    if config.inter_merge == "cosine":
        # Ablation: judged and merged by plain cosine similarity, no transport plan.
        best = similarity.masked_fill_(invalid, -math.inf).max(2)
        score = best.values.masked_fill_(~x_valid, 0.0)
        assign = torch.zeros_like(similarity).scatter_(2, best.indices[:, :, None], 1.0)
        return score, assign * ~invalid
    if base is not None:
        cost = _padded_cost(similarity, base, offset, config.sigma)
    else:
        nonempty = valid_counts is not None and min(valid_counts[0] + valid_counts[1]) > 0
        cost = temporal_cost(similarity, None, offset, config.sigma, invalid=invalid,
                             every_problem_valid=nonempty)
    if check_every is None:
        check_every = config.sinkhorn_check_every
    plan = sinkhorn(x_marginal, y_marginal, cost, config.temporal_epsilon,
                    max_iter=config.sinkhorn_iterations, stop_threshold=config.sinkhorn_tolerance,
                    stopping="problem", log_domain=config.log_domain, check_every=check_every,
                    overwrite_cost=True, cost_bound=COST_BOUND, valid_counts=valid_counts,
                    workspace=workspace).plan
    row_mass = plan.sum(2, keepdim=True)
    # Rows without mass: 0 / 0 is NaN, set to 0 (as are rows whose mass is NaN); written over
    # the plan.
    assign = torch.where(row_mass > 0, plan.div_(row_mass), constant(0.0, plan.dtype, plan.device),
                         out=plan)
    return assign.amax(2), assign


def select_kept(score: torch.Tensor, x_valid: torch.Tensor, y_valid: torch.Tensor,
                config: AOTConfig, keep_counts: torch.Tensor | None) -> torch.Tensor:
    """(B, S) bool: the tokens kept as temporal dynamics (the least explained ones).

    Released rule: ``q < quantile(q, keep_ratio)``; exact mode: the ``keep_counts[b]`` lowest.
    A keyframe with no surviving token leaves nothing to merge into: everything is kept.
    """
    positions = None if keep_counts is not None else \
        QuantilePositions.of(x_valid.sum(1), config.keep_ratio)
    return _select(score, x_valid, ~x_valid, positions, y_valid.any(1), keep_counts)


def _select(score: torch.Tensor, x_valid: torch.Tensor, x_invalid: torch.Tensor | None,
            positions: QuantilePositions | None, y_any: torch.Tensor | None,
            keep_counts: torch.Tensor | None) -> torch.Tensor:
    """:func:`select_kept` with the row-constant parts given (``y_any`` None: every keyframe
    has a surviving token; ``x_invalid`` None: transport scores and positions shifted past the
    invalid entries, :func:`_quantile_padding_first`)."""
    if keep_counts is not None:
        return lowest_k(score, x_valid, keep_counts)
    threshold = quantile_at(score, x_invalid, positions) if x_invalid is not None else \
        _quantile_padding_first(score, positions)
    keep = x_valid & (score < threshold[:, None])  # compared in float64 (type promotion)
    return keep if y_any is None else torch.where(y_any[:, None], keep, x_valid)


def update_anchors(y: torch.Tensor, y_valid: torch.Tensor | None, x: torch.Tensor,
                   assign: torch.Tensor, merge: torch.Tensor, config: AOTConfig, *,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Anchors after folding in the merged tokens of one later frame.

    ``"ot"``: ``y_j <- (y_j + s * sum_i P[i, j] x_i) / (1 + s * sum_i P[i, j])``;
    ``"cosine"``: ``y_j <- (s * y_j + sum_{i -> j} x_i) / (s + count_j)``; sums over merged i.

    Args:
        y: (B, S', D); y_valid: (B, S'), or None when every anchor is valid; x: (B, S, D);
        assign: (B, S, S'); merge: (B, S) bool.
        out: a (B, S', D) tensor of y's dtype, not overlapping y, to write the result into.
    Returns:
        (B, S', D) (``out`` when given); padded anchors unchanged.
    """
    weights = assign * merge[:, :, None]
    scale = config.inter_scale
    summed = torch.bmm(weights.transpose(1, 2), x, out=out)
    load = weights.sum(1)[:, :, None]
    # In place on the new ``summed`` (sums commute exactly): one (B, S', D) tensor per step.
    # A scale of 1 is skipped: multiplying by 1.0 changes no bit.
    if config.inter_merge == "cosine":
        updated = summed.add_(scale * y).div_(scale + load)  # (s * y + agg) / (s + count)
    else:
        if scale != 1.0:
            summed.mul_(scale)
            load = scale * load
        updated = summed.add_(y).div_(1 + load)  # (y + s agg) / (1 + s load)
    if y_valid is None:
        return updated
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


@dataclass
class _Video:
    """What every step reads about the video's frames, made once for all steps (F rows each):
    unit rows of the similarity channels, uniform marginals, the (F, S) invalid tokens (None
    when the quantile positions are shifted past them, :func:`_quantile_padding_first`), the
    (F, S, S) entries against the frame's keyframe (``base``: the padding base of
    :func:`_padded_cost` for the transport; ``entries_invalid``: for ``"cosine"``; the other
    one None), the quantile positions and the valid counts on the host."""

    tokens: torch.Tensor
    unit: torch.Tensor
    marginal: torch.Tensor
    valid: torch.Tensor
    invalid: torch.Tensor | None
    base: torch.Tensor | None
    entries_invalid: torch.Tensor | None
    positions: QuantilePositions
    counts: list[int] | None


def _video_inputs(tokens: torch.Tensor, valid: torch.Tensor, clips: list[Clip],
                  steps: ClipSteps, config: AOTConfig, counts: torch.Tensor | None,
                  host_counts: list[int] | None) -> _Video:
    """tokens (F, S, D) in the working dtype, valid (F, S) packed to the left; counts (F,) long
    on the device (None when ``host_counts`` are given: the marginals and the quantile
    positions are then made on the host, from the counts alone)."""
    frames, width = valid.shape
    if steps.stride:  # keyframe c * L of frames c * L ... c * L + L - 1: broadcast, not copied
        length = steps.stride
        entries = (valid.view(-1, length, width)[:, :, :, None]
                   & valid[::length][:, None, None, :]).view(frames, width, width)
    else:
        keyframe_of = [start for start, stop in clips for _ in range(start, stop)]
        key_valid = valid[torch.tensor(keyframe_of, device=valid.device)]
        entries = valid[:, :, None] & key_valid[:, None, :]
    base = entries_invalid = None
    if config.inter_merge == "cosine":
        entries_invalid = ~entries
    else:
        base = torch.where(entries, constant(1.0, tokens.dtype, tokens.device),
                           constant(_PADDING_BASE, tokens.dtype, tokens.device))
    # transport scores (not cosine ones) are >= 0 and 0 on padding: their quantile needs no mask
    padding_first = host_counts is not None and config.inter_merge != "cosine"
    if host_counts is None:
        marginal = valid.to(tokens.dtype) / counts.clamp(min=1)[:, None]  # as uniform_marginals
        positions = QuantilePositions.of(counts, config.keep_ratio)
    else:
        marginal, positions = _host_inputs(host_counts, width, config.keep_ratio, tokens.dtype,
                                           tokens.device, padding_first)
    return _Video(tokens, unit_rows(tokens[..., :config.similarity_channels]), marginal, valid,
                  None if padding_first else ~valid, base, entries_invalid, positions,
                  host_counts)


def _host_inputs(counts: list[int], width: int, q: float, dtype: torch.dtype,
                 device: torch.device,
                 padding_first: bool) -> tuple[torch.Tensor, QuantilePositions]:
    """The uniform marginals (F, S) of packed-left rows and the quantile positions of
    :meth:`QuantilePositions.of` (``padding_first``: shifted past the row's S - count invalid
    entries, for :func:`_quantile_padding_first`; an empty row's stay in range, its quantile is
    NaN anyway), computed on the host from the valid counts, with the device's
    numbers: ``1 / n`` rounded once to float32 is the float32 quotient (double holds more than
    twice float32's precision), and the positions are float64 arithmetic in both places. They
    reach the device in three copies instead of a dozen operations."""
    rounded = float if dtype == torch.float64 else _float32
    marginal = [[rounded(1.0 / n) if n else 0.0] * n + [0.0] * (width - n) for n in counts]
    index, frac = [], []
    for n in counts:
        last = max(n - 1, 0)
        pos = last * q
        low = int(pos)  # pos >= 0: truncation is floor, and pos - low is exactly its fraction
        index.append((low, min(low + 1, last)))
        frac.append(pos - low)
        if padding_first:
            shift = width - n
            index[-1] = tuple(min(i + shift, max(width - 1, 0)) for i in index[-1])
    empty = None if min(counts, default=1) > 0 else \
        torch.tensor([n == 0 for n in counts]).to(device, non_blocking=True)
    return (torch.tensor(marginal, dtype=dtype).view(len(counts), width)
            .to(device, non_blocking=True),
            QuantilePositions(torch.tensor(index, dtype=torch.long).view(len(counts), 2)
                              .to(device, non_blocking=True),
                              torch.tensor(frac, dtype=torch.float64).to(device, non_blocking=True),
                              empty))


def output_rows(clips: list[Clip], frames: int, width: int, like: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``token_rows`` buffer of :func:`temporal_merge_packed` and its head.

    Args:
        clips: the video's clips; frames: F; width: S, the packed survivors per frame.
        like: a tensor whose last dimension (D), dtype and device the rows take.
    Returns:
        (rows, head): rows (F * S + C * S, D) uninitialised, C the clips of two or more frames
        (whose final anchors go after the survivors); head (F, S, D), a view of its first
        F * S rows, where the survivors are to be written (:func:`aot.pooling.pool_at` ``out``).
    """
    multi = sum(stop - start >= 2 for start, stop in clips)
    dim = like.shape[-1]
    rows = torch.empty((frames + multi) * width, dim, dtype=like.dtype, device=like.device)
    return rows, rows[:frames * width].view(frames, width, dim)


def temporal_merge_packed(tokens: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                          pooled_count: int, clips: list[Clip], config: AOTConfig,
                          keep_counts: torch.Tensor | None = None, *,
                          check_every: int | None = None,
                          counts: list[int] | None = None,
                          survivors: torch.Tensor | None = None,
                          token_rows: torch.Tensor | None = None) -> TemporalOutput:
    """The temporal phase on survivors already packed to the left (:func:`packed_survivors`).

    Step k of every clip (its k-th frame against the clip's current anchors) runs as one batch;
    no host sync happens inside the loop except Sinkhorn's every ``check_every`` iterations
    (``check_every=0``: none; the emission at the end syncs once for the output length).
    What does not change between steps (unit rows of the tokens, marginals, masks, quantile
    positions) is made once for the video.

    Args:
        tokens: (F, S, D) survivors; positions: (F, S) their pooled positions; valid: (F, S).
        pooled_count: P, pooled tokens per frame.
        clips: consecutive (start, stop) frame ranges covering the video.
        config: uses keep_ratio, temporal_epsilon, sigma, inter_scale, inter_merge and the
            Sinkhorn knobs (each step's problems stop on their own, as if solved one by one).
        keep_counts: (F,) long, exact number of tokens to keep in each later frame (exact-budget
            mode); ``None`` = released rule ``q < quantile(q, keep_ratio)``.
        counts: the survivors per frame (``valid.sum(1)``) when the caller has them on the
            host (one sync less; with ``check_every=0`` they are not read).
        survivors: (F, P) bool, the unpacked ``valid``, when the caller has it (two operations
            less).
        token_rows: the buffer of :func:`output_rows` whose head holds ``tokens``: the final
            anchors are written into the rest, so that the output is one gather from it.
    Returns:
        :class:`TemporalOutput`. Per clip of two or more frames: the keyframe's surviving tokens
        as they are, then every later frame's kept tokens in frame order, then the clip's merged
        anchors (so the keyframe appears twice, as in the released code). A clip of one frame
        emits its survivors once.
    """
    work = working_dtype(tokens.dtype)
    steps = ClipSteps.of(clips, tokens.shape[0], tokens.device)
    every = config.sinkhorn_check_every if check_every is None else check_every
    if counts is not None or every == 0:
        host = counts if every != 0 else None
    else:
        host = valid.sum(1).tolist()
    video = _video_inputs(tokens.to(work), valid, clips, steps, config,
                          valid.sum(1) if host is None else None, host)
    keys = steps.keyframe_rows()
    anchors = video.tokens[keys]  # (C, S, D), updated step by step
    anchor_valid, anchor_unit = valid[keys], video.unit[keys]
    anchor_marginal = video.marginal[keys]
    key_counts = None if host is None else [host[i] for i in steps.keyframes.tolist()] \
        if steps.stride is None else host[::steps.stride]
    # A keyframe without survivors keeps its clip's later tokens (a row-constant part that only
    # matters for some videos). Padded anchors are updated with the rest: their plan column is
    # 0, so they stay finite, and nothing reads them (their cost is the padding's, they are
    # never emitted).
    anchor_any = None if key_counts is not None and min(key_counts, default=1) > 0 \
        else anchor_valid.any(1)
    # What each frame's slots emit: the survivors of a keyframe, the kept tokens of a later
    # frame (a keyframe's survivors are also where its clip's anchors are valid). Strided
    # steps stack their keep masks at the end instead of writing each into a copy.
    keeps = []
    emit = None if steps.stride else valid.clone()
    frames, width = valid.shape
    # where the final anchors go: the rows after the tokens, when the caller made them
    tail = None if token_rows is None else \
        token_rows[frames * width:].view(len(steps.lengths), width, tokens.shape[2])
    last = len(steps.frame_ids)
    workspace = {}  # Sinkhorn's history, shared by the steps (they have one shape when strided)
    for step in range(1, last + 1):
        rows, clip_ids = steps.step_rows(step), steps.clip_ids[step - 1]
        if step > 1:  # the anchors changed: their unit rows too
            anchor_unit = unit_rows(anchors[..., :config.similarity_channels])
        y, y_valid, y_unit, y_marginal, y_any, y_counts = (
            anchors, anchor_valid, anchor_unit, anchor_marginal, anchor_any, key_counts)
        if clip_ids is not None:  # not every clip has a frame at this step
            y, y_valid, y_unit, y_marginal = (t[clip_ids] for t in (y, y_valid, y_unit,
                                                                    y_marginal))
            y_any = None if y_any is None else y_any[clip_ids]
            y_counts = None if y_counts is None else [y_counts[i] for i in clip_ids.tolist()]
        x, x_valid = video.tokens[rows], video.valid[rows]
        x_counts = None if host is None else host[rows] if isinstance(rows, slice) else \
            [host[i] for i in rows.tolist()]
        score, assign = _scores(
            video.unit[rows], video.marginal[rows], y_unit, y_marginal,
            None if video.entries_invalid is None else video.entries_invalid[rows], x_valid,
            step, config, check_every=check_every,
            valid_counts=None if host is None else (x_counts, y_counts),
            base=None if video.base is None else video.base[rows], workspace=workspace)
        counts_k = keep_counts[rows] if keep_counts is not None else None
        keep = _select(score, x_valid, None if video.invalid is None else video.invalid[rows],
                       None if counts_k is not None else video.positions.rows(rows), y_any,
                       counts_k)
        if config.inter_merge != "prune":
            merge = x_valid > keep  # x_valid and not keep, in one op (False < True)
            # every clip's last update is written straight into the tail when it can be
            into = tail if (step == last and clip_ids is None and tail is not None
                            and tail.dtype == work) else None
            updated = update_anchors(y, None, x, assign, merge, config, out=into)
            if clip_ids is None:
                anchors = updated
            else:  # gathered keyframes (no stride): a tensor of their own
                anchors[clip_ids] = updated
        if emit is None:
            keeps.append(keep)
        else:
            emit[rows] = keep
    if emit is None:  # frame c * L + k is row k of clip c
        emit = torch.stack([valid[keys], *keeps], 1).view(valid.shape)
    rows = None
    if tail is not None:
        if anchors.data_ptr() != tail.data_ptr():
            tail.copy_(anchors)  # (in the tokens' dtype)
        rows = token_rows
    return _emit(tokens, positions, valid, emit, steps.later[:, None], anchors, clips,
                 pooled_count, survivors, rows)


def _emit(tokens, positions, valid, emit, later, anchors, clips, pooled_count, survivors,
          rows) -> TemporalOutput:
    """Gather the output sequence (order: see :func:`temporal_merge_packed`) with one sync.

    Every candidate slot (each frame's packed slots, then each clip's anchor slots) has a place
    in the released order, known from the clips alone; one mask in that order and one
    ``nonzero`` select the emitted ones. ``emit`` (F, S): what each frame's slots emit;
    ``later`` (F, 1): the frames that are not the first of their clip; ``rows``: the tokens'
    rows followed by the anchors' (``token_rows`` of :func:`temporal_merge_packed`), or None.
    """
    frames, width, dim = tokens.shape
    device = tokens.device
    candidates = _candidates(tuple(map(tuple, clips)), frames, width, device)
    if candidates is None:
        index = torch.zeros(0, dtype=torch.long, device=device)
        frame_ids, token_position = index, index
        kinds = torch.zeros(0, dtype=torch.int8, device=device)
    else:
        chosen = torch.nonzero(emit.reshape(-1)[candidates.slot]).flatten()  # the one host sync
        index, frame_ids, position_frame, column = candidates.table[:, chosen]
        kinds = candidates.kind[chosen]
        token_position = positions[position_frame, column]
    # kept: emitted by a later frame; merged: a later frame's survivor not emitted (a keyframe
    # emits all its survivors)
    if survivors is None:
        kept = _unpack(emit & later, positions, pooled_count)
        merged = _unpack(valid > emit, positions, pooled_count)
    else:
        emitted = _unpack(emit, positions, pooled_count)
        kept, merged = emitted & later, survivors > emitted
    return TemporalOutput(
        tokens=rows.index_select(0, index) if rows is not None else
        _rows_of_two(tokens.reshape(-1, dim), anchors.to(tokens.dtype).reshape(-1, dim), index),
        token_frame=frame_ids,
        token_position=token_position,
        token_kind=kinds,
        kept=kept,
        merged=merged,
    )


@dataclass
class _Candidates:
    """Every candidate output slot in the released order (each frame's ``width`` packed slots,
    then each clip's anchor slots). ``slot``: (C*W,) where its flag lies in the (F, S) emit mask
    (a frame's own slot; an anchor's is its keyframe's slot, valid where the keyframe's survivor
    is); ``table``: (4, C*W) long rows: row in cat(tokens, anchors), frame, and where its
    position lies in the (F, S) positions (frame, column: the flag's slot); ``kind``: (C*W,)
    int8."""

    slot: torch.Tensor
    table: torch.Tensor
    kind: torch.Tensor


@functools.lru_cache(maxsize=64)
def _candidates(clips: tuple[Clip, ...], frames: int, width: int,
                device: torch.device) -> _Candidates | None:
    """The candidates of a video's clips and packed width (known from them alone: made once)."""
    slot_base, row_base, frame_of, kind_of = [], [], [], []
    anchor_slot = 0
    for start, stop in clips:
        for f in range(start, stop):
            slot_base.append(f * width)
            row_base.append(f * width)
            frame_of.append(f)
            kind_of.append(KIND_FRAME if f == start else KIND_KEPT)
        if stop - start >= 2:
            slot_base.append(start * width)
            row_base.append((frames + anchor_slot) * width)
            frame_of.append(start)
            kind_of.append(KIND_ANCHOR)
            anchor_slot += 1
    if not frame_of or width == 0:
        return None
    slots = torch.arange(width).repeat(len(frame_of))
    table = torch.tensor([slot_base, row_base, frame_of, kind_of])[:, :, None]
    slot, row, frame, kind = (t.expand(-1, width).reshape(-1) for t in table)
    slot, row = slot + slots, row + slots
    return _Candidates(slot.to(device),
                       torch.stack([row, frame, slot // width, slots]).to(device),
                       kind.to(torch.int8).to(device))


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
