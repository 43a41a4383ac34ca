"""The integration layer: where model libraries meet the pure-torch core (:mod:`aot`).

One adapter per backbone family joins a model to the one video path (:mod:`aot.video_path`):
frames -> encoder with attention capture -> any registered reducer (:mod:`aot.reducers`) ->
the packed visual sequence the LLM reads.

* :mod:`aot_integrations.llava`: our ``llava/`` models (LLaVA-OneVision, LLaVA-Video).
* :mod:`aot_integrations.hf`: transformers' own classes (LlavaOnevision, Qwen2.5-VL, Qwen3-VL),
  patched per instance with ``apply`` / ``remove``.
* :mod:`aot_integrations.vllm`: a vLLM plugin serving Qwen2.5-VL with any reducer in exact mode
  (imports vLLM; runs in the serving environment, docs/serving.md).
* :mod:`aot_integrations.tiny`: tiny random-weight models and checkpoints of every backbone.

The facts of each backbone (grid, pooling, newlines, layers, protocol) live in its record in
:mod:`aot.backbones`; adapters hold only model-specific code. Nothing here is imported by
``import aot``.
"""
