"""Prefill FLOPs: an analytic formula and a count with ``torch.utils.flop_counter``.

Convention (that of ``FlopCounterMode``): a multiply-add is 2 FLOPs; matrix products only (bias
adds, norms, activations, softmax, rotary are not counted); attention costs the full
``L x L`` score matrix (the causal mask is not halved), which is what eager attention computes.
Prefill returns the logits of the last position only (``logits_to_keep=1``), as generation does.

The paper's 40.8 T (OV, 32 frames) / 80.2 T (Video, 64 frames) use another convention (FastV's:
``layers x (4 n h^2 + 2 n^2 h + 2 n h m)`` over the n visual tokens, i.e. multiply-adds, no GQA,
two MLP matrices); :func:`paper_prefill_flops` reproduces it for comparison.
"""

from __future__ import annotations

import functools

import torch

from .configs import Shape

#: SigLIP patch grid at 384 px / 14 px patches.
PATCHES_PER_FRAME = 27 * 27
PATCH_PIXELS = 3 * 14 * 14


def llm_prefill_flops(shape: Shape, seq_len: int, logits: int = 1) -> int:
    """FLOPs of one Qwen2 prefill over ``seq_len`` tokens (counter convention, see module doc).

    Per layer: q/o projections 2·L·h·h each, k/v projections 2·L·h·(kv·d) each, the SwiGLU MLP
    3·2·L·h·m, and attention scores + weighted values 2·2·L²·d·heads. Plus the LM head on
    ``logits`` positions: 2·logits·h·vocab.
    """
    L, h, m = int(seq_len), shape.lm_hidden, shape.lm_intermediate
    d, heads, kv = shape.lm_head_dim, shape.lm_heads, shape.lm_kv_heads
    projections = 2 * L * h * (2 * heads * d + 2 * kv * d)
    mlp = 3 * 2 * L * h * m
    attention = 2 * 2 * L * L * d * heads
    return shape.lm_layers * (projections + mlp + attention) + 2 * logits * h * shape.vocab


def vision_flops(shape: Shape, frames: int) -> int:
    """FLOPs of the tower (patch embedding + used layers) and the projector for ``frames``
    frames of 729 patches (counter convention; capture adds no matrix product)."""
    T, c, i, H = PATCHES_PER_FRAME, shape.vision_hidden, shape.vision_intermediate, shape.lm_hidden
    patch = 2 * T * c * PATCH_PIXELS
    layer = 2 * T * 4 * c * c + 2 * 2 * T * c * i + 2 * 2 * T * T * c
    projector = 2 * T * c * H + 2 * T * H * H
    return frames * (patch + shape.vision_layers * layer + projector)


def paper_prefill_flops(shape: Shape, visual_tokens: int) -> int:
    """The paper's (FastV-style) prefill FLOPs: layers x (4 n h² + 2 n² h + 2 n h m), n = visual
    tokens without newlines. Gives 40.8e12 for OV-7B at 32 x 196 and 80.2e12 for Video-7B at
    64 x 169."""
    n, h, m = int(visual_tokens), shape.lm_hidden, shape.lm_intermediate
    return shape.lm_layers * (4 * n * h * h + 2 * n * n * h + 2 * n * h * m)


@functools.lru_cache(maxsize=8)
def _meta_lm(shape: Shape):
    """A Qwen2 causal LM with ``shape``'s sizes on the meta device, eager attention."""
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=shape.lm_hidden, num_hidden_layers=shape.lm_layers,
                         num_attention_heads=shape.lm_heads,
                         num_key_value_heads=shape.lm_kv_heads,
                         intermediate_size=shape.lm_intermediate, vocab_size=shape.vocab,
                         max_position_embeddings=max(shape.max_context, 1 << 20),
                         rope_theta=1000000.0, tie_word_embeddings=False)
    config._attn_implementation = "eager"
    with torch.device("meta"):
        return Qwen2ForCausalLM(config).eval()


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """(FLOPs counted by ``FlopCounterMode`` while running ``fn(*args, **kwargs)``, its result)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return int(counter.get_total_flops()), result


def counted_prefill_flops(shape: Shape, seq_len: int) -> int:
    """Prefill FLOPs counted by ``FlopCounterMode`` on transformers' Qwen2 with eager attention.

    Runs on the meta device (shapes only), so even 7B at 128 frames costs no memory or time.
    """
    model = _meta_lm(shape)
    embeds = torch.empty(1, int(seq_len), shape.lm_hidden, device="meta")
    with torch.no_grad():
        flops, _ = count_flops(model, inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
    return flops
