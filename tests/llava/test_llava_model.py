"""LLaVA-OV / LLaVA-Video model code: loading, oracle, AOT hook points, packing, bad inputs."""

from __future__ import annotations

import copy

import pytest
import torch

import aot
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token
from llava.model.builder import CheckpointError, load_pretrained_model
from llava_testkit import random_model, video_pixels, write_checkpoint

# AOT on the tiny 3-layer tower: same method, layers moved into range.
OV_AOT = aot.AOTConfig.preset("paper-ov-mvbench", shallow_layer=0, deep_layer=2)
VIDEO_AOT = aot.AOTConfig.preset("paper-video", shallow_layer=0, deep_layer=2)


def prompt_ids(tokenizer, question="What happens in the video?"):
    conv = copy.deepcopy(conv_templates["qwen_1_5"])
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX,
                                 return_tensors="pt").unsqueeze(0), conv


@pytest.fixture(scope="module")
def ov(ov_checkpoint):
    folder, _ = ov_checkpoint
    return load_pretrained_model(folder, None, "llava_qwen", device_map="cpu",
                                 torch_dtype="float32")


def logits(model, ids, videos):
    with torch.no_grad():
        return model(ids, images=videos, modalities=["video"] * len(videos)).logits


# ---------------------------------------------------------------- loading and generation
def test_load_matches_written_weights_and_generates(ov_checkpoint, ov):
    _, written = ov_checkpoint
    tokenizer, model, processor, max_length = ov
    assert max_length == 2048
    for name, tensor in written.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    ids, conv = prompt_ids(tokenizer)
    assert (ids == IMAGE_TOKEN_INDEX).sum() == 1
    stop = KeywordsStoppingCriteria([conv.sep], tokenizer, ids)
    out = model.generate(ids, images=[video_pixels(4)], modalities=["video"], do_sample=False,
                         max_new_tokens=5, pad_token_id=tokenizer.pad_token_id,
                         attention_mask=torch.ones_like(ids), stopping_criteria=[stop])
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 5
    assert isinstance(tokenizer.batch_decode(out, skip_special_tokens=True)[0], str)
    pixels = processor.preprocess(torch.randint(0, 255, (2, 100, 150, 3)).numpy().astype("uint8"),
                                  return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 384, 384)


def test_load_with_aot_preset_and_dtype(ov_checkpoint, tokenizer):
    folder, _ = ov_checkpoint
    _, model, _, _ = load_pretrained_model(folder, None, "llava_qwen", device_map="cpu",
                                           torch_dtype="bfloat16", aot_config=OV_AOT)
    assert model.aot_config == OV_AOT
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    ids, _ = prompt_ids(tokenizer)
    out = logits(model, ids, [video_pixels(8).to(torch.bfloat16)])
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------- independent oracle
def to_hf_state(state: dict) -> dict:
    """Raw LLaVA-NeXT names -> transformers 5 LlavaOnevisionForConditionalGeneration names."""
    out = {}
    for key, value in state.items():
        if key.startswith("model.vision_tower.vision_tower.vision_model."):
            new = "model.vision_tower." + key[len("model.vision_tower.vision_tower.vision_model."):]
        elif key.startswith("model.mm_projector."):
            new = key.replace("model.mm_projector.0", "model.multi_modal_projector.linear_1")
            new = new.replace("model.mm_projector.2", "model.multi_modal_projector.linear_2")
        elif key == "model.image_newline" or key == "lm_head.weight":
            new = key
        else:
            new = "model.language_model." + key[len("model."):]
        out[new] = value
    return out


