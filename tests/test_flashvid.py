"""``flashvid``: the release's behaviour (a plain-loop oracle), exact counts, options, the path."""

from __future__ import annotations

import math

import pytest
import torch

from aot import AOTConfig, exact_budget, pool_grid
from aot.pooling import pooled_shape
from aot.reducers import REDUCERS, FlashVIDConfig, get_reducer
from aot.reducers.flashvid import (adts_select, cluster_counts, released_budget,
                                   released_options, segment_lengths)
from aot.result import KIND_ANCHOR, KIND_FRAME


def random_video(frames, grid=(27, 27), dim=8, seed=0, dtype=torch.float64, scene=3):
    """Frames in scenes of ``scene`` frames (a scene's frames are near copies), a positive
    per-channel offset as real features have, and (F, T) attention as AOT's adapters give it
    (summed over queries: a distribution times T)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = grid[0] * grid[1]
    offset = torch.rand(dim, generator=generator, dtype=torch.float64) + 0.5
    scenes = torch.randn(frames // scene + 1, tokens, dim, generator=generator,
                         dtype=torch.float64)
    features = scenes[torch.arange(frames) // scene] + offset
    features = features + 0.4 * torch.randn(frames, tokens, dim, generator=generator,
                                            dtype=torch.float64)
    attention = torch.rand(frames, tokens, generator=generator, dtype=torch.float64) ** 4
    attention = attention / attention.sum(-1, keepdim=True) * tokens
    other = torch.rand(frames, tokens, generator=generator, dtype=torch.float64)
    return features.to(dtype), other.to(dtype), other.to(dtype), attention.to(dtype)


# ------------------------------------------------------------------------------ the oracle
def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _unit(a):
    norm = math.sqrt(_dot(a, a))
    return [x / norm for x in a]


def _argmax(values):
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def _argmin(values):
    best = 0
    for i, v in enumerate(values):
        if v < values[best]:
            best = i
    return best


def _oracle_adts(frames_tokens, frames_attention, count, method):
    """The release's token selection for the frames of one segment: sorted picks."""
    return [sorted(_greedy_one(frames_tokens, frames_attention, b, count, method))
            for b in range(len(frames_tokens))]


def _oracle_dpc(tokens, clusters, k, noise):
    n, dim = len(tokens), len(tokens[0])
    dist = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(x, y))) / math.sqrt(dim)
             for y in tokens] for x in tokens]
    density = [math.exp(sum(-(d ** 2) for d in sorted(row)[:k]) / k) + noise[i]
               for i, row in enumerate(dist)]
    top = max(max(row) for row in dist)
    delta = [min([dist[i][j] for j in range(n) if density[j] > density[i]] or [top])
             for i in range(n)]
    score = [delta[i] * density[i] for i in range(n)]
    centres = sorted(range(n), key=lambda i: (-score[i], i))[:clusters]
    assign = [_argmin([dist[i][c] for c in centres]) for i in range(n)]
    for c, i in enumerate(centres):
        assign[i] = c
    return assign, centres


