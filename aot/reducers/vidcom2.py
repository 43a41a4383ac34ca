"""``vidcom2``: VidCom2's frame-adaptive selection of the tokens least like their video and frame.

VidCom2 (Liu et al., EMNLP 2025, arXiv 2505.14454; release xuyang-liu16/VidCom2 at 944a17d14f48,
``token_compressor/vidcom2/vidcom2.py``) works on the backbone's pooled tokens and reads no
attention:

1. keep the half of the channels with the lowest variance over all tokens of the video, and
   L2-normalise every token on those channels;
2. score each token by a multi-scale Gaussian kernel (``sum_a exp(-|x - c|^2 / 2a)``,
   a = 1/8 ... 2) to the video mean (``video_score``) and to its frame's mean
   (``frame_score``);
3. a frame whose tokens are far from the video mean gets a larger share: ``scale_f = r * (1 +
   softmax_f(-mean(video_score_f) / 0.01) - 1/F)``, at most 1;
4. each frame keeps its ``k_f`` tokens of lowest ``video_score + frame_score`` (the most
   distinctive), in position order.

Count modes (:class:`VidCom2Config` ``count``): ``"released"`` keeps the release's
``k_f = max(1, round_half_even(scale_f * P))`` (not an exact total); ``"exact"`` (default) starts
from those counts and moves the difference to the exact budget one token at a time, to the frames
whose released count is furthest below (above) their quota ``scale_f * P``
(:func:`exact_counts`). See docs/reducers/vidcom2.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import AOTConfig, check_bool_fields, is_finite_number
from ..pooling import pool_grid
from ..result import KIND_FRAME, ReducedVideo
from .common import flatten_slots, make_result, resolve_budget, validate, work_dtype

COUNT_MODES = ("exact", "released")
#: the release's kernel widths, ``2**k`` for k = -3 .. 1
RELEASED_ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class VidCom2Config:
    """Knobs of VidCom2 (defaults: the release's, which has no other knobs than the retention).

    count: ``"exact"`` (default; exactly the budget, :func:`exact_counts`) or ``"released"``
        (the release's per-frame ``max(1, round_half_even(scale_f * P))``, the same kept tokens
        as the release).
    channel_ratio: share of the channels kept for the scores, those of lowest variance over
        the video (release: 0.5; ``int(channels * ratio)``, at least 1).
    alphas: widths of the multi-scale Gaussian kernel (release: 1/8, 1/4, 1/2, 1, 2).
    temperature: of the softmax that turns frame uniqueness into frame scales (release: 0.01).
    """

    count: str = "exact"
    channel_ratio: float = 0.5
    alphas: tuple = RELEASED_ALPHAS
    temperature: float = 0.01

    def __post_init__(self) -> None:
        check_bool_fields(self)  # none today: the one rule for any switch added later
        if self.count not in COUNT_MODES:
            raise ValueError(f"VidCom2Config.count={self.count!r}: expected one of {COUNT_MODES}")
        if not is_finite_number(self.channel_ratio) or not 0 < self.channel_ratio <= 1:
            raise ValueError(f"VidCom2Config.channel_ratio={self.channel_ratio!r}: expected a "
                             f"number in (0, 1]")
        if not is_finite_number(self.temperature) or self.temperature <= 0:
            raise ValueError(f"VidCom2Config.temperature={self.temperature!r}: expected a finite "
                             f"number > 0")
        alphas = self.alphas
        if (not isinstance(alphas, (tuple, list)) or not alphas
                or not all(is_finite_number(a) and a > 0 for a in alphas)):
            raise ValueError(f"VidCom2Config.alphas={alphas!r}: expected a non-empty tuple of "
                             f"finite numbers > 0")
        object.__setattr__(self, "alphas", tuple(float(a) for a in alphas))


def low_variance_channels(tokens: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """The channels of lowest variance over all tokens of a video.

    Args:
        tokens: (N, C) every pooled token of the video.
        ratio: share of channels kept: ``max(1, int(C * ratio))``.
    Returns:
        (k,) long channel indices, lowest variance first (ties: lower channel index; the
        release's ``topk`` leaves ties unspecified).
    """
    variance = tokens.var(dim=0, unbiased=False)
    keep = max(1, int(tokens.shape[-1] * ratio))
    return torch.sort(variance, stable=True).indices[:keep]


def gaussian_scores(tokens: torch.Tensor, alphas=RELEASED_ALPHAS
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale Gaussian similarity of each token to the video mean and to its frame mean.

    Args:
        tokens: (F, P, k) pooled tokens on the scoring channels (not yet normalised).
        alphas: kernel widths a; a token at squared distance d gets ``sum_a exp(-d / 2a)``.
    Returns:
        video_score, frame_score: (F, P), in the tokens' dtype.
    """
    unit = F.normalize(tokens, dim=-1)
    video_centre = unit.mean(dim=(0, 1), keepdim=True)                          # (1, 1, k)
    frame_centre = unit.mean(dim=1, keepdim=True)                               # (F, 1, k)

    def kernel(centre: torch.Tensor) -> torch.Tensor:
        distance = ((unit - centre) ** 2).sum(-1)                               # (F, P)
        return sum(torch.exp(-distance / (2 * a)) for a in alphas)

    return kernel(video_centre), kernel(frame_centre)


def frame_scales(video_score: torch.Tensor, retention: float,
                 temperature: float = 0.01) -> torch.Tensor:
    """(F, P) video scores -> (F,) retention per frame, the release's rule.

    ``scale_f = min(1, r * (1 + p_f - mean(p)))`` with ``p = softmax(-mean_P(video_score) /
    temperature)`` (max-shifted): frames farther from the video mean keep more. The scales sum
    to ``r * F`` unless the cap at 1 bites.
    """
    uniqueness = -video_score.mean(dim=-1)
    probs = torch.softmax((uniqueness - uniqueness.max()) / temperature, dim=0)
    return (retention * (1 + probs - probs.mean())).clamp(max=1.0)


def released_counts(scales: torch.Tensor, per_frame: int) -> torch.Tensor:
    """(F,) scales -> (F,) long: ``max(1, round_half_even(scale_f * P))`` (the release)."""
    return torch.round(scales * per_frame).long().clamp(min=1)


def exact_counts(scales: torch.Tensor, per_frame: int, budget: int) -> torch.Tensor:
    """(F,) scales -> (F,) long counts summing to ``budget``, the released counts moved least.

    Start from :func:`released_counts`; let ``d = budget - sum``. If d > 0, add d tokens one at a
    time, each to the frame whose count is furthest below its quota ``q_f = scale_f * P`` (the
    j-th extra token of frame f has priority ``q_f - k_f - j``; at most P per frame). If d < 0,
    take |d| tokens away from the frames furthest above their quotas (priority ``k_f - q_f - j``),
    keeping at least one token per frame when ``budget >= F``. Ties: the earlier frame. When
    the released counts already sum to the budget nothing changes.
    """
    counts = released_counts(scales, per_frame)
    frames = counts.shape[0]
    missing = budget - int(counts.sum())
    if missing == 0:
        return counts
    quota = scales.double() * per_frame
    step = torch.arange(per_frame, device=counts.device, dtype=torch.float64)[None, :]  # (1, P)
    if missing > 0:
        priority = (quota - counts)[:, None] - step                               # (F, P)
        room = per_frame - counts
    else:
        priority = (counts - quota)[:, None] - step
        room = counts - (1 if budget >= frames else 0)
    priority = priority.masked_fill(step >= room[:, None], -math.inf)
    chosen = torch.sort(priority.flatten(), descending=True, stable=True).indices[:abs(missing)]
    moved = torch.bincount(torch.div(chosen, per_frame, rounding_mode="floor"),
                           minlength=frames)
    return counts + moved if missing > 0 else counts - moved


def keep_lowest(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(F, P) scores, (F,) counts -> (F, P) bool: each frame's counts[f] lowest scores (ties:
    lower position)."""
    rank = torch.sort(scores, dim=1, stable=True).indices.argsort(dim=1)
    return rank < counts[:, None]


def reduce_vidcom2(features: torch.Tensor, shallow_attention: torch.Tensor,
                   deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                   budget: int | None = None, frame_features: torch.Tensor | None = None,
                   grid=None, options: VidCom2Config | None = None) -> ReducedVideo:
    """VidCom2 on the backbone's pooled tokens (no attention read).

    Args:
        features: (F, T, D) projected patch features, T = rows * cols.
        shallow_attention, deep_attention: (F, T); checked for shape, not read.
        config: uses ``pooling``, ``exact_retention`` and ``similarity_channels`` (the scores
            read channels ``[0, c)``; every channel is carried).
        budget: exact token count; overrides ``config.exact_retention``. The retention r of the
            frame scales is ``config.exact_retention``, or ``budget / (F * P)`` when given.
        frame_features: ignored (accepted for AOT's signature).
        grid: the patch grid, ``(rows, cols)`` or a square's side.
        options: :class:`VidCom2Config` (default: exact count, the release's knobs).
    Returns:
        :class:`ReducedVideo`: pooled tokens as they are (``KIND_FRAME``), frame-major, position
        order within a frame; ``survivors`` marks them. Exactly the budget in ``"exact"`` mode,
        the release's count in ``"released"`` mode. Computed in float32 (float64 stays float64),
        returned in the features' dtype.
    """
    config = config or AOTConfig()
    options = options or VidCom2Config()
    grid, pooled = validate(features, shallow_attention, deep_attention, config, grid)
    frames, per_frame = features.shape[0], pooled[0] * pooled[1]
    total = resolve_budget(config, frames, per_frame, budget, reducer="vidcom2")
    retention = config.exact_retention if budget is None else total / (frames * per_frame)

    values = pool_grid(features.to(work_dtype(features)), grid, config.pooling)  # (F, P, D)
    scored = values[..., :config.similarity_channels]
    channels = low_variance_channels(scored.reshape(-1, scored.shape[-1]), options.channel_ratio)
    video_score, frame_score = gaussian_scores(scored[..., channels], options.alphas)
    scales = frame_scales(video_score, retention, options.temperature)
    counts = (released_counts(scales, per_frame) if options.count == "released"
              else exact_counts(scales, per_frame, total))
    keep = keep_lowest(video_score + frame_score, counts)

    positions = torch.arange(per_frame, device=features.device).expand(frames, -1)
    kinds = torch.full_like(positions, KIND_FRAME)
    out, token_frame, token_position, token_kind = flatten_slots(values, positions, kinds, keep)
    return make_result(out.to(features.dtype), token_frame, token_position, token_kind,
                       frames=frames, grid=grid, pooled=pooled, survivors=keep)
