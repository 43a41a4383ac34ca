"""``vidcom2``: the release's behaviour (a plain-loop oracle), exact counts, options, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from reducer_checks import check_selects_pooled_tokens_on_tiny_ov

from aot import AOTConfig, exact_budget, pool_grid
from aot.pooling import pooled_shape
from aot.reducers import REDUCERS, VidCom2Config, get_reducer
from aot.reducers.vidcom2 import exact_counts, released_counts
from aot.result import KIND_FRAME

ALPHAS = [2.0 ** k for k in range(-3, 2)]


def random_video(frames, grid=(27, 27), dim=16, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    tokens = grid[0] * grid[1]
    # a shared per-channel offset and spread, so the channel variances differ as in real features
    spread = torch.rand(dim, generator=generator, dtype=torch.float64) * 2 + 0.1
    offset = torch.randn(dim, generator=generator, dtype=torch.float64)
    features = torch.randn(frames, tokens, dim, generator=generator, dtype=torch.float64)
    features = (features * spread + offset).to(dtype)
    attention = torch.rand(frames, tokens, generator=generator, dtype=torch.float64).to(dtype)
    return features, attention, attention.clone()


# ------------------------------------------------------------------------------ the oracle
def oracle(pooled: torch.Tensor, retention: float, channel_ratio: float = 0.5,
           alphas=ALPHAS, temperature: float = 0.01) -> list[list[int]]:
    """The release's ``vidcom2_compression`` written as plain loops over frames, tokens and
    channels in Python floats (float64): the kept positions of every frame, ascending.

    pooled: (F, P, D) the backbone's pooled tokens (the release's ``flattened_feat``); the
    knobs default to the release's constants."""
    frames, per_frame, dim = pooled.shape
    rows = pooled.reshape(-1, dim).tolist()
    count = len(rows)
    # select_low_var_channels: the int(D / 2) channels of lowest (biased) variance
    variances = []
    for c in range(dim):
        mean = sum(row[c] for row in rows) / count
        variances.append(sum((row[c] - mean) ** 2 for row in rows) / count)
    channels = sorted(range(dim), key=lambda c: (variances[c], c))[:max(1, int(dim * channel_ratio))]
    # compute_gaussian_scores: L2-normalise, then kernels to the video and the frame centres
    units = []
    for row in rows:
        picked = [row[c] for c in channels]
        norm = max(math.sqrt(sum(x * x for x in picked)), 1e-12)
        units.append([x / norm for x in picked])
    width = len(channels)
    video_centre = [sum(u[c] for u in units) / count for c in range(width)]

    def kernel(unit, centre):
        distance = sum((unit[c] - centre[c]) ** 2 for c in range(width))
        return sum(math.exp(-distance / (2 * a)) for a in alphas)

    video_score, frame_score = [], []
    for f in range(frames):
        frame = units[f * per_frame:(f + 1) * per_frame]
        centre = [sum(u[c] for u in frame) / per_frame for c in range(width)]
        video_score.append([kernel(u, video_centre) for u in frame])
        frame_score.append([kernel(u, centre) for u in frame])
    # compute_scales on -mean(video score)
    uniqueness = [-sum(s) / per_frame for s in video_score]
    top = max(uniqueness)
    weights = [math.exp((u - top) / temperature) for u in uniqueness]
    probs = [w / sum(weights) for w in weights]
    mean_prob = sum(probs) / frames
    scales = [min(1.0, retention * (1 + p - mean_prob)) for p in probs]
    # select_outlier_indices: max(1, round half to even), the lowest video + frame scores
    kept = []
    for f in range(frames):
        k = max(1, round(scales[f] * per_frame))
        order = sorted(range(per_frame), key=lambda i: (video_score[f][i] + frame_score[f][i], i))
        kept.append(sorted(order[:k]))
    return kept


