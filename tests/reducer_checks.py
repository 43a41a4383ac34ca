"""Checks shared by the tests of individual reducers."""

from __future__ import annotations

import torch

import aot
from aot.reducers import get_reducer, reducer_info
from aot.video_path import EXTRA_INPUTS
from aot_eval.model_args import parse_reducer
from aot_integrations.pooling_head import attach_pooling_head
from aot_integrations.tiny import pooling_head_state, random_model


def check_selects_pooled_tokens_on_tiny_ov(reducer: str, retention: float = 0.25) -> None:
    """``reducer=<name>`` reaches the eval plugin's parser, and on a tiny LLaVA-OV model gives
    exactly the budget, fewer tokens than the unreduced model, each one the unreduced model's
    pooled token at its position (for reducers that select pooled tokens without merging)."""
    spec = parse_reducer({"reducer": reducer, "retention": str(retention), "exact": "true"}, "ov")
    assert spec.name == reducer and spec.config.exact_retention == retention
    model = random_model("ov", seed=5)
    video = torch.rand(4, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = spec.config.replace(shallow_layer=1, deep_layer=2)
    with torch.no_grad():
        full = model.video_sequence(video)
        model.set_aot(config, reducer=reducer)
        try:
            reduced = model.video_sequence(video)
        finally:
            model.set_aot(None)
    assert reduced.visual_tokens == aot.exact_budget(retention, 4, 196) < full.visual_tokens
    kept = reduced.result.token_frame * 196 + reduced.result.token_position
    # the model's own pooling and the reducer's pool_grid round differently in the last bits
    torch.testing.assert_close(reduced.tokens[:reduced.visual_tokens],
                               full.tokens[:full.visual_tokens][kept], rtol=1e-5, atol=1e-6)


def extra_inputs(name: str, features: torch.Tensor, deep: torch.Tensor | None = None) -> dict:
    """The keyword inputs reducer ``name`` declares, for a video of ``features`` (F, T, D):
    ``last_attention`` (the deep attention ``deep`` stands in; random when None) and a SigLIP
    pooling head's ``head_attention`` (F, T) and ``head_features`` (F, 8) and the last layer's
    ``last_keys`` (F, T, 4), random, seeded by the features' shape; empty for the other
    reducers."""
    declared = reducer_info(name).inputs
    frames, tokens = features.shape[:2]
    generator = torch.Generator().manual_seed(frames * 1000 + tokens)
    extra = {}
    if "last_attention" in declared:
        extra["last_attention"] = (torch.rand(frames, tokens, generator=generator)
                                   if deep is None else deep)
    if "head_attention" in declared:
        extra["head_attention"] = torch.rand(frames, tokens, generator=generator)
    if "head_features" in declared:
        extra["head_features"] = torch.randn(frames, 8, generator=generator)
    if "last_keys" in declared:
        extra["last_keys"] = torch.randn(frames, tokens, 4, generator=generator,
                                         dtype=features.dtype)
    return extra


def with_inputs(name, **options):
    """``get_reducer(name)``, passing the keyword inputs it declares unless given
    (:func:`extra_inputs`: the deep attention stands in for ``last_attention``)."""
    reducer = get_reducer(name, **options)
    if not {"last_attention", *EXTRA_INPUTS} & set(reducer_info(name).inputs):
        return reducer

    def call(features, shallow, deep, config=None, **kwargs):
        for key, value in extra_inputs(name, features, deep).items():
            kwargs.setdefault(key, value)
        return reducer(features, shallow, deep, config, **kwargs)

    return call


def attach_head_if_read(model, name: str) -> None:
    """Attach a random SigLIP pooling head to a tiny ``llava/`` model when reducer ``name``
    reads its outputs (the tiny tower: 16 channels, 2 heads)."""
    if {"head_attention", "head_features"} & set(reducer_info(name).inputs):
        tower = model.get_vision_tower().config
        attach_pooling_head(model, pooling_head_state(tower.hidden_size,
                                                      tower.num_attention_heads,
                                                      tower.intermediate_size))