def test_ov_video_matches_transformers_llava_onevision(tokenizer):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              Qwen2Config)

    ours = random_model("ov", seed=3)
    cfg = ours.config
    tower = ours.get_vision_tower().config
    text = Qwen2Config(**{k: getattr(cfg, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rms_norm_eps",
        "tie_word_embeddings")}, rope_parameters=dict(cfg.rope_parameters))
    vision = {k: getattr(tower, k) for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "image_size", "patch_size", "hidden_act", "layer_norm_eps")}
    hf_config = LlavaOnevisionConfig(
        text_config=text.to_dict(), vision_config=dict(vision, model_type="siglip_vision_model",
                           vision_use_head=False),
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_token_index=cfg.vocab_size - 1, video_token_index=cfg.vocab_size - 2,
        projector_hidden_act="gelu", multimodal_projector_bias=True)
    hf = LlavaOnevisionForConditionalGeneration(hf_config).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state(ours.state_dict()), strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)

    ids, _ = prompt_ids(tokenizer)
    frames = 3
    video = video_pixels(frames, seed=5)
    ours_logits = logits(ours, ids, [video])
    cut = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero())
    visual = frames * 14 * 14 + 1
    hf_ids = torch.cat([ids[:, :cut], torch.full((1, visual), cfg.vocab_size - 2),
                        ids[:, cut + 1:]], dim=1)
    with torch.no_grad():
        hf_logits = hf(input_ids=hf_ids, pixel_values_videos=video[None]).logits
    assert ours_logits.shape == hf_logits.shape
    torch.testing.assert_close(ours_logits, hf_logits, atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------- AOT inside the model
def reference_reduction(model, video, config):
    """aot.reduce_video on received attention from transformers' eager full maps."""
    tower = model.get_vision_tower()
    with torch.no_grad():
        projected = model.model.mm_projector(tower(video).features)
    eager = eager_received(tower, video)
    return aot.reduce_video(projected.float(), eager[config.shallow_layer],
                            eager[config.deep_layer], config)


def eager_received(tower, video):
    """Full eager maps of every layer via transformers' own SiglipVisionModel on our weights."""
    from transformers import SiglipVisionModel

    hf = SiglipVisionModel._from_config(copy.deepcopy(tower.config), attn_implementation="eager").eval()
    state = {k[len("vision_tower.vision_model."):]: v
             for k, v in tower.state_dict().items()}
    hf.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = hf(pixel_values=video, output_attentions=True)
    return [aot.received_attention(a) for a in out.attentions]


def test_two_layer_capture_equals_eager_maps():
    model = random_model("ov", seed=2)
    tower = model.get_vision_tower()
    video = video_pixels(3, seed=1)
    with torch.no_grad():
        captured = tower(video, capture_layers=(0, 2), chunk_size=2)
        plain = tower(video)
    eager = eager_received(tower, video)
    assert set(captured.received) == {0, 2}
    for layer in (0, 2):
        assert captured.received[layer].shape == (3, 729)
        assert captured.received[layer].dtype == torch.float32
        torch.testing.assert_close(captured.received[layer], eager[layer], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(captured.features, plain.features, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frames", [1, 8])
def test_ov_aot_token_count_matches_reduce_video(tokenizer, frames):
    model = random_model("ov", seed=4)
    ids, _ = prompt_ids(tokenizer)
    video = video_pixels(frames, seed=frames)
    vanilla = logits(model, ids, [video])
    model.set_aot(OV_AOT)
    reduced = logits(model, ids, [video])
    expected = reference_reduction(model, video, OV_AOT)
    result = model.last_aot_results[0]
    assert result.num_tokens == expected.num_tokens
    assert torch.equal(result.token_frame, expected.token_frame)
    # visual tokens = AOT tokens + one newline after the whole video (OV)
    assert reduced.shape[1] == ids.shape[1] - 1 + expected.num_tokens + 1
    assert vanilla.shape[1] == ids.shape[1] - 1 + frames * 196 + 1
    assert expected.num_tokens < frames * 196
    # no silent no-op: the text positions after the video see different context
    assert not torch.allclose(reduced[0, -1], vanilla[0, -1])
    # AOT off again: the unreduced path, bit for bit on the LLM inputs
    with torch.no_grad():
        before = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None,
                                                            [video], ["video"])[4]
        model.set_aot(None)
        after = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None,
                                                           [video], ["video"])[4]
        fresh = random_model("ov", seed=4).prepare_inputs_labels_for_multimodal(
            ids, None, None, None, None, [video], ["video"])[4]
    assert before.shape[1] < after.shape[1] and torch.equal(after, fresh)
    torch.testing.assert_close(logits(model, ids, [video]), vanilla, atol=1e-6, rtol=1e-5)


def test_33_frame_video_any_frame_count(tokenizer):
    """33 frames (the released code accepts 32 or 64 only): clips cover every frame once."""
    model = random_model("ov", seed=4)
    model.set_aot(OV_AOT)
    ids, _ = prompt_ids(tokenizer)
    video = video_pixels(33, seed=33)
    with torch.no_grad():
        embeds = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None,
                                                            [video], ["video"])[4]
        encoded = aot.video_path.encode(model.video_adapter(), video, model.reduction)
    result = model.last_aot_results[0]
    expected = aot.reduce_video(encoded.features.float(), encoded.attention[OV_AOT.shallow_layer],
                                encoded.attention[OV_AOT.deep_layer], OV_AOT)
    assert result.num_frames == 33 and result.num_tokens == expected.num_tokens
    assert sorted(f for clip in result.clips for f in range(*clip)) == list(range(33))
    assert embeds.shape[1] == ids.shape[1] - 1 + result.num_tokens + 1