ORACLE_CASES = [  # frames, retention, grid, pooling
    (1, 0.1, (27, 27), "bilinear"),
    (1, 0.125, (27, 27), "bilinear"),   # 0.125 * 196 = 24.5: half to even keeps 24
    (3, 0.25, (13, 21), "bilinear"),
    (8, 0.1, (27, 27), "bilinear"),
    (5, 0.15, (9, 7), "average"),
    (4, 0.3, (6, 10), "none"),
    (2, 0.02, (7, 5), "none"),          # a frame's quota rounds to 0: at least one token
]


@pytest.mark.parametrize("frames, retention, grid, pooling", ORACLE_CASES)
def test_released_mode_matches_the_oracle(frames, retention, grid, pooling):
    features, shallow, deep = random_video(frames, grid, seed=frames)
    config = AOTConfig(exact_retention=retention, pooling=pooling)
    result = get_reducer("vidcom2", count="released")(features, shallow, deep, config, grid=grid)
    pooled = pool_grid(features, grid, pooling)
    expected = oracle(pooled, retention)
    got = [result.token_position[result.token_frame == f].tolist() for f in range(frames)]
    assert got == expected
    assert result.tokens.dtype == torch.float64
    frame_ids = torch.tensor([f for f, kept in enumerate(expected) for _ in kept])
    positions = torch.tensor([p for kept in expected for p in kept])
    torch.testing.assert_close(result.tokens, pooled[frame_ids, positions], atol=1e-9, rtol=0)
    assert bool((result.token_kind == KIND_FRAME).all())
    assert int(result.survivors.sum()) == result.num_tokens


@pytest.mark.parametrize("knob, value", [("channel_ratio", 0.25), ("alphas", (0.05, 4.0)),
                                         ("temperature", 0.3)])
def test_every_knob_is_read_as_the_release_reads_its_constant(knob, value):
    """A non-default knob matches the oracle run with that value, and changes the kept tokens
    (a knob the code ignored would fail one of the two)."""
    frames, retention, grid = 8, 0.1, (27, 27)
    features, shallow, deep = random_video(frames, grid, seed=11)
    config = AOTConfig(exact_retention=retention)
    pooled = pool_grid(features, grid, config.pooling)

    def kept(result):
        return [result.token_position[result.token_frame == f].tolist() for f in range(frames)]

    default = get_reducer("vidcom2", count="released")(features, shallow, deep, config)
    changed = get_reducer("vidcom2", count="released", **{knob: value})(features, shallow, deep,
                                                                       config)
    assert kept(default) == oracle(pooled, retention)
    assert kept(changed) == oracle(pooled, retention, **{knob: value})
    assert kept(changed) != kept(default)


def test_half_way_quota_rounds_to_even_in_both_count_rules():
    # identical frames: equal softmax shares, so every frame's scale is exactly r
    features, shallow, deep = random_video(1, seed=4)
    features, shallow, deep = (x.repeat(2, 1, 1) if x.dim() == 3 else x.repeat(2, 1)
                               for x in (features, shallow, deep))
    config = AOTConfig(exact_retention=0.125)               # 0.125 * 196 = 24.5 per frame
    released = get_reducer("vidcom2", count="released")(features, shallow, deep, config)
    assert released.tokens_per_frame().tolist() == [24, 24]
    assert oracle(pool_grid(features, 27, "bilinear"), 0.125) == \
        [released.token_position[released.token_frame == f].tolist() for f in range(2)]
    exact = get_reducer("vidcom2")(features, shallow, deep, config)
    assert exact.tokens_per_frame().tolist() == [25, 24]    # floor(49 + 0.5) = 49; tie: frame 0


# ------------------------------------------------------------------------------ exact counts
@pytest.mark.parametrize("pooling, grid", [("bilinear", (27, 27)), ("average", (27, 27)),
                                           ("none", (12, 20)), ("bilinear", (13, 21)),
                                           ("average", (7, 9)), ("none", (1, 1))])
