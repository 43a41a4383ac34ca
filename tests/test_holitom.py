"""``holitom``: the release's behaviour (a plain-loop oracle), exact counts, options, errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from aot import AOTConfig, exact_budget, pool_grid
from aot.pooling import pooled_shape
from aot.reducers import REDUCERS, HoliTomConfig, get_reducer
from aot.reducers.holitom import exact_counts, released_tau, select_windows, window_gains
from aot.result import KIND_ANCHOR, KIND_FRAME


def redundant_video(frames, grid=(27, 27), dim=12, seed=0, dtype=torch.float64, scenes=3):
    """Features with temporal redundancy: a few scenes, each a background that most positions
    repeat with small noise while others change every frame; attention in AOT's convention
    (summed over queries, so up to T)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = grid[0] * grid[1]
    cut = sorted(torch.randperm(max(frames - 1, 1), generator=generator)[:scenes - 1].add(1)
                 .tolist()) if frames > 1 else []
    scene = torch.zeros(frames, dtype=torch.long)
    for c in cut:
        scene[c:] += 1
    backgrounds = torch.randn(scenes, tokens, dim, generator=generator, dtype=torch.float64)
    moving = torch.rand(tokens, generator=generator, dtype=torch.float64) < 0.4
    amplitude = torch.where(moving, 2.0, 0.15)[None, :, None]
    noise = torch.randn(frames, tokens, dim, generator=generator, dtype=torch.float64)
    features = (backgrounds[scene] + amplitude * noise).to(dtype)
    attention = (torch.rand(frames, tokens, generator=generator, dtype=torch.float64)
                 * tokens / 50).to(dtype)
    return features, attention, attention.clone(), attention.flip(1).clone()


# ------------------------------------------------------------------------------ the oracle
def _dpc(points, values, clusters, knn, noise, beta, beta_merge):
    """The release's cluster_dpc_knn + merge_tokens_by_clustering on lists, one point set."""
    n, width = len(points), len(points[0])
    dist = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(points[i], points[j]))) / math.sqrt(width)
             for j in range(n)] for i in range(n)]
    k = min(knn, clusters)
    density = [math.exp(-sum(d * d for d in sorted(dist[i])[:k]) / k) + noise[i]
               for i in range(n)]
    top = max(max(row) for row in dist)
    delta = [min([dist[i][j] for j in range(n) if density[j] > density[i]] + [top])
             for i in range(n)]
    score = [delta[i] * density[i] for i in range(n)]
    centres = sorted(sorted(range(n), key=lambda i: (-score[i], i))[:clusters])
    members = {c: [] for c in range(len(centres))}
    for i in range(n):
        if i not in centres:
            near = [dist[i][c] for c in centres]
            members[near.index(min(near))].append(i)
    merged = []
    for c, centre in enumerate(centres):
        group = members[c]
        if not group:
            merged.append(list(values[centre]))
        elif beta_merge:
            mean = [sum(values[i][d] for i in group) / len(group) for d in range(len(values[0]))]
            merged.append([beta * values[centre][d] + (1 - beta) * mean[d]
                           for d in range(len(mean))])
        else:
            merged.append([(values[centre][d] + sum(values[i][d] for i in group))
                           / (len(group) + 1) for d in range(len(values[0]))])
    return centres, merged


