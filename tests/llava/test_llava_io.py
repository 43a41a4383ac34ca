"""Video readers, prompt helpers and the LLaVA-NeXT import surface lmms-eval relies on."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest

from media import write_mp4
from llava.video import (VideoReadError, fps_indices, read_video, read_video_fps,
                         uniform_indices)

BACKENDS = ["pyav"] + (["decord"] if importlib.util.find_spec("decord") else [])


def write_video(path, frames: int = 30, fps: int = 10, size=(64, 48)):
    """A small H.264 mp4 whose frame i is filled with grey level 8 * i (frame-index readable)."""
    images = (np.full((size[1], size[0], 3), 8 * i, dtype=np.uint8) for i in range(frames))
    return write_mp4(path, images, rate=fps, options={"crf": "0", "g": "5"})


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_sampling(clip, backend):
    frames = read_video(clip, 8, backend=backend)
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    expected = uniform_indices(30, 8) * 8
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), expected, atol=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_fps_sampling_capped(clip, backend):
    video = read_video_fps(clip, max_frames=64, fps=1.0, backend=backend)
    assert video.indices.tolist() == [0, 10, 20]  # 3 s at 10 fps -> 3 frames
    assert video.frames.shape[0] == 3 and video.duration == pytest.approx(3.0)
    assert video.time_string() == "0.00s,1.00s,2.00s"
    capped = read_video_fps(clip, max_frames=2, fps=5.0, backend=backend)
    assert capped.indices.tolist() == [0, 29]


def test_index_rules():
    assert uniform_indices(100, 4).tolist() == [0, 33, 66, 99]
    assert fps_indices(300, 30.0, 64).tolist() == list(range(0, 300, 30))
    assert len(fps_indices(3000, 30.0, 64)) == 64
    assert len(fps_indices(300, 30.0, 64, force_sample=True)) == 64
    with pytest.raises(ValueError, match="num_frames=0"):
        uniform_indices(10, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_and_missing_files(tmp_path, backend):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(VideoReadError, match="bad.mp4"):
        read_video(str(bad), 4, backend=backend)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(str(tmp_path / "missing.mp4"), 4, backend=backend)
    with pytest.raises(ValueError, match="video backend 'opencv'"):
        read_video(str(bad), 4, backend="opencv")


def test_conversation_and_image_token(tokenizer):
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import SeparatorStyle, conv_templates
    from llava.mm_utils import get_model_name_from_path, tokenizer_image_token

    conv = copy.deepcopy(conv_templates["qwen_1_5"])
    conv.append_message(conv.roles[0], "<image>\nWhat?")
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\n<image>\nWhat?<|im_end|>\n<|im_start|>assistant\n")
    assert conv.sep_style == SeparatorStyle.CHATML and conv.sep == "<|im_end|>"
    chat = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "<image>\nWhat?"}], tokenize=False,
        add_generation_prompt=True)
    assert chat == prompt
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
    assert int((ids == IMAGE_TOKEN_INDEX).sum()) == 1
    text = tokenizer.decode([i for i in ids.tolist() if i != IMAGE_TOKEN_INDEX])
    assert text == prompt.replace("<image>", "")
    assert get_model_name_from_path("/x/llava-onevision-qwen2-7b-ov/") == \
        "llava-onevision-qwen2-7b-ov"


def test_lmms_eval_import_surface():
    from transformers import AutoConfig

    import llava.model  # noqa: F401  registers llava_qwen
    from llava.model.language_model.llava_llama import LlavaConfig
    from llava.model.language_model.llava_qwen import LlavaQwenConfig

    # lmms-eval's llava_vid registers both again at import: must not raise.
    AutoConfig.register("llava_llama", LlavaConfig)
    AutoConfig.register("llava_qwen", LlavaQwenConfig)
    assert AutoConfig.for_model("llava_qwen").__class__ is LlavaQwenConfig


def test_autoconfig_reads_checkpoint_and_process_images(ov_checkpoint):
    from PIL import Image
    from transformers import AutoConfig

    from llava.mm_utils import process_images
    from llava.model.builder import build_image_processor

    folder, _ = ov_checkpoint
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llava_qwen" and config.mm_newline_position == "one_token"
    processor = build_image_processor()
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    pixels = process_images([image], processor, config)  # anyres_max_9: base view + 1 crop
    assert pixels.shape == (1, 2, 3, 384, 384)
    config.image_aspect_ratio = "pad"
    padded = process_images([image], processor, config)
    assert padded.shape == (1, 3, 384, 384) and padded[0, 0, 0, 0] < pixels[0, 0, 0, 0, 0]


def test_end_to_end_video_file_with_aot(video_checkpoint, clip):
    """lmms-eval llava_vid flow: 1-fps frames -> processor -> generate with AOT at load time."""
    import torch

    import aot
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    folder, _ = video_checkpoint
    config = aot.AOTConfig.preset("paper-video", shallow_layer=0, deep_layer=2)
    tokenizer, model, processor, _ = load_pretrained_model(
        folder, None, "llava_qwen", device_map="auto", torch_dtype="float16",
        overwrite_config={"mm_spatial_pool_mode": "average", "mm_newline_position": "grid"},
        aot_config=config)
    frames = read_video_fps(clip, max_frames=64).frames
    video = processor.preprocess(frames, return_tensors="pt")["pixel_values"].half()
    conv = copy.deepcopy(conv_templates["qwen_1_5"])
    conv.append_message(conv.roles[0], "<image>\nWhat happens?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX,
                                return_tensors="pt").unsqueeze(0)
    out = model.generate(inputs=ids, images=[video], modalities="video",
                         attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=3,
                         pad_token_id=tokenizer.pad_token_id,
                         stopping_criteria=[KeywordsStoppingCriteria([conv.sep], tokenizer, ids)])
    assert out.shape[0] == 1
    result = model.last_aot_results[0]
    assert result.num_frames == 3 and 0 < result.retention < 1
