"""A tiny random-weight LLaVA-OneVision checkpoint, written on the fly in lmms-lab layout.

It lets the demo run offline on a laptop CPU with no download: the SigLIP tower keeps the real
27x27 patch grid and the real layer count (27 published, 26 used), so AOT's default anchor layers
(5 and 24), 9x9 windows and 14x14 bilinear pooling are exactly those of LLaVA-OV-7B; only the
widths are tiny. The weights are random: anchors follow the attention of a random tower and the
answer is gibberish. The checkpoint is loaded through ``llava.model.builder.load_pretrained_model``
like a real one.
"""

from __future__ import annotations

import json
import os

import torch

#: Printed wherever the tiny model's output appears.
RANDOM_LABEL = "tiny RANDOM-weight LLaVA-OV (not a trained model: its answer is meaningless)"

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Text the in-memory BPE tokenizer is trained on (it only has to tokenise prompts sensibly).
CORPUS = ["You are a helpful assistant.",
          "What happens in the video? Describe the video in one sentence.",
          "A rabbit walks in a green meadow. A person rides a bike on the road.",
          "Answer with the option's letter from the given choices. (A) (B) (C) (D) yes no"] * 4

# A published lmms-lab config.json (llava-onevision-qwen2-7b-ov) with the widths shrunk.
CONFIG = {
    "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen",
    "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": 32,
    "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "max_position_embeddings": 8192, "max_window_layers": 2,
    "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": 8192, "use_sliding_window": False, "tie_word_embeddings": False,
    "vocab_size": 512, "use_cache": True, "torch_dtype": "float32",
    "image_aspect_ratio": "anyres_max_9", "image_grid_pinpoints": [[384, 384]],
    "mm_hidden_size": 16, "mm_patch_merge_type": "spatial_unpad",
    "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2, "mm_vision_tower": "google/siglip-so400m-patch14-384",
    "mm_spatial_pool_mode": "bilinear", "mm_newline_position": "one_token",
    "tokenizer_model_max_length": 32768, "tokenizer_padding_side": "right",
    # 27 published layers (26 used), as SigLIP so400m: AOT's layers 5 and 24 exist.
    "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 27,
                      "num_attention_heads": 2},
}


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


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the tiny model under their raw LLaVA-NeXT names."""
    from llava.model import LlavaQwenConfig, LlavaQwenForCausalLM

    torch.manual_seed(seed)
    model = LlavaQwenForCausalLM(LlavaQwenConfig.from_dict(json.loads(json.dumps(CONFIG))))
    with torch.no_grad():  # unit-scale newline so visual tokens are not drowned out
        model.model.image_newline.normal_()
    return {name: tensor.contiguous() for name, tensor in model.state_dict().items()}


def write_tiny_checkpoint(folder: str, seed: int = 0) -> str:
    """Write config.json, model.safetensors and the tokenizer into ``folder``; returns it."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file(random_state_dict(seed), os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(CONFIG, handle, indent=1)
    make_tokenizer().save_pretrained(folder)
    return folder
