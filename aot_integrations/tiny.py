"""Tiny random-weight models and checkpoints of every backbone, built offline (the one home).

For tests, the demo and CPU benchmarks; the weights are random, the outputs meaningless.

* lmms-lab layout (our ``llava/`` models): :func:`write_checkpoint` writes a published
  ``config.json`` with the widths shrunk, an in-memory byte-level BPE tokenizer with Qwen's
  special tokens and raw LLaVA-NeXT weight names in (sharded) safetensors, loadable by
  :func:`llava.model.builder.load_pretrained_model` like a real checkpoint; :func:`random_model`
  builds the model in memory. The SigLIP tower keeps the 27x27 patch grid of SigLIP-384, so AOT's
  9x9 windows and the 14x14 / 13x13 pooling are the real ones.
* transformers' own classes (:mod:`aot_integrations.hf`): :func:`onevision`, :func:`qwen2_5_vl`,
  :func:`qwen3_vl` build the stock classes from their config classes; :func:`onevision_inputs`,
  :func:`qwen_inputs`, :func:`qwen3_inputs` give tensors shaped exactly as the processors
  produce them; :func:`write_tiny_hf_checkpoint` saves one with a tokenizer and processor.
"""

from __future__ import annotations

import json
import os

import torch

from aot.backbones import backbone_names
from aot_integrations.llava import llava_config_fields

# ---------------------------------------------------------------------- lmms-lab checkpoints (llava/)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Text the tokenizer is trained on: it only has to tokenise prompts sensibly.
CORPUS = ["You are a helpful assistant.",
          "What happens in the video? Describe the video in one sentence.",
          "A person walks a dog in the park. A rabbit walks in a green meadow.",
          "Answer with the option's letter from the given choices. (A) (B) (C) (D)",
          "system user assistant The best answer is: yes no red blue"] * 4

# A published lmms-lab config.json (llava-onevision-qwen2-7b-ov) with the widths shrunk.
BASE_CONFIG = {
    "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen",
    "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": 32,
    "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "max_position_embeddings": 8192, "max_window_layers": 2,
    "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": 8192, "use_sliding_window": False, "tie_word_embeddings": False,
    "vocab_size": 512, "use_cache": True, "torch_dtype": "float32",
    "image_aspect_ratio": "anyres_max_9", "image_grid_pinpoints": [[384, 384], [384, 768]],
    "mm_hidden_size": 16, "mm_patch_merge_type": "spatial_unpad",
    "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2, "mm_vision_tower": "google/siglip-so400m-patch14-384",
    "tokenizer_model_max_length": 32768, "tokenizer_padding_side": "right",
    "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 4,
                      "num_attention_heads": 2},
}
# generation_config.json of lmms-lab/LLaVA-Video-7B-Qwen2 (Qwen2-7B-Instruct's), with Qwen's ids
# mapped to the tiny tokenizer's: <|endoftext|> 151643 -> 0, <|im_end|> 151645 -> 2.
VIDEO_GENERATION_CONFIG = {"bos_token_id": 0, "pad_token_id": 0, "eos_token_id": [2, 0],
                           "do_sample": True, "repetition_penalty": 1.05, "temperature": 0.7,
                           "top_p": 0.8, "top_k": 20}
#: The backbones of our ``llava/`` models (tiny lmms-lab checkpoints).
BACKBONES = tuple(backbone_names("llava"))


def config_dict(backbone: str = "ov", vision_layers: int | None = None, **changes) -> dict:
    """config.json of a tiny checkpoint for ``backbone`` (``"ov"`` or ``"video"``).

    vision_layers: published tower layers (one fewer is used); 27 gives AOT's real layers 5 / 24.
    changes: top-level fields to set.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r}: expected one of {sorted(BACKBONES)}")
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg.update(llava_config_fields(backbone))
    if vision_layers is not None:
        cfg["vision_config"]["num_hidden_layers"] = vision_layers
    cfg.update(changes)
    return cfg


def make_tokenizer():
    """A byte-level BPE tokenizer trained in memory on :data:`CORPUS`, with Qwen's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"],
                                   chat_template=CHATML)


