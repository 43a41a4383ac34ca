"""reduce_video: token counts, order, exact budgets, frame counts, dtypes and bad inputs."""

import math

import pytest
import torch

import aot
from aot.budget import plan_exact_budget
from aot.synthetic import synthetic_video
from aot.temporal import quantile_threshold


def video(frames=32, dim=32, seed=0, **kw):
    return synthetic_video(frames, dim=dim, seed=seed, **kw)


def test_output_is_consistent_with_its_masks_and_order():
    feats, shallow, deep = video(32)
    result = aot.reduce_video(feats, shallow, deep, aot.AOTConfig.preset("paper-ov-mvbench"))
    assert result.clips == [(s, s + 4) for s in range(0, 32, 4)]
    assert result.tokens.shape == (result.num_tokens, 32)
    survivors = result.survivors.reshape(32, -1).sum(1)
    kept = result.temporal_kept.reshape(32, -1).sum(1)
    merged = result.temporal_merged.reshape(32, -1).sum(1)
    keyframes = torch.tensor([s for s, _ in result.clips])
    later = torch.tensor([f for f in range(32) if f % 4])
    # Keyframe survivors twice, later frames' kept once; merged + kept = survivors.
    assert result.num_tokens == 2 * int(survivors[keyframes].sum()) + int(kept.sum())
    assert torch.equal((kept + merged)[later], survivors[later])
    assert int(kept[keyframes].sum()) == 0
    # Released order inside a clip: keyframe originals, kept of frames 1..3, merged anchors.
    first_clip = result.token_frame[: int(2 * survivors[0] + kept[1:4].sum())]
    expected = ([0] * int(survivors[0]) + [1] * int(kept[1]) + [2] * int(kept[2])
                + [3] * int(kept[3]) + [0] * int(survivors[0]))
    assert first_clip.tolist() == expected
    kinds = result.token_kind[: len(expected)].tolist()
    assert kinds == ([aot.KIND_FRAME] * int(survivors[0]) + [aot.KIND_KEPT] * int(kept[1:4].sum())
                     + [aot.KIND_ANCHOR] * int(survivors[0]))
    # Keyframe originals are the pooled features themselves.
    pooled = aot.pool_grid(aot.intra_stage(feats, shallow, deep, aot.AOTConfig()).features, 27,
                           "bilinear")
    first = result.token_position[: int(survivors[0])]
    torch.testing.assert_close(result.tokens[: int(survivors[0])], pooled[0, first])
    assert result.tokens_per_frame().sum() == result.num_tokens


def test_reduction_changes_features_not_just_count():
    feats, shallow, deep = video(8)
    cfg = aot.AOTConfig(inter=False)
    result = aot.reduce_video(feats, shallow, deep, cfg)
    plain = aot.pool_grid(feats, 27, "bilinear")[result.token_frame, result.token_position]
    assert result.num_tokens < 8 * 196
    assert (result.tokens - plain).abs().max() > 1e-3, "intra OT must change anchor features"
    pruned = aot.reduce_video(feats, shallow, deep, cfg.replace(intra_merge="prune"))
    torch.testing.assert_close(pruned.tokens, plain)


def test_no_reduction_settings_give_back_every_pooled_token():
    feats, shallow, deep = video(4)
    result = aot.reduce_video(feats, shallow, deep, aot.AOTConfig(intra=False, inter=False))
    torch.testing.assert_close(result.tokens, aot.pool_grid(feats, 27, "bilinear").reshape(-1, 32))
    assert result.retention == 1.0


@pytest.mark.parametrize("frames", [1, 2, 7, 32, 33, 64, 130])
def test_any_frame_count(frames):
    feats, shallow, deep = video(frames, dim=8)
    result = aot.reduce_video(feats, shallow, deep, aot.AOTConfig())
    length = math.ceil(frames / 8)
    if frames >= 2:
        assert result.clips == [(s, min(s + length, frames)) for s in range(0, frames, length)]
    assert result.num_tokens == result.token_frame.numel() == result.tokens.shape[0]
    assert 0 < result.retention < 1
    assert torch.isfinite(result.tokens).all()


def test_clip_rule_reproduces_released_clips():
    assert aot.split_clips(32, aot.AOTConfig()) == [(i, i + 4) for i in range(0, 32, 4)]
    assert aot.split_clips(64, aot.AOTConfig()) == [(i, i + 8) for i in range(0, 64, 8)]
    assert aot.split_clips(33, aot.AOTConfig())[-1] == (30, 33)
    assert aot.split_clips(10, aot.AOTConfig(clip_length=4)) == [(0, 4), (4, 8), (8, 10)]


