"""LLaVA-OneVision-7B / LLaVA-Video-7B-Qwen2: transformers' Qwen2 causal LM plus the SigLIP tower,
projector and newline of :mod:`llava.model.llava_arch`.

Parameter names equal the raw lmms-lab checkpoint names (``model.layers.*``,
``model.vision_tower.vision_tower.vision_model.*``, ``model.mm_projector.{0,2}.*``,
``model.image_newline``, ``lm_head.weight``), so ``state_dict()`` round-trips the published
layout. Load checkpoints with :func:`llava.model.builder.load_pretrained_model`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen2PreTrainedModel,
)

from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaQwenConfig(Qwen2Config):
    """Qwen2 config plus LLaVA's ``mm_*`` fields (kept as plain attributes from config.json)."""

    model_type = "llava_qwen"


class LlavaQwenModel(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwenConfig

    def __init__(self, config: LlavaQwenConfig):
        super().__init__(config)
        self.init_multimodal(config)


class LlavaQwenForCausalLM(Qwen2ForCausalLM, LlavaMetaForCausalLM):
    """Qwen2ForCausalLM whose ``forward`` / ``generate`` also take ``images`` and ``modalities``
    (LLaVA-NeXT signature). AOT: :meth:`set_aot` or ``load_pretrained_model(..., aot_config=...)``."""

    config_class = LlavaQwenConfig

    def __init__(self, config: LlavaQwenConfig):
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = LlavaQwenModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reduction = None
        self.last_aot_results = []
        #: (B, L') int8 kinds of the columns of the last spliced prompt (llava_arch.visual_kinds;
        #: None when the last call had no images), and per row its visual tokens before any
        #: reducer; read once by an installed LLM stage.
        self.last_visual_kinds = None
        self.last_visual_unreduced = None
        self.post_init()

    def get_model(self) -> LlavaQwenModel:
        return self.model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, labels=None, use_cache=None,
                images=None, image_sizes=None, modalities=("image",), **kwargs):
        """As Qwen2ForCausalLM.forward; with ``images`` the visual tokens are spliced in first."""
        if inputs_embeds is None and images is not None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds,
             labels) = self.prepare_inputs_labels_for_multimodal(
                input_ids, position_ids, attention_mask, past_key_values, labels, images,
                modalities, image_sizes)
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, inputs_embeds=inputs_embeds,
                               labels=labels, use_cache=use_cache, **kwargs)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, images=None, image_sizes=None,
                 modalities=("image",), **kwargs):
        """Generate from ``inputs`` (B, L) ids with ``<image>`` placeholders and ``images``, or
        from ready ``inputs_embeds`` (B, L, D) (e.g. visual tokens spliced by the caller).

        Returns only the new tokens (generation runs from ``inputs_embeds``).
        """
        if kwargs.get("inputs_embeds") is not None:
            if inputs is not None or images is not None:
                raise ValueError("give either inputs_embeds, or input ids (inputs=...) with "
                                 "images, not both")
            self.last_aot_results = []
            self.last_visual_kinds = None
            return super().generate(**kwargs)
        kwargs.pop("inputs_embeds", None)
        kwargs.pop("position_ids", None)  # generation derives positions from the mask
        attention_mask = kwargs.pop("attention_mask", None)
        if images is not None:
            (_, _, attention_mask, _, inputs_embeds, _) = \
                self.prepare_inputs_labels_for_multimodal(inputs, None, attention_mask, None,
                                                          None, images, modalities, image_sizes)
        else:
            self.last_aot_results = []
            inputs_embeds = self.get_model().embed_tokens(inputs)
            self.last_visual_kinds = torch.zeros(inputs.shape, dtype=torch.int8,
                                                 device=inputs_embeds.device)
        if self.last_visual_kinds is not None:   # LLM stages read where the visual tokens went
            self.last_visual_kinds = left_align(self.last_visual_kinds[..., None],
                                                attention_mask)[0][..., 0]
        inputs_embeds, attention_mask = left_align(inputs_embeds, attention_mask)
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                **kwargs)

    def _get_logits_processor(self, *args, **kwargs):
        """transformers' processors, with the repetition penalty counting every generated token.

        transformers skips each row's first ``left padding`` tokens of ``input_ids`` in the
        penalty, meant for prompt ids; generating from ``inputs_embeds`` (always, here)
        ``input_ids`` holds only new tokens, so a padded row would lose the penalty on its first
        answer tokens and answer differently than alone (lmms-lab's LLaVA-Video checkpoint
        ships ``repetition_penalty`` 1.05). Unpadded rows are unaffected.
        """
        from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

        processors = super()._get_logits_processor(*args, **kwargs)
        for processor in processors:
            if isinstance(processor, RepetitionPenaltyLogitsProcessor):
                processor.prompt_ignore_length = None
        return processors


def left_align(embeds: torch.Tensor, attention_mask: torch.Tensor | None):
    """Move each row's real positions to the end of the row (left padding).

    Generation appends every new token after the last column, so a right-padded row (lmms-lab
    configs say ``tokenizer_padding_side: right``, which is how visual tokens are spliced in)
    would continue after its padding. Left-aligned, every row continues right after its own last
    token and batched answers equal one-at-a-time answers whatever the padding side.

    Args:
        embeds: (B, L, D) input embeddings.
        attention_mask: (B, L), nonzero at real positions, or None (no padding).
    Returns:
        (B, L, D) embeddings and (B, L) mask with the real positions last, in their order;
        unchanged when the mask is None or already left-aligned.
    """
    if attention_mask is None:
        return embeds, None
    real = attention_mask.bool()
    counts = real.sum(dim=1, keepdim=True)
    columns = torch.arange(real.shape[1], device=real.device)
    target = columns >= real.shape[1] - counts  # (B, L) where real positions go
    if torch.equal(real, target):
        return embeds, attention_mask
    aligned = embeds.new_zeros(embeds.shape)
    aligned[target] = embeds[real]  # row-major order keeps each row's positions in order
    return aligned, target.to(attention_mask.dtype)
