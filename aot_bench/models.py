"""The benchmarked model: random weights at a preset's shapes, or a real checkpoint."""

from __future__ import annotations

import torch

from aot_integrations.llava import backbone_name
from llava.model.builder import DTYPES

from .configs import QwenShape, Shape, llava_config_dict, qwen_config, shape_from_config

_NORM_PARTS = ("norm", "layer_norm")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` = bfloat16 on CUDA, float32 on CPU; else one of :data:`DTYPES`."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """``auto`` = the first CUDA device if present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def random_model(shape: Shape, backbone: str, device: torch.device, dtype: torch.dtype,
                 attn: str = "sdpa", seed: int = 0):
    """A LlavaQwenForCausalLM at ``shape`` with random weights, built on the meta device and
    materialised directly on ``device`` in ``dtype`` (no float32 copy, no download).

    Weights: normal(0, 0.02) for matrices and the newline, ones / zeros for norms and biases.
    """
    from llava.model import LlavaQwenConfig
    from llava.model.builder import build_model, refresh_rotary

    config = LlavaQwenConfig.from_dict(llava_config_dict(shape, backbone))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
    try:
        model = build_model(config, attn)
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            _init_parameter(name, param, generator)
        embeddings = model.get_vision_tower().vision_tower.vision_model.embeddings
        embeddings.position_ids = torch.arange(embeddings.num_positions,
                                               device=device).expand((1, -1))
    refresh_rotary(model)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device: {left[:10]}")
    return model.eval()


def _init_parameter(name: str, param: torch.Tensor, generator: torch.Generator) -> None:
    """In-place random init by role (see :func:`random_model`)."""
    is_norm = any(part in name for part in _NORM_PARTS)
    if is_norm and name.endswith("weight"):
        param.fill_(1.0)
    elif name.endswith("bias"):
        param.zero_()
    else:
        param.normal_(0.0, 0.02, generator=generator)


def load_checkpoint(path: str, device: torch.device, dtype: torch.dtype, attn: str = "sdpa"):
    """(model, shape, backbone) from an lmms-lab checkpoint folder or cached hub id."""
    from llava.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(path, None, "llava_qwen", device_map=str(device),
                                           torch_dtype=dtype, attn_implementation=attn)
    return model.eval(), shape_from_config(model.config), backbone_name(model)


def set_backbone(model, backbone: str) -> None:
    """Switch pooling / newline packing of a random-weight model to ``backbone`` (the two 7B
    models share every shape, so one set of random weights serves both)."""
    from aot_integrations.llava import llava_config_fields

    for key, value in llava_config_fields(backbone).items():
        setattr(model.config, key, value)
    model.set_aot(None)


def random_qwen_model(shape: QwenShape, device: torch.device, dtype: torch.dtype,
                      attn: str = "sdpa", seed: int = 0):
    """transformers' ``Qwen2_5_VLForConditionalGeneration`` at ``shape`` with random weights,
    built directly on ``device`` in ``dtype`` (transformers' own init: normal(0, 0.02) matrices,
    unit norms; rotary buffers in float32). ``attn`` for the LLM and the ViT (FLOP counting
    needs ``eager``)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(qwen_config(shape, attn))
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = 0
    return model.eval()
