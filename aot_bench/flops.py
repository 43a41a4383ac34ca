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

from .configs import QwenShape, Shape

#: SigLIP patch grid at 384 px / 14 px patches.
PATCHES_PER_FRAME = 27 * 27
PATCH_PIXELS = 3 * 14 * 14


def llm_prefill_flops(shape: Shape, seq_len: int, logits: int = 1) -> int:
    """FLOPs of one Qwen2 prefill over ``seq_len`` tokens (counter convention, see module doc).

    Per layer: q/o projections 2·L·h·h each, k/v projections 2·L·h·(kv·d) each, the SwiGLU MLP
    3·2·L·h·m, and attention scores + weighted values 2·2·L²·d·heads. Plus the LM head on
    ``logits`` positions: 2·logits·h·vocab.
    """
    return shape.lm_layers * _layer_flops(shape, seq_len) + 2 * logits * shape.lm_hidden * \
        shape.vocab


def _layer_flops(shape: Shape, seq_len: int) -> int:
    """One decoder layer over ``seq_len`` tokens (see :func:`llm_prefill_flops`)."""
    L, h, m = int(seq_len), shape.lm_hidden, shape.lm_intermediate
    d, heads, kv = shape.lm_head_dim, shape.lm_heads, shape.lm_kv_heads
    projections = 2 * L * h * (2 * heads * d + 2 * kv * d)
    mlp = 3 * 2 * L * h * m
    attention = 2 * 2 * L * L * d * heads
    return projections + mlp + attention


def llm_stage_prefill_flops(shape: Shape, seq_len: int, layer: int, kept_len: int,
                            logits: int = 1) -> int:
    """Prefill FLOPs with an LLM stage (:mod:`aot.llm_stages`) at ``layer`` K: layers 0..K-1 on
    ``seq_len`` tokens, layers K.. on ``kept_len``, plus the stage's own products (the keys of
    layer K-1 again, 2·L·h·kv·d, one query row, 2·h·heads·d, and one score row per head,
    2·L·heads·d; a merging stage's similarity matrix is not counted)."""
    if not 1 <= layer < shape.lm_layers or not 0 < kept_len <= seq_len:
        raise ValueError(f"layer={layer}, kept_len={kept_len}: expected 1 <= layer < "
                         f"{shape.lm_layers} and 0 < kept_len <= seq_len={seq_len}")
    h, d = shape.lm_hidden, shape.lm_head_dim
    heads, kv = shape.lm_heads, shape.lm_kv_heads
    score = 2 * seq_len * h * kv * d + 2 * h * heads * d + 2 * seq_len * heads * d
    return (layer * _layer_flops(shape, seq_len)
            + (shape.lm_layers - layer) * _layer_flops(shape, kept_len)
            + score + 2 * logits * h * shape.vocab)


def vision_flops(shape: Shape, frames: int) -> int:
    """FLOPs of the tower (patch embedding + used layers) and the projector for ``frames``
    frames of 729 patches (counter convention; capture adds no matrix product)."""
    T, c, i, H = PATCHES_PER_FRAME, shape.vision_hidden, shape.vision_intermediate, shape.lm_hidden
    patch = 2 * T * c * PATCH_PIXELS
    layer = 2 * T * 4 * c * c + 2 * 2 * T * c * i + 2 * 2 * T * T * c
    projector = 2 * T * c * H + 2 * T * H * H
    return frames * (patch + shape.vision_layers * layer + projector)


def qwen_window_lengths(rows: int, cols: int, shape: QwenShape) -> list[int]:
    """Patches in each attention window of one temporal patch of ``rows`` x ``cols`` merged
    tokens: windows of ``window_size / patch_size / merge_size`` merged tokens per side (4 for
    112 / 14 / 2), the last row / column of windows smaller where the side does not divide."""
    side = shape.window_size // shape.patch_size // shape.merge_size
    unit = shape.merge_size ** 2

    def spans(n: int) -> list[int]:
        return [side] * (n // side) + ([n % side] if n % side else [])

    return [unit * r * c for r in spans(rows) for c in spans(cols)]


def qwen_vision_flops(shape: QwenShape, grid_thw: tuple[int, int, int]) -> int:
    """FLOPs of Qwen2.5-VL's ViT and merger on one video of ``grid_thw`` = (t, h, w) patches
    (counter convention). Patch embedding (a 3-D convolution over 3 x 2 x 14 x 14 pixels),
    per block qkv / proj / SwiGLU MLP on all N = t*h*w patches, attention over each temporal
    patch's h*w patches in the full-attention blocks and over each window elsewhere, and the
    merger's two layers on N / 4 merged tokens."""
    t, h, w = (int(x) for x in grid_thw)
    n, c, m = t * h * w, shape.vision_hidden, shape.vision_intermediate
    unit = shape.merge_size ** 2
    pixels = 3 * shape.temporal_patch_size * shape.patch_size ** 2
    full = t * (h * w) ** 2
    windowed = t * sum(k * k for k in qwen_window_lengths(h // shape.merge_size,
                                                          w // shape.merge_size, shape))
    total = 2 * n * c * pixels
    for block in range(shape.vision_layers):
        squares = full if block in shape.fullatt_blocks else windowed
        total += 2 * n * c * 3 * c + 2 * n * c * c + 3 * 2 * n * c * m + 2 * 2 * squares * c
    merged = n // unit
    total += 2 * merged * (unit * c) ** 2 + 2 * merged * unit * c * shape.lm_hidden
    return total


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