def test_llava_video_packing_182_per_frame_and_aot_row_newlines(tokenizer):
    model = random_model("video", seed=6)
    ids, _ = prompt_ids(tokenizer)
    frames = 3
    video = video_pixels(frames, seed=7)
    with torch.no_grad():
        _, _, _, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
            ids, None, None, None, None, [video], ["video"])
    assert embeds.shape[1] == ids.shape[1] - 1 + frames * 182
    newline = model.model.image_newline
    cut = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero())
    visual = embeds[0, cut:cut + frames * 182].reshape(frames, 13, 14, -1)
    assert torch.equal(visual[:, :, 13], newline.expand(frames, 13, -1))

    model.set_aot(VIDEO_AOT)
    with torch.no_grad():
        _, _, _, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
            ids, None, None, None, None, [video], ["video"])
    result = model.last_aot_results[0]
    assert embeds.shape[1] == ids.shape[1] - 1 + result.num_tokens + frames * 13
    visual = embeds[0, cut:cut + result.num_tokens + frames * 13]
    is_newline = (visual == newline).all(-1)
    assert int(is_newline.sum()) == frames * 13
    # each row: that row's surviving tokens, then its newline
    survivors = result.survivors.reshape(frames * 13, 13).sum(-1)
    row_ends = torch.nonzero(is_newline).flatten()
    row_lengths = torch.diff(torch.cat([torch.tensor([-1]), row_ends])) - 1
    assert torch.equal(row_lengths, survivors)
    torch.testing.assert_close(visual[~is_newline], result.tokens)


def test_llava_video_temporal_phase_rule_keeps_row_newlines(tokenizer):
    model = random_model("video", seed=6)
    config = VIDEO_AOT.replace(inter=True, keep_ratio=0.3)
    model.set_aot(config)
    ids, _ = prompt_ids(tokenizer)
    with torch.no_grad():
        _, _, _, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
            ids, None, None, None, None, [video_pixels(4, seed=9)], ["video"])
    result = model.last_aot_results[0]
    assert result.clips and embeds.shape[1] == ids.shape[1] - 1 + result.num_tokens + 4 * 13


def test_batch_of_videos_with_different_lengths_is_reduced_per_video(tokenizer):
    model = random_model("ov", seed=8)
    model.set_aot(OV_AOT)
    ids, _ = prompt_ids(tokenizer)
    videos = [video_pixels(5, seed=1), video_pixels(2, seed=2)]
    alone = [logits(model, ids, [v]) for v in videos]
    counts_alone = [model.last_aot_results[0].num_tokens for _ in [0]]
    with torch.no_grad():
        batch = model(torch.cat([ids, ids]), images=videos, modalities=["video", "video"])
    assert len(model.last_aot_results) == 2
    for b, single in enumerate(alone):
        n = single.shape[1]
        torch.testing.assert_close(batch.logits[b, :n], single[0], atol=1e-5, rtol=1e-5)
    assert model.last_aot_results[1].num_tokens == counts_alone[0]


def test_single_image_base_resolution(tokenizer):
    model = random_model("ov", seed=9)
    model.set_aot(OV_AOT)  # images are never reduced
    ids, _ = prompt_ids(tokenizer, "Describe the image.")
    with torch.no_grad():
        out = model(ids, images=[video_pixels(1)[0]], modalities=["image"]).logits
    assert out.shape[1] == ids.shape[1] - 1 + 729 + 1
    assert model.last_aot_results == [None]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_with_and_without_aot(tokenizer, dtype):
    model = random_model("video", seed=10).to(dtype)
    ids, _ = prompt_ids(tokenizer)
    video = video_pixels(2).to(dtype)
    for config in (None, VIDEO_AOT):
        model.set_aot(config)
        out = logits(model, ids, [video])
        assert out.dtype == dtype and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------- bad inputs
