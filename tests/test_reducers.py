"""Every registered reducer: one signature, exact and matched token budgets, declared inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aot import AOTConfig, ReducedVideo, exact_budget, pool_grid, pooled_side, reduce_video
from aot.reducers import (
    REDUCERS,
    DyCokeConfig,
    VisionZipConfig,
    ablation_config,
    get_reducer,
    matched_budget,
    pooling_matrix,
    reducer_names,
    retention_for_budget,
)
from aot.config import ABLATIONS
from aot.synthetic import synthetic_video
from aot.result import KIND_ANCHOR, KIND_FRAME, KIND_KEPT
from reducer_checks import with_inputs

#: the reducers themselves (not the aot:<ablation> names)
BASE_NAMES = [name for name, info in REDUCERS.items() if info.ablation is None]

BASELINES = ("uniform", "visionzip", "dycoke")
FRAMES = (1, 7, 32, 33)
RETENTIONS = (0.05, 0.1, 0.25, 1.0)
DIM = 16

_VIDEOS: dict = {}


def video(frames: int, seed: int = 0, dtype=torch.float32):
    key = (frames, seed, dtype)
    if key not in _VIDEOS:
        _VIDEOS[key] = synthetic_video(frames, grid=27, dim=DIM, seed=seed, dtype=dtype)
    return _VIDEOS[key]


def pooled_reference(features, config):
    return pool_grid(features.float(), 27, config.pooling)


def check_result(result: ReducedVideo, frames: int, config: AOTConfig, count: int,
                 dtype=torch.float32):
    side = pooled_side(27, config.pooling)
    assert isinstance(result, ReducedVideo)
    assert result.tokens.shape == (count, DIM) and result.tokens.dtype == dtype
    for field in (result.token_frame, result.token_position, result.token_kind):
        assert field.shape == (count,)
    assert result.token_kind.dtype == torch.int8
    assert bool((result.token_frame >= 0).all() and (result.token_frame < frames).all())
    assert bool((result.token_position >= 0).all() and (result.token_position < side ** 2).all())
    assert result.survivors.shape == (frames, side, side)
    assert result.local_anchors.shape == result.global_anchors.shape == (frames, 27, 27)
    assert result.temporal_kept.shape == result.temporal_merged.shape == (frames, side, side)
    assert result.pooled_grid == side and result.grid == 27
    assert bool(torch.isfinite(result.tokens.float()).all())
    # every token is attributed to a frame
    assert int(result.tokens_per_frame().sum()) == count


# ------------------------------------------------------------------------------ exact counts
@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("frames", FRAMES)
@pytest.mark.parametrize("retention", RETENTIONS)
def test_baseline_exact_count(name, frames, retention):
    config = AOTConfig(exact_retention=retention)
    result = get_reducer(name)(*video(frames), config)
    check_result(result, frames, config, exact_budget(retention, frames, 196))
    # frame-major: frames never go backwards
    assert bool((result.token_frame.diff() >= 0).all())


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("budget", (1, 2, 13, 169, 170, 7 * 169))
def test_baseline_explicit_budget_average_pooling(name, budget):
    config = AOTConfig(pooling="average", inter=False)
    result = get_reducer(name)(*video(7), config, budget=budget)
    check_result(result, 7, config, budget)


@pytest.mark.parametrize("name", ("aot", "random"))
@pytest.mark.parametrize("frames, budget", ((1, 1), (1, 37), (7, 100), (7, 7 * 196), (9, 300)))
def test_aot_family_explicit_budget(name, frames, budget):
    result = get_reducer(name)(*video(frames), AOTConfig(), budget=budget)
    check_result(result, frames, AOTConfig(), budget)


# ------------------------------------------------------------------------------ matched budgets
@pytest.mark.parametrize("frames", FRAMES)
def test_every_reducer_matches_aot_exact(frames):
    retention = 0.1 if frames in (1, 33) else 0.25
    config = AOTConfig(exact_retention=retention)
    target = reduce_video(*video(frames), config).num_tokens
    assert target == exact_budget(retention, frames, 196)
    # every ablation at one frame count; the five reducers at all of them (keeps the file fast)
    names = reducer_names() if frames == 7 else BASE_NAMES
    for name in names:
        assert with_inputs(name)(*video(frames), config).num_tokens == target, name


def test_matched_budget_with_released_thresholds():
    features, shallow, deep = video(32)
    config = AOTConfig.preset("paper-ov-mvbench")  # no exact mode: AOT's count varies per video
    target = matched_budget(features, shallow, deep, config)
    for name in BASE_NAMES:
        result = with_inputs(name)(features, shallow, deep, config, budget=target)
        assert result.num_tokens == target, name


def test_aot_budget_equals_exact_retention():
    features, shallow, deep = video(7)
    config = AOTConfig(exact_retention=0.15)
    by_retention = get_reducer("aot")(features, shallow, deep, config)
    by_budget = get_reducer("aot")(features, shallow, deep, AOTConfig(),
                                   budget=exact_budget(0.15, 7, 196))
    assert torch.equal(by_retention.tokens, by_budget.tokens)


def test_retention_for_budget_round_trips():
    for frames in (1, 7, 32, 33, 64):
        for pooled in (169, 196):
            for budget in (1, 2, 3, 97, frames * pooled // 3, frames * pooled - 1, frames * pooled):
                if 1 <= budget <= frames * pooled:
                    r = retention_for_budget(budget, frames, pooled)
                    assert exact_budget(r, frames, pooled) == budget


# ------------------------------------------------------------------------------ not a no-op
@pytest.mark.parametrize("name", BASELINES + ("aot", "random"))
def test_output_differs_from_unreduced(name):
    config = AOTConfig(exact_retention=0.1)
    features, shallow, deep = video(7)
    result = get_reducer(name)(features, shallow, deep, config)
    pooled = pooled_reference(features, config)
    assert result.num_tokens < pooled.shape[0] * pooled.shape[1]
    # the emitted tokens are not just pooled tokens picked at their recorded positions
    picked = pooled[result.token_frame, result.token_position]
    assert not torch.allclose(result.tokens.float(), picked)


@pytest.mark.parametrize("name", BASELINES)
def test_full_budget_is_the_unreduced_video(name):
    config = AOTConfig(exact_retention=1.0)
    features, shallow, deep = video(7)
    result = get_reducer(name)(features, shallow, deep, config)
    pooled = pooled_reference(features, config)
    torch.testing.assert_close(result.tokens.float().sort(0).values,
                               pooled.reshape(-1, DIM).sort(0).values)


# ------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("name", reducer_names())
def test_deterministic(name):
    config = AOTConfig(exact_retention=0.1, seed=3)
    a = with_inputs(name)(*video(5), config)
    b = with_inputs(name)(*video(5), config)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.token_position, b.token_position)


def test_random_anchors_follow_the_seed():
    features, shallow, deep = video(5)

    def run(seed):
        return get_reducer("random")(features, shallow, deep,
                                     AOTConfig(exact_retention=0.1, seed=seed))

    assert torch.equal(run(1).tokens, run(1).tokens)
    assert not torch.equal(run(1).global_anchors, run(2).global_anchors)
    assert int(run(1).global_anchors[0].sum()) == AOTConfig().anchors_per_frame


# ------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_precision(name, dtype):
    config = AOTConfig(exact_retention=0.1)
    result = get_reducer(name)(*video(7, dtype=dtype), config)
    check_result(result, 7, config, exact_budget(0.1, 7, 196), dtype=dtype)
    reference = get_reducer(name)(*[x.float() for x in video(7, dtype=dtype)], config)
    assert torch.equal(result.token_position, reference.token_position)
    torch.testing.assert_close(result.tokens.float(), reference.tokens, atol=0.05, rtol=0.05)


# ------------------------------------------------------------------------------ bad budgets
@pytest.mark.parametrize("name", BASELINES + ("aot",))
@pytest.mark.parametrize("budget", (0, -3, 7 * 196 + 1, 2.5, True))
def test_bad_budget_rejected(name, budget):
    with pytest.raises(ValueError, match=f"budget={budget!r}"):
        get_reducer(name)(*video(7), AOTConfig(), budget=budget)


@pytest.mark.parametrize("name", BASELINES)
def test_missing_budget_rejected(name):
    with pytest.raises(ValueError, match="exact_retention"):
        get_reducer(name)(*video(3), AOTConfig())


def test_bad_retention_rejected():
    with pytest.raises(ValueError, match="exact_retention=1.5"):
        AOTConfig(exact_retention=1.5)


# ------------------------------------------------------------------------------ registry
def test_registry_names():
    # the original five first, the peers (vidcom2, ...) after them, then the ablations
    assert BASE_NAMES[:5] == ["aot", "uniform", "visionzip", "dycoke", "random"]
    assert reducer_names()[len(BASE_NAMES):] == [f"aot:{name}" for name in ABLATIONS]
    with pytest.raises(ValueError, match="'tome'"):
        get_reducer("tome")
    with pytest.raises(ValueError, match="'aot:no-thing'"):
        get_reducer("aot:no-thing")
    with pytest.raises(TypeError, match="takes no options"):
        get_reducer("uniform", dominant=3)
    with pytest.raises(TypeError):
        get_reducer("visionzip", nonsense=1)


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_names_match_config_switches(ablation):
    features, shallow, deep = video(5)
    base = AOTConfig(exact_retention=0.2)
    by_name = get_reducer(f"aot:{ablation}")(features, shallow, deep, base)
    by_config = reduce_video(features, shallow, deep, ablation_config(ablation, base))
    assert torch.equal(by_name.tokens, by_config.tokens)


def test_random_is_the_random_anchor_ablation():
    features, shallow, deep = video(5)
    config = AOTConfig(exact_retention=0.2)
    assert torch.equal(get_reducer("random")(features, shallow, deep, config).tokens,
                       get_reducer("aot:random-anchors")(features, shallow, deep, config).tokens)


# ------------------------------------------------------------------------------ uniform
@pytest.mark.parametrize("side", (13, 14))
def test_pooling_matrix_every_count(side):
    for count in range(1, side * side + 1):
        weights, centres = pooling_matrix(side, count)
        assert weights.shape == (count, side * side)
        torch.testing.assert_close(weights.sum(1), torch.ones(count))
        assert bool((weights > 0).any(0).all())  # every cell feeds some token
        assert bool((centres.diff() > 0).all())  # distinct positions, ascending
    assert torch.equal(pooling_matrix(side, side * side)[0], torch.eye(side * side))


def test_pooling_matrix_square_count_is_adaptive_average_pooling():
    grid = torch.randn(1, 3, 14, 14)
    weights, _ = pooling_matrix(14, 25)
    ours = weights @ grid.permute(0, 2, 3, 1).reshape(1, 196, 3)
    theirs = F.adaptive_avg_pool2d(grid, 5).permute(0, 2, 3, 1).reshape(1, 25, 3)
    torch.testing.assert_close(ours, theirs)


# ------------------------------------------------------------------------------ visionzip
def test_visionzip_split_and_dominant_choice():
    features, shallow, deep = video(1)
    config = AOTConfig()
    result = get_reducer("visionzip")(features, shallow, deep, config, budget=64)
    assert int((result.token_kind == KIND_FRAME).sum()) == 54
    assert int((result.token_kind == KIND_ANCHOR).sum()) == 10
    attention = pool_grid(deep.float(), 27, "bilinear")[0]
    top = set(torch.sort(attention, descending=True, stable=True).indices[:54].tolist())
    assert set(result.token_position[result.token_kind == KIND_FRAME].tolist()) == top
    # contextual tokens absorb others: they are not the pooled tokens at their targets
    pooled = pooled_reference(features, config)[0]
    contextual = result.token_kind == KIND_ANCHOR
    assert not torch.allclose(result.tokens[contextual], pooled[result.token_position[contextual]])
    # a custom split
    custom = get_reducer("visionzip", dominant=1, contextual=1)(features, shallow, deep, config,
                                                                budget=64)
    assert int((custom.token_kind == KIND_ANCHOR).sum()) == 32


@pytest.mark.parametrize("layer", ("deep", "shallow"))
def test_visionzip_attention_knob_picks_the_layer(layer):
    features, shallow, deep = video(1)
    scores = {"deep": deep, "shallow": shallow}
    top = {name: set(torch.sort(pool_grid(s.float(), 27, "bilinear")[0], descending=True,
                                stable=True).indices[:54].tolist()) for name, s in scores.items()}
    assert top["deep"] != top["shallow"]  # else this video could not tell the layers apart
    result = get_reducer("visionzip", attention=layer)(features, shallow, deep, AOTConfig(),
                                                       budget=64)
    assert set(result.token_position[result.token_kind == KIND_FRAME].tolist()) == top[layer]


@pytest.mark.parametrize("dominant, contextual", ((30, 34), (54, 30), (20, 10)))
def test_visionzip_split_follows_dominant_and_contextual(dominant, contextual):
    features, shallow, deep = video(1)
    result = get_reducer("visionzip", dominant=dominant, contextual=contextual)(
        features, shallow, deep, AOTConfig(), budget=64)
    expected = math.floor(64 * dominant / (dominant + contextual) + 0.5)
    assert int((result.token_kind == KIND_FRAME).sum()) == expected
    assert int((result.token_kind == KIND_ANCHOR).sum()) == 64 - expected


def test_visionzip_config_rejects_bad_values():
    with pytest.raises(ValueError, match="dominant=-1"):
        VisionZipConfig(dominant=-1)
    with pytest.raises(ValueError, match="attention='middle'"):
        VisionZipConfig(attention="middle")


# ------------------------------------------------------------------------------ dycoke
def _static_video_with_motion(frames=4, changed=(20, 21, 22, 100)):
    """Pooled-level control: identical frames, except that a few positions change at frame 2
    (and stay changed), so only frame 2 differs from its previous frame."""
    features, shallow, deep = video(1)
    features = features.repeat(frames, 1, 1).clone()
    # move whole 2x2 patch blocks so the pooled tokens at ``changed`` move (bilinear 27 -> 14
    # of a 27-grid reads the patches around 2*position)
    for position in changed:
        row, col = divmod(position, 14)
        features[2:].reshape(frames - 2, 27, 27, DIM)[
            :, 2 * row:2 * row + 2, 2 * col:2 * col + 2] += 5.0
    return features, shallow.repeat(frames, 1), deep.repeat(frames, 1)


def test_dycoke_keeps_what_moves():
    features, shallow, deep = _static_video_with_motion()
    config = AOTConfig()
    result = get_reducer("dycoke", allocation="video")(features, shallow, deep, config,
                                                       budget=196 + 4)
    assert result.tokens_per_frame().tolist() == [196, 0, 4, 0]
    assert set(result.token_position[result.token_frame == 2].tolist()) == {20, 21, 22, 100}
    assert bool((result.token_kind[result.token_frame == 0] == KIND_FRAME).all())
    assert bool((result.token_kind[result.token_frame == 2] == KIND_KEPT).all())
    assert int(result.temporal_merged.sum()) == 3 * 196 - 4


def test_dycoke_merge_averages_runs():
    features, shallow, deep = video(3)
    config = AOTConfig()
    merged = get_reducer("dycoke")(features, shallow, deep, config, budget=196)
    dropped = get_reducer("dycoke", merge=False)(features, shallow, deep, config, budget=196)
    pooled = pooled_reference(features, config)
    torch.testing.assert_close(dropped.tokens, pooled[0])
    torch.testing.assert_close(merged.tokens, pooled.mean(0))


def test_dycoke_frame_allocation_and_small_budget():
    features, shallow, deep = video(7)
    result = get_reducer("dycoke")(features, shallow, deep, AOTConfig(), budget=196 + 13)
    assert result.tokens_per_frame().tolist() == [196, 3, 2, 2, 2, 2, 2]
    small = get_reducer("dycoke")(features, shallow, deep, AOTConfig(), budget=50)
    assert small.tokens_per_frame().tolist() == [50, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="allocation='clip'"):
        DyCokeConfig(allocation="clip")


@pytest.mark.parametrize("name", BASE_NAMES)
def test_declared_inputs_are_the_ones_read(name):
    """ReducerInfo.inputs is what a model must capture for the reducer: an input it does not
    declare leaves its tokens unchanged, an attention input it declares changes them."""
    features, shallow, deep = video(8)
    config = AOTConfig(exact_retention=0.1)
    info = REDUCERS[name]
    reducer = with_inputs(name)
    base = reducer(features, shallow, deep, config)
    noise = torch.Generator().manual_seed(1)
    replaced = {"shallow_attention": torch.rand(shallow.shape, generator=noise),
                "deep_attention": torch.rand(deep.shape, generator=noise),
                "last_attention": torch.rand(deep.shape, generator=noise)}
    for input_name, other in replaced.items():
        if input_name == "last_attention" and input_name not in info.inputs:
            continue  # not a keyword of a reducer that does not declare it
        args = dict(shallow_attention=shallow, deep_attention=deep, last_attention=deep)
        args[input_name] = other
        extra = ({"last_attention": args["last_attention"]}
                 if "last_attention" in info.inputs else {})
        out = reducer(features, args["shallow_attention"], args["deep_attention"], config,
                      **extra)
        same = torch.equal(out.tokens, base.tokens)
        assert same != (input_name in info.inputs), (name, input_name)
