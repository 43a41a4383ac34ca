"""Issue 25, items 1, 3, 6, 7, 8 and the bad-input sweep of every AOTConfig and reducer option
field: each bad value gets a one-line error naming it and the expected range, before any work;
every promised retention holds for the video's frame count and never exceeds the unreduced
video."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import aot
from aot.reducers import DyCokeConfig, ReducerInfo, VisionZipConfig, get_reducer
from aot.synthetic import synthetic_video


SCALE_RANGE = (1e-12, 1e12)  # aot.config.SCALE_RANGE (docs/knobs.md, "Ranges")
SEED_RANGE = (-2 ** 63, 2 ** 64 - 1)  # aot.config.SEED_RANGE: torch's seeds


def test_documented_ranges_are_the_configs():
    assert (aot.config.SCALE_RANGE, aot.config.SEED_RANGE) == (SCALE_RANGE, SEED_RANGE)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text
    return text


# ------------------------------------------------------------- item 1: frames reach the settings
@pytest.mark.parametrize("backbone", ["ov", "video"])
@pytest.mark.parametrize("frames", [8, 16, 32, 64])
def test_eval_settings_are_solved_for_the_models_frame_count(backbone, frames):
    """``eval_ov_*.sh --frames 16 --retention 0.9``: parse_reducer solves at 16 frames, and no
    retention (approximate or exact) gives more tokens than the unreduced video."""
    from aot_eval.model_args import parse_reducer

    feats, shallow, deep = synthetic_video(frames, dim=4, seed=frames)
    for retention in ("0.1", "0.5", "0.9", "1.0"):
        for exact in ("false", "true"):
            spec = parse_reducer({"retention": retention, "exact": exact}, backbone,
                                 frames=frames)
            expected = aot.settings_for(backbone, float(retention), exact=exact == "true",
                                        frames=frames)
            assert spec.config == expected
            result = aot.reduce_video(feats, shallow, deep,
                                      spec.config.replace(intra_merge="prune"))
            assert result.num_tokens <= result.denominator, (retention, exact, result.num_tokens)
            if exact == "true":
                assert result.num_tokens == aot.exact_budget(float(retention), frames,
                                                             result.denominator // frames)


def test_eval_model_passes_its_frame_count_to_the_parser(monkeypatch):
    pytest.importorskip("lmms_eval")
    from aot_eval import lmms_models

    seen = []

    class Stop(Exception):
        pass

    def spy(kwargs, backbone, frames=None):
        seen.append((backbone, frames, dict(kwargs)))
        raise Stop

    monkeypatch.setattr(lmms_models, "parse_reducer", spy)
    for cls, frames, expected in ((lmms_models.LlavaOneVisionAOT, "16", 16),
                                  (lmms_models.LlavaVidAOT, None, 64)):
        with pytest.raises(Stop):
            cls(pretrained="/nonexistent", max_frames_num=frames, retention="0.9")
    assert [(b, f) for b, f, _ in seen] == [("ov", 16), ("video", 64)]


def test_script_preflight_checks_at_the_scripts_frame_count(capsys):
    """The scripts pass --frames to the args check: 0.02 is reachable at 32 frames, not at 16."""
    from aot_eval import preflight

    assert preflight.main(["args", "--backbone", "ov", "reducer=aot", "retention=0.02",
                           "frames=32"]) == 0
    assert preflight.main(["args", "--backbone", "ov", "reducer=aot", "retention=0.02",
                           "frames=16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at 16 frames" in err[0] and "retention=0.02" in err[0]
    script = open("scripts/eval_common.sh").read()
    assert 'check+=(frames="$frames")' in script


# ------------------------------------------------------------------- item 3: huge finite scales
@pytest.mark.parametrize("name", ["intra_scale", "inter_scale"])
@pytest.mark.parametrize("value", [1e39, 1e300, 1e13, 10 ** 400, 0, 0.0, 1e-300, -1.0])
def test_scales_outside_the_float32_safe_range_are_refused(name, value):
    with pytest.raises(ValueError) as error:
        aot.AOTConfig(**{name: value})
    assert one_line(error.value).startswith(
        f"AOTConfig.{name}={value!r}: expected a finite number in [1e-12, 1e+12]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("scale", SCALE_RANGE)
def test_scales_at_the_bounds_give_finite_tokens(dtype, scale):
    feats, shallow, deep = synthetic_video(16, dim=8, seed=0, dtype=dtype)
    feats = feats * 100
    for kw in ({"intra_scale": scale, "inter_scale": scale},
               {"intra_scale": scale, "inter_scale": scale, "hard_merge_weight": 1.0,
                "intra_merge": "cosine", "inter_merge": "cosine"}):
        for name in ("aot", "random", "aot:no-inter", "aot:cosine-merge"):
            for exact in (None, 0.2):
                for log in (False, True):
                    cfg = aot.AOTConfig(**kw, exact_retention=exact, log_domain=log)
                    result = get_reducer(name)(feats, shallow, deep, cfg)
                    assert torch.isfinite(result.tokens).all(), (name, kw, exact, log)


# ---------------------------------------------------------------- item 6: one rule for switches
BOOL_FIELDS = [f.name for f in dataclasses.fields(aot.AOTConfig) if f.type in ("bool", bool)]


def test_bool_fields_are_listed():
    assert set(BOOL_FIELDS) == {"local_anchors", "global_anchors", "random_anchors", "intra",
                                "inter", "dynamic_clips", "log_domain", "cuda_graphs"}


@pytest.mark.parametrize("name", BOOL_FIELDS)
@pytest.mark.parametrize("value", ["false", "no", "True", 0, 1, 1.0, None, torch.tensor(True)])
def test_switches_take_only_bools(name, value):
    with pytest.raises(ValueError) as error:
        aot.AOTConfig(**{name: value})
    assert one_line(error.value) == (f"AOTConfig.{name}={value!r}: expected True or False "
                                     f"(a bool, got {type(value).__name__})")


def test_reducer_options_share_the_bool_rule():
    with pytest.raises(ValueError, match=r"DyCokeConfig\.merge='yes': expected True or False"):
        DyCokeConfig(merge="yes")
    with pytest.raises(ValueError, match=r"DyCokeConfig\.merge=0: expected True or False"):
        get_reducer("dycoke", merge=0)
    assert DyCokeConfig(merge=False).merge is False
    assert aot.AOTConfig(inter=False, log_domain=True).inter is False


def test_model_args_still_convert_text_switches():
    from aot_eval.model_args import parse_reducer

    spec = parse_reducer({"preset": "paper-ov-mvbench", "inter": "false", "log_domain": "yes"},
                         "ov")
    assert spec.config.inter is False and spec.config.log_domain is True


# -------------------------------------------------------------- item 8: meta tensors and seeds
@pytest.mark.parametrize("name", ["aot", "uniform", "visionzip", "dycoke", "random"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_meta_tensors_are_refused_before_any_work(name, which):
    tensors = list(synthetic_video(4, dim=8, seed=0))
    label = ("features", "shallow_attention", "deep_attention")[which]
    tensors[which] = tensors[which].to("meta")
    if which == 0:  # all on meta: the device check does not fire first
        tensors = [t.to("meta") for t in tensors]
    with pytest.raises(ValueError) as error:
        get_reducer(name)(*tensors, aot.AOTConfig(exact_retention=0.1))
    assert one_line(error.value).startswith(f"{label} is on the meta device (shape ")


def test_meta_frame_features_are_refused():
    feats, shallow, deep = synthetic_video(4, dim=8, seed=0)
    with pytest.raises(ValueError, match=r"frame_features is on the meta device \(shape \(4, 3\)"):
        aot.reduce_video(feats, shallow, deep, aot.AOTConfig(dynamic_clips=True),
                         frame_features=torch.zeros(4, 3, device="meta"))


@pytest.mark.parametrize("seed", [2 ** 70, 2 ** 64, -2 ** 63 - 1, 1.5, "3", True, None])
def test_seed_is_checked_in_the_config(seed):
    with pytest.raises(ValueError) as error:
        aot.AOTConfig(seed=seed)
    assert one_line(error.value) == (f"AOTConfig.seed={seed!r}: expected an integer in "
                                     "[-2**63, 2**64 - 1] (the seeds "
                                     "torch.Generator.manual_seed takes)")


def test_seeds_at_the_bounds_run():
    feats, shallow, deep = synthetic_video(2, dim=4, seed=0)
    for seed in SEED_RANGE + (-1,):
        get_reducer("random")(feats, shallow, deep, aot.AOTConfig(seed=seed))


# -------------------------------------------------------------------- the bad-input sweep
@pytest.mark.parametrize("kw, message", [
    ({"sigma": 1e-300}, r"AOTConfig\.sigma=1e-300: expected a finite number in \[1e-06, 1e\+06\]"),
    ({"sigma": 1e300}, r"AOTConfig\.sigma=1e\+300: expected a finite number in \[1e-06"),
    ({"sigma": 10 ** 400}, r"AOTConfig\.sigma=1000.*: expected a finite number in \[1e-06"),
    ({"sinkhorn_iterations": 10 ** 30},
     r"AOTConfig\.sinkhorn_iterations=1000000000000000000000000000000: expected an integer in "
     r"\[1, 1000000\]"),
    ({"spatial_weight": 10 ** 400}, r"AOTConfig\.spatial_weight=1000.*: expected a finite number"),
    ({"intra_epsilon": 10 ** 400}, r"AOTConfig\.intra_epsilon=1000.*: expected a finite number"),
    ({"keep_ratio": 10 ** 400}, r"AOTConfig\.keep_ratio=1000.*: expected a finite number in"),
])
def test_out_of_range_knobs_name_the_range(kw, message):
    with pytest.raises(ValueError, match=message) as error:
        aot.AOTConfig(**kw)
    one_line(error.value)


@pytest.mark.parametrize("kw", [{"sigma": 1e-6}, {"sigma": 1e6}, {"spatial_weight": 1e300},
                                {"intra_epsilon": 1e-300}, {"temporal_epsilon": 1e300},
                                {"window": 10 ** 30}, {"num_clips": 10 ** 30},
                                {"clip_length": 10 ** 30}, {"sinkhorn_iterations": 10 ** 6,
                                                            "sinkhorn_tolerance": 1.0}])
def test_extreme_but_accepted_knobs_give_finite_tokens(kw):
    feats, shallow, deep = synthetic_video(8, dim=8, seed=1)
    with _no_error():
        result = aot.reduce_video(feats, shallow, deep, aot.AOTConfig(**kw))
    assert torch.isfinite(result.tokens).all() and result.num_tokens <= result.denominator


class _no_error:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)  # the underflow fallback's warning

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


@pytest.mark.parametrize("name, options, message", [
    ("visionzip", {"bogus": 1},
     r"reducer 'visionzip' has no option\(s\) \['bogus'\]; its options: \['dominant', "
     r"'contextual', 'attention'\]"),
    ("dycoke", {"merge": 1, "extra": 2}, r"reducer 'dycoke' has no option\(s\) \['extra'\]"),
])
def test_unknown_reducer_options_list_the_fields(name, options, message):
    with pytest.raises(TypeError, match=message):
        get_reducer(name, **options)


@pytest.mark.parametrize("options, message", [
    ({"dominant": True}, r"VisionZipConfig\.dominant=True: expected an integer >= 0"),
    ({"contextual": 1.0}, r"VisionZipConfig\.contextual=1\.0: expected an integer >= 0"),
    ({"dominant": -1}, r"VisionZipConfig\.dominant=-1"),
    ({"attention": "DEEP"}, r"VisionZipConfig\.attention='DEEP': expected 'deep' or 'shallow'"),
])
def test_visionzip_options(options, message):
    with pytest.raises(ValueError, match=message):
        VisionZipConfig(**options)


def test_registered_reducers_need_a_bool_budget_flag():
    from aot.reducers import register_reducer

    info = ReducerInfo("flagged", lambda *a, **k: None, "no")
    with pytest.raises(TypeError, match=r"reducer 'flagged': needs_budget='no'; expected True "
                                        r"or False"):
        register_reducer(info)


# ------------------------------------------------------------------- item 7: the demo
def test_demo_unreachable_retention_is_one_line_before_the_model(monkeypatch, tmp_path, capsys):
    from playground import demo, pipeline

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the settings were checked")

    monkeypatch.setattr(pipeline, "load_model", no_model)
    monkeypatch.setattr(pipeline, "read_clip", no_model)
    monkeypatch.setattr(pipeline, "default_video", lambda: str(tmp_path / "v.mp4"))
    assert demo.main(["--retention", "0.001", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("python -m playground.demo: error: --retention 0.001: "
                             "retention=0.001 is below what the approximate settings reach")
    assert "use --exact" in err[0]
    assert demo.main(["--seed", str(2 ** 70), "--out", str(tmp_path)]) == 2
    assert "--seed 1180591620717411303424 is outside" in capsys.readouterr().err


def test_demo_reads_the_backbone_before_loading(tmp_path):
    from playground import pipeline

    assert pipeline.checkpoint_backbone(None) == pipeline.TINY_BACKBONE
    (tmp_path / "config.json").write_text('{"mm_spatial_pool_mode": "average"}')
    assert pipeline.checkpoint_backbone(str(tmp_path)) == "video"
    (tmp_path / "config.json").write_text("{broken")
    assert pipeline.checkpoint_backbone(str(tmp_path)) is None  # load_model reports the folder
    assert math.isfinite(pipeline.build_config("ov", 16, 0.1, None).keep_ratio)
