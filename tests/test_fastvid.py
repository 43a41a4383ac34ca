"""``fastvid``: the release's behaviour (a plain-loop oracle), exact counts, options, inputs."""

from __future__ import annotations

import math

import pytest
import torch

from aot import AOTConfig, exact_budget, pool_grid
from aot.pooling import pooled_shape
from aot.reducers import REDUCERS, FastVIDConfig, get_reducer
from aot.reducers.fastvid import (
    RELEASED_OPTIONS,
    RELEASED_RETENTION,
    exact_anchor_counts,
    frame_counts,
    released_options,
    segment_sizes,
)
from aot.result import KIND_ANCHOR, KIND_FRAME

KNOBS = dict(dyseg_c=8, dyseg_tau=0.9, stprune_d=0.4, dtm_p=4, dtm_beta=0.6, knn=4, noise=1e-6,
             seed=0)


def random_video(frames, grid=(27, 27), dim=16, seed=0, dtype=torch.float64, scene=9):
    """Features, attention and head outputs of a video whose first ``scene`` frames show one
    scene (global features a shared vector plus small noise: consecutive cosines near 0.99)
    and whose later frames all differ (cosines near 0): DySeg then gives one long segment and
    single-frame ones."""
    generator = torch.Generator().manual_seed(seed)
    tokens = grid[0] * grid[1]
    features = torch.randn(frames, tokens, dim, generator=generator, dtype=torch.float64)
    attention = torch.rand(frames, tokens, generator=generator, dtype=torch.float64)
    shared = torch.randn(1, 24, generator=generator, dtype=torch.float64)
    own = torch.randn(frames, 24, generator=generator, dtype=torch.float64)
    in_scene = (torch.arange(frames) < scene).double()[:, None]
    head_features = in_scene * (shared + 0.1 * own) + (1 - in_scene) * own
    head_attention = torch.rand(frames, tokens, generator=generator, dtype=torch.float64)
    return (features.to(dtype), attention.to(dtype), attention.clone().to(dtype),
            head_attention.to(dtype), head_features.to(dtype))


def run(video, config, grid=(27, 27), budget=None, **options):
    features, shallow, deep, head_attention, head_features = video
    return get_reducer("fastvid", **options)(features, shallow, deep, config, grid=grid,
                                             budget=budget,
                                             head_attention=head_attention,
                                             head_features=head_features)


# ------------------------------------------------------------------------------ the oracle
def oracle(pooled, attention, global_features, retention, dyseg_c=8, dyseg_tau=0.9,
           stprune_d=0.4, dtm_p=4, dtm_beta=0.6, knn=4, noise=1e-6, seed=0):
    """The release's FastVID block (modeling_qwen2.py L901-1074) written as plain loops over
    frames, segments and tokens in Python floats (float64).

    pooled: (F, P, D) the video's pooled tokens (the release's ``video_hidden_states``);
    attention: (F, P) the pooled head attention; global_features: (F, C).
    Returns {(frame, position): token values} of the emitted tokens."""
    frames, per_frame, dim = pooled.shape
    values = pooled.tolist()
    att = attention.tolist()
    retained = int(per_frame * retention)
    salient = retained - int(retained * stprune_d)
    context = retained - salient
    # DySeg: the dyseg_c - 1 lowest cosines of consecutive global features, and all below tau
    units = []
    for row in global_features.tolist():
        norm = math.sqrt(sum(x * x for x in row))
        units.append([x / norm for x in row])
    sims = [sum(a * b for a, b in zip(units[f], units[f + 1])) for f in range(frames - 1)]
    lowest = sorted(range(frames - 1), key=lambda i: (sims[i], i))[:dyseg_c - 1]
    cuts = sorted(set(lowest) | {i for i in range(frames - 1) if sims[i] < dyseg_tau})
    sizes, previous = [], -1
    for cut in cuts + [frames - 1]:
        sizes.append(cut - previous)
        previous = cut
    # the anchor-token distribution over frames
    anchors_of = []
    for length in sizes:
        anchor_frames = (length + dtm_p - 1) // dtm_p
        share = (context * length) // anchor_frames
        anchors_of += [share if (length - 1 - j) % dtm_p == 0 else 0 for j in range(length)]
    # ATS: the salient tokens; the rest in position order
    out = {}
    others = []
    for f in range(frames):
        top = sorted(range(per_frame), key=lambda i: (-att[f][i], i))[:salient]
        for i in top:
            out[(f, i)] = values[f][i]
        others.append([i for i in range(per_frame) if i not in set(top)])
    # density scores per frame (the release's noise: torch.rand(F, n) * 1e-6, here seeded)
    count = per_frame - salient
    jitter = (torch.rand((frames, count), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float32).double() * noise).tolist()
    scores = []
    for f in range(frames):
        toks = [values[f][i] for i in others[f]]
        dist = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(x, y))) / math.sqrt(dim)
                 for y in toks] for x in toks]
        largest = max(max(row) for row in dist)
        density = [math.exp(-sum(d * d for d in sorted(row)[:knn]) / knn) + jitter[f][i]
                   for i, row in enumerate(dist)]
        frame_scores = []
        for i in range(count):
            denser = [dist[i][j] for j in range(count) if density[j] > density[i]]
            frame_scores.append((min(denser) if denser else largest) * density[i])
        scores.append(frame_scores)

    def unit(x):
        norm = math.sqrt(sum(v * v for v in x))
        return [v / norm for v in x]

    # DTM: each anchor frame's anchors absorb all of its segment's non-salient tokens
    start = 0
    for length in sizes:
        members = [values[g][i] for g in range(start, start + length) for i in others[g]]
        for f in range(start, start + length):
            k = anchors_of[f]
            if k == 0:
                continue
            picked = sorted(range(count), key=lambda i: (-scores[f][i], i))[:k]
            anchor_values = [values[f][others[f][i]] for i in picked]
            anchor_units = [unit(a) for a in anchor_values]
            groups = [[] for _ in picked]
            for token in members:
                u = unit(token)
                sims_to = [sum(a * b for a, b in zip(u, au)) for au in anchor_units]
                groups[sims_to.index(max(sims_to))].append(token)
            for slot, i in enumerate(picked):
                group, anchor = groups[slot], anchor_values[slot]
                n = len(group)
                weight = max(1 / (n + 1), dtm_beta)
                mean = [sum(t[c] for t in group) / max(n, 1) for c in range(dim)]
                out[(f, others[f][i])] = [weight * a + (1 - weight) * m
                                          for a, m in zip(anchor, mean)]
        start += length
    return out


