"""``dycoke-ttm`` against a plain-loop float64 oracle written from DyCoke's released
``dycole_ttm`` (KD-TAO/DyCoke dd7463498203, llava/model/llava_arch.py): kept positions, their
order and values; the release's count in ``released`` mode; exact counts in ``exact`` mode."""

from __future__ import annotations

import math

import pytest
import torch

import aot
from aot.pooling import pool_grid
from aot.reducers import DyCokeTTMConfig, get_reducer, reducer_info
from aot.reducers.dycoke_ttm import exact_quotas
from aot.synthetic import synthetic_video


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (max(na, 1e-8) * max(nb, 1e-8))


def oracle_released(pooled: torch.Tensor, merging_ratio: float = 0.7):
    """The release's loops on (F, P, D) float64 pooled tokens -> [(frame, position)] in output
    order (its topk order: ascending similarity; ties, which its topk leaves open: lower
    position)."""
    frames, per_frame = pooled.shape[:2]
    rows = pooled.tolist()
    keep_n = int((1 - merging_ratio) * per_frame)

    def least_similar(frame, reference):
        sims = [cosine(rows[frame][p], rows[reference][p]) for p in range(per_frame)]
        return [(frame, p) for p in sorted(range(per_frame), key=lambda p: (sims[p], p))[:keep_n]]

    out = []
    for i in range(0, frames - 1, 2):
        out.append([(i, p) for p in range(per_frame)])
        out.append(least_similar(i + 1, i))
    for i in range(0, frames - 4, 4):
        out[i] = [(i, p) for p in range(per_frame)]
        out[i + 2] = least_similar(i + 2, i)
    return [item for frame in out for item in frame]


def pooled_of(features, config):
    return pool_grid(features.double(), 27, config.pooling)


@pytest.mark.parametrize("frames", (5, 6, 7, 8, 13, 32))
@pytest.mark.parametrize("ratio", (0.7, 0.3))
@pytest.mark.parametrize("pooling", ("bilinear", "average"))
def test_released_mode_equals_the_oracle(frames, ratio, pooling):
    features, shallow, deep = synthetic_video(frames, dim=12, seed=frames)
    config = aot.AOTConfig(pooling=pooling, exact_retention=0.1)
    result = get_reducer("dycoke-ttm", count="released", merging_ratio=ratio)(
        features.double(), shallow, deep, config)
    expected = oracle_released(pooled_of(features, config), ratio)
    got = list(zip(result.token_frame.tolist(), result.token_position.tolist()))
    assert got == expected  # the same kept tokens in the same order
    pooled = pooled_of(features, config)
    reference = torch.stack([pooled[f, p] for f, p in expected])
    difference = (result.tokens - reference).abs().max().item()
    assert difference <= 1e-12, difference


def test_released_count_is_the_releases():
    """F=32, P=196, k=0.7: 9 whole frames + 23 cut frames of int(0.3*196) = 58 -> 3098, whatever
    the retention; an odd last frame is dropped (F=33: the second pass reaches frame 30 too,
    8 whole + 24 cut = 2960)."""
    features, shallow, deep = synthetic_video(32, dim=8)
    for retention in (0.1, 0.25):
        config = aot.AOTConfig(exact_retention=retention)
        result = get_reducer("dycoke-ttm", count="released")(features, shallow, deep, config)
        assert result.num_tokens == 9 * 196 + 23 * 58 == 3098
    features, shallow, deep = synthetic_video(33, dim=8)
    result = get_reducer("dycoke-ttm", count="released")(features, shallow, deep,
                                                        aot.AOTConfig(exact_retention=0.1))
    assert result.num_tokens == 8 * 196 + 24 * 58 == 2960
    assert int(result.tokens_per_frame()[32]) == 0
    with pytest.raises(ValueError, match="needs at least 5 frames"):
        get_reducer("dycoke-ttm", count="released")(*synthetic_video(4, dim=8),
                                                    aot.AOTConfig(exact_retention=0.1))


