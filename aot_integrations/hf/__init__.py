"""AOT (or any registered reducer) on a stock transformers video LLM, with no fork.

::

    import aot_integrations.hf
    handle = aot_integrations.hf.apply(model, aot_integrations.hf.config_for(model, 0.10))   # exact 10 % of the tokens
    out = model.generate(**processor(text=[prompt], videos=[video], return_tensors="pt"))
    handle.remove()                                                  # the stock model again

:func:`apply` patches the *instance* (never the class); how, and what ``generate`` returns: see
:mod:`.install`.

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
