"""Attention received at chosen vision layers of a stock transformers tower, one frame at a time.

The tower keeps its own attention kernel (sdpa, flash, eager: whatever the user loaded). A forward
hook on the attention module of each chosen layer re-reads that module's input, recomputes its
queries and keys, and materialises the softmax of one attention segment (one frame, or one window
of a windowed block) at a time in float32; the tower's output is untouched, so the encoded
features are bit-identical to the stock model's. The cost is one extra q/k projection at two
layers. Hooks live only for the duration of one encode (:func:`capturing`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from aot.anchors import received_attention


def siglip_received(module, args, kwargs) -> torch.Tensor:
    """Received attention of a SigLIP attention module's input.

    hidden_states: (N, T, C), one image (frame) per row. Returns (N, T) float32, computed one
    frame at a time (heads x T x T in memory).
    """
    hidden = args[0] if args else kwargs["hidden_states"]
    frames, tokens, _ = hidden.shape
    out = []
    for frame in range(frames):
        h = hidden[frame:frame + 1]
        q = module.q_proj(h).view(1, tokens, -1, module.head_dim).transpose(1, 2)
        k = module.k_proj(h).view(1, tokens, -1, module.head_dim).transpose(1, 2)
        probs = (torch.matmul(q.float(), k.float().transpose(-1, -2)) * module.scale).softmax(-1)
        out.append(received_attention(probs))
    return torch.cat(out)


def qwen_vision_received(module, args, kwargs) -> torch.Tensor:
    """Received attention of a Qwen2.5-VL / Qwen3-VL vision attention module's input.

    hidden_states: (S, C) the packed patches of every image/video (in the tower's order: window
    order for Qwen2.5-VL), with ``cu_seqlens`` the attention segments of that block (one frame
    per temporal patch in a full-attention block, one window in a windowed block) and
    ``position_embeddings`` (cos, sin). Returns (S,) float32 in the same order: the attention
    each patch receives inside its segment (sum over queries, mean over heads).
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    hidden = args[0] if args else kwargs["hidden_states"]
    cu_seqlens = kwargs["cu_seqlens"]
    cos, sin = kwargs["position_embeddings"]
    seq = hidden.shape[0]
    qkv = module.qkv(hidden).reshape(seq, 3, module.num_heads, -1).permute(1, 0, 2, 3)
    q, k = apply_rotary_pos_emb_vision(qkv[0], qkv[1], cos, sin)
    out = torch.empty(seq, dtype=torch.float32, device=hidden.device)
    bounds = cu_seqlens.tolist()
    for start, stop in zip(bounds[:-1], bounds[1:]):
        qs = q[start:stop].transpose(0, 1).float()          # (heads, n, d)
        ks = k[start:stop].transpose(0, 1).float()
        probs = (torch.matmul(qs, ks.transpose(-1, -2)) * module.scaling).softmax(-1)
        out[start:stop] = received_attention(probs[None])[0]
    return out


@contextlib.contextmanager
def capturing(modules: dict[int, torch.nn.Module],
              compute: Callable) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Hook ``modules`` (layer -> attention module) for the duration of the block.

    Yields layer -> list of received-attention tensors, one per call of that module (``compute``
    is :func:`siglip_received` or :func:`qwen_vision_received`). Hooks are removed on exit, even
    on error.
    """
    sinks: dict[int, list[torch.Tensor]] = {layer: [] for layer in modules}
    handles = []
    try:
        for layer, module in modules.items():
            def hook(mod, args, kwargs, output, _sink=sinks[layer]):
                with torch.no_grad():
                    _sink.append(compute(mod, args, kwargs))
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield sinks
    finally:
        for handle in handles:
            handle.remove()
