"""A reducer's own knobs through the evaluation path: ``reducer.<option>`` model_args (parsed
once, in :func:`aot_eval.model_args.parse_reducer`), the scripts' ``--reducer-opt K=V``, the
record of the options that ran, and the model they reach. Generic over the registry: every
reducer with an options dataclass, whoever registered it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from aot.reducers import REDUCERS, ReducerInfo, register_reducer, reduce_uniform
from aot_eval.model_args import OPTION_PREFIX, describe_options, parse_reducer, split_aot_kwargs

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "eval_ov_mvbench.sh"
WITH_OPTIONS = [name for name, info in REDUCERS.items() if info.options is not None]


def run(args) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": sys.executable})


def as_text(value) -> str:
    """A knob's value as a person writes it in model_args."""
    return describe_options({"k": value}).split("=", 1)[1]


@pytest.mark.parametrize("name", WITH_OPTIONS)
def test_every_knob_round_trips_as_text(name):
    """Each field of each options dataclass, given as the string model_args carry, resolves to
    the dataclass's own value, and the record names every option that ran."""
    defaults = REDUCERS[name].options()
    fields = [item.name for item in dataclasses.fields(defaults) if item.init]
    raw = {OPTION_PREFIX + key: as_text(getattr(defaults, key)) for key in fields}
    spec = parse_reducer({"reducer": name, "retention": "0.25", **raw}, "ov")
    assert spec.options == {key: getattr(defaults, key) for key in fields}
    assert spec.given_options == spec.options
    recorded = spec.describe()["reducer_options"]
    assert sorted(recorded) == sorted(fields)
    assert all(f"{OPTION_PREFIX}{key}=" in spec.source for key in fields)
    untouched = parse_reducer({"reducer": name, "retention": "0.25"}, "ov")
    assert untouched.options == spec.options and untouched.given_options == {}


def test_given_knob_changes_the_options_and_lmms_types_are_accepted():
    spec = parse_reducer({"reducer": "vidcom2", "retention": 0.1, "reducer.count": "released",
                          "reducer.alphas": "0.5+1", "reducer.temperature": 1}, "ov")
    assert spec.options["count"] == "released" and spec.options["alphas"] == (0.5, 1.0)
    assert spec.options["temperature"] == 1.0 and spec.options["channel_ratio"] == 0.5
    # lmms-eval turns "false" into False before the model sees it
    dycoke = parse_reducer({"reducer": "dycoke", "retention": 0.1, "reducer.merge": False}, "ov")
    assert dycoke.options == {"merge": False, "allocation": "frame"}
    aot_part, rest = split_aot_kwargs({"reducer.merge": False, "pretrained": "x"})
    assert aot_part == {"reducer.merge": False} and rest == {"pretrained": "x"}


@pytest.mark.parametrize("kwargs, message", [
    ({"reducer": "vidcom2", "reducer.cont": "released"},
     "reducer=vidcom2 has no option reducer.cont; its options: reducer.count"),
    ({"reducer": "vidcom2", "reducer.temperature": "warm"},
     "reducer=vidcom2 reducer.temperature='warm': expected a number"),
    ({"reducer": "vidcom2", "reducer.count": "bogus"}, "count='bogus'"),
    ({"reducer": "vidcom2", "reducer.channel_ratio": "2"}, "channel_ratio=2.0"),
    ({"reducer": "visionzip", "reducer.dominant": "5.5"}, "reducer.dominant='5.5': expected an "
                                                          "integer"),
    ({"reducer": "dycoke", "reducer.merge": "maybe"}, "reducer.merge='maybe': expected true"),
    ({"reducer": "uniform", "reducer.count": "exact"}, "reducer=uniform has no options"),
    ({"reducer": "aot", "reducer.count": "exact"}, "reducer=aot has no options"),
])
def test_bad_knobs_one_line_naming_them(kwargs, message):
    with pytest.raises(ValueError) as error:
        parse_reducer({"retention": "0.1", **kwargs}, "ov")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_none_takes_no_knobs():
    with pytest.raises(ValueError, match=r"remove \['reducer.count'\]"):
        parse_reducer({"reducer": "none", "reducer.count": "exact"}, "ov")


@dataclass(frozen=True)
class _PerBackbone:
    """A reducer's options whose released defaults depend on backbone and retention."""

    threshold: float = 0.5
    window: int = 4
    mode: typing.Literal["a", "b"] = "a"

    @classmethod
    def for_backbone(cls, backbone: str, retention: float | None):
        return cls(threshold=0.9 if backbone.startswith("qwen") else 0.65,
                   window=8 if retention is not None and retention <= 0.1 else 4)


