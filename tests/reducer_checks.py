"""Checks shared by the tests of individual reducers."""

from __future__ import annotations

import torch

import aot
from aot.reducers import REDUCERS, get_reducer
from aot_eval.model_args import parse_reducer
from aot_integrations.tiny import random_model


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


def with_inputs(name, **options):
    """``get_reducer(name)``, passing the keyword inputs it declares (``last_attention``: the
    deep attention stands in unless given)."""
    reducer = get_reducer(name, **options)
    if "last_attention" not in REDUCERS[name].inputs:
        return reducer

    def call(features, shallow, deep, config=None, **kwargs):
        kwargs.setdefault("last_attention", deep)
        return reducer(features, shallow, deep, config, **kwargs)

    return call
