"""``visionzip``: per frame, dominant tokens by attention + contextual tokens merged by similarity.

VisionZip (Yang et al., CVPR 2025, arXiv 2412.04467) keeps, per image, the tokens that receive
the most attention ("dominant") and folds the rest into a few "contextual" tokens: evenly spaced
targets among the remaining tokens, each absorbing the remaining tokens most similar to it. Its
LLaVA-1.5 setting keeps 54 dominant + 10 contextual of 576 (the 54:10 split, share 54/64).

Our version (see docs/reducers/visionzip.md) runs per frame on the backbone's pooled grid, after
the projector, so the count is directly comparable with AOT's: attention = deep-layer received
attention (AOT's stand-in for [CLS] attention, SigLIP has no [CLS]) pooled like the features;
similarity = cosine of the pooled projected features (VisionZip uses the attention keys, which a
reducer behind the projector does not see).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import AOTConfig, check_bool_fields
from ..ops import cosine_similarity, first_in_order, gather_rows, pack_left
from ..pooling import pool_grid
from ..result import ReducedVideo
from ..result import KIND_ANCHOR, KIND_FRAME
from .common import (
    flatten_slots,
    frame_counts,
    make_result,
    resolve_budget,
    validate,
    work_dtype,
)


@dataclass(frozen=True)
class VisionZipConfig:
    """Knobs of the VisionZip-style reducer.

    dominant, contextual: the split of each frame's budget, as a ratio (VisionZip's released
        54:10). A frame with k tokens keeps ``floor(k * dominant / (dominant + contextual) + 0.5)``
        dominant tokens and merges the rest into ``k - that`` contextual tokens.
    attention: ``"deep"`` (default; the layer AOT uses for global anchors, closest to
        VisionZip's penultimate-layer [CLS] attention) or ``"shallow"``.
    """

    dominant: int = 54
    contextual: int = 10
    attention: str = "deep"

    def __post_init__(self) -> None:
        check_bool_fields(self)  # none today: the one rule for any switch added later
        for name in ("dominant", "contextual"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"VisionZipConfig.{name}={value!r}: expected an integer >= 0")
        if self.dominant + self.contextual == 0:
            raise ValueError("VisionZipConfig: dominant=0 and contextual=0 leave no split")
        if self.attention not in ("deep", "shallow"):
            raise ValueError(f"VisionZipConfig.attention={self.attention!r}: "
                             f"expected 'deep' or 'shallow'")

    def dominant_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """(F,) tokens per frame -> (F,) dominant tokens per frame (round half up)."""
        share = self.dominant / (self.dominant + self.contextual)
        return torch.floor(counts.double() * share + 0.5).long().clamp(max=counts)


def select_dominant(attention: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(F, P) scores, (F,) counts -> (F, P) bool: the counts[f] highest scores of each frame
    (ties: lower index)."""
    order = torch.sort(attention, dim=1, descending=True, stable=True).indices
    return first_in_order(order, counts)


def spaced_targets(rest: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Evenly spaced contextual targets among each frame's remaining tokens.

    Target j of a frame with n remaining tokens and c targets is its ``floor(j * n / c)``-th
    remaining token (ascending index), so targets spread over the whole frame.

    Args:
        rest: (F, P) bool, the non-dominant tokens.
        counts: (F,) long, contextual tokens per frame (<= the rest's count).
    Returns:
        positions (F, C) long of the targets (ascending) and valid (F, C) bool, C = max(counts).
    """
    packed, _ = pack_left(rest, rest.shape[1])
    width = int(counts.max()) if counts.numel() else 0
    slot = torch.arange(width, device=rest.device)[None, :]
    index = torch.div(slot * rest.sum(1, keepdim=True), counts.clamp(min=1)[:, None],
                      rounding_mode="floor").clamp(max=rest.shape[1] - 1)
    return torch.gather(packed, 1, index), slot < counts[:, None]


def merge_contextual(values: torch.Tensor, rest: torch.Tensor, targets: torch.Tensor,
                     target_valid: torch.Tensor, similarity_channels: int | None = None
                     ) -> torch.Tensor:
    """Fold every remaining token into its most similar target.

    ``ctx_j = (t_j + sum_{m -> j} x_m) / (1 + count_j)``: the plain mean of the target and the
    tokens assigned to it (VisionZip averages the assigned tokens into the target).

    Args:
        values: (F, P, D) pooled features (float32 or wider).
        rest: (F, P) bool, non-dominant tokens (targets included).
        targets: (F, C) long positions; target_valid: (F, C) bool.
        similarity_channels: the leading channels the similarity reads (None: all); every
            channel is averaged.
    Returns:
        (F, C, D) contextual tokens (padding rows are meaningless).
    """
    frames, pooled_count, dim = values.shape
    target_values = gather_rows(values, targets)
    if targets.shape[1] == 0:
        return target_values
    similarity = cosine_similarity(values[..., :similarity_channels],
                                   target_values[..., :similarity_channels])  # (F, P, C)
    similarity = similarity.masked_fill(~target_valid[:, None, :], -math.inf)
    assign = similarity.argmax(2)  # (F, P)
    # A target belongs to itself even if a duplicate feature ties with an earlier target;
    # padding slots write into a spare column so they cannot overwrite a real target.
    slot = torch.arange(targets.shape[1], device=values.device).expand_as(targets)
    spare = torch.cat([assign, assign[:, :1]], 1)
    spare.scatter_(1, torch.where(target_valid, targets, pooled_count), slot)
    assign = spare[:, :pooled_count]
    weights = rest.to(values.dtype)
    summed = torch.zeros_like(target_values).scatter_add_(
        1, assign[:, :, None].expand(-1, -1, dim), values * weights[:, :, None])
    count = torch.zeros(frames, targets.shape[1], dtype=values.dtype, device=values.device)
    count.scatter_add_(1, assign, weights)
    return summed / count.clamp(min=1)[:, :, None]


def reduce_visionzip(features: torch.Tensor, shallow_attention: torch.Tensor,
                     deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                     budget: int | None = None, frame_features: torch.Tensor | None = None,
                     options: VisionZipConfig | None = None, grid=None) -> ReducedVideo:
    """VisionZip-style dominant + contextual tokens per frame, at the pooled level.

    Args:
        features: (F, T, D) projected patch features, T = rows * cols.
        shallow_attention, deep_attention: (F, T) received attention; ``options.attention``
            picks one, pooled like the features.
        config: uses ``pooling`` and ``exact_retention``.
        budget: exact token count; overrides ``config.exact_retention``.
        frame_features: ignored (accepted for AOT's signature).
        options: :class:`VisionZipConfig` (default 54:10, deep attention).
        grid: the patch grid, ``(rows, cols)`` or a square's side (as :func:`aot.reduce_video`).
    Returns:
        :class:`ReducedVideo`, frame-major; per frame its dominant tokens (ascending position,
        ``KIND_FRAME``) then its contextual tokens (ascending target position, ``KIND_ANCHOR``:
        a token that absorbed others). ``survivors`` = dominant tokens and contextual targets.
    """
    config = config or AOTConfig()
    options = options or VisionZipConfig()
    grid, pooled = validate(features, shallow_attention, deep_attention, config, grid)
    frames, pooled_count = features.shape[0], pooled[0] * pooled[1]
    total = resolve_budget(config, frames, pooled_count, budget, reducer="visionzip")
    counts = frame_counts(total, frames, features.device)
    dominant_counts = options.dominant_counts(counts)

    values = pool_grid(features.to(work_dtype(features)), grid, config.pooling)
    scores = deep_attention if options.attention == "deep" else shallow_attention
    scores = pool_grid(scores.float(), grid, config.pooling)
    dominant = select_dominant(scores, dominant_counts)
    targets, target_valid = spaced_targets(~dominant, counts - dominant_counts)
    contextual = merge_contextual(values, ~dominant, targets, target_valid,
                                  config.similarity_channels)

    dom_positions, dom_valid = pack_left(dominant)
    tokens = torch.cat([gather_rows(values, dom_positions), contextual], 1)
    positions = torch.cat([dom_positions, targets], 1)
    valid = torch.cat([dom_valid, target_valid], 1)
    kinds = torch.cat([torch.full_like(dom_positions, KIND_FRAME),
                       torch.full_like(targets, KIND_ANCHOR)], 1)
    out, frame_ids, token_position, token_kind = flatten_slots(tokens, positions, kinds, valid)
    survivors = dominant.clone()
    survivors[frame_ids, token_position] = True
    return make_result(out.to(features.dtype), frame_ids, token_position, token_kind,
                       frames=frames, grid=grid, pooled=pooled, survivors=survivors)