def compare(result, expected):
    """(positions equal?, max abs difference of the values)."""
    keys = sorted(expected)
    got = list(zip(result.token_frame.tolist(), result.token_position.tolist()))
    if got != keys:
        return False, math.inf
    reference = torch.tensor([expected[key] for key in keys], dtype=torch.float64)
    return True, float((result.tokens.double() - reference).abs().max())


ORACLE_CASES = [  # frames, retention, grid, pooling, scene length, DySeg's segments
    (8, 0.1, (27, 27), "bilinear", 2, [1] * 8),
    (12, 0.1, (27, 27), "bilinear", 5, [5] + [1] * 7),          # 2 anchor frames
    (16, 0.25, (27, 27), "bilinear", 9, [9] + [1] * 7),         # 3 anchor frames
    (10, 0.15, (13, 21), "average", 6, [1, 1, 1, 3, 1, 1, 1, 1]),
    (9, 0.3, (6, 10), "none", 5, [1, 1, 1, 2, 1, 1, 1, 1]),
]


@pytest.mark.parametrize("frames, retention, grid, pooling, scene, sizes", ORACLE_CASES)
def test_released_mode_matches_the_oracle(frames, retention, grid, pooling, scene, sizes):
    video = random_video(frames, grid, seed=frames, scene=scene)
    config = AOTConfig(exact_retention=retention, pooling=pooling)
    result = run(video, config, grid, count="released")
    pooled = pool_grid(video[0], grid, pooling)
    expected = oracle(pooled, pool_grid(video[3], grid, pooling), video[4], retention)
    same, worst = compare(result, expected)
    assert same and worst < 1e-9, worst
    assert result.tokens.dtype == torch.float64
    assert segment_sizes(video[4], 8, 0.9) == sizes
    print(f"fastvid oracle F={frames} r={retention} {pooling}: positions equal, values max abs "
          f"diff {worst:.2e}")
    # salient tokens are the pooled tokens, anchors absorbed others
    frame_kind = result.token_kind == KIND_FRAME
    picked = pooled[result.token_frame, result.token_position]
    torch.testing.assert_close(result.tokens[frame_kind], picked[frame_kind], atol=0, rtol=0)
    assert not torch.allclose(result.tokens[~frame_kind], picked[~frame_kind])
    assert int(result.survivors.sum()) == result.num_tokens


@pytest.mark.parametrize("knob, value", [("dyseg_c", 4), ("dyseg_tau", 0.995),
                                         ("stprune_d", 0.7), ("dtm_p", 2), ("dtm_beta", 0.9),
                                         ("knn", 7), ("noise", 1.0), ("seed", 1)])
