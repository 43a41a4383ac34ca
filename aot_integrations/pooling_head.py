"""Attaching a SigLIP attention-pooling head to a model, for reducers that read its outputs
(``head_attention``, ``head_features``: FastVID).

LLaVA-OneVision and LLaVA-Video drop SigLIP's head; FastVID's release loads it (with the
post-layernorm before it) from google/siglip-so400m-patch14-384 and runs it on the tower output
the projector reads. Here the user attaches it explicitly, once per model instance::

    from aot_integrations.pooling_head import attach_pooling_head
    attach_pooling_head(model, "/path/to/siglip-so400m-patch14-384")   # folder, file or state dict

after which the LLaVA adapter and transformers' LlavaOnevision adapter give the head's outputs to
any reducer declaring them. A transformers tower built with its head (``vision_use_head=True``)
is used as it is. The Qwen-VL towers have no such head: their adapters give FastVID's Qwen
stand-ins instead (:func:`aot_integrations.hf.qwen.qwen_probe_attention`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from aot.pooling_head import PoolingHead, apply_pooling_head
from aot.video_path import EXTRA_INPUTS, HEAD_INPUTS, Reduction

#: Instance attribute holding the attached :class:`aot.pooling_head.PoolingHead`.
ATTRIBUTE = "aot_pooling_head"
HOW_TO_ATTACH = ("attach SigLIP's attention-pooling head first: aot_integrations.pooling_head."
                 "attach_pooling_head(model, <google/siglip-so400m-patch14-384 folder, "
                 "weights file or state dict>)")


def attach_pooling_head(model, source, *, num_heads: int | None = None,
                        eps: float | None = None) -> PoolingHead:
    """Attach a SigLIP post-layernorm + attention-pooling head to ``model`` (this instance only).

    Args:
        model: a ``llava/`` model or a transformers LlavaOnevision model.
        source: a :class:`PoolingHead`, a state dict of a SigLIP vision model with its head
            (``vision_model.post_layernorm.*``, ``vision_model.head.*``), a ``.safetensors`` /
            ``.bin`` / ``.pt`` file of one, or a folder holding ``model.safetensors`` (e.g. a
            download of google/siglip-so400m-patch14-384).
        num_heads, eps: the head's attention heads and layernorm epsilon; default: the model's
            vision config (``num_attention_heads``, ``layer_norm_eps``).
    Returns:
        the attached head (on the model's vision device, float32).
    """
    vision = _vision_config(model)
    if not isinstance(source, PoolingHead):
        heads = num_heads if num_heads is not None else vision.num_attention_heads
        epsilon = eps if eps is not None else getattr(vision, "layer_norm_eps", 1e-6)
        source = PoolingHead.from_state_dict(_load_state(source), num_heads=heads, eps=epsilon,
                                             activation=getattr(vision, "hidden_act",
                                                                "gelu_pytorch_tanh"))
    if source.channels != vision.hidden_size:
        raise ValueError(f"attach_pooling_head: the head has {source.channels} channels but the "
                         f"model's vision tower has hidden_size {vision.hidden_size}")
    device = next(model.parameters()).device
    head = source.to(device=device, dtype=torch.float32)
    model.__dict__[ATTRIBUTE] = head
    return head


def detach_pooling_head(model) -> None:
    """Undo :func:`attach_pooling_head` (a ValueError when none is attached)."""
    if model.__dict__.pop(ATTRIBUTE, None) is None:
        raise ValueError("detach_pooling_head: no pooling head is attached to this model")


def pooling_head_of(model, tower=None) -> PoolingHead | None:
    """The head attached to ``model``, else the one a transformers SigLIP ``tower`` was built with
    (``vision_model.head``), else None."""
    attached = model.__dict__.get(ATTRIBUTE)
    if attached is not None:
        return attached
    vision_model = getattr(tower, "vision_model", tower)
    built = getattr(vision_model, "head", None)
    norm = getattr(vision_model, "post_layernorm", None)
    if built is None or norm is None or not hasattr(built, "probe"):
        return None
    state = {f"post_layernorm.{k}": v for k, v in norm.state_dict().items()}
    state.update({f"head.{k}": v for k, v in built.state_dict().items()})
    config = vision_model.config
    return PoolingHead.from_state_dict(state, num_heads=config.num_attention_heads,
                                       eps=config.layer_norm_eps,
                                       activation=getattr(config, "hidden_act",
                                                          "gelu_pytorch_tanh"))


def check_extra_inputs(reduction: Reduction, head: PoolingHead | None, model_title: str) -> None:
    """Refuse a reduction reading the head's outputs when ``head`` is None (one clear line)."""
    needed = [name for name in reduction.extra_inputs if name in HEAD_INPUTS]
    if needed and head is None:
        raise ValueError(f"reducer {reduction.reducer!r} reads {list(needed)} of SigLIP's "
                         f"attention-pooling head, which {model_title} drops; {HOW_TO_ATTACH}")


def head_inputs(tower_output: torch.Tensor, head: PoolingHead | None,
                names) -> dict[str, torch.Tensor]:
    """:data:`aot.video_path.EXTRA_INPUTS` ``names`` from a tower output (N, T, C), the one the
    projector reads: ``head_attention`` (N, T) float32 and ``head_features`` (N, C) float32
    (nothing when ``names`` holds none of :data:`aot.video_path.HEAD_INPUTS`, which other
    captures serve; a ValueError when ``head`` is None)."""
    unknown = sorted(set(names) - set(EXTRA_INPUTS))
    if unknown:
        raise ValueError(f"unknown extra inputs {unknown}; expected names of {EXTRA_INPUTS}")
    names = [name for name in names if name in HEAD_INPUTS]
    if not names:
        return {}
    if head is None:
        raise ValueError(f"{list(names)} come from SigLIP's attention-pooling head, which this "
                         f"model lacks; {HOW_TO_ATTACH}")
    attention, pooled = apply_pooling_head(tower_output, head)
    outputs = {"head_attention": attention, "head_features": pooled}
    return {name: outputs[name] for name in names}


def _vision_config(model):
    tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
    vision = getattr(tower, "config", None)
    if not hasattr(vision, "hidden_size"):
        vision = getattr(getattr(model, "config", None), "vision_config", None)
    if not hasattr(vision, "hidden_size"):
        raise TypeError(f"attach_pooling_head: {type(model).__name__} has no vision config; "
                        "expected a llava/ or transformers LlavaOnevision model")
    return vision


def _load_state(source) -> Mapping[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"attach_pooling_head: expected a PoolingHead, a state dict or a path, "
                        f"got {type(source).__name__}")
    path = os.fspath(source)
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if not os.path.isfile(path):
        raise ValueError(f"attach_pooling_head: {path!r} is not a file; expected a SigLIP "
                         "checkpoint folder holding model.safetensors or a weights file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)
