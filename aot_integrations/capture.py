"""Attention received at chosen vision layers of a stock tower (transformers' or vLLM's), one
frame at a time.

Each model family computes its attention from the hooked module's inputs (``siglip_received`` in
:mod:`aot_integrations.hf.llava_onevision`, ``qwen_vision_received`` in
:mod:`aot_integrations.hf.qwen`, their vLLM twins in :mod:`aot_integrations.vllm`); this module
holds the hooks and imports no model library, so both integrations share it.

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


@contextlib.contextmanager
def capturing(modules: dict[int, torch.nn.Module],
              compute: Callable) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Hook ``modules`` (layer -> attention module) for the duration of the block.

    Yields layer -> list of received-attention tensors, one per call of that module (``compute``
    is the family's recomputation of its attention, e.g.
    :func:`aot_integrations.hf.qwen.qwen_vision_received`). Hooks are removed on exit, even
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
