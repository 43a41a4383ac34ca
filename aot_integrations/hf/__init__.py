"""AOT (or any registered reducer) on a stock transformers video LLM, with no fork.

::

    import aot_integrations.hf
    handle = aot_integrations.hf.apply(model, aot_integrations.hf.config_for(model, 0.10))   # exact 10 % of the tokens
    out = model.generate(**processor(text=[prompt], videos=[video], return_tensors="pt"))
    handle.remove()                                                  # the stock model again

:func:`apply` patches the *instance* (never the class): its ``generate`` and ``forward`` encode
the videos first (capturing received attention at the reducer's two vision layers), reduce each
video, shorten ``input_ids`` / ``attention_mask`` (and ``mm_token_type_ids``) to the reduced
runs, and call the stock method with the ready features as ``mm_encoder_outputs`` (and, for
M-RoPE models, every kept token's original (t, h, w) position). ``generate`` returns the caller's
original prompt ids followed by the new tokens, as the stock model does; KV cache, padding,
batches and sampling flags are the stock ones.

Modules: :mod:`.install` (apply / remove), :mod:`.settings` (config_for, reduced_token_count),
:mod:`.adapters` (the registry; :mod:`.base`, :mod:`.llava_onevision`, :mod:`.qwen` the
adapters), :mod:`.capture` (received attention), :mod:`.sequence` (shortened prompts).

Supported (transformers 5.24): ``LlavaOnevisionForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``, ``Qwen3VLForConditionalGeneration``. transformers is
imported lazily; ``aot`` core modules never import it. Inference only: the videos are encoded
under ``torch.no_grad``.
"""

from .adapters import ADAPTERS, MODEL_TYPES, adapter_for, register_adapter
from .install import Handle, apply, remove
from .settings import config_for, reduced_token_count

__all__ = ["ADAPTERS", "MODEL_TYPES", "Handle", "adapter_for", "apply", "config_for",
           "reduced_token_count", "register_adapter", "remove"]