def random_model(backbone: str = "ov", seed: int = 0, vision_layers: int | None = None,
                 **changes):
    """A LlavaQwenForCausalLM with random weights (float32, eval mode)."""
    from llava.model import LlavaQwenConfig, LlavaQwenForCausalLM

    torch.manual_seed(seed)
    config = LlavaQwenConfig.from_dict(config_dict(backbone, vision_layers, **changes))
    model = LlavaQwenForCausalLM(config)
    with torch.no_grad():  # unit-scale newline so visual tokens are not drowned out
        model.model.image_newline.normal_()
    return model.eval()


def pooling_head_state(hidden_size: int = 16, num_heads: int = 2, intermediate_size: int = 32,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """A random SigLIP post-layernorm + attention-pooling head, as a state dict with the names of
    a SigLIP checkpoint (``vision_model.post_layernorm.*``, ``vision_model.head.*``): what
    :func:`aot_integrations.pooling_head.attach_pooling_head` takes (defaults: the widths of
    :func:`random_model`'s tower)."""
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    config = SiglipVisionConfig(hidden_size=hidden_size, num_attention_heads=num_heads,
                                intermediate_size=intermediate_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = SiglipMultiheadAttentionPoolingHead(config)
        norm = torch.nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        state = {f"vision_model.head.{k}": v for k, v in head.state_dict().items()}
        for key, value in norm.state_dict().items():
            state[f"vision_model.post_layernorm.{key}"] = value + torch.randn_like(value) * 0.1
        # nn.MultiheadAttention starts with zero biases: random ones exercise the projections
        for key in ("attention.in_proj_bias", "attention.out_proj.bias"):
            state[f"vision_model.head.{key}"] = torch.randn_like(state[f"vision_model.head.{key}"])
    return state


def write_checkpoint(folder, backbone: str = "ov", seed: int = 0, shards: int = 1,
                     vision_layers: int | None = None, drop: tuple[str, ...] = (),
                     rename: dict | None = None, generation_config: dict | None = None,
                     **changes):
    """Write config.json, safetensors (raw names, ``shards`` files) and the tokenizer.

    drop / rename: weight names to leave out / rename (to test loader errors).
    generation_config: written as ``generation_config.json`` when given (e.g.
    :data:`VIDEO_GENERATION_CONFIG`); published checkpoints may or may not ship one.
    Returns the in-memory model whose weights were written.
    """
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    model = random_model(backbone, seed, vision_layers, **changes)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in drop}
    for old, new in (rename or {}).items():
        state[new] = state.pop(old)
    names = sorted(state)
    if shards == 1:
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for shard in range(shards):
            part = names[shard::shards]
            file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: state[k] for k in part}, os.path.join(folder, file),
                      metadata={"format": "pt"})
            weight_map.update({k: file for k in part})
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as handle:
            json.dump({"metadata": {}, "weight_map": weight_map}, handle)
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(config_dict(backbone, vision_layers, **changes), handle, indent=1)
    if generation_config is not None:
        with open(os.path.join(folder, "generation_config.json"), "w") as handle:
            json.dump(generation_config, handle, indent=1)
    make_tokenizer().save_pretrained(folder)
    return model


# ------------------------------------------------------------------ transformers models and inputs
VOCAB = 300
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END, PAD = 290, 291, 292, 293, 0


def _text(text_layers: int = 2, **extra) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                num_hidden_layers=text_layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                pad_token_id=PAD, bos_token_id=1, eos_token_id=2, **extra)


#: Text head sizes the tiny Qwen models come in: 8 (the default, smallest) and 32, the smallest
#: vLLM's CPU attention kernel accepts (the serving tests' checkpoints).
HEAD_DIMS = (8, 32)


