"""``LlavaConfig`` (model_type ``llava_llama``), present because lmms-eval's stock ``llava_vid``
imports and registers it. Only the configuration exists: the Llama-based LLaVA models are not
implemented here (loading one raises a clear error in ``load_pretrained_model``)."""

from transformers import LlamaConfig


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"