def test_dynamic_clips_cut_at_scene_changes():
    base = torch.randn(3, 16)
    frame_features = torch.cat([base[0].expand(5, 16), base[1].expand(3, 16), base[2].expand(4, 16)])
    frame_features = frame_features + 0.01 * torch.randn(12, 16)
    clips = aot.dynamic_clips(frame_features, num_clips=3, threshold=0.5)
    assert clips == [(0, 5), (5, 8), (8, 12)]
    feats, shallow, deep = video(12, dim=16)
    result = aot.reduce_video(feats, shallow, deep, aot.AOTConfig(dynamic_clips=True, num_clips=3),
                              frame_features=frame_features)
    assert result.clips[0][0] == 0 and result.clips[-1][1] == 12
    assert [c for c in result.clips if c[1] - c[0] > 1]


@pytest.mark.parametrize("frames", [1, 2, 7, 32, 33, 64, 130])
@pytest.mark.parametrize("backbone", ["ov", "video"])
def test_exact_mode_hits_the_budget(frames, backbone):
    feats, shallow, deep = video(frames, dim=4, seed=frames)
    per_frame = 196 if backbone == "ov" else 169
    for retention in (0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0):
        # The count does not depend on the intra merge; skipping its OT keeps the test fast.
        cfg = aot.settings_for(backbone, retention, frames=frames,
                                           intra_merge="prune")
        result = aot.reduce_video(feats, shallow, deep, cfg)
        assert result.num_tokens == math.floor(retention * frames * per_frame + 0.5), retention
        assert result.num_tokens == aot.exact_budget(retention, frames, per_frame)


def test_exact_mode_with_every_stage_on():
    feats, shallow, deep = video(32, dim=16, seed=4)
    result = aot.reduce_video(feats, shallow, deep, aot.settings_for("ov", 0.1, frames=32))
    assert result.num_tokens == 627


def test_exact_plan_keeps_the_keep_ratio_shape():
    clips = [(s, s + 4) for s in range(0, 32, 4)]
    plan = plan_exact_budget(0.1, 32, 196, clips, keep_ratio=0.3)
    assert plan.budget == 627
    assert int(plan.survivors[0]) == 27  # 627 / (16 + 0.3 * 24)
    assert int(2 * plan.survivors[::4].sum() + plan.keep.sum()) == 627
    assert plan.keep.max() - plan.keep[plan.keep > 0].min() <= 1


def test_quantile_threshold_matches_torch_quantile_and_keep_is_strict():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4, 12, generator=g)
    valid = torch.rand(4, 12, generator=g) > 0.3
    valid[0] = True
    got = quantile_threshold(scores, valid, 0.3)
    for i in range(4):
        assert got[i] == torch.quantile(scores[i][valid[i]].double(), 0.3)
    # 11 distinct scores: (11 - 1) * 0.3 = 3 lands on a score; strictly below keeps exactly 3.
    s = torch.arange(11, dtype=torch.float32)[None]
    tau = quantile_threshold(s, torch.ones_like(s, dtype=torch.bool), 0.3)
    assert int((s.double() < tau[:, None]).sum()) == 3


def test_approximate_retention_lands_near_target():
    feats, shallow, deep = video(32, dim=16, seed=11)
    for r in (0.1, 0.25):
        result = aot.reduce_video(feats, shallow, deep,
                                  aot.settings_for("ov", r, exact=False, frames=32))
        assert abs(result.retention - r) < 0.25 * r, (r, result.retention)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("preset", ["paper-ov-mvbench", "paper-video"])
def test_half_precision_follows_float32(dtype, preset):
    feats, shallow, deep = video(16)
    cfg = aot.AOTConfig.preset(preset)
    ref = aot.reduce_video(feats, shallow, deep, cfg)
    # Half-precision features (attention stays float32, as the model captures it): the OT runs
    # in float32 on the rounded input, so the same number of tokens comes out, at the same
    # positions except near-ties of the temporal quantile (bfloat16 here: 1 of ~300), with
    # values that differ from float32 by the rounding of the input (docs/efficiency.md).
    half = aot.reduce_video(feats.to(dtype), shallow, deep, cfg)
    assert half.tokens.dtype == dtype
    assert half.num_tokens == ref.num_tokens
    same = (half.token_position == ref.token_position) & (half.token_frame == ref.token_frame)
    assert int((~same).sum()) <= 0.02 * ref.num_tokens
    rel = (half.tokens.float() - ref.tokens).norm(dim=-1) / ref.tokens.norm(dim=-1)
    as_is = same & (ref.token_kind == aot.KIND_FRAME)  # merged anchors absorb a moved token
    assert float(rel[as_is].max()) < 0.05
    # Attention rounded too: rounding can move a few anchors; the token count stays close.
    both = aot.reduce_video(feats.to(dtype), shallow.to(dtype), deep.to(dtype), cfg)
    assert torch.isfinite(both.tokens.float()).all()
    assert abs(both.num_tokens - ref.num_tokens) <= 0.1 * ref.num_tokens


