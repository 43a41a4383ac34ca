"""Tiny lmms-lab-layout checkpoints built on the fly (random weights, in-memory BPE tokenizer).

The towers keep SigLIP-384's 27x27 patch grid (so AOT's 9x9 windows and the 14x14 / 13x13
pooling are the real ones) with a very small width and 4 published layers (3 used).
"""

from __future__ import annotations

import json
import os

import torch

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["What happens in the video? A person walks a dog in the park.",
          "You are a helpful assistant. Answer with the option's letter from the given choices.",
          "system user assistant (A) (B) (C) (D) The best answer is: yes no red blue"] * 4

# The fields a published lmms-lab config.json carries (sizes shrunk).
BASE_CONFIG = {
    "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen",
    "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": 32,
    "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "max_position_embeddings": 4096, "max_window_layers": 2,
    "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": 4096, "use_sliding_window": False, "tie_word_embeddings": False,
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
BACKBONES = {
    "ov": {"mm_spatial_pool_mode": "bilinear", "mm_newline_position": "one_token"},
    "video": {"mm_spatial_pool_mode": "average", "mm_newline_position": "grid"},
}


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"],
                                   chat_template=CHATML)


def config_dict(backbone: str = "ov", **changes) -> dict:
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg.update(BACKBONES[backbone])
    cfg.update(changes)
    return cfg


def random_model(backbone: str = "ov", seed: int = 0, **changes):
    """A LlavaQwenForCausalLM with random weights (float32, eval mode)."""
    from llava.model import LlavaQwenConfig, LlavaQwenForCausalLM

    torch.manual_seed(seed)
    model = LlavaQwenForCausalLM(LlavaQwenConfig.from_dict(config_dict(backbone, **changes)))
    with torch.no_grad():  # larger newline / projector scale so visual tokens matter
        model.model.image_newline.normal_()
    return model.eval()


def write_checkpoint(folder, backbone: str = "ov", seed: int = 0, shards: int = 2,
                     drop: tuple[str, ...] = (), rename: dict | None = None, **changes):
    """Write an lmms-lab-layout checkpoint (sharded safetensors, raw names) into ``folder``.

    Returns the in-memory model whose weights were written.
    """
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    model = random_model(backbone, seed, **changes)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in drop}
    for old, new in (rename or {}).items():
        state[new] = state.pop(old)
    names = sorted(state)
    weight_map = {}
    for shard in range(shards):
        part = names[shard::shards]
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, os.path.join(folder, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {}, "weight_map": weight_map}, handle)
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(config_dict(backbone, **changes), handle)
    make_tokenizer().save_pretrained(folder)
    return model


def video_pixels(frames: int, seed: int = 0) -> torch.Tensor:
    """(frames, 3, 384, 384) preprocessed-looking pixels in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 3, 384, 384, generator=generator) * 2 - 1
