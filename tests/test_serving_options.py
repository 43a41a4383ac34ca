"""The vLLM plugin's request options and the serving contract, without vLLM (pure Python): the
options are parsed once in the processor, so every bad value must fail there with one line."""

from __future__ import annotations

import pytest

from aot.serving import kept_slots, reduced_token_count
from aot_integrations.vllm.options import Options, parse_options, reducer_names


def test_options_default_to_unreduced_aot_in_exact_mode():
    assert parse_options({}) == Options(None, "aot")
    assert parse_options({"aot_retention": None}) == Options(None, "aot")
    assert parse_options({"aot_retention": 1, "aot_reducer": "uniform"}) == Options(1.0, "uniform")
    assert parse_options({"aot_retention": 0.1, "aot_mode": "exact",
                          "max_pixels": 1000}) == Options(0.1, "aot")
    assert {"aot", "aot:no-local", "uniform", "flashvid", "holitom"} <= set(reducer_names())
    assert "fastvid" not in reducer_names()     # reads a pooling head the plugin does not run
    assert list(reducer_names()) == sorted(reducer_names())


@pytest.mark.parametrize("options, message", [
    ({"aot_retention": 0}, "aot_retention=0 is outside (0, 1]"),
    ({"aot_retention": 1.5}, "aot_retention=1.5 is outside (0, 1]"),
    ({"aot_retention": float("nan")}, "aot_retention=nan is outside (0, 1]"),
    ({"aot_retention": "0.1"}, "aot_retention='0.1' is outside (0, 1]"),
    ({"aot_retention": True}, "aot_retention=True is outside (0, 1]"),
    ({"aot_retention": 0.1, "aot_reducer": "fastv"}, "aot_reducer='fastv': expected one of"),
    ({"aot_retention": 0.1, "aot_mode": "released"}, "aot_mode='released': a server can only"),
    ({"aot_mode": None}, "aot_mode=None"),
    ({"aot_retention": 0.1, "aot_reducer": "fastvid"},
     "aot_reducer='fastvid' reads ['head_attention', 'head_features'], which the vLLM plugin"),
])
def test_bad_options_name_the_value(options, message):
    with pytest.raises(ValueError) as error:
        parse_options(options)
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


def test_the_serving_count_is_the_transformers_integrations():
    import aot_integrations.hf as hf

    for grid, retention in [((8, 8, 8), 0.25), ((4, 8, 12), 0.3), ((2, 12, 8), 0.2),
                            ((16, 32, 32), 0.1), ((1, 2, 2), 0.01)]:
        count = reduced_token_count("qwen2_5_vl", grid, retention)
        assert count == hf.reduced_token_count("qwen2_5_vl", grid, retention)
        t, h, w = grid
        assert count == max(1, int(retention * t * h * w / 4 + 0.5))
    with pytest.raises(TypeError, match="backbone=3"):
        reduced_token_count(3, (8, 8, 8), 0.1)


def test_kept_slots_index_the_unreduced_run():
    import types

    import torch

    result = types.SimpleNamespace(token_frame=torch.tensor([0, 0, 2]),
                                   token_position=torch.tensor([3, 5, 1]))
    assert kept_slots(result, 16).tolist() == [3, 5, 33]
    assert kept_slots(result, 16).dtype == torch.long
