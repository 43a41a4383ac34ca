"""Config and clip validation: no silent wrong result from a bad knob or bad per-frame features,
and retention targets that the approximate settings can honour."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import aot
from aot.reducers import get_reducer
from aot import settings
from aot.synthetic import synthetic_video

FLOAT_KNOBS = [f.name for f in dataclasses.fields(aot.AOTConfig)
               if isinstance(f.default, float)]


def test_float_knobs_are_listed():
    assert {"intra_scale", "inter_scale", "sigma", "spatial_weight", "intra_epsilon",
            "temporal_epsilon", "sinkhorn_tolerance", "keep_ratio", "global_share",
            "hard_merge_weight", "dynamic_threshold"} <= set(FLOAT_KNOBS)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("name", FLOAT_KNOBS)
def test_non_finite_knob_rejected(name, value):
    with pytest.raises(ValueError, match=rf"AOTConfig\.{name}={value!r}: expected a finite number"):
        aot.AOTConfig(**{name: value})


def test_large_finite_scales_still_accepted():
    cfg = aot.AOTConfig(intra_scale=1e6, inter_scale=1e6, sigma=1e3)
    assert cfg.intra_scale == 1e6


# --------------------------------------------------------------------------- frame_features
@pytest.mark.parametrize("shape", [(5, 4), (9, 4), (8,), (8, 0), (1, 8, 4)])
def test_frame_features_must_have_one_row_per_frame(shape):
    feats, shallow, deep = synthetic_video(8, dim=8, seed=0)
    cfg = aot.AOTConfig(dynamic_clips=True, num_clips=3, intra_merge="prune")
    with pytest.raises(ValueError, match=rf"frame_features has shape {re_shape(shape)}; "
                                         rf"expected \(frames, D\) = \(8, D\)"):
        aot.reduce_video(feats, shallow, deep, cfg, frame_features=torch.randn(shape))
    with pytest.raises(ValueError, match="frame_features has shape"):
        get_reducer("aot")(feats, shallow, deep, cfg.replace(exact_retention=0.1),
                               frame_features=torch.randn(shape))


def re_shape(shape) -> str:
    return "\\(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + "\\)"


def test_frame_features_checked_by_split_and_dynamic_clips():
    cfg = aot.AOTConfig(dynamic_clips=True)
    with pytest.raises(ValueError, match=r"\(6, 3\); expected \(frames, D\) = \(7, D\)"):
        aot.split_clips(7, cfg, torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"frame_features has shape \(7,\)"):
        aot.dynamic_clips(torch.randn(7), num_clips=3, threshold=0.5)
    bad = torch.randn(7, 3)
    bad[2, 1] = math.nan
    with pytest.raises(ValueError, match="frame_features holds NaN"):
        aot.split_clips(7, cfg, bad)
    with pytest.raises(TypeError, match="frame_features must be a torch.Tensor"):
        aot.split_clips(7, cfg, [[0.0]] * 7)


def test_right_frame_features_cover_every_frame():
    feats, shallow, deep = synthetic_video(8, dim=8, seed=0)
    cfg = aot.AOTConfig(dynamic_clips=True, num_clips=3, intra_merge="prune")
    result = aot.reduce_video(feats, shallow, deep, cfg, frame_features=torch.randn(8, 4))
    assert result.clips[0][0] == 0 and result.clips[-1][1] == 8
    assert all(a[1] == b[0] for a, b in zip(result.clips, result.clips[1:]))
    assert set(result.token_frame.tolist()) <= set(range(8))
    # every frame with survivors contributes tokens or has them merged
    survivors = result.survivors.reshape(8, -1).sum(1)
    keyframes = {start for start, _ in result.clips}
    for f in range(8):
        if f not in keyframes:
            kept = int(result.temporal_kept[f].sum())
            merged = int(result.temporal_merged[f].sum())
            assert kept + merged == int(survivors[f])


# --------------------------------------------------------------------------- retention targets
@pytest.mark.parametrize("frames", [9, 16, 32, 33, 64])
def test_full_retention_never_exceeds_the_unreduced_video(frames):
    feats, shallow, deep = synthetic_video(frames, dim=4, seed=1)
    for retention in (1.0, 0.95):
        cfg = aot.settings_for("ov", retention, exact=False, frames=frames, intra_merge="prune")
        result = aot.reduce_video(feats, shallow, deep, cfg)
        assert result.num_tokens <= result.denominator, (retention, cfg)
        assert result.retention > retention - 0.03, (retention, result.retention)


def test_full_retention_on_32_frames():
    # The case of the issue: 6287 tokens of 6272 before the fix.
    feats, shallow, deep = synthetic_video(32, dim=16, seed=0)
    result = aot.reduce_video(feats, shallow, deep,
                              aot.settings_for("ov", 1.0, exact=False, frames=32))
    assert 0.98 * 6272 <= result.num_tokens <= 6272
    video = aot.reduce_video(*synthetic_video(64, dim=4, seed=0),
                             aot.settings_for("video", 1.0, exact=False, frames=64,
                                              intra_merge="prune"))
    assert video.num_tokens <= 64 * 169


def test_saturated_settings_keep_whole_frames_and_solve_the_keep_ratio():
    fields = aot.settings_for("ov", 1.0, exact=False, frames=32).to_dict()
    assert fields["anchors_per_frame"] == 729
    # 8 clips of 4: keyframes 2 x 8 x 196 = 3136, later frames keep 130 of 196 each (24 x 130).
    assert math.ceil(195 * fields["keep_ratio"]) == 130
    # paper targets are untouched by the saturation rule
    paper = aot.settings_for("ov", 0.1, exact=False, frames=32)
    assert (paper.anchors_per_frame, paper.keep_ratio) == (102, 0.3)


@pytest.mark.parametrize("backbone, frames", [("ov", 32), ("ov", 64), ("ov", 8), ("video", 64)])
def test_targets_below_the_approximate_floor_are_refused(backbone, frames):
    lowest = settings.lowest_retention(backbone, frames)
    assert 0.005 < lowest < 0.05
    for target in (1e-4, lowest * 0.9):
        with pytest.raises(ValueError, match=r"below what the approximate settings reach.*"
                                             r"use exact=True"):
            aot.settings_for(backbone, target, exact=False, frames=frames)
    aot.settings_for(backbone, lowest, exact=False, frames=frames)  # the floor itself is fine
    exact = aot.settings_for(backbone, 1e-4, frames=frames)
    assert exact.exact_retention == 1e-4


def test_exact_mode_reaches_tiny_targets():
    feats, shallow, deep = synthetic_video(32, dim=4, seed=2)
    cfg = aot.settings_for("ov", 1e-4, frames=32, intra_merge="prune")
    assert aot.reduce_video(feats, shallow, deep, cfg).num_tokens == 1  # max(1, round(0.63))


def test_floor_is_where_the_approximate_settings_land():
    """At the floor the settings are the fewest anchors and nothing kept; the video's retention
    is then close to the floor (the model is approximate), never far above it."""
    feats, shallow, deep = synthetic_video(32, dim=4, seed=3)
    lowest = settings.lowest_retention("ov", 32)
    cfg = aot.settings_for("ov", lowest, exact=False, frames=32, intra_merge="prune")
    assert cfg.anchors_per_frame == 18 and cfg.keep_ratio == 0.0
    assert aot.reduce_video(feats, shallow, deep, cfg).retention < 1.5 * lowest


def test_settings_frames_must_be_positive():
    with pytest.raises(ValueError, match="frames=0"):
        aot.settings_for("ov", 0.1, frames=0)
