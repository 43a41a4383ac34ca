"""The ``head_attention`` / ``head_features`` inputs: SigLIP's attention-pooling head as a pure
function, attached to a model, captured by the adapters that have one, refused by those that
cannot."""

from __future__ import annotations

import pytest
import torch

import aot
import aot_integrations.hf
from aot.pooling_head import PoolingHead, apply_pooling_head
from aot.video_path import Reduction
from aot_integrations import tiny
from aot_integrations.pooling_head import (
    attach_pooling_head,
    detach_pooling_head,
    pooling_head_of,
)

pytest.importorskip("transformers")


def test_apply_pooling_head_is_siglips_head():
    """The pure function against transformers' SigLIP head (pooled output) and
    nn.MultiheadAttention's head-averaged weights (the release's attention), float64."""
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    state = tiny.pooling_head_state(hidden_size=24, num_heads=4, intermediate_size=40, seed=3)
    config = SiglipVisionConfig(hidden_size=24, num_attention_heads=4, intermediate_size=40)
    module = SiglipMultiheadAttentionPoolingHead(config).double()
    module.load_state_dict({k[len("vision_model.head."):]: v for k, v in state.items()
                            if k.startswith("vision_model.head.")})
    norm = torch.nn.LayerNorm(24, eps=config.layer_norm_eps).double()
    norm.load_state_dict({k.rsplit(".", 1)[1]: v for k, v in state.items()
                          if "post_layernorm" in k})
    hidden = torch.randn(5, 30, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    head = PoolingHead.from_state_dict(state, num_heads=4, eps=config.layer_norm_eps)
    attention, pooled = apply_pooling_head(hidden, head)
    with torch.no_grad():
        x = norm(hidden)
        expected_pooled = module(x)
        probe = module.probe.repeat(5, 1, 1)
        _, expected_attention = module.attention(probe, x, x)     # averaged over heads
    assert attention.shape == (5, 30) and pooled.shape == (5, 24)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(attention, expected_attention[:, 0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(attention.sum(-1), torch.ones(5, dtype=torch.float64))


def test_head_weights_are_checked():
    state = tiny.pooling_head_state()
    with pytest.raises(ValueError, match="no key ending in 'head.probe'"):
        PoolingHead.from_state_dict({k: v for k, v in state.items() if "probe" not in k})
    with pytest.raises(ValueError, match="PoolingHead.num_heads=3"):
        PoolingHead.from_state_dict(state, num_heads=3)
    with pytest.raises(ValueError, match="apply_pooling_head: hidden has shape \\(2, 5, 8\\)"):
        apply_pooling_head(torch.zeros(2, 5, 8), PoolingHead.from_state_dict(state, num_heads=2))


VIDEO = torch.rand(9, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_llava_without_a_head_refuses_fastvid_with_the_way_to_attach_one():
    model = tiny.random_model("ov", seed=5)
    config = aot.AOTConfig(exact_retention=0.1, shallow_layer=1, deep_layer=2)
    with pytest.raises(ValueError, match="attach_pooling_head\\(model"):
        model.set_aot(config, reducer="fastvid")
    adapter = model.video_adapter()
    with torch.no_grad():
        encoded = adapter.encode(VIDEO[:2], (1, 2), lambda stage: None)
    with pytest.raises(ValueError, match="reads 'head_attention', which this encoding lacks"):
        aot.video_path.reduce(encoded, Reduction(config, "fastvid"))


@pytest.mark.parametrize("count", ["exact", "released"])
def test_llava_with_a_head_gives_fastvid_its_inputs(count):
    model = tiny.random_model("ov", seed=5)
    attach_pooling_head(model, tiny.pooling_head_state())
    config = aot.AOTConfig(exact_retention=0.1, shallow_layer=1, deep_layer=2)
    reduction = Reduction(config, "fastvid", {"count": count})
    assert reduction.extra_inputs == ("head_attention", "head_features")
    adapter = model.video_adapter()
    with torch.no_grad():
        encoded = aot.video_path.encode(adapter, VIDEO, reduction)
        tower = model.get_vision_tower()(VIDEO).features
        model.set_aot(config, reducer="fastvid")
        sequence = model.video_sequence(VIDEO) if count == "exact" else None
    attention, pooled = apply_pooling_head(tower, pooling_head_of(model))
    torch.testing.assert_close(encoded.extra["head_attention"], attention)
    torch.testing.assert_close(encoded.extra["head_features"], pooled)
    result = aot.video_path.reduce(encoded, reduction)
    # 9 frames at r = 0.1: R = int(19.6) = 19 per frame; exactly floor(176.4 + 0.5) = 176
    expected = aot.exact_budget(0.1, 9, 196) if count == "exact" else None
    if count == "exact":
        assert result.num_tokens == expected == 176
        assert sequence.visual_tokens == 176 and sequence.newline_tokens == 1
    else:
        assert result.num_tokens <= 9 * 19
    print(f"fastvid on tiny llava OV, 9 frames, r=0.1, count={count}: {result.num_tokens} tokens")
    detach_pooling_head(model)
    with pytest.raises(ValueError, match="no pooling head is attached"):
        detach_pooling_head(model)


def test_hf_onevision_uses_its_head_or_the_attached_one():
    model = tiny.onevision(seed=1)
    config = aot_integrations.hf.config_for(model, 0.25, anchors_per_frame=12, window=3,
                                            shallow_layer=1, deep_layer=3)
    inputs = tiny.onevision_inputs([4])
    handle = aot_integrations.hf.apply(model, Reduction(config, "fastvid"))
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[1]),
        with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
        handle.remove()
    built = handle.last[0]
    # 4 frames of a 6x6 grid -> 3x3 pooled; exactly floor(0.25 * 36 + 0.5) = 9, + the newline
    assert built.visual_tokens == aot.exact_budget(0.25, 4, 9) == 9
    assert seen == [inputs["input_ids"].shape[1] - (4 * 9 + 1) + 9 + 1]
    print(f"fastvid on tiny transformers LlavaOnevision, 4 frames, r=0.25: "
          f"{built.visual_tokens} visual tokens at the LLM")
    attach_pooling_head(model, tiny.pooling_head_state(hidden_size=32, num_heads=4,
                                                       intermediate_size=37, seed=9))
    try:
        handle = aot_integrations.hf.apply(model, Reduction(config, "fastvid"))
        with torch.no_grad():
            model(**inputs)
        assert handle.last[0].visual_tokens == 9
        assert not torch.equal(handle.last[0].tokens, built.tokens)
    finally:
        handle.remove()
        detach_pooling_head(model)


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_gives_the_release_stand_ins_and_the_exact_count(name):
    """No pooling head on Qwen: head_attention is FastVID's Qwen probe (the last block's mean
    query against merge-group keys, a softmax per frame), head_features the mean merged token."""
    build, make = {"qwen2_5_vl": (tiny.qwen2_5_vl, tiny.qwen_inputs),
                   "qwen3_vl": (tiny.qwen3_vl, tiny.qwen3_inputs)}[name]
    model = build(seed=1)
    adapter = aot_integrations.hf.adapter_for(model)
    config = aot_integrations.hf.config_for(model, 0.25, anchors_per_frame=8, window=3,
                                            shallow_layer=1, deep_layer=3)
    grids = [(4, 12, 12), (3, 8, 16)]
    with torch.no_grad():
        encoded = adapter.encode_batch(make(grids), (), ("head_attention", "head_features"))
    main = adapter.model_fields().get("similarity_channels")
    for video, (t, h, w) in zip(encoded, grids):
        attention = video.extra["head_attention"]
        assert attention.shape == (t, h * w // 4) and attention.dtype == torch.float32
        torch.testing.assert_close(attention.sum(-1), torch.ones(t))
        torch.testing.assert_close(video.extra["head_features"],
                                   video.features[..., :main].float().mean(1))
    handle = aot_integrations.hf.apply(model, Reduction(config, "fastvid"))
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[1]),
        with_kwargs=True)
    try:
        with torch.no_grad():
            model.generate(**make(grids), max_new_tokens=1, do_sample=False)
            counts = [s.visual_tokens for s in handle.last]
            single = make(grids[:1])
            seen.clear()
            model(**single)
    finally:
        hook.remove()
        handle.remove()
    assert counts == [aot.exact_budget(0.25, t, h * w // 4) for t, h, w in grids] == [36, 24]
    # the LLM reads the prompt with the video's 4 * 36 placeholders replaced by 36 tokens
    assert seen == [single["input_ids"].shape[1] - 4 * 36 + 36]
    print(f"fastvid on tiny transformers {name}, grids {grids}, r=0.25: {counts} visual tokens; "
          f"LLM input {seen[0]} of {single['input_ids'].shape[1]} positions for {grids[0]}")


def test_loader_attaches_a_head_from_a_weights_file(tmp_path):
    """load_pretrained_model(pooling_head=...) (what the eval models' ``pooling_head=`` model arg
    passes): the head is attached before the reducer is set, so fastvid loads and runs."""
    from safetensors.torch import save_file

    from llava.model.builder import load_pretrained_model

    folder = tmp_path / "ckpt"
    tiny.write_checkpoint(folder, "ov", seed=2)
    head = tmp_path / "siglip"
    head.mkdir()
    save_file({k: v.contiguous() for k, v in tiny.pooling_head_state().items()},
              str(head / "model.safetensors"))
    config = aot.AOTConfig(exact_retention=0.1, shallow_layer=1, deep_layer=2)
    with pytest.raises(ValueError, match="attach_pooling_head"):
        load_pretrained_model(str(folder), device_map="cpu", torch_dtype="float32",
                              aot_config=config, reducer="fastvid")
    _, model, _, _ = load_pretrained_model(str(folder), device_map="cpu", torch_dtype="float32",
                                           aot_config=config, reducer="fastvid",
                                           pooling_head=str(head))
    with torch.no_grad():
        sequence = model.video_sequence(VIDEO[:8])
    assert sequence.visual_tokens == aot.exact_budget(0.1, 8, 196) == 157
    with pytest.raises(ValueError, match="is not a file"):
        attach_pooling_head(model, str(tmp_path / "missing"))
