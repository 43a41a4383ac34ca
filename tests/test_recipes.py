"""The recipes of the docs run exactly as printed, and what they register works everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import aot
from aot.reducers import REDUCERS
from aot_eval.model_args import parse_reducer
from aot_integrations.tiny import random_model

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: str, heading: str) -> str:
    """The ```python blocks of ``heading``'s section of docs/``page``, joined."""
    text = (DOCS / page).read_text()
    start = text.index(heading)
    following = text.find("\n## ", start + len(heading))
    section = text[start:following if following >= 0 else len(text)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, f"no python block under {heading!r} in docs/{page}"
    return "\n".join(blocks)


@pytest.fixture
def registered_reducer():
    """Runs the recipe of docs/reducers/README.md; unregisters what it registered."""
    before = set(REDUCERS)
    namespace: dict = {"__name__": "recipe"}
    try:
        exec(compile(python_blocks("reducers/README.md", "## Adding a reducer"),
                     "docs/reducers/README.md", "exec"), namespace)
        added = set(REDUCERS) - before
        assert added == {"top-attention"}
        yield namespace
    finally:
        for name in set(REDUCERS) - before:
            REDUCERS.pop(name)


def test_reducer_recipe_runs_on_a_model_and_in_the_eval_plugin(registered_reducer):
    result = registered_reducer["result"]
    assert result.num_tokens == aot.exact_budget(0.10, 8, 196)
    # the registered name reaches the eval plugin's parser ...
    spec = parse_reducer({"reducer": "top-attention", "retention": "0.25", "exact": "true"}, "ov")
    assert spec.name == "top-attention" and spec.config.exact_retention == 0.25
    # ... and a model: exact count on a tiny LLaVA-OV, different from the unreduced sequence
    model = random_model("ov", seed=5)
    video = torch.rand(4, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = spec.config.replace(shallow_layer=1, deep_layer=2)
    with torch.no_grad():
        full = model.video_sequence(video)
        model.set_aot(config, reducer="top-attention")
        try:
            reduced = model.video_sequence(video)
        finally:
            model.set_aot(None)
    assert reduced.visual_tokens == aot.exact_budget(0.25, 4, 196)
    assert reduced.visual_tokens < full.visual_tokens
    kept = reduced.result.token_frame * 196 + reduced.result.token_position
    # the kept tokens are the unreduced model's pooled tokens at the kept positions (the model's
    # own pooling and the reducer's pool_grid round differently in the last bits)
    torch.testing.assert_close(reduced.tokens[:reduced.visual_tokens],
                               full.tokens[:full.visual_tokens][kept], rtol=1e-5, atol=1e-6)


def test_registering_a_taken_name_is_refused(registered_reducer):
    info = REDUCERS["top-attention"]
    with pytest.raises(ValueError, match="'top-attention' is already registered"):
        aot.reducers.register_reducer(info)
    with pytest.raises(ValueError, match="inputs \\['attention'\\] unknown"):
        aot.reducers.register_reducer(aot.reducers.ReducerInfo(
            "other", info.function, True, inputs=("attention",)))