@pytest.mark.parametrize("frames", (1, 2, 4, 7, 32, 33))
@pytest.mark.parametrize("retention", (0.02, 0.1, 0.25, 0.6, 1.0))
@pytest.mark.parametrize("pooling", ("bilinear", "average"))
def test_exact_mode_counts(frames, retention, pooling):
    features, shallow, deep = synthetic_video(frames, dim=8, seed=1)
    config = aot.AOTConfig(pooling=pooling, exact_retention=retention)
    per_frame = 196 if pooling == "bilinear" else 169
    result = get_reducer("dycoke-ttm")(features, shallow, deep, config)
    assert result.num_tokens == aot.exact_budget(retention, frames, per_frame)
    assert int(result.survivors.sum()) == result.num_tokens


def test_exact_mode_on_a_non_square_grid_without_pooling():
    features = torch.randn(6, 12 * 20, 8, generator=torch.Generator().manual_seed(0))
    attention = torch.rand(6, 240)
    config = aot.AOTConfig(pooling="none", exact_retention=0.25)
    result = get_reducer("dycoke-ttm")(features, attention, attention, config, grid=(12, 20))
    assert result.num_tokens == aot.exact_budget(0.25, 6, 240)


def test_exact_at_the_released_total_is_the_release():
    """The smallest change: at B = the release's own count the exact mode keeps the same tokens
    in the same order."""
    features, shallow, deep = synthetic_video(12, dim=10, seed=3)
    config = aot.AOTConfig()
    released = get_reducer("dycoke-ttm", count="released")(features, shallow, deep, config)
    exact = get_reducer("dycoke-ttm")(features, shallow, deep, config,
                                      budget=released.num_tokens)
    assert torch.equal(exact.token_frame, released.token_frame)
    assert torch.equal(exact.token_position, released.token_position)
    assert torch.equal(exact.tokens, released.tokens)


def test_exact_cut_frames_keep_their_least_similar_tokens():
    """Below the release's count each cut frame keeps a prefix of the release's own ranking."""
    features, shallow, deep = synthetic_video(8, dim=10, seed=4)
    config = aot.AOTConfig(exact_retention=0.1)
    result = get_reducer("dycoke-ttm")(features, shallow, deep, config)
    full = oracle_released(pooled_of(features, config), merging_ratio=0.0)  # every token ranked
    for frame in (1, 3, 5, 7, 2):
        got = [p for f, p in zip(result.token_frame.tolist(), result.token_position.tolist())
               if f == frame]
        ranking = [p for f, p in full if f == frame]
        assert got == ranking[:len(got)] and got


def test_exact_quotas():
    assert exact_quotas(370, [196, 58, 58, 58], 196) == [196, 58, 58, 58]  # B = total
    assert sum(exact_quotas(100, [196, 58, 196, 58, 58], 196)) == 100
    assert exact_quotas(10, [196, 58], 196) == [8, 2]  # 7.7 and 2.3: the larger remainder
    assert exact_quotas(15, [8, 2, 2], 8) == [8, 4, 3]  # above the total: the cut frames fill
    assert exact_quotas(16, [8, 4], 8) == [8, 8]
    assert exact_quotas(5, [4, 4], 8) == [3, 2]  # a tie: the earlier frame


def test_merging_ratio_changes_the_output():
    features, shallow, deep = synthetic_video(8, dim=8)
    config = aot.AOTConfig(exact_retention=0.1)
    counts = {ratio: get_reducer("dycoke-ttm", count="released", merging_ratio=ratio)(
        features, shallow, deep, config).num_tokens for ratio in (0.7, 0.5)}
    assert counts[0.7] != counts[0.5]
    exact = [get_reducer("dycoke-ttm", merging_ratio=ratio)(features, shallow, deep, config)
             for ratio in (0.7, 0.2)]
    assert exact[0].num_tokens == exact[1].num_tokens
    assert not torch.equal(exact[0].tokens_per_frame(), exact[1].tokens_per_frame())