def oracle(pooled, attention, retention, *, count="released", expansion=None, alpha=0.7,
           token_selection_method="attn_div_v2", temporal_threshold=0.8, do_segment=True,
           segment_threshold=0.9, min_segment_num=8, complementary_segment=True,
           dpc_neighbours=7, seed=0):
    """The release's ``flashvid_compression`` in plain Python floats (float64): a list of
    (global index, token) in output order. ``count="exact"`` swaps in our two count changes
    (the total spread over the frames; clusters by largest remainder).

    pooled: (F, P, D) the release's ``video_features``; attention: (F, P) its ``cls_attention``
    (mean over queries, pooled). Density noise: ``rand * 1e-6`` drawn in float64 from a
    generator seeded with ``seed``, one draw per DPC call that merges, in output order."""
    frames, per_frame, dim = pooled.shape
    video = pooled.tolist()
    attn = attention.tolist()
    generator = torch.Generator().manual_seed(seed)
    if expansion is None:
        expansion = 1.25 if count == "released" else 1.0
    # ---- budgets
    if count == "released":
        budget = math.ceil(per_frame * retention * expansion)
        budgets = [budget] * frames
        adts = [math.ceil(budget * alpha)] * frames
    else:
        total = math.floor(min(1.0, retention * expansion) * frames * per_frame + 0.5)
        budgets = [total // frames + (f < total % frames) for f in range(frames)]
        adts = [math.ceil(b * alpha) for b in budgets]
    # ---- DySeg
    if do_segment:
        means = [_unit([sum(t[c] for t in frame) / per_frame for c in range(dim)])
                 for frame in video]
        trans = [_dot(means[t], means[t + 1]) for t in range(frames - 1)]
        cuts = [t for t, s in enumerate(trans) if s < segment_threshold]
        if complementary_segment and len(cuts) + 1 < min_segment_num:
            filled = [1.0 if s < segment_threshold else s for s in trans]
            order = sorted(range(frames - 1), key=lambda t: (filled[t], t))
            cuts = sorted(cuts + order[:min(min_segment_num - len(cuts) - 1, frames - 1)])
        bounds = [-1] + cuts + [frames - 1]
        lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        lengths = [frames]
    out = []
    start = 0
    for length in lengths:
        if length == 0:
            continue
        seg = range(start, start + length)
        # exact mode: a frame with a smaller count keeps the first picks of the greedy
        picks = [sorted(_greedy_one([video[g] for g in seg], [attn[g] for g in seg], i,
                                    adts[f], token_selection_method)) if adts[f] else []
                 for i, f in enumerate(seg)]
        for i, f in enumerate(seg):
            out.extend((f * per_frame + p, list(video[f][p])) for p in picks[i])
        contextual = sum(budgets[f] - adts[f] for f in seg)
        if contextual > 0:
            if length > 1:
                lists = _oracle_tstm([video[f] for f in seg],
                                     [set(p) for p in picks], temporal_threshold,
                                     sum(budgets[f] for f in seg))
            else:
                lists = [[(p, list(video[start][p])) for p in range(per_frame)]]
            sizes = [len(items) for items in lists]
            current = sum(sizes)
            if count == "released":
                ratio = contextual / current
                shares = [math.ceil(n * ratio) if ratio < 1.0 else n for n in sizes]
            else:
                shares = [n * contextual // current for n in sizes]
                order = sorted(range(length), key=lambda i: (-(sizes[i] * contextual % current), i))
                for i in order[:contextual - sum(shares)]:
                    shares[i] += 1
            for i, (items, clusters) in enumerate(zip(lists, shares)):
                f = start + i
                if clusters == 0 or not items:
                    continue
                if clusters >= len(items):
                    out.extend((f * per_frame + p, v) for p, v in items)
                    continue
                noise = (torch.rand(len(items), generator=generator, dtype=torch.float64)
                         * 1e-6).tolist()
                assign, centres = _oracle_dpc([v for _, v in items], clusters,
                                              min(clusters, dpc_neighbours), noise)
                for c, centre in enumerate(centres):
                    members = [items[j][1] for j in range(len(items)) if assign[j] == c]
                    mean = [sum(m[d] for m in members) / len(members) for d in range(dim)]
                    out.append((f * per_frame + items[centre][0], mean))
        start += length
    return sorted(out, key=lambda item: item[0])  # Python's sort is stable


def _greedy_one(frames_tokens, frames_attention, b, count, method):
    """Frame b's picks in the order the release's greedy makes them: the column with the
    largest second-smallest distance, then max-min; v2 does not mask picked tokens."""
    seg = len(frames_tokens)
    tokens, attention = frames_tokens[b], frames_attention[b]
    n = len(tokens)
    if method == "attn":
        return sorted(range(n), key=lambda i: (-attention[i], i))[:count]
    means = [[sum(t[c] for t in frame) / len(frame) for c in range(len(frame[0]))]
             for frame in frames_tokens]
    units = [_unit(t) for t in tokens]
    weight = [1.0] * n if method == "div" else [a * 1e6 for a in attention]
    if method == "attn_div_v2":
        weight = [weight[j] * sum(_dot(tokens[j], m) for m in means) / seg for j in range(n)]
    dist = [[(1.0 - _dot(units[i], units[j])) * weight[j] for j in range(n)] for i in range(n)]
    keep = [_argmax([sorted(dist[i][j] for i in range(n))[1] for j in range(n)])]
    while len(keep) < count:
        low = [min(dist[i][j] for i in keep) for j in range(n)]
        if method != "attn_div_v2":
            for i in keep:
                low[i] = -1.0
        keep.append(_argmax(low))
    return keep


def _oracle_tstm(frames_tokens, picked, threshold, lower_bound):
    """The release's ``spatiotemporal_compression`` on one segment, in place, backwards."""
    length, n = len(frames_tokens), len(frames_tokens[0])
    values = [[list(t) for t in frame] for frame in frames_tokens]
    units = [[_unit(t) for t in frame] for frame in frames_tokens]
    best = [[-1.0] * n]
    parent = [[-1] * n]
    for t in range(1, length):
        row_best, row_parent = [], []
        for i in range(n):
            sims = [-1.0 if (i in picked[t] or j in picked[t - 1])
                    else _dot(units[t][i], units[t - 1][j]) for j in range(n)]
            j = _argmax(sims)
            row_best.append(sims[j])
            row_parent.append(j)
        best.append(row_best)
        parent.append(row_parent)
    merged = [[s > threshold for s in row] for row in best]
    if sum(not m for row in merged for m in row) < lower_bound:
        flat = sorted((s for row in best for s in row), reverse=True)
        soft = max(flat[length * n - lower_bound - 1], -1.0 + 1e-6)
        merged = [[s > soft for s in row] for row in best]
    counts = [[1.0] * n for _ in range(length)]
    for t in range(length - 1, -1, -1):
        for i in range(n):
            if not merged[t][i]:
                values[t][i] = [x / counts[t][i] for x in values[t][i]]
                counts[t][i] = 1.0
        for i in range(n):
            if merged[t][i]:
                p = parent[t][i]
                values[t - 1][p] = [a + b for a, b in zip(values[t - 1][p], values[t][i])]
                counts[t - 1][p] += 1.0
    return [[(i, values[t][i]) for i in range(n) if not merged[t][i] and i not in picked[t]]
            for t in range(length)]


ORACLE_CASES = [  # frames, grid, pooling, retention, options
    (1, (27, 27), "bilinear", 0.1, {}),
    (4, (9, 11), "bilinear", 0.25, {}),                   # F < 8: empty segments
    (12, (8, 8), "average", 0.25, {}),                    # multi-frame segments
    (6, (10, 12), "none", 0.15, {"do_segment": False}),
    (10, (12, 12), "bilinear", 0.2, {"token_selection_method": "attn_div",
                                     "min_segment_num": 4}),
    (9, (9, 9), "bilinear", 0.4, {"temporal_threshold": -0.5, "do_segment": False}),  # bound
    (7, (8, 10), "none", 0.3, {"token_selection_method": "div", "min_segment_num": 2}),
    (7, (8, 10), "none", 0.3, {"token_selection_method": "attn", "min_segment_num": 2}),
]


def _compare(result, expected, frames, per_frame):
    got_index = (result.token_frame * per_frame + result.token_position).tolist()
    assert got_index == [i for i, _ in expected]
    values = torch.tensor([v for _, v in expected], dtype=torch.float64)
    error = float((result.tokens - values).abs().max())
    print(f"oracle: {len(expected)} tokens, positions equal, max abs value difference {error:.3g}")
    assert error < 1e-9


@pytest.mark.parametrize("count", ("released", "exact"))
@pytest.mark.parametrize("frames, grid, pooling, retention, knobs", ORACLE_CASES)
def test_matches_the_oracle(frames, grid, pooling, retention, knobs, count):
    features, shallow, deep, last = random_video(frames, grid, seed=frames)
    config = AOTConfig(exact_retention=retention, pooling=pooling)
    result = get_reducer("flashvid", count=count, **knobs)(
        features, shallow, deep, config, grid=grid, last_attention=last)
    pooled = pool_grid(features, grid, pooling)
    attention = pool_grid(last / (grid[0] * grid[1]), grid, pooling)
    expected = oracle(pooled, attention, retention, count=count, **knobs)
    _compare(result, expected, frames, pooled.shape[1])
    if count == "exact":
        assert result.num_tokens == exact_budget(retention, frames, pooled.shape[1])
    assert result.tokens.dtype == torch.float64


def test_oracle_covers_the_tree_and_cluster_paths():
    """The oracle cases really merge: trees in TSTM, clusters of several tokens, the bound."""
    features, shallow, deep, last = random_video(12, (8, 8), seed=12)
    config = AOTConfig(exact_retention=0.25, pooling="average")
    result = get_reducer("flashvid", count="released")(features, shallow, deep, config,
                                                       grid=(8, 8), last_attention=last)
    assert any(stop - start > 1 for start, stop in result.clips)
    assert bool(result.temporal_merged.any())
    assert bool((result.token_kind == KIND_ANCHOR).any()) and bool((result.token_kind ==
                                                                    KIND_FRAME).any())


@pytest.mark.parametrize("knob, value", [
    ("alpha", 0.4), ("token_selection_method", "attn_div"), ("temporal_threshold", 0.5),
    ("do_segment", False), ("segment_threshold", 0.999), ("min_segment_num", 3),
    ("complementary_segment", False), ("dpc_neighbours", 2), ("expansion", 1.5), ("seed", 5)])
def test_every_knob_is_read_as_the_release_reads_it(knob, value):
    """A non-default knob matches the oracle run with that value and changes the output (an
    ignored knob fails one of the two)."""
    frames, grid, pooling, retention = 12, (8, 8), "average", 0.25
    features, shallow, deep, last = random_video(frames, grid, seed=3, scene=4)
    config = AOTConfig(exact_retention=retention, pooling=pooling)
    pooled = pool_grid(features, grid, pooling)
    attention = pool_grid(last / 64, grid, pooling)

    def run(**knobs):
        return get_reducer("flashvid", count="released", **knobs)(
            features, shallow, deep, config, grid=grid, last_attention=last)

    default, changed = run(), run(**{knob: value})
    _compare(changed, oracle(pooled, attention, retention, **{knob: value}), frames, 16)
    assert not (torch.equal(default.token_position, changed.token_position)
                and torch.equal(default.token_frame, changed.token_frame)
                and torch.equal(default.tokens, changed.tokens))


def test_attn_div_v2_can_pick_a_token_twice():
    """v2 does not mask its picks (v1 does): on zero-mean tokens some weights are negative and
    the greedy returns to a picked token; the oracle does the same."""
    for seed in range(200):
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randn(1, 6, 3, generator=generator, dtype=torch.float64)
        attention = torch.rand(1, 6, generator=generator, dtype=torch.float64)
        picks = adts_select(tokens, attention, [5], "attn_div_v2")[0].tolist()
        if len(set(picks)) < len(picks):
            break
    else:
        pytest.fail("no repeated pick in 200 random frames")
    assert picks == _oracle_adts(tokens.tolist(), attention.tolist(), 5, "attn_div_v2")[0]
    masked = adts_select(tokens, attention, [5], "attn_div")[0].tolist()
    assert len(set(masked)) == 5


# ------------------------------------------------------------------------------ counts
def test_released_counts_follow_the_release():
    assert [released_budget(196, r, 1.25, 0.7) for r in (0.10, 0.15, 0.20, 0.25)] == \
        [(25, 18), (37, 26), (49, 35), (62, 44)]
    assert released_budget(169, 0.1, 1.25, 0.7) == (22, 16)
    assert cluster_counts([10, 9, 0], 6, exact=False) == [4, 3, 0]   # ceil: 7 against 6
    assert cluster_counts([10, 9, 0], 6, exact=True) == [3, 3, 0]
    assert cluster_counts([4, 4], 9, exact=False) == [4, 4]


def test_released_count_on_llava_ov_shapes():
    """32 frames of 196 at r = 0.1: about F * 25 = 800 (the release's ~1.25 r), exact 627."""
    features, shallow, deep, last = random_video(32, (27, 27), dim=8, seed=1, dtype=torch.float32,
                                                 scene=4)
    config = AOTConfig(exact_retention=0.1)
    released = get_reducer("flashvid", count="released")(features, shallow, deep, config,
                                                         last_attention=last)
    exact = get_reducer("flashvid")(features, shallow, deep, config, last_attention=last)
    assert exact.num_tokens == exact_budget(0.1, 32, 196) == 627
    per_frame = released.tokens_per_frame()
    assert 32 * 25 <= released.num_tokens <= 32 * 25 + 32
    assert int(per_frame.sum()) == released.num_tokens
    expanded = get_reducer("flashvid", expansion=1.25)(features, shallow, deep, config,
                                                       last_attention=last)
    assert expanded.num_tokens == exact_budget(0.125, 32, 196) == 784


@pytest.mark.parametrize("pooling, grid", [("bilinear", (27, 27)), ("average", (27, 27)),
                                           ("none", (12, 20)), ("bilinear", (13, 21)),
                                           ("none", (1, 1))])
@pytest.mark.parametrize("frames", (1, 2, 7, 9, 33))
def test_exact_mode_gives_the_exact_budget(pooling, grid, frames):
    features, shallow, deep, last = random_video(frames, grid, seed=frames, dtype=torch.float32)
    per_frame = math.prod(pooled_shape(grid, pooling))
    for retention in (0.001, 0.05, 0.1, 0.25, 0.6, 1.0):
        config = AOTConfig(exact_retention=retention, pooling=pooling)
        result = get_reducer("flashvid")(features, shallow, deep, config, grid=grid,
                                         last_attention=last)
        assert result.num_tokens == exact_budget(retention, frames, per_frame), (retention,)
        order = result.token_frame * per_frame + result.token_position
        assert bool((order.diff() >= 0).all())


def test_full_retention_of_one_segment_keeps_every_token():
    """At r = 1 a multi-frame segment merges nothing (TSTM's bound is every token) and its
    clusters are single tokens; a one-frame segment would still cluster all its tokens."""
    features, shallow, deep, last = random_video(5, (9, 9), seed=2)
    config = AOTConfig(exact_retention=1.0)
    result = get_reducer("flashvid", do_segment=False)(features, shallow, deep, config,
                                                       grid=(9, 9), last_attention=last)
    pooled = pool_grid(features, (9, 9), "bilinear").reshape(-1, 8)
    torch.testing.assert_close(result.tokens.sort(0).values, pooled.sort(0).values)


def test_released_mode_refuses_a_budget_over_a_frame():
    features, shallow, deep, last = random_video(2, (9, 9), seed=2)
    with pytest.raises(ValueError, match="per-frame budget ceil"):
        get_reducer("flashvid", count="released")(features, shallow, deep,
                                                  AOTConfig(exact_retention=0.9), grid=(9, 9),
                                                  last_attention=last)


# ------------------------------------------------------------------------------ DySeg
def test_segments_with_few_frames_cut_twice():
    """F <= 8 with 8 segments wanted: every transition is cut, a cut one again when the missing
    count exceeds the uncut ones, which leaves an empty segment."""
    means = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.0, 1.0]])
    assert segment_lengths(means, 0.9, 8) == [1, 1, 0, 1, 1]
    assert segment_lengths(means, 0.9, 8, complementary=False) == [2, 2]
    assert segment_lengths(torch.randn(1, 4), 0.9, 8) == [1]
    nine = torch.randn(9, 4).abs() + 5
    assert segment_lengths(nine, 0.9, 8).count(2) == 1


