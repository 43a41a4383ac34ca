"""The ``last_keys`` input and ``visionzip-release`` on the one video path: every adapter's
capture equals the keys computed directly from its tower (the last used block's input, its
layer norm, its key projection, averaged over heads; per merged token on Qwen), the reducer gets
them as a keyword, the LLM reads exactly the budget, and missing inputs are named."""

from __future__ import annotations

import pytest
import torch

import aot
from aot.reducers import reducer_info
from aot.video_path import LAST_LAYER, Reduction
from aot_integrations import tiny
from aot_integrations.hf import adapter_for
from aot_integrations.llava.adapter import LlavaVideoAdapter


def test_registered_with_its_inputs():
    info = reducer_info("visionzip-release")
    assert info.inputs == ("last_attention", "last_keys") and info.needs_budget
    assert "2412.04467" in info.paper
    config = aot.settings_for("ov", 0.1)
    reduction = Reduction(config, "visionzip-release")
    assert reduction.extra_inputs == ("last_keys",)
    assert LAST_LAYER in reduction.layers


def test_llava_tower_keys_equal_the_direct_computation():
    model = tiny.random_model("ov", seed=3)
    adapter = LlavaVideoAdapter(model)
    tower = adapter.tower
    video = torch.rand(3, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        encoded = adapter.encode(video, (LAST_LAYER,), lambda stage: None,
                                 extra_inputs=("last_keys",))
        hidden = tower.vision_tower.vision_model.embeddings(video)
        for layer in tower.layers[:-1]:
            hidden = layer(hidden, None)
        last = tower.layers[-1]
        attention = last.self_attn
        keys = attention.k_proj(last.layer_norm1(hidden))
        expected = keys.view(3, 729, -1, attention.head_dim).mean(2)
    got = encoded.extra["last_keys"]
    assert got.shape == (3, 729, attention.head_dim) and got.dtype == tower.dtype
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # not some other layer's keys
    first = tower.layers[0]
    other = first.self_attn.k_proj(first.layer_norm1(
        tower.vision_tower.vision_model.embeddings(video)))
    assert not torch.allclose(got, other.view(3, 729, -1, attention.head_dim).mean(2))


def test_llava_tower_keys_in_half_precision_stay_in_its_dtype():
    model = tiny.random_model("ov", seed=3).to(torch.bfloat16)
    adapter = LlavaVideoAdapter(model)
    video = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        encoded = adapter.encode(video, (LAST_LAYER,), lambda stage: None,
                                 extra_inputs=("last_keys",))
    assert encoded.extra["last_keys"].dtype == torch.bfloat16


def _last_block_input(module_owner, run):
    """The positional input of ``module_owner`` during ``run()`` (its first call)."""
    seen = []
    handle = module_owner.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_onevision_keys_equal_the_direct_computation():
    model = tiny.onevision(seed=1)
    adapter = adapter_for(model)
    inputs = tiny.onevision_inputs([3, 3])
    with torch.no_grad():
        encoded = adapter.encode_batch(inputs, (LAST_LAYER,), ("last_keys",))
        pixels = inputs["pixel_values_videos"]
        out = model.model.vision_tower(pixels.flatten(0, 1), output_hidden_states=True)
    depth = adapter.feature_depth
    block = adapter._encoder_layers()[depth - 1]
    with torch.no_grad():
        keys = block.self_attn.k_proj(block.layer_norm1(out.hidden_states[depth - 1]))
    expected = keys.view(*keys.shape[:2], -1, block.self_attn.head_dim).mean(2)
    got = torch.cat([video.extra["last_keys"] for video in encoded])
    assert [video.extra["last_keys"].shape[0] for video in encoded] == [3, 3]
    assert got.shape[1] == encoded[0].features.shape[1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ("qwen2_5_vl", "qwen3_vl"))
def test_qwen_keys_are_the_last_blocks_keys_per_merged_token(name):
    build, make = {"qwen2_5_vl": (tiny.qwen2_5_vl, tiny.qwen_inputs),
                   "qwen3_vl": (tiny.qwen3_vl, tiny.qwen3_inputs)}[name]
    model = build(seed=1)
    adapter = adapter_for(model)
    grids = [(2, 8, 12), (1, 8, 8)]
    inputs = make(grids)
    visual = model.model.visual
    block = visual.blocks[-1]
    with torch.no_grad():
        encoded = adapter.encode_batch(inputs, (LAST_LAYER,), ("last_keys",))
        hidden = _last_block_input(block, lambda: visual(
            inputs["pixel_values_videos"].type(visual.dtype), grid_thw=inputs["video_grid_thw"]))
        seq = hidden.shape[0]
        qkv = block.attn.qkv(block.norm1(hidden)).reshape(seq, 3, block.attn.num_heads, -1)
        patches = qkv[:, 1].mean(1)  # (S, head_dim), before rotary
    unit = visual.spatial_merge_size ** 2
    if name == "qwen2_5_vl":
        from transformers.vision_utils import get_vision_window_index

        window_index, _ = get_vision_window_index(
            inputs["video_grid_thw"], spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size, patch_size=visual.patch_size)
        patches = patches.view(-1, unit, patches.shape[-1])[torch.argsort(window_index)]
    expected = patches.reshape(-1, unit, patches.shape[-1]).mean(1)
    got = torch.cat([video.extra["last_keys"].flatten(0, 1) for video in encoded])
    for video, (t, h, w) in zip(encoded, grids):
        assert video.extra["last_keys"].shape[:2] == (t, h * w // 4) == video.features.shape[:2]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_the_reducer_gets_the_captured_keys(monkeypatch):
    """On the one path the reducer's ``last_keys`` keyword is the adapter's capture."""
    import aot.reducers as registry

    model = tiny.random_model("ov", seed=3)
    adapter = LlavaVideoAdapter(model)
    config = aot.settings_for("ov", 0.25).replace(shallow_layer=1, deep_layer=2)
    reduction = Reduction(config, "visionzip-release")
    video = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    seen = {}
    info = registry.REDUCERS["visionzip-release"]

    def spy(*args, last_keys=None, **kwargs):
        seen["keys"] = last_keys
        return info.function(*args, last_keys=last_keys, **kwargs)

    monkeypatch.setitem(registry.REDUCERS, "visionzip-release",
                        registry.ReducerInfo(info.name, spy, True, info.options, info.inputs))
    with torch.no_grad():
        encoded = aot.video_path.encode(adapter, video, reduction)
        sequence = aot.video_path.visual_sequence(adapter, video, reduction)
    assert torch.equal(seen["keys"], encoded.extra["last_keys"])
    assert sequence.visual_tokens == aot.exact_budget(0.25, 2, 196)


@pytest.mark.parametrize("backbone", ("ov", "video"))
@pytest.mark.parametrize("count", ("exact", "released"))
def test_tiny_llava_models_feed_the_llm_the_count(backbone, count):
    """The eval plugin's ``reducer=visionzip-release`` on our tiny LLaVA models: the spliced
    prompt holds exactly the reducer's tokens (the exact budget; S per frame when released)."""
    import dataclasses

    from llava.constants import IMAGE_TOKEN_INDEX

    from aot.backbones import get_backbone
    from aot_eval.model_args import parse_reducer

    spec = parse_reducer({"reducer": "visionzip-release", "retention": "0.1", "exact": "true"},
                         backbone)
    assert spec.name == "visionzip-release"
    model = tiny.random_model(backbone, seed=5)
    frames = 6
    video = torch.rand(frames, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = spec.config.replace(shallow_layer=1, deep_layer=2)
    ids = torch.tensor([[5, 6, IMAGE_TOKEN_INDEX, 7]])
    model.set_aot(config, reducer="visionzip-release")
    model.reduction = dataclasses.replace(model.reduction, options={"count": count})
    try:
        with torch.no_grad():
            embeds = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None,
                                                                [video], ["video"])[4][0]
        result = model.last_aot_results[0]
    finally:
        model.set_aot(None)
    facts = get_backbone(backbone)
    grid = model.get_vision_tower().grid
    per_frame = facts.pooled_per_frame(grid)
    visual = embeds.shape[0] - 3 - facts.newlines(frames, grid)
    expected = aot.exact_budget(0.1, frames, per_frame) if count == "exact" else 20 * frames
    assert visual == result.num_tokens == expected < frames * per_frame
    print(f"visionzip-release {count} on tiny {backbone}: {visual} visual tokens at the LLM "
          f"(unreduced {frames * per_frame})")


def _video_tokens_at_the_llm(model, inputs):
    """Video placeholder tokens per row of the ids the inner LLM receives."""
    calls = []
    hook = model.model.register_forward_pre_hook(lambda m, a, k: calls.append(k),
                                                 with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return (calls[0]["input_ids"] == tiny.VIDEO_TOKEN).sum(1).tolist()


@pytest.mark.parametrize("name", ("onevision", "qwen2_5_vl", "qwen3_vl"))
def test_transformers_models_feed_the_llm_the_exact_budget(name):
    import aot_integrations.hf

    model = {"onevision": tiny.onevision, "qwen2_5_vl": tiny.qwen2_5_vl,
             "qwen3_vl": tiny.qwen3_vl}[name](seed=1)
    if name == "onevision":
        inputs, sizes, per_frame, newline = tiny.onevision_inputs([4, 4]), [4, 4], 9, 1
        expected = [aot.exact_budget(0.25, f, per_frame) for f in sizes]
    else:
        grids = [(4, 12, 12), (3, 8, 16)]
        inputs = (tiny.qwen_inputs if name == "qwen2_5_vl" else tiny.qwen3_inputs)(grids)
        newline = 0
        expected = [aot.exact_budget(0.25, t, h * w // 4) for t, h, w in grids]
    config = aot_integrations.hf.config_for(model, 0.25, shallow_layer=1, deep_layer=3,
                                            anchors_per_frame=8, window=3)
    handle = aot_integrations.hf.apply(model, config, reducer="visionzip-release")
    try:
        seen = _video_tokens_at_the_llm(model, inputs)
    finally:
        handle.remove()
    assert seen == [e + newline for e in expected]
    assert [s.visual_tokens for s in handle.last] == expected
    print(f"visionzip-release exact on tiny {name}: video tokens at the LLM {seen}")


def test_missing_keys_are_named():
    model = tiny.random_model("ov", seed=3)
    adapter = LlavaVideoAdapter(model)
    config = aot.settings_for("ov", 0.25).replace(shallow_layer=1, deep_layer=2)
    video = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        encoded = adapter.encode(video, (1, 2, LAST_LAYER), lambda stage: None)
    with pytest.raises(ValueError, match="reads 'last_keys', which this encoding lacks"):
        aot.video_path.reduce(encoded, Reduction(config, "visionzip-release"))


def test_bad_keys_are_named():
    from aot.reducers import get_reducer

    features = torch.randn(2, 729, 6)
    attention = torch.rand(2, 729)
    reducer = get_reducer("visionzip-release")
    config = aot.AOTConfig(exact_retention=0.1)
    with pytest.raises(ValueError, match=r"last_keys \(2, 100, 4\): expected \(2, 729\)"):
        reducer(features, attention, attention, config, last_attention=attention,
                last_keys=torch.randn(2, 100, 4))
    with pytest.raises(TypeError, match="no option"):
        get_reducer("visionzip-release", ratio=0.1)