def test_log_domain_and_per_frame_stopping_are_options_that_run():
    feats, shallow, deep = video(8)
    base = aot.reduce_video(feats, shallow, deep, aot.AOTConfig())
    for changes in ({"log_domain": True}, {"sinkhorn_stopping": "problem"}):
        other = aot.reduce_video(feats, shallow, deep, aot.AOTConfig(**changes))
        assert other.num_tokens > 0
        assert torch.isfinite(other.tokens).all()
    assert base.num_tokens > 0


@pytest.mark.parametrize("name", sorted(aot.ABLATIONS))
def test_every_ablation_runs_and_changes_the_output(name):
    feats, shallow, deep = video(16, dim=16)  # 16 frames: clips of 2, so the temporal phase runs
    base = aot.reduce_video(feats, shallow, deep, aot.AOTConfig())
    other = aot.reduce_video(feats, shallow, deep, aot.AOTConfig(**aot.ABLATIONS[name]))
    assert other.num_tokens > 0
    same = other.tokens.shape == base.tokens.shape and torch.allclose(other.tokens, base.tokens)
    assert not same, f"ablation {name} did not change anything"


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_problem():
    feats, shallow, deep = video(4, dim=8)
    cfg = aot.AOTConfig()
    cases = [
        ((feats[0], shallow, deep), r"features must be \(frames, tokens, dim\); got shape \(729, 8\)"),
        ((feats[:, :700], shallow[:, :700], deep[:, :700]), "700 tokens per frame, not a square grid"),
        ((feats, shallow[:3], deep), r"shallow_attention has shape \(3, 729\); expected \(frames, tokens\) = \(4, 729\)"),
        ((feats, shallow, deep[:, :-1]), r"deep_attention has shape \(4, 728\)"),
        ((feats.long(), shallow, deep), "features must be floating point"),
        ((feats.numpy(), shallow, deep), "features must be a torch.Tensor"),
    ]
    for args, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            aot.reduce_video(*args, cfg)
    bad = feats.clone()
    bad[2, 5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"features holds NaN or inf values \(first in frame 2\)"):
        aot.reduce_video(bad, shallow, deep, cfg)
    with pytest.raises(ValueError, match="anchors_per_frame=800 exceeds the 729 tokens"):
        aot.reduce_video(feats, shallow, deep, aot.AOTConfig(anchors_per_frame=800))
    with pytest.raises(TypeError, match="config must be an AOTConfig"):
        aot.reduce_video(feats, shallow, deep, {"anchors_per_frame": 10})


def test_bad_config_values_name_the_field():
    with pytest.raises(ValueError, match="unknown AOT preset 'paper-ov'"):
        aot.AOTConfig.preset("paper-ov")
    for r in (0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="outside \\(0, 1\\]"):
            aot.settings_for("ov", r)
    with pytest.raises(ValueError, match="unknown backbone 'qwen'"):
        aot.settings_for("qwen", 0.1)
    with pytest.raises(ValueError, match="AOTConfig.pooling='max'"):
        aot.AOTConfig(pooling="max")
    with pytest.raises(ValueError, match="AOTConfig.keep_ratio=1.2"):
        aot.AOTConfig(keep_ratio=1.2)
    with pytest.raises(ValueError, match="AOTConfig.anchors_per_frame=0"):
        aot.AOTConfig(anchors_per_frame=0)
    with pytest.raises(ValueError, match="exact_retention=2"):
        aot.AOTConfig(exact_retention=2)
    with pytest.raises(TypeError, match=r"no field\(s\) \['anchors'\]"):
        aot.AOTConfig().replace(anchors=3)
    with pytest.raises(ValueError, match="leave no way to pick anchors"):
        aot.AOTConfig(local_anchors=False, global_anchors=False)