@pytest.mark.parametrize("frames", (1, 2, 7, 32, 33))
def test_exact_mode_gives_the_exact_budget(pooling, grid, frames):
    features, shallow, deep = random_video(frames, grid, seed=frames, dtype=torch.float32)
    per_frame = math.prod(pooled_shape(grid, pooling))
    for retention in (0.001, 0.05, 0.1, 0.15, 0.25, 0.5, 0.97, 1.0):
        config = AOTConfig(exact_retention=retention, pooling=pooling)
        exact = get_reducer("vidcom2")(features, shallow, deep, config, grid=grid)
        budget = exact_budget(retention, frames, per_frame)
        assert exact.num_tokens == budget, (retention, frames)
        released = get_reducer("vidcom2", count="released")(features, shallow, deep, config,
                                                            grid=grid)
        moved = exact.tokens_per_frame() - released.tokens_per_frame()
        # the smallest change: every frame moves the same way, by the difference in all
        assert bool((moved >= 0).all() or (moved <= 0).all())
        assert int(moved.abs().sum()) == abs(budget - released.num_tokens)
        if released.num_tokens == budget:
            assert torch.equal(exact.tokens, released.tokens)
            assert torch.equal(exact.token_position, released.token_position)
        if budget >= frames:
            assert bool((exact.tokens_per_frame() >= 1).all())
        # within a frame the kept tokens are a prefix of the release's ranking: released-mode
        # tokens of a frame that gained are all kept, and a frame that lost keeps a subset
        for f in range(frames):
            ours = set(exact.token_position[exact.token_frame == f].tolist())
            theirs = set(released.token_position[released.token_frame == f].tolist())
            assert ours <= theirs or theirs <= ours


def test_exact_counts_spread_the_difference_by_quota():
    scales = torch.tensor([0.104, 0.101, 0.097, 0.098])     # quotas 20.38, 19.80, 19.01, 19.21
    assert released_counts(scales, 196).tolist() == [20, 20, 19, 19]
    assert exact_counts(scales, 196, 78).tolist() == [20, 20, 19, 19]
    # deficits q - k: 0.384, -0.204, 0.012, 0.208
    assert exact_counts(scales, 196, 79).tolist() == [21, 20, 19, 19]     # largest deficit
    assert exact_counts(scales, 196, 80).tolist() == [21, 20, 19, 20]
    assert exact_counts(scales, 196, 77).tolist() == [20, 19, 19, 19]     # largest surplus
    assert exact_counts(scales, 196, 2).tolist() == [1, 1, 0, 0]          # fewer than frames
    assert exact_counts(scales, 196, 4 * 196).tolist() == [196] * 4


def test_budget_overrides_retention_and_sets_the_scales():
    features, shallow, deep = random_video(6, seed=2, dtype=torch.float32)
    by_budget = get_reducer("vidcom2")(features, shallow, deep, AOTConfig(exact_retention=0.5),
                                       budget=100)
    assert by_budget.num_tokens == 100
    retention = 100 / (6 * 196)
    by_retention = get_reducer("vidcom2")(features, shallow, deep,
                                          AOTConfig(exact_retention=retention))
    assert torch.equal(by_budget.tokens, by_retention.tokens)


# ------------------------------------------------------------------------------ behaviour
def test_not_a_no_op_and_not_uniform():
    features, shallow, deep = random_video(7, dtype=torch.float32)
    config = AOTConfig(exact_retention=0.1)
    result = get_reducer("vidcom2")(features, shallow, deep, config)
    uniform = get_reducer("uniform")(features, shallow, deep, config)
    assert result.num_tokens == uniform.num_tokens < 7 * 196
    assert not torch.equal(result.token_position, uniform.token_position)
    # frame-adaptive: frames do not all keep the same count
    assert len(set(result.tokens_per_frame().tolist())) > 1
    # frame-major, positions ascending inside a frame
    order = result.token_frame * 196 + result.token_position
    assert bool((order.diff() > 0).all())


