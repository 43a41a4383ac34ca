"""The released VisionZip port (HoliTom e9b2972f6895 visionzip/llava_arch.py) against a
plain-loop float64 oracle written from the release: kept positions, order and contextual values
(target + mean of its members), the release's S per frame and our exact counts. The registered
name ``visionzip-release`` on the adapters: tests/test_last_keys.py."""

from __future__ import annotations

import math

import pytest
import torch

import aot
from aot.pooling import pool_grid
from aot.reducers.visionzip_release import VisionZipReleaseConfig, reduce_visionzip_release


def inputs(frames, tokens=729, dim=6, heads_dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(frames, tokens, dim, generator=g, dtype=torch.float64)
    attention = torch.rand(frames, tokens, generator=g, dtype=torch.float64)
    keys = torch.randn(frames, tokens, heads_dim, generator=g, dtype=torch.float64)
    return features, attention, keys


def oracle(values, attention, keys, per_frame, ratio=54 / 64, grid_layout=False):
    """The release's steps, one frame and one token at a time, on pooled float64 inputs."""
    out = []
    for f, k in enumerate(per_frame):
        v, a, m = values[f].tolist(), attention[f].tolist(), keys[f].tolist()
        count = len(v)
        dominant_num = int(k * ratio)
        contextual_num = k - dominant_num
        top = sorted(range(count), key=lambda p: (-a[p], p))[:dominant_num]
        dominant = sorted(top)
        rest = [p for p in range(count) if p not in set(dominant)]
        step = max(1, len(rest) // contextual_num)
        target_idx = list(range(0, len(rest), step))[:contextual_num]
        targets = [rest[i] for i in target_idx]

        def unit(p):
            norm = math.sqrt(sum(x * x for x in m[p]))
            return [x / norm for x in m[p]]

        members = {t: [] for t in targets}
        for j, p in enumerate(rest):
            if j in target_idx:
                continue
            sims = [sum(x * y for x, y in zip(unit(p), unit(t))) for t in targets]
            members[targets[sims.index(max(sims))]].append(p)
        frame = [(f, p, v[p]) for p in dominant]
        for t in targets:
            group = members[t]
            mean = [sum(v[p][d] for p in group) / max(1, len(group)) for d in range(len(v[t]))]
            frame.append((f, t, [x + y for x, y in zip(v[t], mean)]))
        if grid_layout:
            frame.sort(key=lambda item: item[1])
        out += frame
    return out


@pytest.mark.parametrize("pooling", ["bilinear", "average"])
@pytest.mark.parametrize("retention, spatial", [(0.10, 20), (0.25, 50), (0.15, 30)])
def test_released_mode_equals_the_oracle(pooling, retention, spatial):
    features, attention, keys = inputs(3, seed=int(retention * 100))
    config = aot.AOTConfig(pooling=pooling, exact_retention=retention)
    result = reduce_visionzip_release(features, attention, attention, config,
                                      options=VisionZipReleaseConfig(count="released"),
                                      last_attention=attention, last_keys=keys)
    pooled = [pool_grid(x, 27, pooling) for x in (features, attention[..., None], keys)]
    expected = oracle(pooled[0], pooled[1][..., 0], pooled[2], [spatial] * 3,
                      grid_layout=pooling == "average")
    assert result.num_tokens == 3 * spatial
    got = list(zip(result.token_frame.tolist(), result.token_position.tolist()))
    assert got == [(f, p) for f, p, _ in expected]
    reference = torch.tensor([values for _, _, values in expected], dtype=torch.float64)
    difference = (result.tokens - reference).abs().max().item()
    assert difference < 1e-12, difference


@pytest.mark.parametrize("frames, retention", [(1, 0.1), (5, 0.02), (7, 0.25), (32, 0.1),
                                               (4, 1.0)])
def test_exact_mode_counts_and_the_oracle(frames, retention):
    features, attention, keys = inputs(frames, seed=frames)
    config = aot.AOTConfig(exact_retention=retention)
    result = reduce_visionzip_release(features, attention, attention, config,
                                      last_attention=attention, last_keys=keys)
    budget = aot.exact_budget(retention, frames, 196)
    assert result.num_tokens == budget
    per_frame = [budget // frames + (f < budget % frames) for f in range(frames)]
    pooled = [pool_grid(x, 27, "bilinear") for x in (features, attention[..., None], keys)]
    expected = oracle(pooled[0], pooled[1][..., 0], pooled[2], per_frame)
    got = list(zip(result.token_frame.tolist(), result.token_position.tolist()))
    assert got == [(f, p) for f, p, _ in expected]
    reference = torch.tensor([values for _, _, values in expected], dtype=torch.float64)
    assert (result.tokens - reference).abs().max().item() < 1e-12


def test_knobs_change_the_output():
    features, attention, keys = inputs(2, seed=9)
    config = aot.AOTConfig(exact_retention=0.1)

    def run(**kw):
        return reduce_visionzip_release(features, attention, attention, config,
                                        options=VisionZipReleaseConfig(**kw),
                                        last_attention=attention, last_keys=keys)

    base = run(count="released")
    assert run(count="released", spatial_tokens=30).num_tokens == 60 != base.num_tokens
    other = run(count="released", dominant_ratio=0.5)
    assert not torch.equal(other.token_position, base.token_position)
    assert run().num_tokens == aot.exact_budget(0.1, 2, 196) == 39 != base.num_tokens


@pytest.mark.parametrize("kwargs, message", [({"count": "approx"}, "count='approx'"),
                                             ({"spatial_tokens": 0}, "spatial_tokens=0"),
                                             ({"dominant_ratio": 1.0}, "dominant_ratio=1.0")])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionZipReleaseConfig(**kwargs)


def test_missing_inputs_are_named():
    features, attention, keys = inputs(2)
    with pytest.raises(ValueError, match="last_keys"):
        reduce_visionzip_release(features, attention, attention,
                                 aot.AOTConfig(exact_retention=0.1), last_attention=attention)