def test_presets_are_the_released_settings():
    mvb = aot.AOTConfig.preset("paper-ov-mvbench")
    assert (mvb.anchors_per_frame, mvb.keep_ratio, mvb.inter, mvb.pooling) == (126, 0.3, True, "bilinear")
    vmme = aot.AOTConfig.preset("paper-ov-videomme")
    assert (vmme.anchors_per_frame, vmme.keep_ratio, vmme.inter) == (108, 0.1, True)
    vid = aot.AOTConfig.preset("paper-video")
    assert (vid.anchors_per_frame, vid.inter, vid.pooling) == (180, False, "average")
    for cfg in (mvb, vmme, vid):
        assert (cfg.global_share, cfg.window, cfg.intra_epsilon, cfg.temporal_epsilon, cfg.sigma,
                cfg.sinkhorn_iterations, cfg.sinkhorn_tolerance, cfg.spatial_weight,
                cfg.hard_merge_weight) == (0.5, 9, 0.1, 0.1, 1.5, 100, 1e-2, 0.5, 0.1)
    assert aot.AOTConfig.preset("paper-ov-mvbench", keep_ratio=0.2).keep_ratio == 0.2


def test_paper_presets_on_a_fixed_synthetic_video():
    # Where the released settings land (docs/budget.md): about 12%, 8.5% and 28%.
    feats, shallow, deep = video(32, dim=16, seed=0)
    mvb = aot.reduce_video(feats, shallow, deep, aot.AOTConfig.preset("paper-ov-mvbench"))
    vmme = aot.reduce_video(feats, shallow, deep, aot.AOTConfig.preset("paper-ov-videomme"))
    assert 0.10 < mvb.retention < 0.14 and 0.07 < vmme.retention < 0.10
    assert vmme.num_tokens < mvb.num_tokens
    feats, shallow, deep = video(64, dim=16, seed=0)
    vid = aot.reduce_video(feats, shallow, deep, aot.AOTConfig.preset("paper-video"))
    assert vid.clips == [] and set(vid.token_kind.tolist()) == {aot.KIND_FRAME}
    assert 0.25 < vid.retention < 0.31
    assert vid.denominator == 64 * 169


def test_clip_whose_keyframe_has_no_survivor_keeps_its_later_frames():
    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(4, 9, 5, generator=g)
    survivors = torch.rand(4, 9, generator=g) > 0.4
    survivors[0] = False  # keyframe of clip (0, 2) has nothing
    survivors[2, :3] = True
    out = aot.temporal_merge(pooled, survivors, [(0, 2), (2, 4)], aot.AOTConfig())
    assert torch.equal(out.kept[1], survivors[1]) and not out.merged[1].any()
    assert out.merged[3].any(), "the other clip still merges"
    expected = int(survivors[1].sum()) + 2 * int(survivors[2].sum()) + int(out.kept[3].sum())
    assert out.tokens.shape[0] == expected


def test_pooling_none_keeps_exactly_the_anchors():
    feats, shallow, deep = video(8, dim=8)
    cfg = aot.AOTConfig(pooling="none", inter=False, anchors_per_frame=90)
    result = aot.reduce_video(feats, shallow, deep, cfg)
    anchors = (result.local_anchors | result.global_anchors).reshape(8, -1)
    assert result.pooled_grid == 27 and result.denominator == 8 * 729
    assert torch.equal(result.survivors.reshape(8, -1), anchors)
    assert result.num_tokens == 8 * 90
    merged = aot.intra_stage(feats, shallow, deep, cfg).features
    torch.testing.assert_close(result.tokens, merged[result.token_frame, result.token_position])
    exact = aot.reduce_video(feats, shallow, deep, aot.AOTConfig(pooling="none", exact_retention=0.1))
    assert exact.num_tokens == aot.exact_budget(0.1, 8, 729)


def test_exact_mode_follows_the_configured_keep_ratio():
    feats, shallow, deep = video(32, dim=8, seed=2)
    out = {}
    for keep in (0.1, 0.3):
        cfg = aot.AOTConfig(keep_ratio=keep, exact_retention=0.1, intra_merge="prune")
        result = aot.reduce_video(feats, shallow, deep, cfg)
        assert result.num_tokens == 627
        survivors = result.survivors.reshape(32, -1).sum(1)
        kept = result.temporal_kept.reshape(32, -1).sum(1)
        later = torch.tensor([f % 4 != 0 for f in range(32)])
        out[keep] = float(kept[later].sum() / survivors[later].sum())
    # s = round(627 / (16 + rho * 24)): 34 survivors at rho 0.1, 27 at rho 0.3.
    assert abs(out[0.1] - 0.1) < 0.03 and abs(out[0.3] - 0.3) < 0.03, out
