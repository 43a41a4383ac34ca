"""LLaVA-OneVision / LLaVA-Video on transformers, with AOT token reduction inside.

The package mirrors the public surface of LLaVA-NeXT (``llava.constants``, ``llava.conversation``,
``llava.mm_utils``, ``llava.model.builder.load_pretrained_model``) so that scripts and lmms-eval's
stock ``llava_onevision`` / ``llava_vid`` wrappers run unchanged. The implementation is our own,
built on transformers' Qwen2 and SigLIP modules. See ``docs/llava.md``.

This top-level module stays import-light on purpose: ``llava.constants`` must not pull in torch.
"""

__all__ = ["constants", "conversation", "mm_utils", "model", "video"]