def test_missing_and_misnamed_weights_are_listed(tmp_path):
    missing = "model.mm_projector.2.bias"
    write_checkpoint(tmp_path / "a", "ov", drop=(missing,))
    with pytest.raises(CheckpointError, match=r"missing 1 \[model\.mm_projector\.2\.bias\]"):
        load_pretrained_model(str(tmp_path / "a"), None, "llava_qwen", device_map="cpu")
    old = "model.image_newline"
    write_checkpoint(tmp_path / "b", "ov", rename={old: "model.image_newlines"})
    with pytest.raises(CheckpointError, match="unexpected 1 \\[model.image_newlines\\]"):
        load_pretrained_model(str(tmp_path / "b"), None, "llava_qwen", device_map="cpu")


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder nor"):
        load_pretrained_model(str(tmp_path / "nope"), None, "x", device_map="cpu")


def test_wrong_pixel_shape_and_placeholder_count(tokenizer):
    model = random_model("ov", seed=11)
    ids, _ = prompt_ids(tokenizer)
    with pytest.raises(ValueError, match=r"pixel shape \(2, 3, 224, 224\); expected "
                                         r"\(frames, 3, 384, 384\)"):
        logits(model, ids, [torch.zeros(2, 3, 224, 224)])
    with pytest.raises(ValueError, match="1 image placeholder.*2 visual input"):
        logits(model, ids, [video_pixels(1), video_pixels(1)])


def test_aot_config_must_match_backbone_pooling():
    model = random_model("ov", seed=12)
    with pytest.raises(ValueError, match="pooling='average' does not match.*'bilinear'"):
        model.set_aot(VIDEO_AOT)
    with pytest.raises(ValueError, match="shallow_layer=5 but the vision tower uses layers 0..2"):
        model.set_aot(aot.AOTConfig.preset("paper-ov-mvbench"))


@pytest.mark.parametrize("backbone", ["ov", "video"])
@pytest.mark.parametrize("reducer", ["aot", "uniform", "visionzip", "dycoke", "random"])
def test_every_reducer_runs_through_the_model_at_the_exact_budget(tokenizer, reducer, backbone):
    model = random_model(backbone, seed=5)
    ids, _ = prompt_ids(tokenizer)
    video = video_pixels(8, seed=3)
    vanilla = logits(model, ids, [video])
    base = OV_AOT if backbone == "ov" else VIDEO_AOT
    per_frame = 196 if backbone == "ov" else 169
    model.set_aot(base.replace(exact_retention=0.2), reducer=reducer)
    reduced = logits(model, ids, [video])
    result = model.last_aot_results[0]
    assert result.num_tokens == aot.exact_budget(0.2, 8, per_frame)
    newlines = 1 if backbone == "ov" else 8 * 13
    assert reduced.shape[1] == ids.shape[1] - 1 + result.num_tokens + newlines
    assert not torch.allclose(reduced[0, -1], vanilla[0, -1])


def test_reducer_names_and_budgets_are_checked(tokenizer):
    model = random_model("ov", seed=5)
    with pytest.raises(ValueError, match="unknown reducer|reducer"):
        model.set_aot(OV_AOT, reducer="fastv")
    with pytest.raises(ValueError, match="needs a token budget"):
        model.set_aot(OV_AOT, reducer="uniform")


def test_generate_from_spliced_embeddings_equals_generate_from_pixels(tokenizer):
    model = random_model("ov", seed=6)
    model.set_aot(OV_AOT)
    ids, _ = prompt_ids(tokenizer)
    video = video_pixels(4, seed=2)
    settings = dict(do_sample=False, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id)
    from_pixels = model.generate(ids, images=[video], modalities=["video"],
                                 attention_mask=torch.ones_like(ids), **settings)
    _, _, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
        ids, None, torch.ones_like(ids), None, None, [video], ["video"])
    from_embeds = model.generate(inputs_embeds=embeds, attention_mask=mask, **settings)
    assert torch.equal(from_pixels, from_embeds)
    with pytest.raises(ValueError, match="either inputs_embeds"):
        model.generate(ids, inputs_embeds=embeds, **settings)
