"""aot.llm_stages: the configs, the registry, the count rules and the pure selection / merge
functions (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from aot import llm_stages
from aot.llm_stages import LLMStageConfig, get_stage, kept_count


def test_registry_holds_the_releases_defaults():
    assert llm_stages.stage_names() == ["fastv", "flashvid", "holitom"]
    fastv, flashvid, holitom = (get_stage(n) for n in llm_stages.stage_names())
    assert (fastv.layer, fastv.retention, fastv.count_rule, fastv.merge) == (2, 0.5, "round",
                                                                             False)
    assert (flashvid.layer, flashvid.retention, flashvid.count_rule) == (20, 0.3, "ceil")
    assert flashvid.newline_is_text and not fastv.newline_is_text
    assert (holitom.layer, holitom.retention, holitom.count_rule, holitom.merge) == (
        18, 0.5, "round", True)
    assert get_stage("fastv", layer=3).layer == 3


@pytest.mark.parametrize("n", [1, 7, 19, 196, 6273])
def test_count_rules_follow_the_releases(n):
    assert kept_count(n, get_stage("flashvid")) == max(1, math.ceil(n * 0.3))
    assert kept_count(n, get_stage("holitom")) == max(1, round(n * 0.5))     # half to even
    assert kept_count(n, get_stage("fastv", count_rule="nearest")) == math.floor(n * 0.5 + 0.5)
    assert kept_count(n, get_stage("fastv", budget=1)) == 1
    assert kept_count(0, get_stage("fastv")) == 0


def test_final_budget_is_exact_over_the_unreduced_video():
    # 8 frames x 196 tokens at r = 0.1: 156.8 -> 157, whatever the vision reducer kept
    assert llm_stages.final_budget(0.1, 8 * 196) == 157
    assert llm_stages.final_budget(0.25, 2) == 1
    stage = get_stage("fastv", budget=llm_stages.final_budget(0.1, 8 * 196))
    assert kept_count(400, stage) == 157
    with pytest.raises(ValueError, match="157 tokens asked .* exceed the 100"):
        kept_count(100, stage)
    final = get_stage("holitom", final_retention=0.1)
    assert kept_count(400, final, unreduced=8 * 196) == 157
    counts = llm_stages.select_tokens(torch.rand(2, 500), torch.ones(2, 500, dtype=torch.bool),
                                      final, unreduced=[8 * 196, 16 * 196]).sum(1)
    assert counts.tolist() == [157, 314]
    with pytest.raises(ValueError, match="needs the row's unreduced visual token count"):
        kept_count(400, final)
    with pytest.raises(ValueError, match="both fix the count"):
        get_stage("fastv", budget=3, final_retention=0.1)


@pytest.mark.parametrize("changes, message", [
    ({"layer": 0}, "layer=0"), ({"layer": 1.5}, "layer=1.5"), ({"retention": 0}, "retention=0"),
    ({"retention": 1.2}, "retention=1.2"), ({"count_rule": "floor"}, "count_rule='floor'"),
    ({"budget": 0}, "budget=0"), ({"retention": True}, "retention=True"),
    ({"final_retention": 0}, "final_retention=0")])
def test_bad_knobs_get_one_line_errors(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        get_stage("fastv", **changes)


def test_unknown_names_and_fields():
    with pytest.raises(ValueError, match="unknown LLM stage 'fastvv'"):
        get_stage("fastvv")
    with pytest.raises(TypeError, match=r"no option\(s\) \['keep'\]"):
        get_stage("fastv", keep=0.3)
    with pytest.raises(TypeError, match="name=nan: expected the stage's registry name"):
        LLMStageConfig(name=float("nan"))
    with pytest.raises(TypeError, match="merge=1"):
        LLMStageConfig(merge=1)


def test_last_query_attention_is_the_softmax_row_mean_over_heads():
    g = torch.Generator().manual_seed(0)
    query, keys = torch.randn(2, 4, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    out = llm_stages.last_query_attention(query, keys, mask, 8 ** -0.5)
    for b in range(2):
        for_heads = []
        for h in range(4):
            logits = keys[b, h // 2] @ query[b, h] * 8 ** -0.5
            logits[~mask[b]] = -math.inf
            for_heads.append(logits.softmax(0))
        assert torch.allclose(out[b], torch.stack(for_heads).mean(0), atol=1e-6)
    assert out[1, 4:].abs().max() == 0


def test_select_keeps_the_top_scores_of_each_rows_candidates():
    scores = torch.tensor([[9., 1, 5, 3, 4, 8], [0., 7, 6, 5, 9, 1]])
    candidates = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    chosen = llm_stages.select_tokens(scores, candidates, get_stage("fastv"))
    # row 0: 4 candidates -> 2 kept (5 and 4); row 1: 3 -> round(1.5) = 2 (7 and 6)
    assert chosen.tolist() == [[False, False, True, False, True, False],
                               [False, True, True, False, False, False]]


def test_keep_index_pads_short_rows_on_the_left_with_masked_fillers():
    keep = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 0, 1]], dtype=torch.bool)
    index, valid = llm_stages.keep_index(keep)
    assert index[1].tolist() == [0, 1, 2, 4]
    assert index[0, 1:].tolist() == [0, 2, 3] and valid[0].tolist() == [False, True, True, True]
    assert valid[1].all()


def test_merge_equals_the_sequential_average_in_position_order():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 12, 16, generator=g)
    kept = torch.zeros(2, 12, dtype=torch.bool)
    kept[0, [2, 5, 9]] = True
    kept[1, [3, 4]] = True
    dropped = torch.zeros_like(kept)
    dropped[0, [1, 3, 4, 6, 7, 8, 10]] = True
    dropped[1, [0, 1, 2, 5, 6, 7, 8, 9]] = True
    out = llm_stages.merge_dropped(hidden, kept, dropped)
    expected = hidden.clone()
    for b in range(2):                       # the release's loop: similarity before merging
        targets, sources = kept[b].nonzero().flatten(), dropped[b].nonzero().flatten()
        sim = torch.nn.functional.cosine_similarity(hidden[b, sources, None],
                                                    hidden[b, None, targets], dim=-1)
        for i, source in enumerate(sources):
            target = targets[sim[i].argmax()]
            expected[b, target] = (expected[b, target] + hidden[b, source]) / 2
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.equal(out, hidden)


def test_core_imports_no_model_library():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(llm_stages))
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                  if isinstance(n, ast.ImportFrom) and n.module}
    assert roots <= {"__future__", "dataclasses", "math", "torch", "typing", "parsing"}  # parsing: aot.parsing
