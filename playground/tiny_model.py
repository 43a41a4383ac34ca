"""A tiny random-weight LLaVA-OneVision checkpoint, written on the fly in lmms-lab layout.

It lets the demo run offline on a laptop CPU with no download: the SigLIP tower keeps the real
27x27 patch grid and the real layer count (27 published, 26 used), so AOT's default anchor layers
(5 and 24), 9x9 windows and 14x14 bilinear pooling are exactly those of LLaVA-OV-7B; only the
widths are tiny. The weights are random: anchors follow the attention of a random tower and the
answer is gibberish. The checkpoint is loaded through ``llava.model.builder.load_pretrained_model``
like a real one.
"""

from __future__ import annotations

from llava.tiny import write_checkpoint

#: Printed wherever the tiny model's output appears.
RANDOM_LABEL = "tiny RANDOM-weight LLaVA-OV (not a trained model: its answer is meaningless)"

# 27 published layers (26 used), as SigLIP so400m: AOT's default layers 5 and 24 exist.
VISION_LAYERS = 27


def write_tiny_checkpoint(folder: str, seed: int = 0) -> str:
    """Write config.json, model.safetensors and the tokenizer into ``folder``; returns it."""
    write_checkpoint(folder, "ov", seed, vision_layers=VISION_LAYERS,
                     image_grid_pinpoints=[[384, 384]])
    return folder


# ------------------------------------------------------------------ transformers checkpoints
#: Specials of the tiny transformers checkpoints' tokenizer, ids 0.. in this order: Qwen's chat
#: and vision tokens and LLaVA-OneVision's placeholders.
HF_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
               "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<image>", "<video>")

# ChatML with content lists (what the stock Qwen / LLaVA-OneVision templates render, shortened):
# a video is the model's placeholder, text as is.
_HF_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}"
    "VIDEO{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
#: model_type -> a video in that model's chat template.
_VIDEO_PLACEHOLDER = {"qwen2_5_vl": "<|vision_start|><|video_pad|><|vision_end|>",
                      "qwen3_vl": "<|vision_start|><|video_pad|><|vision_end|>",
                      "llava_onevision": "<video>\n"}
#: The model types :func:`write_tiny_hf_checkpoint` writes: each of :data:`aot.hf.MODEL_TYPES`
#: (tests/test_demo_hf.py holds them equal).
HF_MODEL_TYPES = tuple(_VIDEO_PLACEHOLDER)


def _hf_tokenizer(model_type: str):
    """Byte-level BPE trained in memory (llava.tiny's corpus, plus digits for Qwen3-VL's
    ``<1.5 seconds>`` stamps) with :data:`HF_SPECIALS` as ids 0..8."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llava.tiny import CORPUS

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS + ["<0.5 seconds> 0123456789."], trainers.BpeTrainer(
        vocab_size=280, special_tokens=list(HF_SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    template = _HF_TEMPLATE.replace("VIDEO", _VIDEO_PLACEHOLDER[model_type])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   additional_special_tokens=list(HF_SPECIALS[1:]),
                                   chat_template=template)


def write_tiny_hf_checkpoint(folder: str, model_type: str, seed: int = 0,
                             vision_layers: int = 4, frame_size: int = 224) -> str:
    """A tiny random-weight transformers checkpoint of ``model_type`` (``qwen2_5_vl``,
    ``qwen3_vl``, ``llava_onevision``) in ``folder``: ``save_pretrained`` of the model built by
    :mod:`aot.hf.tiny` (token ids pointed at the tokenizer's), the tokenizer with a chat
    template, the stock (PIL) image processor and ``processor_config.json``.

    LLaVA-OneVision's tower is built for ``frame_size`` px (its frames are resized to it); the
    Qwen towers take any size (the processor's grid). Returns ``folder``.
    """
    import json
    import os

    from aot.hf import tiny

    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r}: expected one of {HF_MODEL_TYPES}")
    tokenizer = _hf_tokenizer(model_type)
    ids = dict(zip(HF_SPECIALS, tokenizer.convert_tokens_to_ids(list(HF_SPECIALS))))
    if model_type == "llava_onevision":
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        model = tiny.onevision(seed, image_size=frame_size, vision_layers=vision_layers)
        model.config.image_token_id, model.config.video_token_id = ids["<image>"], ids["<video>"]
        side = frame_size // 14
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": frame_size, "width": frame_size},
            image_grid_pinpoints=[[frame_size, frame_size]])
        processor = {"processor_class": "LlavaOnevisionProcessor",
                     "num_image_tokens": side * side, "vision_feature_select_strategy": "full",
                     "vision_aspect_ratio": "anyres_max_9"}
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        build = tiny.qwen2_5_vl if model_type == "qwen2_5_vl" else tiny.qwen3_vl
        model = build(seed, depth=vision_layers)
        config = model.config
        config.image_token_id, config.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
        config.vision_start_token_id = ids["<|vision_start|>"]
        config.vision_end_token_id = ids["<|vision_end|>"]
        patch = config.vision_config.patch_size
        if model_type == "qwen3_vl":   # Qwen3-VL's processor normalises to [-1, 1]
            image_processor = Qwen2VLImageProcessorPil(patch_size=patch, image_mean=[0.5] * 3,
                                                       image_std=[0.5] * 3)
        else:
            image_processor = Qwen2VLImageProcessorPil(patch_size=patch)
        processor = {"processor_class": type(model).__name__.replace(
            "ForConditionalGeneration", "Processor")}
    os.makedirs(folder, exist_ok=True)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    with open(os.path.join(folder, "processor_config.json"), "w") as handle:
        json.dump(processor, handle, indent=1)
    return folder