@pytest.mark.parametrize("kwargs, message", [
    ({"count": "approx"}, "count='approx'"),
    ({"merging_ratio": 1.0}, "merging_ratio=1.0"),
    ({"merging_ratio": "0.7"}, "merging_ratio='0.7'"),
    ({"merging_ratio": float("nan")}, "merging_ratio=nan"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        DyCokeTTMConfig(**kwargs)
    assert "\n" not in str(error.value)


def test_registry_entry():
    info = reducer_info("dycoke-ttm")
    assert info.options is DyCokeTTMConfig and info.inputs == () and info.needs_budget


def test_through_the_eval_parser_on_a_tiny_model():
    """``reducer=dycoke-ttm`` with its knobs reaches a tiny LLaVA-OV model: exactly the budget
    at the LLM, each token the unreduced model's pooled token at its position."""
    from aot_eval.model_args import parse_reducer
    from aot_integrations.tiny import random_model

    spec = parse_reducer({"reducer": "dycoke-ttm", "retention": "0.25", "exact": "true",
                          "reducer.merging_ratio": "0.6"}, "ov")
    assert spec.options == {"count": "exact", "merging_ratio": 0.6}
    model = random_model("ov", seed=5)
    video = torch.rand(6, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        full = model.video_sequence(video)
        model.set_aot(spec.config.replace(shallow_layer=1, deep_layer=2), reducer=spec.name,
                      options=spec.options)
        reduced = model.video_sequence(video)
        model.set_aot(None)
    assert reduced.visual_tokens == aot.exact_budget(0.25, 6, 196) < full.visual_tokens
    kept = reduced.result.token_frame * 196 + reduced.result.token_position
    torch.testing.assert_close(reduced.tokens[:reduced.visual_tokens],
                               full.tokens[:full.visual_tokens][kept], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, grid, per_frame", [("qwen2_5_vl", (4, 8, 12), 24),
                                                   ("qwen3_vl", (4, 8, 8), 16),
                                                   ("llava_onevision", 6, 9)])
def test_exact_count_at_the_llm_of_tiny_transformers_models(name, grid, per_frame):
    """Through aot_integrations.hf on tiny Qwen2.5-VL / Qwen3-VL / transformers LLaVA-OV: the
    LLM receives exactly the budget (LLaVA-OV: plus its one newline)."""
    pytest.importorskip("transformers")
    import aot_integrations.hf
    from aot.video_path import Reduction
    from aot_integrations import tiny

    build, inputs = {"qwen2_5_vl": (tiny.qwen2_5_vl, lambda: tiny.qwen_inputs([grid])),
                     "qwen3_vl": (tiny.qwen3_vl, lambda: tiny.qwen3_inputs([grid])),
                     "llava_onevision": (tiny.onevision,
                                         lambda: tiny.onevision_inputs([grid]))}[name]
    model = build(seed=1)
    config = aot_integrations.hf.config_for(model, 0.25, shallow_layer=1, deep_layer=2,
                                            anchors_per_frame=8, window=3)
    handle = aot_integrations.hf.apply(model, Reduction(config, "dycoke-ttm",
                                                        {"merging_ratio": 0.7}))
    calls = []
    hook = model.model.register_forward_pre_hook(lambda m, a, k: calls.append(k),
                                                 with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs())
    finally:
        hook.remove()
        handle.remove()
    frames = grid if isinstance(grid, int) else grid[0]
    expected = aot.exact_budget(0.25, frames, per_frame)
    video_token = tiny.VIDEO_TOKEN if name == "llava_onevision" else model.config.video_token_id
    newlines = 1 if name == "llava_onevision" else 0
    assert (calls[0]["input_ids"] == video_token).sum().item() == expected + newlines
    assert [s.visual_tokens for s in handle.last] == [expected]


def test_exact_count_on_tiny_llava_video():
    """The LLaVA-Video model (average pooling 27->13, 169 per frame, a newline per row)."""
    from aot_integrations.tiny import random_model

    model = random_model("video", seed=2)
    video = torch.rand(5, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = aot.settings_for("video", 0.1, exact=True).replace(shallow_layer=1, deep_layer=2)
    with torch.no_grad():
        model.set_aot(config, reducer="dycoke-ttm")
        reduced = model.video_sequence(video)
        model.set_aot(None)
    assert reduced.visual_tokens == aot.exact_budget(0.1, 5, 169) == 85
