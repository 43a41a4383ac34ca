"""Token budgets: exact-budget planning and retention -> settings calibration (docs/budget.md).

Retention is always measured against the backbone's unreduced count: frames x pooled tokens per
frame (196 for LLaVA-OneVision, 169 for LLaVA-Video), newline tokens excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .backbones import get_backbone
from .clips import Clip, default_clip_length, fixed_clips
from .ops import first_in_order  # noqa: F401  (its home is aot.ops; re-exported)
from .pooling import pooled_side


@dataclass
class ExactPlan:
    """budget: total tokens; survivors: (F,) pooled tokens kept per frame after the intra phase;
    keep: (F,) tokens each later frame keeps in the temporal phase (0 for keyframes)."""

    budget: int
    survivors: torch.Tensor
    keep: torch.Tensor


def exact_budget(retention: float, frames: int, pooled_per_frame: int) -> int:
    """``floor(retention * frames * pooled_per_frame + 0.5)`` (round half up), at least 1."""
    return max(1, math.floor(retention * frames * pooled_per_frame + 0.5))


def spread(total: int, slots: int) -> list[int]:
    """``total`` split over ``slots`` as evenly as possible, the earlier slots taking the extra."""
    base, extra = divmod(total, slots)
    return [base + (i < extra) for i in range(slots)]


def plan_exact_budget(retention: float, frames: int, pooled_per_frame: int, clips: list[Clip],
                      keep_ratio: float = 0.3) -> ExactPlan:
    """How many tokens each frame contributes so that the video gets exactly the budget.

    Without a temporal phase (``clips == []``) the budget B is spread over the frames.
    With clips, a clip of L >= 2 frames emits its keyframe's s survivors twice (as-is and as
    merged anchors) plus the kept tokens of its L - 1 later frames; a one-frame clip emits its s
    survivors once. With A = sum of those keyframe multiplicities and C = number of later frames:

    * s = round(B / (A + keep_ratio * C)), the count at which later frames keep ``keep_ratio``
      of their survivors, clamped to the feasible range ceil(B / (A + C)) .. floor(B / A) and to
      the pooled grid;
    * the remaining R = B - s * A tokens are spread evenly over the later frames.

    When no s is feasible (tiny budgets), keyframes get floor(B / A) and later frames enough
    survivors to hold R.

    Returns:
        :class:`ExactPlan`; ``sum`` of emitted tokens equals the budget.
    """
    budget = exact_budget(retention, frames, pooled_per_frame)
    survivors = torch.zeros(frames, dtype=torch.long)
    keep = torch.zeros(frames, dtype=torch.long)
    multi = [clip for clip in clips if clip[1] - clip[0] >= 2]
    if not multi:
        survivors[:] = torch.tensor(spread(budget, frames))
        return ExactPlan(budget, survivors, keep)

    later = [f for start, stop in multi for f in range(start + 1, stop)]
    weight = sum(2 if stop - start >= 2 else 1 for start, stop in clips)
    low = math.ceil(budget / (weight + len(later)))
    high = min(budget // weight, pooled_per_frame)
    if low <= high:
        ideal = budget / (weight + keep_ratio * len(later))
        key_count = min(max(round(ideal), low), high)
        later_count = key_count
    else:
        key_count = high
        later_count = min(math.ceil((budget - key_count * weight) / len(later)), pooled_per_frame)
    survivors[:] = key_count
    survivors[later] = later_count
    keep[later] = torch.tensor(spread(budget - key_count * weight, len(later)))
    return ExactPlan(budget, survivors, keep)



# Smallest V that still gives every one of the 9 windows a local anchor (int(V/2) // 9 >= 1).
MIN_ANCHORS = 18

# Above this survivor share the linear model saturates (almost every pooled token survives), so
# high targets use V = patches, where survival is certain and the count is exact.
SATURATED_SHARE = 0.8


def clip_weights(backbone: str, frames: int) -> tuple[int, int]:
    """(A, C) of the released clips at ``frames`` frames: A = keyframe multiplicities (2 for a
    clip of two or more frames, whose keyframe is emitted as is and as merged anchors; 1 for a
    one-frame clip), C = later frames. ``"video"`` has no temporal phase: (frames, 0)."""
    if not get_backbone(backbone).temporal_phase:
        return frames, 0
    clips = fixed_clips(frames, default_clip_length(frames, 8))
    weight = sum(2 if stop - start >= 2 else 1 for start, stop in clips)
    return weight, sum(max(stop - start - 1, 0) for start, stop in clips)


def _survivor_share(backbone: str, anchors: int, patches: int) -> float:
    """Modelled share of pooled tokens that survive the anchor mask: c * V / patches, and
    exactly 1 when every patch is an anchor."""
    c = get_backbone(backbone).survivor_share
    return 1.0 if anchors >= patches else min(1.0, c * anchors / patches)


def lowest_retention(backbone: str, frames: int = 32, patches: int = 729) -> float:
    """The smallest retention the approximate settings reach: V = MIN_ANCHORS and, with a
    temporal phase, keep ratio 0 (later frames keep nothing). Below it only exact mode
    (``exact_retention``) hits a target."""
    weight, _ = clip_weights(backbone, frames)
    return _survivor_share(backbone, MIN_ANCHORS, patches) * weight / frames


def settings_for_retention(retention: float, backbone: str, frames: int = 32,
                           patches: int = 729, keep_ratio: float = 0.3) -> dict:
    """AOTConfig fields (anchors_per_frame, keep_ratio) aimed at ``retention``.

    Model: the pooled mask lets through about the same share of pooled tokens as the share of
    patches that are anchors, times a pooling factor c (the backbone record's ``survivor_share``, measured on
    synthetic videos by ``scripts/calibrate_retention.py``): survivors share
    s(V) ~= c * V / patches (exactly 1 at V = patches). With the released clips
    (:func:`clip_weights`: A keyframe multiplicities, C later frames),
    retention ~= s(V) * (A + C * keep_ratio) / frames; ``"video"`` has no temporal phase.

    * V is solved with the released keep ratio 0.3 while s(V) <= :data:`SATURATED_SHARE`.
    * Higher targets take V = patches (every pooled token survives, P per frame) and the keep
      ratio that makes each later frame keep k = floor((r * frames - A) * P / C) tokens: the
      released rule keeps ceil((P - 1) * rho) tokens of P distinct scores, so
      rho = (k - 1/2) / (P - 1) keeps k, and the video never gets more than ``r * frames * P``
      tokens (at r = 1: never more than the unreduced video). When even k = 0 is too many (short
      clips: the keyframes alone exceed the target) the first rule stands.
    * Below V = :data:`MIN_ANCHORS`, V is clamped and the keep ratio solved (down to 0; see
      :func:`lowest_retention`).

    Returns:
        dict of AOTConfig fields.
    """
    c = get_backbone(backbone).survivor_share
    weight, later = clip_weights(backbone, frames)
    side = pooled_side(math.isqrt(patches), get_backbone(backbone).pooling)
    pooled = side * side
    rho = keep_ratio if later else 0.0
    share = retention * frames / (weight + later * rho)  # survivors share the target needs
    anchors = round(share * patches / c)
    if share > SATURATED_SHARE and later:
        kept = math.floor((retention * frames - weight) * pooled / later + 1e-9)
        if kept >= 0:
            rho = min(max((kept - 0.5) / (pooled - 1), 0.0), 1.0)
            return {"anchors_per_frame": patches, "keep_ratio": rho}
    if not later:
        return {"anchors_per_frame": min(max(anchors, MIN_ANCHORS), patches)}
    if MIN_ANCHORS <= anchors <= patches:
        return {"anchors_per_frame": anchors, "keep_ratio": keep_ratio}
    anchors = min(max(anchors, MIN_ANCHORS), patches)
    rho = (retention * frames / _survivor_share(backbone, anchors, patches) - weight) / later
    return {"anchors_per_frame": anchors, "keep_ratio": min(max(rho, 0.0), 1.0)}
