"""``dycoke-ttm``: DyCoke's released token temporal merging (TTM), faithful to the release.

DyCoke (Tao et al., CVPR 2025, arXiv 2411.15024), release ``KD-TAO/DyCoke`` at ``dd7463498203``,
``llava/model/llava_arch.py::dycole_ttm(image_feature, num_tokens_per_frame, merging_ratio)``,
run on the pooled tokens of a video before the LLM. What it does (docs/reducers/dycoke-ttm.md):

1. frames are taken in pairs (0, 1), (2, 3), ...: the even frame stays whole, the odd frame keeps
   its ``int((1 - k) * P)`` tokens least cosine-similar to the even frame's token at the same
   position (k = ``merging_ratio``, released 0.7);
2. then for ``i in range(0, F - 4, 4)`` frame ``i + 2`` is cut the same way against frame ``i``;
3. an odd last frame is dropped; fewer than 5 frames raise in the release.

The count ignores the retention (``count="released"``). ``count="exact"`` (our matched budget)
keeps the release's frame roles and scores and spreads the budget over the frames in proportion
to the release's per-frame counts (see :func:`exact_quotas`). Nothing is merged: kept tokens are
emitted as they are (DyCoke's LLM-side KV pruning is not run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import AOTConfig, check_bool_fields, is_finite_number
from ..ops import first_in_order
from ..pooling import pool_grid
from ..result import KIND_FRAME, KIND_KEPT, ReducedVideo
from .common import flatten_slots, make_result, resolve_budget, validate, work_dtype

COUNT_MODES = ("exact", "released")
#: ``roles`` entries: a frame kept whole by the release, one cut against a reference, a dropped
#: one (the odd last frame).
WHOLE, CUT, DROPPED = 0, 1, 2


@dataclass(frozen=True)
class DyCokeTTMConfig:
    """Knobs of DyCoke's released TTM.

    count: ``"exact"`` (default; exactly the budget, :func:`exact_quotas`) or ``"released"``
        (the release's count, which ignores the retention: whole frames plus
        ``int((1 - merging_ratio) * P)`` tokens per cut frame).
    merging_ratio: the share of a cut frame's tokens dropped (release: ``dycoke_k``, 0.7 in its
        lmms-eval model, 0.3 in its builder; the paper's runs use 0.7).
    """

    count: str = "exact"
    merging_ratio: float = 0.7

    def __post_init__(self) -> None:
        check_bool_fields(self)
        if self.count not in COUNT_MODES:
            raise ValueError(f"DyCokeTTMConfig.count={self.count!r}: expected one of "
                             f"{COUNT_MODES}")
        if not is_finite_number(self.merging_ratio) or not 0 <= self.merging_ratio < 1:
            raise ValueError(f"DyCokeTTMConfig.merging_ratio={self.merging_ratio!r}: expected "
                             f"a number in [0, 1)")


def frame_roles(frames: int, released: bool) -> tuple[list[int], list[int]]:
    """Each frame's role and the frame it is compared with, as the release assigns them.

    Args:
        frames: F.
        released: True: the release's rule exactly (an odd last frame DROPPED). False (exact
            mode): an odd last frame is CUT against the frame before it, so no frame is lost.
    Returns:
        roles: (F,) WHOLE / CUT / DROPPED; other: (F,) for a CUT frame its reference, for a
        WHOLE frame the frame cut against it in its pair (exact mode ranks a WHOLE frame's
        tokens against it when its quota is below P), -1 when there is none.
    """
    usable = frames - frames % 2
    roles, other = [WHOLE] * frames, [-1] * frames
    for i in range(0, usable - 1, 2):  # pairs: the odd frame is cut against the even one
        roles[i + 1], other[i + 1], other[i] = CUT, i, i + 1
    for i in range(0, frames - 4, 4):  # the release's second pass: frame i+2 against frame i
        roles[i + 2], other[i + 2] = CUT, i
    if frames % 2:
        if released or frames == 1:
            roles[-1] = DROPPED if released else WHOLE
        else:
            roles[-1], other[-1] = CUT, frames - 2
    return roles, other


def released_keep(pooled_count: int, merging_ratio: float) -> int:
    """Tokens a cut frame keeps: the release's ``int((1 - k) * P)``, in Python floats."""
    return int((1 - merging_ratio) * pooled_count)


