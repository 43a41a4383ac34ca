"""The recipes of the docs run exactly as printed, and what they register works everywhere."""

from __future__ import annotations

import pytest
from doc_code import python_blocks, run_code
from reducer_checks import check_selects_pooled_tokens_on_tiny_ov

import aot
from aot.reducers import REDUCERS


@pytest.fixture
def registered_reducer():
    """Runs the recipe of docs/reducers/README.md; unregisters what it registered."""
    before = set(REDUCERS)
    namespace: dict = {"__name__": "recipe"}
    try:
        page = "docs/reducers/README.md"
        run_code("\n".join(python_blocks(page, "## Adding a reducer")), namespace, page)
        added = set(REDUCERS) - before
        assert added == {"top-attention"}
        yield namespace
    finally:
        for name in set(REDUCERS) - before:
            REDUCERS.pop(name)


def test_reducer_recipe_runs_on_a_model_and_in_the_eval_plugin(registered_reducer):
    result = registered_reducer["result"]
    assert result.num_tokens == aot.exact_budget(0.10, 8, 196)
    # the registered name reaches the eval plugin's parser and a model
    check_selects_pooled_tokens_on_tiny_ov("top-attention")


def test_registering_a_taken_name_is_refused(registered_reducer):
    info = REDUCERS["top-attention"]
    with pytest.raises(ValueError, match="'top-attention' is already registered"):
        aot.reducers.register_reducer(info)
    with pytest.raises(ValueError, match="inputs \\['attention'\\] unknown"):
        aot.reducers.register_reducer(aot.reducers.ReducerInfo(
            "other", info.function, True, inputs=("attention",)))