def _qwen_text(head_dim: int, interleaved: bool, text_layers: int = 2) -> dict:
    """The tiny Qwen text config for a text ``head_dim`` of :data:`HEAD_DIMS`: 8 is 4 heads of a
    32-wide model (2 KV heads); 32 is 2 heads of a 64-wide one (1 KV head). The M-RoPE sections
    split head_dim / 2 frequencies 2:1:1 over (t, h, w)."""
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim={head_dim!r}: expected one of {HEAD_DIMS}")
    quarter = head_dim // 4
    rope = {"rope_type": "default", "rope_theta": 10000.0,
            "mrope_section": [quarter, quarter // 2, quarter // 2]}
    if interleaved:
        rope["mrope_interleaved"] = True
    if head_dim == 8:
        return _text(text_layers, rope_parameters=rope, **({"head_dim": 8} if interleaved else {}))
    return _wide_text(head_dim, text_layers, rope_parameters=rope)


def _wide_text(head_dim: int, text_layers: int = 2, **extra) -> dict:
    """The tiny text config with 2 heads of ``head_dim`` (a 2 * head_dim wide model, 1 KV head)."""
    text = _text(text_layers, head_dim=head_dim, **extra)
    text.update(hidden_size=2 * head_dim, intermediate_size=4 * head_dim, num_attention_heads=2,
                num_key_value_heads=1)
    return text


def onevision(seed: int = 0, image_size: int = 84, vision_layers: int = 4,
              text_layers: int = 2, head_dim: int = 8):
    """``LlavaOnevisionForConditionalGeneration`` with random weights: SigLIP of
    ``vision_layers`` layers on ``image_size`` px (84 -> a 6x6 patch grid), Qwen2 text of
    ``text_layers`` layers with heads of ``head_dim`` (:data:`HEAD_DIMS`)."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              Qwen2Config, SiglipVisionConfig)

    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim={head_dim!r}: expected one of {HEAD_DIMS}")
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        text_config=Qwen2Config(**(_text(text_layers) if head_dim == 8
                                   else _wide_text(head_dim, text_layers))),
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=vision_layers, num_attention_heads=2,
                                         image_size=image_size, patch_size=14),
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_feature_layer=-1,
        vision_feature_select_strategy="full")
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.image_newline.normal_()
    model.generation_config.pad_token_id = PAD
    return model


def qwen2_5_vl(seed: int = 0, depth: int = 4, fullatt: tuple[int, ...] = (1, 3),
               text_layers: int = 2, head_dim: int = 8):
    """``Qwen2_5_VLForConditionalGeneration`` with random weights: a ``depth``-block windowed
    ViT (full attention in ``fullatt``), 2x2 merger, M-RoPE Qwen2.5 text of ``text_layers``
    layers with heads of ``head_dim`` (:func:`_qwen_text`)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    text = _qwen_text(head_dim, interleaved=False, text_layers=text_layers)
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=text["hidden_size"],
                           fullatt_block_indexes=list(fullatt),
                           window_size=112, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, tokens_per_second=2),
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = PAD
    return model


def qwen3_vl(seed: int = 0, depth: int = 4, deepstack: tuple[int, ...] = (1, 2),
             text_layers: int = 2, head_dim: int = 8):
    """``Qwen3VLForConditionalGeneration`` with random weights: a ``depth``-block ViT on 16-px
    patches with DeepStack levels after blocks ``deepstack``, interleaved M-RoPE text of
    ``text_layers`` layers with heads of ``head_dim`` (:func:`_qwen_text`)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    text = _qwen_text(head_dim, interleaved=True, text_layers=text_layers)
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=text["hidden_size"], patch_size=16,
                           spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=list(deepstack)),
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = PAD
    return model


def _batch(rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.tensor(row)
        mask[i, cols] = 1
    return ids, mask


def _prompt(seed: int, run: list[int]) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    before = torch.randint(3, 280, (3 + seed % 3,), generator=g).tolist()
    after = torch.randint(3, 280, (4 + seed % 2,), generator=g).tolist()
    return before + run + after


def onevision_inputs(frames: list[int], image_size: int = 84, seeds: list[int] | None = None,
                     left: bool = True) -> dict:
    """One video per row, as ``LlavaOnevisionProcessor`` lays it out: ``frames * ceil(g/2)^2 + 1``
    placeholders (g = image_size // 14), pixel_values_videos (B, F, 3, S, S). All rows need the
    same frame count (the processor's tensor is rectangular)."""
    if len(set(frames)) != 1:
        raise ValueError(f"onevision_inputs: one frame count per batch, got {frames}")
    seeds = seeds or list(range(len(frames)))
    side = -(-(image_size // 14) // 2)
    rows = [_prompt(s, [VIDEO_TOKEN] * (f * side * side + 1)) for s, f in zip(seeds, frames)]
    ids, mask = _batch(rows, left)
    pixels = torch.stack([torch.randn(frames[0], 3, image_size, image_size,
                                      generator=torch.Generator().manual_seed(100 + s))
                          for s in seeds])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pixels}


def qwen_inputs(grids: list[tuple[int, int, int]], seeds: list[int] | None = None,
                left: bool = True, fps: float = 2.0) -> dict:
    """One video per row, as ``Qwen2_5_VLProcessor`` lays it out: ``<vision_start>`` + t*h*w/4
    ``<video_pad>`` + ``<vision_end>``; flattened patches (sum t*h*w, 3*2*14*14); video_grid_thw;
    mm_token_type_ids (2 on video pads); second_per_grid_ts = temporal_patch_size / fps."""
    seeds = seeds or list(range(len(grids)))
    rows = [_prompt(s, [VISION_START] + [VIDEO_TOKEN] * (t * h * w // 4) + [VISION_END])
            for s, (t, h, w) in zip(seeds, grids)]
    ids, mask = _batch(rows, left)
    pixels = torch.cat([torch.randn(t * h * w, 3 * 2 * 14 * 14,
                                    generator=torch.Generator().manual_seed(100 + s))
                        for s, (t, h, w) in zip(seeds, grids)])
    types = (ids == VIDEO_TOKEN).long() * 2
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pixels,
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
            "second_per_grid_ts": torch.full((len(grids),), 2 / fps),
            "mm_token_type_ids": types}


def qwen3_inputs(grids: list[tuple[int, int, int]], seeds: list[int] | None = None,
                 left: bool = True) -> dict:
    """One video per row, as ``Qwen3VLProcessor`` lays it out: per temporal patch a timestamp
    (two text tokens standing for ``<{t} seconds>``), ``<vision_start>``, h*w/4 pads,
    ``<vision_end>``; flattened 16-px patches (sum t*h*w, 3*2*16*16); video_grid_thw;
    mm_token_type_ids."""
    seeds = seeds or list(range(len(grids)))
    rows = []
    for s, (t, h, w) in zip(seeds, grids):
        run = []
        for frame in range(t):
            run += [200 + frame, 250] + [VISION_START] + [VIDEO_TOKEN] * (h * w // 4) \
                + [VISION_END]
        rows.append(_prompt(s, run))
    ids, mask = _batch(rows, left)
    pixels = torch.cat([torch.randn(t * h * w, 3 * 2 * 16 * 16,
                                    generator=torch.Generator().manual_seed(100 + s))
                        for s, (t, h, w) in zip(seeds, grids)])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pixels,
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
            "mm_token_type_ids": (ids == VIDEO_TOKEN).long() * 2}


def _run(argv=None) -> None:
    """``python -m aot_integrations.tiny``: token counts and CPU times of the tiny models, stock vs reduced
    (one process, same inputs; times are medians of ``--repeats`` generate calls)."""
    import argparse
    import statistics
    import time

    import aot_integrations.hf

    parser = argparse.ArgumentParser(description=_run.__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--retention", type=float, nargs="+", default=[0.1, 0.25])
    args = parser.parse_args(argv)
    from aot.backbones import get_backbone

    knobs = {"onevision": get_backbone("ov").tiny, "qwen2_5_vl": get_backbone("qwen2_5_vl").tiny,
             "qwen3_vl": get_backbone("qwen3_vl").tiny}
    cases = {"onevision": (onevision(), onevision_inputs([16, 16])),
             "qwen2_5_vl": (qwen2_5_vl(), qwen_inputs([(8, 12, 12), (8, 12, 12)])),
             "qwen3_vl": (qwen3_vl(), qwen3_inputs([(8, 12, 12), (8, 12, 12)]))}
    print(f"{'model':<11} {'setting':<9} {'video tokens/row':>16} {'generate s':>10}")
    for name, (model, inputs) in cases.items():
        for retention in [None] + list(args.retention):
            handle = None if retention is None else aot_integrations.hf.apply(
                model, aot_integrations.hf.config_for(model, retention, **knobs[name]))
            seen = []
            hook = model.model.register_forward_pre_hook(
                lambda m, a, k: seen.append(k["input_ids"]), with_kwargs=True)
            times = []
            with torch.no_grad():
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model.generate(**inputs, max_new_tokens=8, do_sample=False)
                    times.append(time.perf_counter() - start)
            hook.remove()
            tokens = (seen[0] == VIDEO_TOKEN).sum(1).tolist()
            print(f"{name:<11} {'stock' if retention is None else f'r={retention}':<9} "
                  f"{str(tokens):>16} {statistics.median(times):>10.3f}")
            if handle is not None:
                handle.remove()



# -------------------------------------------------------------- transformers checkpoints on disk
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
#: The model types :func:`write_tiny_hf_checkpoint` writes: each of :data:`aot_integrations.hf.MODEL_TYPES`
#: (tests/test_demo_hf.py holds them equal).
HF_MODEL_TYPES = tuple(_VIDEO_PLACEHOLDER)


def _hf_tokenizer(model_type: str):
    """Byte-level BPE trained in memory (aot_integrations.tiny's corpus, plus digits for Qwen3-VL's
    ``<1.5 seconds>`` stamps) with :data:`HF_SPECIALS` as ids 0..8."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast


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
                             vision_layers: int = 4, frame_size: int = 224,
                             head_dim: int = 8) -> str:
    """A tiny random-weight transformers checkpoint of ``model_type`` (``qwen2_5_vl``,
    ``qwen3_vl``, ``llava_onevision``) in ``folder``: ``save_pretrained`` of the model built by
    :mod:`aot_integrations.tiny` (token ids pointed at the tokenizer's), the tokenizer with a chat
    template, the stock (PIL) image processor and ``processor_config.json``.

    LLaVA-OneVision's tower is built for ``frame_size`` px (its frames are resized to it); the
    Qwen towers take any size (the processor's grid); ``head_dim`` is the text head size
    (:data:`HEAD_DIMS`; vLLM's CPU attention needs 32). Returns ``folder``.
    """
    import json
    import os


    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r}: expected one of {HF_MODEL_TYPES}")
    tokenizer = _hf_tokenizer(model_type)
    ids = dict(zip(HF_SPECIALS, tokenizer.convert_tokens_to_ids(list(HF_SPECIALS))))
    if model_type == "llava_onevision":
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        model = onevision(seed, image_size=frame_size, vision_layers=vision_layers,
                          head_dim=head_dim)
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

        build = qwen2_5_vl if model_type == "qwen2_5_vl" else qwen3_vl
        model = build(seed, depth=vision_layers, head_dim=head_dim)
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


if __name__ == "__main__":
    _run()