# ------------------------------------------------------------------------------ behaviour
def test_deterministic_and_reads_only_last_attention():
    features, shallow, deep, last = random_video(9, (9, 9), seed=4, dtype=torch.float32)
    config = AOTConfig(exact_retention=0.2)
    run = get_reducer("flashvid")
    a = run(features, shallow, deep, config, grid=(9, 9), last_attention=last)
    b = run(features, torch.rand_like(shallow), torch.rand_like(deep), config, grid=(9, 9),
            last_attention=last)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.token_position, b.token_position)
    c = run(features, shallow, deep, config, grid=(9, 9), last_attention=torch.rand_like(last))
    assert not torch.equal(a.token_position, c.token_position)
    info = REDUCERS["flashvid"]
    assert info.inputs == ("last_attention",) and info.needs_budget
    assert info.options is FlashVIDConfig


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_precision_returns_its_dtype(dtype):
    features, shallow, deep, last = random_video(6, seed=6, dtype=dtype)
    config = AOTConfig(exact_retention=0.1)
    result = get_reducer("flashvid")(features, shallow, deep, config, last_attention=last)
    assert result.tokens.dtype == dtype and result.num_tokens == exact_budget(0.1, 6, 196)


def test_similarity_channels_score_the_leading_channels_and_carry_all():
    features, shallow, deep, last = random_video(9, (9, 9), seed=7)
    extra = torch.randn(9, 81, 4, dtype=torch.float64) * 50
    config = AOTConfig(exact_retention=0.2)
    main = get_reducer("flashvid")(features, shallow, deep, config, grid=(9, 9),
                                   last_attention=last)
    both = get_reducer("flashvid")(torch.cat([features, extra], -1), shallow, deep,
                                   config.replace(similarity_channels=8), grid=(9, 9),
                                   last_attention=last)
    assert torch.equal(both.token_position, main.token_position)
    torch.testing.assert_close(both.tokens[:, :8], main.tokens, atol=1e-12, rtol=0)