def oracle(pooled, attention, retention, tau=None, beta=0.6, contextual_ratio=0.0, knn=7,
           max_window=1024, beta_merge=True, noise=1e-6, seed=0):
    """The release's video branch (prepare_inputs_labels_for_multimodal L365-410 and the methods
    it calls) as plain loops over frames, positions and channels in Python floats.

    pooled: (F, P, D) float64 pooled tokens; attention: (F, P) pooled mean-over-queries
    attention. Returns (frame, position, kind, values) per output token, in the release's order
    (one_token), with static tokens counted for their window's first frame. The DPC noise is
    drawn as the release draws it (``torch.rand(shape) * noise`` in float32, per window: the
    contextual clusters' (W, m), then the static (1, n_s)), from a generator seeded ``seed``."""
    tau = released_tau(retention) if tau is None else tau
    x = pooled.tolist()
    att = attention.tolist()
    frames, per_frame, dim = len(x), len(x[0]), len(x[0][0])

    def cosine(a, b):
        na = math.sqrt(sum(v * v for v in a))
        nb = math.sqrt(sum(v * v for v in b))
        return sum(p * q for p, q in zip(a, b)) / (na * nb)

    sim = [[cosine(x[t][n], x[t + 1][n]) for n in range(per_frame)] for t in range(frames - 1)]

    def statics(s, e):
        return [n for n in range(per_frame) if all(sim[t][n] > tau for t in range(s, e))]

    # select_static_windows: dp[i] over windows ending at i, strictly better only
    dp, prev = [0] * frames, [0] * frames
    for i in range(frames):
        best, first = (dp[i - 1] if i > 0 else 0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            value = (dp[j] if j >= 0 else 0) + len(statics(j + 1, i)) * (i - j - 1)
            if value > best:
                best, first = value, j + 1
        dp[i], prev[i] = best, first
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((prev[i], i))
        i = prev[i] - 1
    windows.reverse()
    total = frames * per_frame
    r = min(retention / ((total - float(dp[-1])) / total), 1)

    generator = torch.Generator().manual_seed(seed)

    def draw(shape):
        return (torch.rand(shape, generator=generator) * noise).tolist()

    out = []
    for start, end in windows:
        static = statics(start, end) if end > start else []
        dynamic = [n for n in range(per_frame) if n not in static]
        keep = math.ceil(len(dynamic) * r)
        dominant = round(keep * (1 - contextual_ratio))
        contextual = keep - dominant
        frame_tokens, rest = [], []
        for f in range(start, end + 1):
            order = sorted(dynamic, key=lambda n: (-att[f][n], n))
            picked = sorted(order[:dominant])
            frame_tokens.append([(f, n, KIND_FRAME, x[f][n]) for n in picked])
            rest.append([n for n in dynamic if n not in picked])
        if contextual > 0:
            rows = draw((end - start + 1, len(rest[0])))
            for offset, f in enumerate(range(start, end + 1)):
                points = [x[f][n] for n in rest[offset]]
                centres, merged = _dpc(points, points, contextual, knn, rows[offset], beta,
                                       beta_merge)
                frame_tokens[offset] += [(f, rest[offset][c], KIND_ANCHOR, v)
                                         for c, v in zip(centres, merged)]
        static_tokens = []
        clusters = round(len(static) * r)
        if end > start and clusters > 0:
            means = [[sum(x[f][n][d] for f in range(start, end + 1)) / (end - start + 1)
                      for d in range(dim)] for n in static]
            centres, merged = _dpc(means, means, clusters, knn, draw((1, len(static)))[0], beta,
                                   beta_merge)
            static_tokens = [(start, static[c], KIND_ANCHOR, v) for c, v in zip(centres, merged)]
        out += static_tokens + [t for tokens in frame_tokens for t in tokens]
    return out


def compare(result, expected):
    """(positions/frames/kinds equal, max abs difference of the values)."""
    got = list(zip(result.token_frame.tolist(), result.token_position.tolist(),
                   result.token_kind.tolist()))
    assert got == [(f, n, k) for f, n, k, _ in expected]
    values = torch.tensor([v for *_, v in expected], dtype=torch.float64)
    return float((result.tokens.double() - values).abs().max())


def run(features, last, retention, grid=(27, 27), pooling="bilinear", **options):
    config = AOTConfig(exact_retention=retention, pooling=pooling)
    return get_reducer("holitom", count="released", **options)(
        features, last, last, config, grid=grid, last_attention=last)


def oracle_inputs(features, last, grid, pooling):
    return (pool_grid(features, grid, pooling),
            pool_grid(last / last.shape[1], grid, pooling))


ORACLE_CASES = [  # frames, retention, grid, pooling, seed
    (1, 0.1, (27, 27), "bilinear", 0),
    (6, 0.1, (27, 27), "bilinear", 1),
    (8, 0.25, (27, 27), "bilinear", 2),
    (7, 0.15, (27, 27), "average", 3),
    (5, 0.2, (13, 21), "bilinear", 4),
    (9, 0.1, (6, 10), "none", 5),
    (4, 0.5, (9, 7), "average", 6),
]
MAX_ABS = {}


@pytest.mark.parametrize("frames, retention, grid, pooling, seed", ORACLE_CASES)
def test_released_mode_matches_the_oracle(frames, retention, grid, pooling, seed):
    features, shallow, deep, last = redundant_video(frames, grid, seed=seed)
    result = run(features, last, retention, grid, pooling)
    expected = oracle(*oracle_inputs(features, last, grid, pooling), retention)
    MAX_ABS[(frames, retention, grid, pooling)] = difference = compare(result, expected)
    assert difference < 1e-9
    assert result.tokens.dtype == torch.float64
    if frames > 1:   # the inputs make windows with static tokens, so merges are checked too
        assert any(e > s + 1 for s, e in result.clips)
        assert int((result.token_kind == KIND_ANCHOR).sum()) > 0


KNOBS = [("tau", 0.9), ("tau", 0.3), ("beta", 0.2), ("contextual_ratio", 0.5), ("knn", 2),
         ("max_window", 2), ("beta_merge", False), ("noise", 0.5), ("seed", 7)]


@pytest.mark.parametrize("knob, value", KNOBS)
def test_every_knob_is_read_as_the_release_reads_it(knob, value):
    """A non-default knob matches the oracle run with that value and changes the output (a
    knob the code ignored would fail one of the two). The seed moves the densities only by
    the noise, so it is checked with a noise that decides between centres."""
    frames, retention, grid = 8, 0.25, (27, 27)
    features, shallow, deep, last = redundant_video(frames, grid, seed=11)
    inputs = oracle_inputs(features, last, grid, "bilinear")
    base = {"noise": 0.5} if knob == "seed" else {}
    options = dict(base, **{knob: value})
    default = run(features, last, retention, **base)
    changed = run(features, last, retention, **options)
    assert compare(default, oracle(*inputs, retention, **base)) < 1e-9
    assert compare(changed, oracle(*inputs, retention, **options)) < 1e-9
    assert not (torch.equal(changed.token_position, default.token_position)
                and torch.equal(changed.tokens, default.tokens))


def test_tau_follows_the_released_scripts():
    assert [released_tau(r) for r in (0.10, 0.15, 0.20, 0.25)] == [0.65, 0.8, 0.8, 0.8]
    features, shallow, deep, last = redundant_video(8, seed=3)
    for retention in (0.1, 0.2):
        assert torch.equal(run(features, last, retention).tokens,
                           run(features, last, retention, tau=released_tau(retention)).tokens)


# ------------------------------------------------------------------------------ windows
def test_dynamic_programme_on_a_small_case():
    # 5 frames, 3 positions; pairs (t, t+1) similar where True
    similar = torch.tensor([[True, True, False],
                            [True, True, True],
                            [False, True, True],
                            [False, False, False]])
    gains = window_gains(similar)
    assert gains[0, 1] == 2 and gains[0, 2] == 2 * 2 and gains[1, 3] == 2 * 2
    assert gains[0, 3] == 1 * 3 and gains[3, 4] == 0 and gains[2, 2] == 0
    windows, reduced = select_windows(gains)
    # [0..3] alone saves 3; [0..2] + [3] 4; [0, 1] + [2, 3] 2 + 2: ties keep the first found
    assert (windows, reduced) == ([(0, 2), (3, 3), (4, 4)], 4)
    assert select_windows(gains, max_window=2) == ([(0, 1), (2, 3), (4, 4)], 4)
    assert select_windows(gains, max_window=1) == ([(f, f) for f in range(5)], 0)


# ------------------------------------------------------------------------------ counts
def test_released_count_is_not_exact_and_exact_mode_is():
    features, shallow, deep, last = redundant_video(8, seed=2)
    config = AOTConfig(exact_retention=0.25)
    released = get_reducer("holitom", count="released")(features, shallow, deep, config,
                                                        last_attention=last)
    exact = get_reducer("holitom")(features, shallow, deep, config, last_attention=last)
    budget = exact_budget(0.25, 8, 196)
    assert exact.num_tokens == budget != released.num_tokens
    assert exact.clips == released.clips


@pytest.mark.parametrize("pooling, grid", [("bilinear", (27, 27)), ("average", (27, 27)),
                                           ("none", (12, 20)), ("bilinear", (13, 21)),
                                           ("average", (7, 9)), ("none", (1, 1))])
@pytest.mark.parametrize("frames", (1, 2, 7, 32))
def test_exact_mode_gives_the_exact_budget(pooling, grid, frames):
    features, shallow, deep, last = redundant_video(frames, grid, seed=frames,
                                                    dtype=torch.float32)
    per_frame = math.prod(pooled_shape(grid, pooling))
    for retention in (0.001, 0.05, 0.1, 0.15, 0.25, 0.5, 0.97, 1.0):
        config = AOTConfig(exact_retention=retention, pooling=pooling)
        exact = get_reducer("holitom")(features, shallow, deep, config, grid=grid,
                                       last_attention=last)
        assert exact.num_tokens == exact_budget(retention, frames, per_frame), (retention,)
        released = get_reducer("holitom", count="released")(features, shallow, deep, config,
                                                            grid=grid, last_attention=last)
        if released.num_tokens == exact.num_tokens:
            assert torch.equal(exact.tokens, released.tokens)
            assert torch.equal(exact.token_position, released.token_position)
        if exact.clips == released.clips:
            # same windows: a frame's attention-kept tokens are a prefix of the release's
            # ranking, and the total moved is the difference of the counts
            for f in range(frames):
                ours, theirs = (set(r.token_position[(r.token_frame == f)
                                                     & (r.token_kind == KIND_FRAME)].tolist())
                                for r in (exact, released))
                assert ours <= theirs or theirs <= ours
            moved = (exact.tokens_per_frame() - released.tokens_per_frame()).abs().sum()
            assert int(moved) == abs(exact.num_tokens - released.num_tokens)


def test_exact_counts_move_the_fewest_tokens_by_quota():
    counts = torch.tensor([3, 10, 10, 10])                  # a window's static part + 3 frames
    quotas = torch.tensor([3.4, 9.2, 9.2, 9.9], dtype=torch.float64)
    capacity = torch.tensor([20, 50, 50, 50])
    floor = torch.tensor([0, 1, 1, 1])
    assert exact_counts(counts, quotas, capacity, floor, 33).tolist() == [3, 10, 10, 10]
    assert exact_counts(counts, quotas, capacity, floor, 32).tolist() == [3, 9, 10, 10]
    assert exact_counts(counts, quotas, capacity, floor, 31).tolist() == [3, 9, 9, 10]
    assert exact_counts(counts, quotas, capacity, floor, 34).tolist() == [4, 10, 10, 10]
    assert exact_counts(counts, quotas, capacity, floor, 3).tolist() == [0, 1, 1, 1]


def test_budget_overrides_retention():
    features, shallow, deep, last = redundant_video(6, seed=2, dtype=torch.float32)
    config = AOTConfig(exact_retention=0.5)
    by_budget = get_reducer("holitom")(features, shallow, deep, config, budget=150,
                                       last_attention=last)
    assert by_budget.num_tokens == 150
    by_retention = get_reducer("holitom")(features, shallow, deep,
                                          AOTConfig(exact_retention=150 / (6 * 196)),
                                          last_attention=last)
    assert torch.equal(by_budget.tokens, by_retention.tokens)


# ------------------------------------------------------------------------------ behaviour
def test_order_kinds_and_windows():
    features, shallow, deep, last = redundant_video(8, seed=5, dtype=torch.float32)
    result = get_reducer("holitom")(features, shallow, deep, AOTConfig(exact_retention=0.2),
                                    last_attention=last)
    assert bool((result.token_frame.diff() >= 0).all())
    for start, stop in result.clips:
        first = result.token_frame == start
        kinds = result.token_kind[first]
        if stop - start > 1:   # static clusters first, then the frame's attention-kept tokens
            assert int(kinds[0]) == KIND_ANCHOR
            assert bool((result.temporal_merged[start:stop].flatten(1).sum(1) > 0).all())
        kept = result.token_position[first & (result.token_kind == KIND_FRAME)]
        assert bool((kept.diff() > 0).all())
    assert int(result.survivors.sum()) == result.num_tokens


def test_deterministic_and_reads_only_last_attention():
    features, shallow, deep, last = redundant_video(5, dtype=torch.float32)
    config = AOTConfig(exact_retention=0.2)
    a = get_reducer("holitom")(features, shallow, deep, config, last_attention=last)
    b = get_reducer("holitom")(features, torch.rand_like(shallow), torch.rand_like(deep), config,
                               last_attention=last)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.token_position, b.token_position)
    c = get_reducer("holitom")(features, shallow, deep, config, last_attention=last.flip(0))
    assert not torch.equal(a.token_position, c.token_position)
    info = REDUCERS["holitom"]
    assert info.inputs == ("last_attention",) and info.needs_budget
    assert info.options is HoliTomConfig


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_inputs_compute_in_float32(dtype):
    features, shallow, deep, last = redundant_video(6, dtype=dtype)
    config = AOTConfig(exact_retention=0.1)
    result = get_reducer("holitom")(features, shallow, deep, config, last_attention=last)
    assert result.tokens.dtype == dtype and result.num_tokens == exact_budget(0.1, 6, 196)
    reference = get_reducer("holitom")(features.float(), shallow.float(), deep.float(), config,
                                       last_attention=last.float())
    assert torch.equal(result.token_position, reference.token_position)
    assert torch.equal(result.tokens, reference.tokens.to(dtype))


