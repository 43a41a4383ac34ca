"""Every knob of AOTConfig, at a non-default value, against the plain-loop oracle.

Each test sets one knob away from its default (on top of a small base config) and checks two
things, in both Sinkhorn domains:

* the package equals tests/oracle.py at that value (float64, to 1e-9), and
* the value matters on this input: the output differs from the one at the knob's default.

So a knob that the code ignores (reads as a constant) fails here: the package would then give
the default's output, which the oracle says is wrong. ``scripts/mutation_check.py`` proves it by
rewriting each knob's reads into its default and running these tests.
"""

from __future__ import annotations

import math

import pytest
import torch

import aot
import oracle
from aot.synthetic import synthetic_video

FRAMES, GRID, DIM = 9, 9, 12

# A 9x9 grid with 3x3 windows keeps the oracle's loops fast. V = 24: int(24 * 0.5) // 9 = 1
# local anchor per window (9) + 12 global. 9 frames: clips of 2 (ceil(9 / 8)), the last of 1.
BASE = dict(anchors_per_frame=24, window=3)

# knob -> a value other than the default, chosen so that it changes the output here.
NUMERIC = {
    "anchors_per_frame": 45,  # 2 local per window + 27 global
    "global_share": 0.25,  # 18 local + 6 global
    "window": 1,  # 81 one-token windows: int(12) // 81 = 0 local, all 24 global
    "spatial_weight": 2.0,
    "hard_merge_weight": 0.6,
    "intra_scale": 3.0,
    "intra_epsilon": 0.05,
    "temporal_epsilon": 0.3,
    "sigma": 0.6,
    "inter_scale": 0.3,
    "keep_ratio": 0.6,
    "num_clips": 3,  # clips of 3
    "clip_length": 4,  # (0, 4), (4, 8), (8, 9)
    "sinkhorn_iterations": 3,
    "sinkhorn_tolerance": 1e-5,
}
SWITCHES = {
    "local_anchors": {"local_anchors": False},
    "global_anchors": {"global_anchors": False},
    "random_anchors": {"random_anchors": True},
    "seed": {"random_anchors": True, "seed": 5},
    "intra": {"intra": False},
    "intra_merge=cosine": {"intra_merge": "cosine"},
    "intra_merge=prune": {"intra_merge": "prune"},
    "pooling=average": {"pooling": "average"},
    "pooling=none": {"pooling": "none"},
    "inter": {"inter": False},
    "inter_merge=cosine": {"inter_merge": "cosine"},
    "inter_merge=prune": {"inter_merge": "prune"},
    "sinkhorn_stopping": {"sinkhorn_stopping": "problem"},
    "dynamic_clips": {"dynamic_clips": True, "num_clips": 3},
}

_VIDEO = {}


def video(seed=0):
    if seed not in _VIDEO:
        _VIDEO[seed] = synthetic_video(FRAMES, grid=GRID, dim=DIM, seed=seed, dtype=torch.float64)
    return _VIDEO[seed]


def base_config(log_domain: bool, **changes) -> aot.AOTConfig:
    return aot.AOTConfig(**{**BASE, "log_domain": log_domain, **changes})


def default_of(changes: dict, log_domain: bool) -> aot.AOTConfig:
    """The config with every changed knob back at AOTConfig's default (BASE where BASE sets it),
    i.e. what the code computes when it ignores the knob."""
    defaults = aot.AOTConfig()
    reset = {name: BASE.get(name, getattr(defaults, name)) for name in changes}
    if "seed" in changes:  # the seed matters only for random anchors: keep them on
        reset["random_anchors"] = True
    return base_config(log_domain, **{**changes, **reset})


def check_against_oracle(changes: dict, log_domain: bool, frame_features=None):
    feats, shallow, deep = video()
    cfg = base_config(log_domain, **changes)
    ours = aot.reduce_video(feats, shallow, deep, cfg, frame_features=frame_features)
    expected = oracle.reduce_video(feats, shallow, deep, cfg, frame_features=frame_features)
    assert ours.tokens.shape == expected.shape, changes
    torch.testing.assert_close(ours.tokens, expected, rtol=1e-9, atol=1e-9)

    ignored = aot.reduce_video(feats, shallow, deep, default_of(changes, log_domain),
                               frame_features=frame_features)
    same = (ignored.tokens.shape == ours.tokens.shape
            and torch.allclose(ignored.tokens, ours.tokens, rtol=1e-9, atol=1e-9))
    assert not same, f"{changes} gives the default's output on this video: pick another value"
    return ours


