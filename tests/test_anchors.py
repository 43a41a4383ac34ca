"""Anchor selection: counts per window, disjointness, deterministic ties, other grids."""

import pytest
import torch

import aot
from aot.synthetic import synthetic_video


@pytest.mark.parametrize("anchors,per_window,n_global", [(126, 7, 63), (108, 6, 54), (180, 10, 90),
                                                          (100, 5, 50)])
def test_released_counts(anchors, per_window, n_global):
    _, shallow, deep = synthetic_video(3, seed=1)
    local, global_ = aot.select_anchors(shallow, deep, 27, aot.AOTConfig(anchors_per_frame=anchors))
    windows = local.reshape(3, 3, 9, 3, 9).permute(0, 1, 3, 2, 4).reshape(3, 9, 81)
    assert (windows.sum(-1) == per_window).all()
    assert (global_.sum(1) == n_global).all()
    assert not (local & global_).any()


def test_ties_go_to_the_lower_index_and_global_never_repeats_local():
    flat = torch.ones(2, 81)
    local, global_ = aot.select_anchors(flat, flat, 9, aot.AOTConfig(anchors_per_frame=36, window=3))
    # 18 local = 2 per 3x3 window: the first two tokens of each window in row-major order.
    first_rows = [(wr * 3) * 9 + wc * 3 + c for wr in range(3) for wc in range(3) for c in (0, 1)]
    assert torch.nonzero(local[0]).flatten().tolist() == sorted(first_rows)
    expected_global = [i for i in range(81) if i not in first_rows][:18]
    assert torch.nonzero(global_[0]).flatten().tolist() == expected_global
    assert torch.equal(local[0], local[1])


def test_global_excludes_locals_even_with_negative_scores():
    g = torch.Generator().manual_seed(0)
    shallow = torch.randn(1, 81, generator=g)
    deep = -torch.rand(1, 81, generator=g)  # released zeroing would pick local anchors again
    local, global_ = aot.select_anchors(shallow, deep, 9, aot.AOTConfig(anchors_per_frame=60, window=3))
    assert not (local & global_).any()
    assert int((local | global_).sum()) == 27 + 30


def test_ablation_switches_give_all_anchors_to_the_other_kind():
    _, shallow, deep = synthetic_video(2, seed=2)
    local, global_ = aot.select_anchors(shallow, deep, 27, aot.AOTConfig(local_anchors=False))
    assert local.sum() == 0 and (global_.sum(1) == 126).all()
    local, global_ = aot.select_anchors(shallow, deep, 27, aot.AOTConfig(global_anchors=False))
    assert global_.sum() == 0 and (local.sum(1) == 126 // 9 * 9).all()


def test_random_anchors_are_seeded():
    _, shallow, deep = synthetic_video(4, seed=2)
    cfg = aot.AOTConfig(random_anchors=True, seed=3)
    a = aot.select_anchors(shallow, deep, 27, cfg)[1]
    b = aot.select_anchors(shallow, deep, 27, cfg)[1]
    c = aot.select_anchors(shallow, deep, 27, cfg.replace(seed=4))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a.sum(1) == 126).all()
    assert not torch.equal(a, aot.select_anchors(shallow, deep, 27, aot.AOTConfig())[1])


def test_other_square_grid_with_matching_window():
    feats, shallow, deep = synthetic_video(8, grid=24, dim=16, seed=0)
    cfg = aot.AOTConfig(window=8)
    local, _ = aot.select_anchors(shallow, deep, 24, cfg)
    assert (local.sum(1) == 63).all()
    result = aot.reduce_video(feats, shallow, deep, cfg)
    assert result.pooled_grid == 12 and result.denominator == 8 * 144
    # window 9 does not divide 24: the side is cut into ceil(24 / 9) = 3 spans of 8, the same
    # windows as window=8 (tests/test_grids.py covers uneven spans)
    assert torch.equal(aot.reduce_video(feats, shallow, deep, aot.AOTConfig()).tokens,
                       result.tokens)