def test_similarity_channels_score_the_leading_channels_and_carry_all():
    features, shallow, deep, last = redundant_video(5, seed=7)
    extra = torch.randn(5, 729, 4, dtype=torch.float64) * 50
    config = AOTConfig(exact_retention=0.15)
    main = get_reducer("holitom")(features, shallow, deep, config, last_attention=last)
    both = get_reducer("holitom")(torch.cat([features, extra], -1), shallow, deep,
                                  config.replace(similarity_channels=12), last_attention=last)
    assert torch.equal(both.token_position, main.token_position)
    torch.testing.assert_close(both.tokens[:, :12], main.tokens, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("field, value, message", [
    ("count", "approx", "count='approx'"),
    ("tau", 1.5, "tau=1.5"),
    ("tau", float("nan"), "tau=nan"),
    ("tau", "0.8", "tau='0.8'"),
    ("beta", -0.1, "beta=-0.1"),
    ("beta", True, "beta=True"),
    ("contextual_ratio", 2, "contextual_ratio=2"),
    ("knn", 0, "knn=0"),
    ("knn", 2.0, "knn=2.0"),
    ("max_window", 0, "max_window=0"),
    ("beta_merge", "false", "beta_merge='false'"),
    ("noise", -1e-6, "noise=-1e-06"),
    ("noise", float("inf"), "noise=inf"),
    ("seed", 2 ** 70, "seed=1180591620717411303424"),
    ("seed", True, "seed=True"),
])
def test_bad_options_are_named(field, value, message):
    with pytest.raises(ValueError, match=f"HoliTomConfig.{message}"):
        HoliTomConfig(**{field: value})


def test_bad_inputs_are_named():
    features, shallow, deep, last = redundant_video(3, dtype=torch.float32)
    config = AOTConfig(exact_retention=0.1)
    with pytest.raises(ValueError, match="holitom reads last_attention="):
        get_reducer("holitom")(features, shallow, deep, config)
    with pytest.raises(ValueError, match=r"last_attention has shape \(2, 729\)"):
        get_reducer("holitom")(features, shallow, deep, config, last_attention=last[:2])
    with pytest.raises(ValueError, match="exact_retention"):
        get_reducer("holitom")(features, shallow, deep, AOTConfig(), last_attention=last)
    with pytest.raises(ValueError, match="budget=0"):
        get_reducer("holitom")(features, shallow, deep, config, budget=0, last_attention=last)
    with pytest.raises(TypeError, match="no option"):
        get_reducer("holitom", ratio=0.1)


# ------------------------------------------------------------------------------ the one path
def _video_tokens_at_the_llm(model, inputs):
    """Video placeholder tokens per row of the ids the inner LLM receives."""
    from aot_integrations import tiny

    calls = []
    hook = model.model.register_forward_pre_hook(lambda m, a, k: calls.append(k),
                                                 with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return (calls[0]["input_ids"] == tiny.VIDEO_TOKEN).sum(1).tolist()


@pytest.mark.parametrize("backbone", ("ov", "video"))
@pytest.mark.parametrize("count", ("exact", "released"))
def test_tiny_llava_models_feed_the_llm_the_count(backbone, count):
    """On our tiny LLaVA models the spliced prompt holds exactly the reducer's tokens (plus the
    one_token newline): the exact budget in exact mode."""
    from llava.constants import IMAGE_TOKEN_INDEX

    from aot.backbones import get_backbone
    from aot_eval.model_args import parse_reducer
    from aot_integrations.tiny import random_model

    spec = parse_reducer({"reducer": "holitom", "retention": "0.25", "exact": "true"}, backbone)
    assert spec.name == "holitom" and spec.config.exact_retention == 0.25
    model = random_model(backbone, seed=5)
    frames = 6
    video = torch.rand(frames, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = spec.config.replace(shallow_layer=1, deep_layer=2)
    ids = torch.tensor([[5, 6, IMAGE_TOKEN_INDEX, 7]])
    model.set_aot(config, reducer="holitom")
    # set_aot takes no reducer options: the released count goes in through the Reduction
    model.reduction = dataclasses.replace(model.reduction, options={"count": count})
    try:
        with torch.no_grad():
            embeds = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None,
                                                                [video], ["video"])[4][0]
        result = model.last_aot_results[0]
    finally:
        model.set_aot(None)
    facts = get_backbone(backbone)
    per_frame = facts.pooled_per_frame(model.get_vision_tower().grid)
    newlines = facts.newlines(frames, model.get_vision_tower().grid)
    visual = embeds.shape[0] - 3 - newlines
    assert visual == result.num_tokens
    if count == "exact":
        assert visual == exact_budget(0.25, frames, per_frame)
    print(f"holitom {count} on tiny {backbone}: {visual} visual tokens at the LLM "
          f"(budget {exact_budget(0.25, frames, per_frame)}), windows {result.clips}")


@pytest.mark.parametrize("name", ("onevision", "qwen2_5_vl", "qwen3_vl"))
def test_transformers_models_feed_the_llm_the_exact_budget(name):
    """aot_integrations.hf.apply(model, config, reducer="holitom") on tiny transformers models,
    a batch of videos of different sizes: each video's run of video tokens at the LLM is its
    exact budget."""
    pytest.importorskip("transformers")
    import aot_integrations.hf
    from aot_integrations import tiny

    model = {"onevision": tiny.onevision, "qwen2_5_vl": tiny.qwen2_5_vl,
             "qwen3_vl": tiny.qwen3_vl}[name](seed=1)
    if name == "onevision":
        inputs, sizes, per_frame, newline = tiny.onevision_inputs([4, 4]), [4, 4], 9, 1
    else:
        grids = [(4, 12, 12), (3, 8, 16)]
        inputs = (tiny.qwen_inputs if name == "qwen2_5_vl" else tiny.qwen3_inputs)(grids)
        sizes, per_frame, newline = [4, 3], None, 0
    config = aot_integrations.hf.config_for(model, 0.25, shallow_layer=1, deep_layer=3,
                                            anchors_per_frame=8, window=3)
    handle = aot_integrations.hf.apply(model, config, reducer="holitom")
    try:
        seen = _video_tokens_at_the_llm(model, inputs)
    finally:
        handle.remove()
    if per_frame is None:
        expected = [exact_budget(0.25, t, h * w // 4) for t, h, w in grids]
    else:
        expected = [exact_budget(0.25, f, per_frame) for f in sizes]
    assert seen == [e + newline for e in expected]
    assert [s.visual_tokens for s in handle.last] == expected
    print(f"holitom exact on tiny {name}: video tokens at the LLM {seen} (budgets {expected})")
