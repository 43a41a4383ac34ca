"""The registry of transformers adapters: which adapter serves which model class.

One module per model family holds the adapters (:mod:`.llava_onevision`, :mod:`.qwen`); a new
one registers with :func:`register_adapter` (docs/backbones.md, "Add a backbone").
"""

from __future__ import annotations

from .base import HFAdapter, relative_layers  # noqa: F401  (the adapters' shared parts)
from .llava_onevision import OneVisionAdapter
from .qwen import Qwen3VLAdapter, Qwen25VLAdapter

#: transformers class name -> adapter class.
ADAPTERS = {
    "LlavaOnevisionForConditionalGeneration": OneVisionAdapter,
    "Qwen2_5_VLForConditionalGeneration": Qwen25VLAdapter,
    "Qwen3VLForConditionalGeneration": Qwen3VLAdapter,
}

#: ``config.json`` ``model_type`` -> the transformers class name of :data:`ADAPTERS` that loads it.
MODEL_TYPES = {adapter.model_type: name for name, adapter in ADAPTERS.items()}


def adapter_for(model) -> HFAdapter:
    """The adapter of a stock transformers model (by class, walking its bases)."""
    for cls in type(model).__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__](model)
    raise ValueError(f"aot_integrations.hf supports {sorted(ADAPTERS)}; got {type(model).__name__}")


def register_adapter(class_name: str, adapter: type[HFAdapter]) -> type[HFAdapter]:
    """Serve transformers models of class ``class_name`` (or a subclass) with ``adapter``;
    returns it. The adapter names its backbone record (``backbone_name``) and its checkpoints'
    ``model_type``."""
    if not isinstance(class_name, str) or not class_name:
        raise TypeError(f"register_adapter: class_name={class_name!r}: expected the transformers "
                        "class name, a non-empty string")
    if not (isinstance(adapter, type) and issubclass(adapter, HFAdapter)):
        raise TypeError(f"register_adapter: {adapter!r} is not an HFAdapter subclass")
    if class_name in ADAPTERS and ADAPTERS[class_name] is not adapter:
        raise ValueError(f"register_adapter: {class_name!r} is served by "
                         f"{ADAPTERS[class_name].__name__} already")
    ADAPTERS[class_name] = adapter
    MODEL_TYPES[adapter.model_type] = class_name
    return adapter
