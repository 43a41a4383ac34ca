"""Token budgets: exact-budget planning (docs/budget.md); retention -> settings is
:func:`aot.settings.settings_for`.

Retention is always measured against the backbone's unreduced count: frames x pooled tokens per
frame (196 for LLaVA-OneVision, 169 for LLaVA-Video), newline tokens excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .clips import Clip


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


def frame_emissions(plan: ExactPlan, clips: list[Clip]) -> list[int]:
    """(F,) tokens each frame puts into the output under ``plan`` (the clips the plan was made
    with; ``[]`` without a temporal phase). Each token counts for the frame whose slot it keeps:
    the keyframe of a clip of two or more frames emits its s survivors twice (as they are and as
    the merged anchors, which keep the keyframe's slots), each later frame its ``keep``, a
    one-frame clip's frame (or any frame without clips) its survivors. Sums to ``plan.budget``.
    """
    counts = plan.survivors.clone()
    for start, stop in clips:
        if stop - start >= 2:
            counts[start] = 2 * plan.survivors[start]
            counts[start + 1:stop] = plan.keep[start + 1:stop]
    return counts.tolist()

