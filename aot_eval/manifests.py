"""lmms-eval registration (entry point group ``lmms_eval.models``).

``pyproject.toml``::

    [project.entry-points."lmms_eval.models"]
    aot = "aot_eval.manifests:manifests"
"""

from __future__ import annotations

MODELS = {
    "llava_onevision_aot": "aot_eval.lmms_models.LlavaOneVisionAOT",
    "llava_vid_aot": "aot_eval.lmms_models.LlavaVidAOT",
    "qwen2_5_vl_aot": "aot_eval.hf_models.Qwen2_5_VLAOT",
    "qwen3_vl_aot": "aot_eval.hf_models.Qwen3_VLAOT",
    "llava_hf_aot": "aot_eval.hf_models.LlavaHfAOT",
}

#: Chat-protocol classes: lmms-eval runs ``--model qwen2_5_vl`` / ``qwen3_vl`` as their chat class
#: unless ``--force_simple`` is given, and our ids resolve the same way. ``llava_hf_aot`` has the
#: simple class only: stock chat ``llava_hf`` fails on every video doc under transformers 5.24
#: (it passes ``images=[]`` to the processor: IndexError), so its working video path is
#: ``--model llava_hf --force_simple``.
CHAT_MODELS = {
    "qwen2_5_vl_aot": "aot_eval.hf_models.Qwen2_5_VLChatAOT",
    "qwen3_vl_aot": "aot_eval.hf_models.Qwen3_VLChatAOT",
}


def manifests():
    """``ModelManifest`` objects of our models; new ids only, the stock ids are left alone."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=model_id, simple_class_path=path,
                          chat_class_path=CHAT_MODELS.get(model_id))
            for model_id, path in MODELS.items()]


def register() -> None:
    """Register the manifests in lmms-eval's live registry (for runs without the entry point)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    for manifest in manifests():
        MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)