def test_deterministic_and_attention_free():
    features, shallow, deep = random_video(5, dtype=torch.float32)
    config = AOTConfig(exact_retention=0.2)
    a = get_reducer("vidcom2")(features, shallow, deep, config)
    b = get_reducer("vidcom2")(features, torch.rand_like(shallow), torch.rand_like(deep), config)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.token_position, b.token_position)
    info = REDUCERS["vidcom2"]
    assert info.inputs == () and info.needs_budget and info.options is VidCom2Config


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32))
def test_dtypes_compute_in_float32(dtype):
    features, shallow, deep = random_video(6, dtype=dtype)
    config = AOTConfig(exact_retention=0.1)
    result = get_reducer("vidcom2")(features, shallow, deep, config)
    assert result.tokens.dtype == dtype and result.num_tokens == exact_budget(0.1, 6, 196)
    reference = get_reducer("vidcom2")(features.float(), shallow.float(), deep.float(), config)
    assert torch.equal(result.token_position, reference.token_position)
    assert torch.equal(result.tokens, reference.tokens.to(dtype))


def test_similarity_channels_score_the_leading_channels_and_carry_all():
    features, shallow, deep = random_video(4, seed=7)
    extra = torch.randn(4, 729, 8, dtype=torch.float64) * 50
    stacked = torch.cat([features, extra], -1)
    config = AOTConfig(exact_retention=0.15)
    main = get_reducer("vidcom2")(features, shallow, deep, config)
    both = get_reducer("vidcom2")(stacked, shallow, deep, config.replace(similarity_channels=16))
    assert torch.equal(both.token_position, main.token_position)
    assert both.tokens.shape == (main.num_tokens, 24)
    torch.testing.assert_close(both.tokens[:, :16], main.tokens, atol=0, rtol=0)
    unscoped = get_reducer("vidcom2")(stacked, shallow, deep, config)
    assert not torch.equal(unscoped.token_position, main.token_position)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("field, value, message", [
    ("count", "approx", "count='approx'"),
    ("count", True, "count=True"),
    ("channel_ratio", 0, "channel_ratio=0"),
    ("channel_ratio", 1.5, "channel_ratio=1.5"),
    ("channel_ratio", float("nan"), "channel_ratio=nan"),
    ("channel_ratio", True, "channel_ratio=True"),
    ("temperature", 0.0, "temperature=0.0"),
    ("temperature", float("inf"), "temperature=inf"),
    ("temperature", "0.01", "temperature='0.01'"),
    ("temperature", 10**400, "temperature=1000"),      # an int beyond float range
    ("alphas", (), "alphas=()"),
    ("alphas", (1.0, -2.0), "alphas=\\(1.0, -2.0\\)"),
    ("alphas", (float("nan"),), "alphas=\\(nan,\\)"),
    ("alphas", "abc", "alphas='abc'"),
])
def test_bad_options_are_named(field, value, message):
    with pytest.raises(ValueError, match=f"VidCom2Config.{message}"):
        VidCom2Config(**{field: value})
    with pytest.raises(ValueError, match=message):
        get_reducer("vidcom2", **{field: value})


def test_bad_budgets_and_unknown_options():
    features, shallow, deep = random_video(3, dtype=torch.float32)
    with pytest.raises(ValueError, match="exact_retention"):
        get_reducer("vidcom2")(features, shallow, deep, AOTConfig())
    for budget in (0, 3 * 196 + 1, 2.5, True):
        with pytest.raises(ValueError, match=f"budget={budget!r}"):
            get_reducer("vidcom2", count="released")(features, shallow, deep, AOTConfig(),
                                                     budget=budget)
    with pytest.raises(TypeError):
        get_reducer("vidcom2", ratio=0.1)
    assert VidCom2Config(alphas=[1, 2]).alphas == (1.0, 2.0)


# ------------------------------------------------------------------------------ the one path
def test_eval_plugin_and_tiny_model_take_vidcom2():
    check_selects_pooled_tokens_on_tiny_ov("vidcom2")