@pytest.mark.parametrize("log_domain", [False, True], ids=["plain", "log"])
@pytest.mark.parametrize("knob", sorted(NUMERIC))
def test_numeric_knob_matches_oracle(knob, log_domain):
    assert NUMERIC[knob] != getattr(aot.AOTConfig(), knob)
    check_against_oracle({knob: NUMERIC[knob]}, log_domain)


@pytest.mark.parametrize("log_domain", [False, True], ids=["plain", "log"])
@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_switch_matches_oracle(name, log_domain):
    check_against_oracle(SWITCHES[name], log_domain)


def test_log_domain_is_a_knob():
    """The two domains stop at different iterations (absolute vs relative change of r), so the
    released stop rule gives different tokens; each domain equals its oracle above."""
    feats, shallow, deep = video()
    plain = aot.reduce_video(feats, shallow, deep, base_config(False)).tokens
    log = aot.reduce_video(feats, shallow, deep, base_config(True)).tokens
    assert plain.shape != log.shape or not torch.allclose(plain, log, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(log, oracle.reduce_video(feats, shallow, deep, base_config(True)),
                               rtol=1e-9, atol=1e-9)


def scene_features(similarities) -> torch.Tensor:
    """(len + 1, 2) frame features whose adjacent cosine similarities are ``similarities``."""
    angles = torch.cumsum(torch.tensor([0.0] + [math.acos(s) for s in similarities],
                                       dtype=torch.float64), 0)
    return torch.stack([angles.cos(), angles.sin()], 1)


# Adjacent-frame similarities of a 9-frame video: lowest at transitions 4, 1, 6, 3 (in that
# order); below 0.8 at 1 and 4; below 0.95 also at 3 and 6.
SIMILARITIES = [0.99, 0.5, 0.99, 0.9, 0.3, 0.99, 0.85, 0.99]


@pytest.mark.parametrize("log_domain", [False, True], ids=["plain", "log"])
@pytest.mark.parametrize("changes, clips", [
    ({"num_clips": 2}, [(0, 2), (2, 5), (5, 9)]),
    ({"num_clips": 2, "dynamic_threshold": 0.95}, [(0, 2), (2, 4), (4, 5), (5, 7), (7, 9)]),
    ({"num_clips": 4, "dynamic_threshold": 0.0}, [(0, 2), (2, 5), (5, 7), (7, 9)]),
])
def test_dynamic_clips_match_oracle(changes, clips, log_domain):
    frame_features = scene_features(SIMILARITIES)
    changes = {"dynamic_clips": True, **changes}
    cfg = base_config(log_domain, **changes)
    assert oracle.clips_of(FRAMES, cfg, frame_features) == clips
    result = check_against_oracle(changes, log_domain, frame_features=frame_features)
    assert result.clips == clips


def test_exact_retention_sets_the_count():
    feats, shallow, deep = video()
    threshold = aot.reduce_video(feats, shallow, deep, base_config(False))
    for retention in (0.05, 0.2, 0.5):
        exact = aot.reduce_video(feats, shallow, deep, base_config(False, exact_retention=retention))
        assert exact.num_tokens == aot.exact_budget(retention, FRAMES, 25)
    assert threshold.num_tokens not in {aot.exact_budget(r, FRAMES, 25) for r in (0.05, 0.5)}


def test_oracle_is_sensitive_to_each_numeric_value():
    """Guards the guard: the oracle itself changes with every numeric knob (plain domain)."""
    feats, shallow, deep = video()
    reference = oracle.reduce_video(feats, shallow, deep, base_config(False))
    for knob, value in NUMERIC.items():
        other = oracle.reduce_video(feats, shallow, deep, base_config(False, **{knob: value}))
        assert other.shape != reference.shape or not torch.allclose(other, reference), knob