def test_every_knob_is_read_as_the_release_reads_its_constant(knob, value):
    """A non-default knob matches the oracle run with that value and changes the output (a knob
    the code ignored would fail one of the two)."""
    frames, retention, grid = 12, 0.1, (27, 27)
    video = random_video(frames, grid, seed=3, scene=9)
    config = AOTConfig(exact_retention=retention)
    pooled, attention = pool_grid(video[0], grid, "bilinear"), pool_grid(video[3], grid,
                                                                         "bilinear")
    default = run(video, config, count="released")
    knobs = {knob: value}
    if knob == "seed":  # the noise only breaks ties at 1e-6: make it large enough to matter
        knobs["noise"] = 1.0
        default = run(video, config, count="released", noise=1.0)
    changed = run(video, config, count="released", **knobs)
    same, worst = compare(changed, oracle(pooled, attention, video[4], retention, **knobs))
    assert same and worst < 1e-9, (knob, worst)
    assert (default.num_tokens != changed.num_tokens
            or not torch.equal(default.token_position, changed.token_position)
            or not torch.equal(default.tokens, changed.tokens)), knob


# ------------------------------------------------------------------------------ counts
def test_released_counts_follow_the_release_rule():
    assert [frame_counts(196, r, 0.4) for r in (0.1, 0.15, 0.2, 0.25)] == \
        [(12, 7), (18, 11), (24, 15), (30, 19)]
    # 8 frames of 8 single-frame segments: 8 * 19 = 152 tokens against a budget of 157
    video = random_video(8, scene=0)
    config = AOTConfig(exact_retention=0.1)
    released = run(video, config, count="released")
    assert released.num_tokens == 152 and exact_budget(0.1, 8, 196) == 157
    assert released.tokens_per_frame().tolist() == [19] * 8
    exact = run(video, config)
    assert exact.num_tokens == 157
    # 12 frames, a 5-frame segment (anchor frames 0 and 4 with (7*5)//2 = 17 each), 7 singles
    video = random_video(12, scene=5)
    assert segment_sizes(video[4], 8, 0.9) == [5, 1, 1, 1, 1, 1, 1, 1]
    released = run(video, config, count="released")
    assert released.tokens_per_frame().tolist() == [12 + 17, 12, 12, 12, 12 + 17] + [19] * 7
    assert released.num_tokens == 12 * 12 + 2 * 17 + 7 * 7 == 227


@pytest.mark.parametrize("pooling, grid", [("bilinear", (27, 27)), ("average", (27, 27)),
                                           ("none", (12, 20)), ("bilinear", (13, 21)),
                                           ("average", (7, 9)), ("none", (2, 3)),
                                           ("none", (1, 1))])
