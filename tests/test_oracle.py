"""The package against the plain-loop oracle written from the spec (tests/oracle.py)."""

import pytest
import torch

import aot
import oracle
from aot.synthetic import synthetic_video


def small_config(**changes):
    # A 9x9 grid with 3x3 windows keeps the oracle's Python loops fast; V=24 -> 12 local
    # (int(24 * 0.5) // 9 = 1 per window, 9 local) + 12 global.
    base = dict(anchors_per_frame=24, window=3, keep_ratio=0.3)
    base.update(changes)
    return aot.AOTConfig(**base)


@pytest.mark.parametrize("frames", [1, 2, 7, 9, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_reduce_video_matches_oracle_ov(frames, seed):
    feats, shallow, deep = synthetic_video(frames, grid=9, dim=12, seed=seed, dtype=torch.float64)
    cfg = small_config()
    ours = aot.reduce_video(feats, shallow, deep, cfg)
    expected = oracle.reduce_video(feats, shallow, deep, cfg)
    assert ours.tokens.shape == expected.shape
    torch.testing.assert_close(ours.tokens, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("preset", ["paper-ov-mvbench", "paper-ov-videomme", "paper-video"])
def test_reduce_video_matches_oracle_full_grid(preset):
    feats, shallow, deep = synthetic_video(8, grid=27, dim=6, seed=3, dtype=torch.float64)
    cfg = aot.AOTConfig.preset(preset)
    ours = aot.reduce_video(feats, shallow, deep, cfg)
    expected = oracle.reduce_video(feats, shallow, deep, cfg)
    assert ours.tokens.shape == expected.shape
    torch.testing.assert_close(ours.tokens, expected, rtol=1e-9, atol=1e-9)


def test_float32_close_to_oracle():
    feats, shallow, deep = synthetic_video(4, grid=9, dim=12, seed=5)
    cfg = small_config()
    ours = aot.reduce_video(feats, shallow, deep, cfg)
    expected = oracle.reduce_video(feats.double(), shallow.double(), deep.double(), cfg)
    assert ours.tokens.shape == expected.shape
    torch.testing.assert_close(ours.tokens.double(), expected, rtol=1e-4, atol=1e-5)


def test_average_pooling_matches_oracle_without_inter():
    feats, shallow, deep = synthetic_video(5, grid=9, dim=8, seed=2, dtype=torch.float64)
    cfg = small_config(pooling="average", inter=False)
    ours = aot.reduce_video(feats, shallow, deep, cfg)
    torch.testing.assert_close(ours.tokens, oracle.reduce_video(feats, shallow, deep, cfg))


def test_anchor_selection_matches_oracle():
    _, shallow, deep = synthetic_video(6, grid=27, dim=2, seed=7)
    for cfg in (aot.AOTConfig(), aot.AOTConfig(anchors_per_frame=108),
                aot.AOTConfig(anchors_per_frame=100, global_anchors=False),
                aot.AOTConfig(anchors_per_frame=50, local_anchors=False)):
        local, global_ = aot.select_anchors(shallow, deep, 27, cfg)
        for f in range(6):
            exp_local, exp_global = oracle.anchors_one_frame(shallow[f], deep[f], 27, cfg)
            assert torch.nonzero(local[f]).flatten().tolist() == exp_local
            assert torch.nonzero(global_[f]).flatten().tolist() == exp_global


def test_received_attention_matches_oracle():
    probs = torch.softmax(torch.randn(2, 3, 10, 10), dim=-1)
    ours = aot.received_attention(probs)
    for b in range(2):
        torch.testing.assert_close(ours[b], oracle.received(probs[b]))


@pytest.mark.parametrize("grid", [27, 9, 5])
def test_bilinear_pool_matches_hand_written(grid):
    values = torch.randn(1, grid * grid, 3, dtype=torch.float64)
    torch.testing.assert_close(aot.pool_grid(values, grid, "bilinear")[0],
                               oracle.bilinear_pool(values[0], grid))
