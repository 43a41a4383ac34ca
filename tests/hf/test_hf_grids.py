"""aot_integrations.hf on native-resolution Qwen grids: landscape and portrait videos (each video its own
(rows, cols) grid of merged tokens), several frame counts, batches of different grids; tiny
random models built offline (aot_integrations.tiny)."""

import pytest
import torch

pytest.importorskip("transformers")

import aot_integrations.hf  # noqa: E402
from aot.reducers import reducer_names  # noqa: E402
from aot.budget import exact_budget  # noqa: E402
from aot_integrations import tiny  # noqa: E402
from aot.video_path import Reduction  # noqa: E402
from test_hf_models import LLMInput, _reference_embeds  # noqa: E402

# video_grid_thw rows (t, h, w) in patches; the LLM sees (h/2) x (w/2) merged tokens per
# temporal patch: 6x10 landscape, 10x6 portrait, 4x8 landscape.
LANDSCAPE, PORTRAIT, WIDE = (2, 12, 20), (3, 20, 12), (1, 8, 16)
BATCHES = [[LANDSCAPE], [PORTRAIT], [(1, 12, 20)], [LANDSCAPE, PORTRAIT], [PORTRAIT, WIDE]]
MODELS = {"qwen": (tiny.qwen2_5_vl, tiny.qwen_inputs), "qwen3": (tiny.qwen3_vl, tiny.qwen3_inputs)}


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, (build, _) in MODELS.items()}


def settings(model, retention, **overrides):
    """config_for at the 6x10 grid (anchors scaled to it: 10; windows of at most 5 -> 2x2
    windows of 3x5 on 6x10, 5x3 on 10x6), the tiny towers' layers 1 and 3."""
    return aot_integrations.hf.config_for(model, retention, grid=(6, 10), shallow_layer=1, deep_layer=3,
                             **overrides)


def visual_counts(model, inputs):
    """Video placeholders per row that reached the LLM, and the LLM's keyword inputs."""
    seen = LLMInput(model)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
    finally:
        seen.close()
    short = seen.calls[0]
    return (short["input_ids"] == tiny.VIDEO_TOKEN).sum(1).tolist(), short, logits