@pytest.mark.parametrize("frames", (1, 2, 7, 8, 33))
def test_exact_mode_gives_the_exact_budget(pooling, grid, frames):
    video = random_video(frames, grid, seed=frames, dtype=torch.float32, scene=frames // 2)
    per_frame = math.prod(pooled_shape(grid, pooling))
    for retention in (0.001, 0.05, 0.1, 0.25, 0.5, 0.97, 1.0):
        config = AOTConfig(exact_retention=retention, pooling=pooling)
        exact = run(video, config, grid)
        budget = exact_budget(retention, frames, per_frame)
        assert exact.num_tokens == budget, (retention, frames)
        assert bool(((exact.token_frame * per_frame + exact.token_position).diff() > 0).all())
        assert bool(torch.isfinite(exact.tokens).all())
        try:
            released = run(video, config, grid, count="released")
        except ValueError:
            continue  # fewer than 8 frames, or a count the release cannot run
        # the smallest change: the released tokens' positions are all kept, nothing removed
        ours = set(zip(exact.token_frame.tolist(), exact.token_position.tolist()))
        theirs = set(zip(released.token_frame.tolist(), released.token_position.tolist()))
        assert theirs <= ours and len(ours - theirs) == budget - released.num_tokens
        if released.num_tokens == budget:
            assert torch.equal(exact.tokens, released.tokens)


def test_exact_extra_anchors_go_to_anchor_frames_first_by_density_score():
    scores = torch.tensor([[0.9, 0.5, 0.4, 0.1],     # an anchor frame (2 anchors)
                           [0.99, 0.98, 0.97, 0.96],  # no anchors: only after the others run out
                           [0.45, 0.8, 0.2, 0.3]])    # an anchor frame (1 anchor)
    released = torch.tensor([2, 0, 1])
    # candidates by score: frame 2 rank 1 (0.45), frame 0 rank 2 (0.4), frame 2 rank 2 (0.3), ...
    assert exact_anchor_counts(released, scores, 0).tolist() == [2, 0, 1]
    assert exact_anchor_counts(released, scores, 1).tolist() == [2, 0, 2]
    assert exact_anchor_counts(released, scores, 2).tolist() == [3, 0, 2]
    assert exact_anchor_counts(released, scores, 5).tolist() == [4, 0, 4]
    assert exact_anchor_counts(released, scores, 6).tolist() == [4, 1, 4]
    assert exact_anchor_counts(released, scores, 9).tolist() == [4, 4, 4]


def test_released_options_per_backbone():
    assert released_options("ov") == FastVIDConfig() == released_options("video")
    assert released_options("qwen2_5_vl", count="released").dyseg_tau == 0.84
    assert RELEASED_RETENTION == {"ov": 0.10, "video": 0.10, "qwen2_5_vl": 0.27}
    assert set(RELEASED_OPTIONS) == set(RELEASED_RETENTION)
    with pytest.raises(ValueError, match="backbone 'qwen3_vl'"):
        released_options("qwen3_vl")


def test_budget_overrides_retention():
    video = random_video(9)
    by_budget = run(video, AOTConfig(exact_retention=0.5), budget=100)
    assert by_budget.num_tokens == 100
    by_retention = run(video, AOTConfig(exact_retention=100 / (9 * 196)))
    assert torch.equal(by_budget.tokens, by_retention.tokens)


# ------------------------------------------------------------------------------ behaviour
def test_deterministic_and_reads_the_head_not_the_tower_attention():
    video = random_video(9, dtype=torch.float32)
    config = AOTConfig(exact_retention=0.1)
    a = run(video, config)
    features, shallow, deep, head_attention, head_features = video
    b = run((features, torch.rand_like(shallow), torch.rand_like(deep), head_attention,
             head_features), config)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.token_position, b.token_position)
    c = run((features, shallow, deep, torch.rand_like(head_attention), head_features), config)
    assert not torch.equal(a.token_position, c.token_position)
    d = run((features, shallow, deep, head_attention, torch.randn_like(head_features)), config)
    assert not torch.equal(a.tokens, d.tokens)
    assert set(a.token_kind.tolist()) == {KIND_FRAME, KIND_ANCHOR}
    info = REDUCERS["fastvid"]
    assert info.inputs == ("head_attention", "head_features") and info.needs_budget
    assert info.options is FastVIDConfig


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_inputs_compute_in_float32(dtype):
    video = random_video(9, dtype=dtype)
    config = AOTConfig(exact_retention=0.1)
    result = run(video, config)
    assert result.tokens.dtype == dtype and result.num_tokens == exact_budget(0.1, 9, 196)
    reference = run([x.float() for x in video], config)
    assert torch.equal(result.token_position, reference.token_position)
    assert torch.equal(result.tokens, reference.tokens.to(dtype))


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("field, value, message", [
    ("count", "approx", "count='approx'"),
    ("dyseg_c", 0, "dyseg_c=0"),
    ("dyseg_c", 2.0, "dyseg_c=2.0"),
    ("dyseg_c", True, "dyseg_c=True"),
    ("dyseg_tau", 1.5, "dyseg_tau=1.5"),
    ("dyseg_tau", float("nan"), "dyseg_tau=nan"),
    ("stprune_d", -0.1, "stprune_d=-0.1"),
    ("stprune_d", "0.4", "stprune_d='0.4'"),
    ("dtm_p", 0, "dtm_p=0"),
    ("dtm_beta", 2, "dtm_beta=2"),
    ("knn", -1, "knn=-1"),
    ("noise", -1e-6, "noise=-1e-06"),
    ("noise", float("inf"), "noise=inf"),
    ("seed", 1.5, "seed=1.5"),
    ("seed", 2 ** 70, "seed=1180591620717411303424"),
])
def test_bad_options_are_named(field, value, message):
    with pytest.raises(ValueError, match=f"FastVIDConfig.{message}"):
        FastVIDConfig(**{field: value})


def test_missing_or_bad_inputs_and_released_limits():
    features, shallow, deep, head_attention, head_features = random_video(9)
    config = AOTConfig(exact_retention=0.1)
    reducer = get_reducer("fastvid")
    with pytest.raises(ValueError, match="missing \\['head_attention', 'head_features'\\]"):
        reducer(features, shallow, deep, config)
    with pytest.raises(ValueError, match="head_attention: expected a \\(9, 729\\)"):
        reducer(features, shallow, deep, config, head_attention=head_attention[:, :196],
                head_features=head_features)
    with pytest.raises(ValueError, match="head_features: expected a \\(9, C\\)"):
        reducer(features, shallow, deep, config, head_attention=head_attention,
                head_features=head_features[:3])
    short = random_video(7)
    with pytest.raises(ValueError, match="needs at least dyseg_c=8 frames.*got 7"):
        run(short, config, count="released")
    assert run(short, config).num_tokens == exact_budget(0.1, 7, 196)
    with pytest.raises(ValueError, match="keeps int\\(196 \\* r\\) = 0"):
        run(random_video(9), AOTConfig(exact_retention=0.004), count="released")
    with pytest.raises(ValueError, match="exact_retention"):
        run(random_video(9), AOTConfig())
    with pytest.raises(TypeError):
        get_reducer("fastvid", ratio=0.1)
