"""The temporal phase's step bookkeeping and its fused per-step ops against the released forms.

Each step of the temporal phase is a few dozen launches on small tensors on a GPU; the step
indices now come from one host-to-device copy, equal clips skip the anchors' gather and scatter,
and a few ops are fused. These tests check the indices and that the fused ops give the released
bits (special values and empty problems included).
"""

import math

import torch

import aot
from aot.temporal import ClipSteps, quantile_threshold, select_kept, temporal_cost


def test_clip_steps_index_every_step_and_skip_the_gather_for_equal_clips():
    clips = [(0, 4), (4, 6), (6, 7), (7, 10)]  # lengths 4, 2, 1 (no step), 3
    steps = ClipSteps.of(clips, 10, torch.device("cpu"))
    assert steps.keyframes.tolist() == [0, 4, 7] and steps.lengths == [4, 2, 3]
    assert [ids.tolist() for ids in steps.frame_ids] == [[1, 5, 8], [2, 9], [3]]
    assert steps.clip_ids[0] is None  # every clip has a frame at step 1
    assert [ids.tolist() for ids in steps.clip_ids[1:]] == [[0, 2], [0]]
    assert steps.later.tolist() == [i not in (0, 4, 6, 7) for i in range(10)]
    equal = ClipSteps.of([(0, 3), (3, 6)], 6, torch.device("cpu"))
    assert equal.clip_ids == [None, None]
    assert [ids.tolist() for ids in equal.frame_ids] == [[1, 4], [2, 5]]
    none = ClipSteps.of([(0, 1), (1, 2)], 2, torch.device("cpu"))
    assert none.keyframes.numel() == 0 and none.frame_ids == [] and not none.later.any()


def bits(t):
    return t.view({4: torch.int32, 8: torch.int64}[t.element_size()])


def released_temporal_cost(similarity, valid, offset, sigma):
    cost = 1 - similarity.clamp(-1 + 1e-6, 1 - 1e-6)
    lowest = cost.masked_fill(~valid, math.inf).amin(dim=(1, 2), keepdim=True)
    cost = torch.where(valid, cost - torch.where(torch.isfinite(lowest), lowest, 0.0), 0.0)
    return cost * (1 - math.exp(-(offset ** 2) / (2 * sigma ** 2)))


def test_temporal_cost_equals_the_released_form():
    g = torch.Generator().manual_seed(0)
    similarity = torch.rand(4, 7, 6, generator=g) * 2 - 1
    similarity[0, 0, 0] = 1.0  # clamped
    similarity[3, 2, 1] = math.nan
    valid = torch.rand(4, 7, 6, generator=g) > 0.3
    valid[1] = False  # a problem without entries: its minimum is inf
    for offset, sigma in ((1, 1.0), (3, 2.5)):
        got = temporal_cost(similarity, valid, offset, sigma)
        assert torch.equal(bits(got), bits(released_temporal_cost(similarity, valid, offset,
                                                                   sigma)))


def released_quantile_threshold(scores, valid, q):
    values = scores.double().masked_fill(~valid, math.inf).sort(dim=1).values
    count = valid.sum(1)
    pos = (count - 1).clamp(min=0).double() * q
    low = pos.floor().long()
    high = torch.minimum(low + 1, (count - 1).clamp(min=0))
    below = values.gather(1, low[:, None])[:, 0]
    above = values.gather(1, high[:, None])[:, 0]
    threshold = torch.lerp(below, above, pos - low.double())
    return torch.where(count > 0, threshold, torch.full_like(threshold, math.nan))


def test_quantile_threshold_equals_the_released_form():
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        scores = torch.rand(6, 50, generator=g, dtype=dtype)
        valid = torch.rand(6, 50, generator=g) > 0.4
        valid[2] = False
        valid[3] = False
        valid[3, 7] = True  # one valid entry
        before = scores.clone()
        for q in (0.0, 0.1, 0.3, 0.5, 1.0):
            got = quantile_threshold(scores, valid, q)
            assert torch.equal(bits(got), bits(released_quantile_threshold(scores, valid, q)))
        assert torch.equal(scores, before), "the scores are not modified (float64 included)"


def test_select_kept_equals_the_released_rule():
    g = torch.Generator().manual_seed(2)
    score = torch.rand(5, 30, generator=g)
    x_valid = torch.rand(5, 30, generator=g) > 0.2
    y_valid = torch.rand(5, 20, generator=g) > 0.2
    y_valid[4] = False  # no anchor left: everything is kept
    cfg = aot.AOTConfig(keep_ratio=0.3)
    threshold = released_quantile_threshold(score, x_valid, 0.3)
    keep = x_valid & (score.double() < threshold[:, None])
    want = torch.where(~y_valid.any(1)[:, None], x_valid, keep)
    assert torch.equal(select_kept(score, x_valid, y_valid, cfg, None), want)