def test_released_options_per_backbone():
    assert released_options("ov") == FlashVIDConfig()
    assert released_options("video") == FlashVIDConfig()
    qwen = released_options("qwen2_5_vl", count="released")
    assert (qwen.min_segment_num, qwen.token_selection_method, qwen.count) == \
        (4, "attn_div", "released")
    assert released_options("qwen3_vl") == released_options("qwen2_5_vl")
    assert FlashVIDConfig().used_expansion == 1.0
    assert FlashVIDConfig(count="released").used_expansion == 1.25
    with pytest.raises(ValueError, match="backbone='llava'"):
        released_options("llava")


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("field, value, message", [
    ("count", "approx", "count='approx'"),
    ("token_selection_method", "topk", "token_selection_method='topk'"),
    ("expansion", 0, "expansion=0"),
    ("expansion", float("nan"), "expansion=nan"),
    ("alpha", 1.5, "alpha=1.5"),
    ("alpha", True, "alpha=True"),
    ("temporal_threshold", 1.0, "temporal_threshold=1.0"),
    ("segment_threshold", "0.9", "segment_threshold='0.9'"),
    ("min_segment_num", 0, "min_segment_num=0"),
    ("min_segment_num", 2.0, "min_segment_num=2.0"),
    ("dpc_neighbours", 0, "dpc_neighbours=0"),
    ("seed", 2 ** 70, "seed=1180591620717411303424"),
    ("do_segment", "false", "do_segment"),
])
def test_bad_options_are_named(field, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        FlashVIDConfig(**{field: value})


def test_missing_or_misshapen_last_attention():
    features, shallow, deep, last = random_video(3, (9, 9), dtype=torch.float32)
    config = AOTConfig(exact_retention=0.2)
    with pytest.raises(ValueError, match="last_attention"):
        get_reducer("flashvid")(features, shallow, deep, config, grid=(9, 9))
    with pytest.raises(ValueError, match=r"last_attention has shape \(3, 80\)"):
        get_reducer("flashvid")(features, shallow, deep, config, grid=(9, 9),
                                last_attention=last[:, :80])
    with pytest.raises(ValueError, match="exact_retention"):
        get_reducer("flashvid")(features, shallow, deep, AOTConfig(), grid=(9, 9),
                                last_attention=last)
    with pytest.raises(TypeError):
        get_reducer("flashvid", ratio=0.1)


# ------------------------------------------------------------------------------ the one path
@pytest.mark.parametrize("backbone, pooled", [("ov", 196), ("video", 169)])
@pytest.mark.parametrize("count", ("exact", "released"))
def test_tiny_llava_models_take_flashvid(backbone, pooled, count):
    """Our llava models: the reducer reads the tower's last-layer attention and the LLM gets
    exactly the budget (exact) or the release's count; the eval plugin's parser knows it."""
    from aot_eval.model_args import parse_reducer
    from aot.video_path import Reduction, visual_sequence
    from aot_integrations.tiny import random_model

    spec = parse_reducer({"reducer": "flashvid", "retention": "0.25", "exact": "true"}, backbone)
    assert spec.name == "flashvid"
    model = random_model(backbone, seed=5)
    video = torch.rand(9, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = spec.config.replace(shallow_layer=1, deep_layer=2)
    options = released_options(backbone, count=count)
    with torch.no_grad():
        full = model.video_sequence(video)
        reduced = visual_sequence(model.video_adapter(), video,
                                  Reduction(config, "flashvid", dict(vars(options))))
    if count == "exact":
        assert reduced.visual_tokens == exact_budget(0.25, 9, pooled) < full.visual_tokens
    else:
        budget = math.ceil(pooled * 0.25 * 1.25)
        assert 9 * budget <= reduced.visual_tokens <= 10 * budget
    assert reduced.result.num_tokens == reduced.visual_tokens
    print(f"{backbone} {count}: {reduced.visual_tokens} visual tokens at the LLM "
          f"(of {full.visual_tokens}; exact budget {exact_budget(0.25, 9, pooled)})")


class _LLMInput:
    """What reaches the LLM of a transformers model (its inner model's input_ids)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.register_forward_pre_hook(
            lambda module, args, kwargs: self.calls.append(kwargs), with_kwargs=True)


@pytest.mark.parametrize("name", ["onevision", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("count", ("exact", "released"))
def test_transformers_models_take_flashvid(name, count):
    """aot_integrations.hf.apply(model, config, reducer="flashvid") on tiny transformers models:
    the LLM sees exactly the budget per video (exact) or the release's count."""
    pytest.importorskip("transformers")
    import aot_integrations.hf
    from aot.video_path import Reduction
    from aot_integrations import tiny

    model = getattr(tiny, name)(seed=1)
    grids = {"onevision": [(5, 6, 6)], "qwen2_5_vl": [(6, 12, 12), (3, 8, 16)],
             "qwen3_vl": [(6, 12, 12), (3, 8, 16)]}[name]
    if name == "onevision":
        inputs, per_frame = tiny.onevision_inputs([5, 5]), 9
        grids = grids * 2
    else:
        inputs = (tiny.qwen_inputs if name == "qwen2_5_vl" else tiny.qwen3_inputs)(grids)
    backbone = {"onevision": "ov"}.get(name, name)
    options = released_options(backbone, count=count)
    config = aot_integrations.hf.config_for(model, 0.25, anchors_per_frame=8, window=3,
                                            shallow_layer=1, deep_layer=3)
    handle = aot_integrations.hf.apply(model, Reduction(config, "flashvid", dict(vars(options))))
    seen = _LLMInput(model)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        seen.handle.remove()
        handle.remove()
    ids = seen.calls[0]["input_ids"]
    per_row = (ids == tiny.VIDEO_TOKEN).sum(1).tolist()
    sizes = [(t, per_frame if name == "onevision" else h * w // 4) for t, h, w in grids]
    newline = 1 if name == "onevision" else 0
    visual = [s.visual_tokens for s in handle.last]
    assert per_row == [v + newline for v in visual]
    if count == "exact":
        assert visual == [exact_budget(0.25, t, p) for t, p in sizes]
    else:
        assert all(t * math.ceil(p * 0.25 * 1.25) <= v <= t * (math.ceil(p * 0.25 * 1.25) + 1)
                   for (t, p), v in zip(sizes, visual))
    print(f"{name} {count}: {per_row} video tokens at the LLM; exact budgets "
          f"{[exact_budget(0.25, t, p) for t, p in sizes]}")
