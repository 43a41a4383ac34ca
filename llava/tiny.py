"""Tiny random-weight checkpoints in the exact lmms-lab layout, built offline.

For tests, the demo and CPU benchmarks: a published ``config.json`` with the widths shrunk, an
in-memory byte-level BPE tokenizer with Qwen's special tokens, and raw LLaVA-NeXT weight names in
(sharded) safetensors, loadable by :func:`llava.model.builder.load_pretrained_model` like a real
checkpoint. The SigLIP tower keeps the 27x27 patch grid of SigLIP-384, so AOT's 9x9 windows and
the 14x14 / 13x13 pooling are the real ones. Weights are random: outputs are meaningless.
"""

from __future__ import annotations

import json
import os

import torch

from llava.model.adapter import llava_config_fields

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
BACKBONES = ("ov", "video")


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
    from .model import LlavaQwenConfig, LlavaQwenForCausalLM

    torch.manual_seed(seed)
    config = LlavaQwenConfig.from_dict(config_dict(backbone, vision_layers, **changes))
    model = LlavaQwenForCausalLM(config)
    with torch.no_grad():  # unit-scale newline so visual tokens are not drowned out
        model.model.image_newline.normal_()
    return model.eval()


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
