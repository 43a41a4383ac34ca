"""The ``last_attention`` input: every adapter captures the attention received at its tower's last
used layer when a reducer declares it, and the reducer gets it as a keyword argument."""

from __future__ import annotations

import pytest
import torch

import aot
from aot.reducers import REDUCERS, ReducerInfo, reduce_uniform, register_reducer
from aot.video_path import LAST_LAYER, Reduction, resolve_layers
from aot_integrations import tiny
from aot_integrations.hf import adapter_for
from aot_integrations.llava.adapter import LlavaVideoAdapter


def test_resolve_layers_counts_from_the_end():
    assert resolve_layers((-1, 2, 5), 6) == {-1: 5, 2: 2, 5: 5}
    with pytest.raises(ValueError, match="vision layer 6: the tower uses layers 0..5"):
        resolve_layers((6,), 6)
    with pytest.raises(ValueError, match="vision layer -7"):
        resolve_layers((-7,), 6)


@pytest.fixture
def last_reader():
    """A registered reducer that records the ``last_attention`` it receives and pools uniformly."""
    seen = {}

    def reducer(features, shallow, deep, config, *, budget=None, frame_features=None, grid=None,
                last_attention=None):
        seen["last"] = last_attention
        return reduce_uniform(features, shallow, deep, config, budget=budget, grid=grid)

    register_reducer(ReducerInfo("test-last-reader", reducer, True, inputs=("last_attention",)))
    yield seen
    REDUCERS.pop("test-last-reader")


def _llava():
    model = tiny.random_model("ov", seed=3)
    return model, LlavaVideoAdapter(model), model.get_vision_tower().num_layers


def _hf(name):
    build = {"llava_onevision": tiny.onevision, "qwen2_5_vl": tiny.qwen2_5_vl,
             "qwen3_vl": tiny.qwen3_vl}[name]
    model = build(seed=1)
    adapter = adapter_for(model)
    return model, adapter, adapter.feature_depth


HF_INPUTS = {"llava_onevision": lambda: tiny.onevision_inputs([3]),
             "qwen2_5_vl": lambda: tiny.qwen_inputs([(2, 8, 12)]),
             "qwen3_vl": lambda: tiny.qwen3_inputs([(2, 8, 8)])}


def test_llava_captures_its_last_layer():
    model, adapter, depth = _llava()
    video = torch.rand(3, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        encoded = adapter.encode(video, (LAST_LAYER, depth - 1, 1), lambda stage: None)
    assert set(encoded.attention) == {LAST_LAYER, depth - 1, 1}
    assert torch.equal(encoded.attention[LAST_LAYER], encoded.attention[depth - 1])
    assert not torch.equal(encoded.attention[LAST_LAYER], encoded.attention[1])


@pytest.mark.parametrize("name", sorted(HF_INPUTS))
def test_hf_adapters_capture_their_last_layer(name):
    model, adapter, depth = _hf(name)
    with torch.no_grad():
        encoded = adapter.encode_batch(HF_INPUTS[name](), (LAST_LAYER, depth - 1, 0))
    for video in encoded:
        assert torch.equal(video.attention[LAST_LAYER], video.attention[depth - 1])
        assert not torch.equal(video.attention[LAST_LAYER], video.attention[0])
    with pytest.raises(ValueError, match=f"vision layer {depth}: the tower uses layers"):
        adapter.encode_batch(HF_INPUTS[name](), (depth,))


def test_declared_input_reaches_the_reducer(last_reader):
    model, adapter, depth = _llava()
    config = aot.settings_for("ov", 0.25).replace(shallow_layer=1, deep_layer=2)
    reduction = Reduction(config, "test-last-reader")
    assert reduction.layers == (LAST_LAYER, 1, 2)
    assert Reduction(config, "uniform").layers == (1, 2)
    video = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sequence = aot.video_path.visual_sequence(adapter, video, reduction)
        # the same captured layers: a captured layer runs the eager kernel, which differs from
        # sdpa in the last bits
        reference = adapter.encode(video, (1, 2, depth - 1), lambda stage: None)
    assert sequence.visual_tokens == aot.exact_budget(0.25, 2, 196)
    assert torch.equal(last_reader["last"], reference.attention[depth - 1])


def test_missing_last_layer_is_named(last_reader):
    model, adapter, depth = _llava()
    config = aot.settings_for("ov", 0.25).replace(shallow_layer=1, deep_layer=2)
    video = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        encoded = adapter.encode(video, (1, 2), lambda stage: None)
    with pytest.raises(ValueError, match="last layer, which this encoding lacks"):
        aot.video_path.reduce(encoded, Reduction(config, "test-last-reader"))
