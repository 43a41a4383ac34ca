"""lmms-eval registration (entry point group ``lmms_eval.models``).

``pyproject.toml``::

    [project.entry-points."lmms_eval.models"]
    aot = "aot_eval.manifests:manifests"
"""

from __future__ import annotations

from aot.backbones import eval_protocols


def models() -> dict:
    """Our model id -> dotted path of its simple lmms-eval class, one per eval protocol of
    :mod:`aot.backbones`."""
    return {protocol.model_id: protocol.plugin for protocol in eval_protocols()}


def chat_models() -> dict:
    """Our model id -> dotted path of its chat-protocol class, for the protocols that have one:
    lmms-eval runs a stock model as its chat class unless ``--force_simple`` is given, and our
    ids resolve the same way. A protocol without one runs its simple class (its record says
    why)."""
    return {protocol.model_id: protocol.chat_plugin for protocol in eval_protocols()
            if protocol.chat_plugin}


def manifests():
    """``ModelManifest`` objects of our models; new ids only, the stock ids are left alone."""
    from lmms_eval.models.registry_v2 import ModelManifest

    chat = chat_models()
    return [ModelManifest(model_id=model_id, simple_class_path=path,
                          chat_class_path=chat.get(model_id))
            for model_id, path in models().items()]


def register() -> None:
    """Register the manifests in lmms-eval's live registry (for runs without the entry point)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    for manifest in manifests():
        MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)