@pytest.fixture
def per_backbone_reducer():
    info = register_reducer(ReducerInfo("test-knobs", reduce_uniform, True, _PerBackbone))
    yield info.name
    REDUCERS.pop(info.name)


def test_options_of_a_newly_registered_reducer(per_backbone_reducer):
    """A reducer registered later (holitom, fastvid, ...) gets the same path: its fields,
    its types (Literal included), its per-backbone defaults from ``for_backbone``."""
    name = per_backbone_reducer
    ov = parse_reducer({"reducer": name, "retention": "0.1"}, "ov")
    assert ov.options == {"threshold": 0.65, "window": 8, "mode": "a"}
    qwen = parse_reducer({"reducer": name, "retention": "0.25", "reducer.mode": "b"},
                         "qwen2_5_vl")
    assert qwen.options == {"threshold": 0.9, "window": 4, "mode": "b"}
    with pytest.raises(ValueError, match=r"reducer.mode='c': expected one of \['a', 'b'\]"):
        parse_reducer({"reducer": name, "retention": "0.1", "reducer.mode": "c"}, "ov")
    listed = subprocess.run([sys.executable, "-c", "from aot_eval.preflight import "
                             "reducer_lines; print(reducer_lines())"], capture_output=True,
                            text=True, cwd=REPO)
    assert "vidcom2:" in listed.stdout  # (a fresh process: the test reducer is not in it)


def test_options_reach_the_model_and_change_its_tokens():
    """The parsed options are the model's Reduction options, and a knob that changes the
    output changes the tokens the LLM receives (dycoke merge=false drops instead of merging)."""
    from aot_integrations.tiny import random_model

    model = random_model("ov", seed=5)
    video = torch.rand(4, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = {}
    for merge in ("true", "false"):
        spec = parse_reducer({"reducer": "dycoke", "retention": "0.25", "exact": "true",
                              "reducer.merge": merge}, "ov")
        with torch.no_grad():
            config = spec.config.replace(shallow_layer=1, deep_layer=2)  # the tiny tower's
            model.set_aot(config, reducer=spec.name, options=spec.options)
            assert model.reduction.options == spec.options
            tokens[merge] = model.video_sequence(video).tokens
            model.set_aot(None)
    assert tokens["true"].shape == tokens["false"].shape
    assert not torch.allclose(tokens["true"], tokens["false"])


# ------------------------------------------------------------------ the scripts
def test_script_passes_knobs_as_model_args():
    proc = run([SCRIPT, "--reducer", "vidcom2", "--retention", "0.1", "--reducer-opt",
                "count=released", "--reducer-opt", "alphas=0.5+1", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    command = next(line for line in proc.stdout.splitlines() if "--model_args" in line)
    args = command.split("--model_args ", 1)[1].split()[0].split(",")
    assert "reducer.count=released" in args and "reducer.alphas=0.5+1" in args
    assert "vidcom2_r0.1_count-released_alphas-0.5+1" in command  # its own output folder


@pytest.mark.parametrize("args, message", [
    (["--reducer-opt", "cont=released"], "has no option reducer.cont"),
    (["--reducer-opt", "temperature=hot"], "reducer.temperature='hot': expected a number"),
    (["--reducer-opt", "count=released,temperature=1"], "must be KEY=VALUE"),
    (["--reducer-opt"], "--reducer-opt '--dry-run' must be KEY=VALUE"),
])
def test_script_rejects_bad_knobs_before_launch(args, message):
    proc = run([SCRIPT, "--reducer", "vidcom2", "--retention", "0.1", *args, "--dry-run"])
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "[eval] command" not in proc.stdout


def test_help_lists_the_registry():
    proc = run([SCRIPT, "--help"])
    assert proc.returncode == 0, proc.stderr
    for name, info in REDUCERS.items():
        if not name.startswith("aot:"):
            assert f"    {name}: " in proc.stdout, name
    assert "aot:<ablation>" in proc.stdout and "count=exact" in proc.stdout


def test_transformers_backbones_install_the_options():
    """The plugin classes of the transformers backbones (Qwen, llava_hf) hand the parsed options
    to the Reduction they install."""
    pytest.importorskip("lmms_eval")
    from aot_eval.hf_models import install_reducer
    from aot_integrations import tiny

    model = tiny.qwen2_5_vl(seed=1)
    spec = parse_reducer({"reducer": "dycoke-ttm", "retention": "0.25", "shallow_layer": "1",
                          "deep_layer": "2", "reducer.merging_ratio": "0.5"}, "qwen2_5_vl")
    handle = install_reducer(model, spec)
    try:
        assert handle.reduction.reducer == "dycoke-ttm"
        assert handle.reduction.options == {"count": "exact", "merging_ratio": 0.5}
    finally:
        handle.remove()
