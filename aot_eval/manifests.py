"""lmms-eval registration (entry point group ``lmms_eval.models``).

``pyproject.toml``::

    [project.entry-points."lmms_eval.models"]
    aot = "aot_eval.manifests:manifests"
"""

from __future__ import annotations

MODELS = {
    "llava_onevision_aot": "aot_eval.lmms_models.LlavaOneVisionAOT",
    "llava_vid_aot": "aot_eval.lmms_models.LlavaVidAOT",
}


def manifests():
    """``ModelManifest`` objects of our models; new ids only, the stock ids are left alone."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=model_id, simple_class_path=path)
            for model_id, path in MODELS.items()]


def register() -> None:
    """Register the manifests in lmms-eval's live registry (for runs without the entry point)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    for manifest in manifests():
        MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)