def exact_quotas(budget: int, weights: list[int], pooled_count: int) -> list[int]:
    """The budget spread over the frames in proportion to the release's per-frame counts.

    Args:
        budget: B, 1 <= B <= F * P.
        weights: (F,) the release's count per frame (P whole, ``int((1-k)P)`` cut).
        pooled_count: P, the cap of a frame.
    Returns:
        (F,) counts summing to B: below the release's total, ``floor(B * w_f / W)`` plus one for
        the largest remainders (ties: the earlier frame); above it, every frame its release
        count and the rest raising the lowest frames (the cut ones) evenly, up to P, earlier
        frames first. At B = W these are the release's counts.
    """
    total = sum(weights)
    if budget <= total and total > 0:
        quotas = [budget * w // total for w in weights]
        remainders = sorted(range(len(weights)), key=lambda f: (-(budget * weights[f] % total), f))
        for f in remainders[:budget - sum(quotas)]:
            quotas[f] += 1
        return quotas
    quotas = list(weights)
    rest = budget - total
    while rest > 0:  # water-filling; B <= F * P, so a frame below P always remains
        open_frames = [f for f in range(len(weights)) if quotas[f] < pooled_count]
        level = min(quotas[f] for f in open_frames)
        lowest = [f for f in open_frames if quotas[f] == level]
        for f in lowest[:rest]:
            quotas[f] += 1
        rest -= min(rest, len(lowest))
    return quotas


def frame_quotas(config: AOTConfig, frames: int, pooled_count: int,
                 options: DyCokeTTMConfig | None = None, budget: int | None = None) -> list[int]:
    """(F,) tokens each frame keeps: the release's counts (``count="released"``) or, in exact
    mode, :func:`exact_quotas` of the budget (``budget``, else ``config.exact_retention``'s).
    A pure function of the settings and the video's shape (the registry entry's
    ``frame_counts``)."""
    options = options or DyCokeTTMConfig()
    released = options.count == "released"
    roles, _ = frame_roles(frames, released)
    cut_keep = released_keep(pooled_count, options.merging_ratio)
    weights = [pooled_count if role == WHOLE else cut_keep if role == CUT else 0
               for role in roles]
    if released:
        return weights
    return exact_quotas(resolve_budget(config, frames, pooled_count, budget,
                                       reducer="dycoke-ttm"), weights, pooled_count)


def reduce_dycoke_ttm(features: torch.Tensor, shallow_attention: torch.Tensor,
                      deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                      budget: int | None = None, frame_features: torch.Tensor | None = None,
                      options: DyCokeTTMConfig | None = None, grid=None) -> ReducedVideo:
    """DyCoke's released token temporal merging on the backbone's pooled tokens.

    Args:
        features: (F, T, D) projected patch features, T = rows * cols.
        shallow_attention, deep_attention: (F, T); only validated (TTM reads no attention).
        config: uses ``pooling``, ``similarity_channels`` (the leading channels the
            similarities read: Qwen3-VL's main features before its DeepStack levels) and (exact
            mode) ``exact_retention``.
        budget: exact token count (exact mode); overrides ``config.exact_retention``.
        frame_features: ignored (accepted for AOT's signature).
        options: :class:`DyCokeTTMConfig`.
        grid: the patch grid, ``(rows, cols)`` or a square's side.
    Returns:
        ReducedVideo: frames in order; a whole frame's tokens in position order, a cut frame's
        kept tokens in ascending similarity to its reference (the release's ``topk`` order).
    Raises:
        ValueError: ``count="released"`` with fewer than 5 frames (the release raises there).
    """
    config = config or AOTConfig()
    options = options or DyCokeTTMConfig()
    grid, pooled = validate(features, shallow_attention, deep_attention, config, grid)
    frames, pooled_count = features.shape[0], pooled[0] * pooled[1]
    released = options.count == "released"
    if released and frames <= 4:
        raise ValueError(f"dycoke-ttm count='released' needs at least 5 frames (the release's "
                         f"second pass stacks an empty list below that); got {frames}: use "
                         f"count='exact'")
    roles, other = frame_roles(frames, released)
    quotas = frame_quotas(config, frames, pooled_count, options, budget)

    values = pool_grid(features.to(work_dtype(features)), grid, config.pooling)  # (F, P, D)
    device = values.device
    has_other = torch.tensor([o >= 0 for o in other], device=device)
    partner = torch.tensor([max(o, 0) for o in other], device=device)
    # Qwen3-VL: the DeepStack levels ride along in the trailing channels; scores read the main
    scored = values[..., :config.similarity_channels]
    similarity = torch.nn.functional.cosine_similarity(scored, scored[partner], dim=-1)  # (F, P)
    positions = torch.arange(pooled_count, device=device).expand(frames, -1)
    # Cut frames rank by similarity (ascending, ties: lower position; the release's topk leaves
    # ties unspecified); a whole frame with nothing to compare keeps its first positions.
    ranked = torch.sort(torch.where(has_other[:, None], similarity, 0.0), dim=1,
                        stable=True).indices
    is_cut = torch.tensor([role == CUT for role in roles], device=device)
    counts = torch.tensor(quotas, device=device)
    keep = first_in_order(ranked, counts)  # (F, P) on positions
    # Slot order: a cut frame's tokens in rank order, a whole frame's in position order.
    slots = torch.where(is_cut[:, None], ranked, positions)
    slot_keep = keep.gather(1, slots)
    tokens = values.gather(1, slots[:, :, None].expand(-1, -1, values.shape[2]))
    kinds = torch.where(is_cut[:, None], KIND_KEPT, KIND_FRAME).expand(frames, pooled_count)
    out, token_frame, token_position, token_kind = flatten_slots(tokens, slots, kinds, slot_keep)
    return make_result(out.to(features.dtype), token_frame, token_position, token_kind,
                       frames=frames, grid=grid, pooled=pooled, survivors=keep,
                       kept=keep & is_cut[:, None])