def merged_tokens(grid):
    t, h, w = grid
    return h * w // 4


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("grids", BATCHES)
@pytest.mark.parametrize("retention", [0.1, 0.3])
def test_exact_count_reaches_the_llm(models, applied, name, grids, retention):
    model = models[name]
    handle = applied(model, settings(model, retention))
    per_row, _, _ = visual_counts(model, MODELS[name][1](grids))
    expected = [exact_budget(retention, t, merged_tokens((t, h, w))) for t, h, w in grids]
    assert per_row == expected
    assert expected == [aot_integrations.hf.reduced_token_count(model, g, retention) for g in grids]
    for (t, h, w), sequence in zip(grids, handle.last):
        assert sequence.encoded.grid == (h // 2, w // 2)
        assert sequence.result.grid_shape == sequence.result.pooled_shape == (h // 2, w // 2)
        assert sequence.result.local_anchors.shape == (t, h // 2, w // 2)
        assert sequence.result.num_tokens < t * merged_tokens((t, h, w))


def _sequence_order(name, result):
    """Order in which the reducer's tokens sit in the prompt: as emitted for Qwen2.5-VL (one
    run), frame by frame for Qwen3-VL (one piece per frame, after its timestamp)."""
    if name == "qwen":
        return torch.arange(result.num_tokens)
    return torch.sort(result.token_frame, stable=True).indices


def _reference_logits(name, model, short, sequences):
    """The stock model fed the reducer's tokens as embeddings at the kept tokens' positions
    (and, for Qwen3-VL, the DeepStack levels at the same visual positions)."""
    ids, mask, positions = short["input_ids"], short["attention_mask"], short["position_ids"]
    if name == "qwen":
        embeds = _reference_embeds(model, ids, sequences)
        return model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    dim = model.config.text_config.hidden_size
    tokens = torch.cat([s.tokens[_sequence_order(name, s.result)] for s in sequences])
    embeds = model.get_input_embeddings()(ids)
    visual = ids == tiny.VIDEO_TOKEN
    embeds[visual] = tokens[:, :dim]
    hidden = model.model.language_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
        visual_pos_masks=visual, deepstack_visual_embeds=list(tokens[:, dim:].split(dim, -1))
    ).last_hidden_state
    return model.lm_head(hidden)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("grids", [[LANDSCAPE, PORTRAIT], [PORTRAIT, WIDE]])
def test_reduced_logits_equal_the_stock_model_at_original_positions(models, applied, name,
                                                                    grids):
    model = models[name]
    inputs = MODELS[name][1](grids)
    rope = dict(video_grid_thw=inputs["video_grid_thw"], attention_mask=inputs["attention_mask"])
    if name == "qwen":
        rope["second_per_grid_ts"] = inputs["second_per_grid_ts"]
    with torch.no_grad():
        full, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                             **rope)
        unreduced = model(**inputs).logits
    handle = applied(model, settings(model, 0.25))
    _, short, reduced = visual_counts(model, inputs)
    handle.remove()
    mask = short["attention_mask"].bool()
    for row, ((t, h, w), sequence) in enumerate(zip(grids, handle.last)):
        result = sequence.result
        real = inputs["attention_mask"][row].bool()
        original = full[:, row][:, real]
        run = torch.nonzero(inputs["input_ids"][row][real] == tiny.VIDEO_TOKEN).flatten()
        new_ids = short["input_ids"][row][mask[row]]
        new_run = torch.nonzero(new_ids == tiny.VIDEO_TOKEN).flatten()
        kept = short["position_ids"][1:, row][:, mask[row]]
        # the unreduced placeholder of every token: frame * (h/2 * w/2) + row-major position
        slot = result.token_frame * merged_tokens((t, h, w)) + result.token_position
        slot = slot[_sequence_order(name, result)]
        assert torch.equal(kept[:, new_run], original[:, run[slot]])
        # its (h, w) M-RoPE offsets from its frame's first cell are its (row, col) on the
        # non-square grid
        order = _sequence_order(name, result)
        position, frame = result.token_position[order], result.token_frame[order]
        first_cell = original[:, run[frame * merged_tokens((t, h, w))]]
        assert torch.equal(kept[1, new_run] - first_cell[1],
                           torch.div(position, w // 2, rounding_mode="floor"))
        assert torch.equal(kept[2, new_run] - first_cell[2], position % (w // 2))
        # text after the video continues exactly as unreduced
        assert torch.equal(kept[:, new_run[-1] + 1:], original[:, run[-1] + 1:])
    with torch.no_grad():
        reference = _reference_logits(name, model, short, handle.last)
    torch.testing.assert_close(reduced, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(reduced[:, -1], unreduced[:, -1], atol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reducer_off_is_the_stock_model_on_non_square_grids(models, applied, name):
    model = models[name]
    inputs = MODELS[name][1]([LANDSCAPE, PORTRAIT])
    with torch.no_grad():
        stock = model(**inputs).logits
        applied(model, None)
        ours = model(**inputs).logits
    assert torch.equal(stock, ours)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batch_of_two_grids_answers_each_as_alone(models, applied, name):
    model = models[name]
    applied(model, settings(model, 0.3))
    make = MODELS[name][1]
    grids = [LANDSCAPE, PORTRAIT]
    gen = dict(max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        both = model.generate(**make(grids, seeds=[0, 1]), **gen)
        for row in (0, 1):
            alone = model.generate(**make([grids[row]], seeds=[row]), **gen)
            assert torch.equal(both.sequences[row, -3:], alone.sequences[0, -3:])
            for a, b in zip(both.scores, alone.scores):
                torch.testing.assert_close(a[row], b[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("reducer", reducer_names())
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_reducer_runs_at_the_same_exact_budget(models, applied, name, reducer):
    model = models[name]
    handle = applied(model, Reduction(settings(model, 0.25), reducer))
    grids = [LANDSCAPE, PORTRAIT]
    per_row, _, logits = visual_counts(model, MODELS[name][1](grids))
    expected = [exact_budget(0.25, t, merged_tokens((t, h, w))) for t, h, w in grids]
    assert per_row == expected
    assert [s.visual_tokens for s in handle.last] == expected
    assert bool(torch.isfinite(logits).all())
