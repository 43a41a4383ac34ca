"""aot_integrations.hf on stock transformers classes: tiny random models built offline from config classes,
inputs shaped as the processors produce them (aot_integrations.tiny)."""

import pytest
import torch

pytest.importorskip("transformers")

import aot  # noqa: E402
import aot_integrations.hf  # noqa: E402
from aot.backbones import get_backbone  # noqa: E402
from aot.reducers import reducer_names  # noqa: E402
from aot.budget import exact_budget  # noqa: E402
from aot_integrations import tiny  # noqa: E402
from aot.video_path import Reduction  # noqa: E402

# Tiny towers: 4 vision blocks; AOT windows of 3 on the 6x6 grids, layers 1 and 3 (full attention
# in the tiny Qwen ViT).
KNOBS = dict(anchors_per_frame=12, window=3, shallow_layer=1, deep_layer=3)
GEN = dict(max_new_tokens=4, do_sample=False)




def ov_inputs(batch=2, frames=4, **kw):
    return tiny.onevision_inputs([frames] * batch, **kw)


def qwen_inputs(grids, **kw):
    return tiny.qwen_inputs(grids, **kw)


CASES = {
    "ov": (ov_inputs, lambda: ov_inputs()),
    "qwen": (qwen_inputs, lambda: qwen_inputs([(2, 12, 12), (3, 12, 12)])),
    "qwen3": (tiny.qwen3_inputs, lambda: tiny.qwen3_inputs([(2, 12, 12), (3, 12, 12)])),
}
QWEN_KNOBS = dict(KNOBS, anchors_per_frame=8, window=3)


def knobs_of(name):
    return KNOBS if name == "ov" else QWEN_KNOBS


def _model(request, name):
    return request.getfixturevalue(name)


class LLMInput:
    """Records what reaches the LLM (the inner model's input_ids / position_ids)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append(kwargs)

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize("name", ["ov", "qwen", "qwen3"])
def test_reducer_off_is_the_stock_model(request, applied, name):
    model = _model(request, name)
    inputs = CASES[name][1]()
    with torch.no_grad():
        stock = model.generate(**inputs, **GEN, output_scores=True, return_dict_in_generate=True)
        stock_logits = model(**inputs).logits
        applied(model, None)
        ours = model.generate(**inputs, **GEN, output_scores=True, return_dict_in_generate=True)
        our_logits = model(**inputs).logits
    assert torch.equal(stock.sequences, ours.sequences)
    for a, b in zip(stock.scores, ours.scores):
        assert torch.equal(a, b)
    assert torch.equal(stock_logits, our_logits)


@pytest.mark.parametrize("name", ["ov", "qwen", "qwen3"])
def test_remove_restores_the_instance_and_leaves_the_class(request, name):
    model = _model(request, name)
    cls_generate = type(model).generate
    handle = aot_integrations.hf.apply(model, aot_integrations.hf.config_for(model, 0.3, **KNOBS))
    assert "generate" in model.__dict__ and type(model).generate is cls_generate
    with pytest.raises(ValueError, match="already has a reducer"):
        aot_integrations.hf.apply(model, None)
    handle.remove()
    assert "generate" not in model.__dict__ and "forward" not in model.__dict__
    with pytest.raises(ValueError, match="no reducer is installed"):
        aot_integrations.hf.remove(model)


@pytest.mark.parametrize("frames,batch", [(2, 1), (4, 2), (7, 2), (8, 3)])
@pytest.mark.parametrize("retention", [0.1, 0.25, 0.5])
def test_ov_exact_count_reaches_the_llm(ov, applied, frames, batch, retention):
    handle = applied(ov, aot_integrations.hf.config_for(ov, retention, **KNOBS))
    inputs = ov_inputs(batch=batch, frames=frames)
    seen = LLMInput(ov)
    try:
        with torch.no_grad():
            ov(**inputs)
    finally:
        seen.close()
    per_row = (seen.calls[0]["input_ids"] == tiny.VIDEO_TOKEN).sum(1).tolist()
    expected = exact_budget(retention, frames, 9)          # 6x6 grid -> 3x3 pooled
    assert per_row == [expected + 1] * batch                # + the one newline
    assert [s.visual_tokens for s in handle.last] == [expected] * batch
    assert expected == aot_integrations.hf.reduced_token_count(ov, (frames, 6, 6), retention) - 1


@pytest.mark.parametrize("grids", [[(1, 12, 12)], [(2, 12, 12), (3, 12, 12)],
                                   [(4, 8, 8), (2, 16, 16), (3, 12, 12)]])
@pytest.mark.parametrize("retention", [0.1, 0.3])
def test_qwen_exact_count_reaches_the_llm(qwen, applied, grids, retention):
    handle = applied(qwen, aot_integrations.hf.config_for(qwen, retention, anchors_per_frame=8, window=3,
                                             shallow_layer=1, deep_layer=3))
    seen = LLMInput(qwen)
    try:
        with torch.no_grad():
            qwen(**qwen_inputs(grids))
    finally:
        seen.close()
    per_row = (seen.calls[0]["input_ids"] == tiny.VIDEO_TOKEN).sum(1).tolist()
    expected = [exact_budget(retention, t, h * w // 4) for t, h, w in grids]
    assert per_row == expected
    assert [s.visual_tokens for s in handle.last] == expected
    assert expected == [aot_integrations.hf.reduced_token_count("qwen2_5_vl", g, retention) for g in grids]


def _reference_embeds(model, short_ids, sequences):
    """The stock embeddings of the shortened ids with every video's run replaced by the
    reducer's tokens (independent of aot_integrations.hf's scatter)."""
    embeds = model.get_input_embeddings()(short_ids)
    flat = torch.cat([s.tokens for s in sequences])
    mask = short_ids == tiny.VIDEO_TOKEN
    assert int(mask.sum()) == flat.shape[0]
    embeds[mask] = flat
    return embeds


def test_ov_reduced_logits_equal_stock_model_fed_the_same_tokens(ov, applied):
    inputs = ov_inputs(batch=2, frames=4)
    with torch.no_grad():
        unreduced = ov(**inputs).logits
    handle = applied(ov, aot_integrations.hf.config_for(ov, 0.25, **KNOBS))
    seen = LLMInput(ov)
    try:
        with torch.no_grad():
            reduced = ov(**inputs).logits
    finally:
        seen.close()
    handle.remove()
    short = seen.calls[0]
    with torch.no_grad():
        embeds = _reference_embeds(ov, short["input_ids"], handle.last)
        reference = ov(inputs_embeds=embeds, attention_mask=short["attention_mask"]).logits
    torch.testing.assert_close(reduced, reference, rtol=0, atol=1e-5)
    # the reducer changed what the LLM read: the last prompt token's logits moved
    assert not torch.allclose(reduced[:, -1], unreduced[:, -1], atol=1e-4)


def test_qwen_kept_tokens_keep_their_original_mrope_positions(qwen, applied):
    grids = [(2, 12, 12), (3, 12, 12)]
    inputs = qwen_inputs(grids)
    with torch.no_grad():
        full, _ = qwen.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                            video_grid_thw=inputs["video_grid_thw"],
                                            second_per_grid_ts=inputs["second_per_grid_ts"],
                                            attention_mask=inputs["attention_mask"])
        unreduced = qwen(**inputs).logits
    handle = applied(qwen, aot_integrations.hf.config_for(qwen, 0.25, anchors_per_frame=8, window=3,
                                             shallow_layer=1, deep_layer=3))
    seen = LLMInput(qwen)
    try:
        with torch.no_grad():
            reduced = qwen(**inputs).logits
    finally:
        seen.close()
    handle.remove()
    short = seen.calls[0]
    positions = short["position_ids"][1:]
    mask = short["attention_mask"].bool()
    for row, ((t, h, w), seq) in enumerate(zip(grids, handle.last)):
        real = inputs["attention_mask"][row].bool()
        original = full[:, row][:, real]                       # (3, real length)
        ids = inputs["input_ids"][row][real]
        run = torch.nonzero(ids == tiny.VIDEO_TOKEN).flatten()
        per_frame = (h // 2) * (w // 2)
        slot = seq.result.token_frame * per_frame + seq.result.token_position
        kept = positions[:, row][:, mask[row]]
        new_ids = short["input_ids"][row][mask[row]]
        new_run = torch.nonzero(new_ids == tiny.VIDEO_TOKEN).flatten()
        # every kept (or merged-anchor) token has the (t, h, w) of its source patch
        assert torch.equal(kept[:, new_run], original[:, run[slot]])
        # text before the run unchanged, text after continues exactly as unreduced
        assert torch.equal(kept[:, :new_run[0]], original[:, :run[0]])
        assert torch.equal(kept[:, new_run[-1] + 1:], original[:, run[-1] + 1:])
    # the reference: the stock model fed the same tokens as inputs_embeds at those positions
    with torch.no_grad():
        embeds = _reference_embeds(qwen, short["input_ids"], handle.last)
        reference = qwen(inputs_embeds=embeds, attention_mask=short["attention_mask"],
                         position_ids=short["position_ids"]).logits
    torch.testing.assert_close(reduced, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(reduced[:, -1], unreduced[:, -1], atol=1e-4)


@pytest.mark.parametrize("name", ["ov", "qwen", "qwen3"])
def test_batch_of_two_videos_answers_each_as_alone(request, applied, name):
    model = _model(request, name)
    applied(model, aot_integrations.hf.config_for(model, 0.3, **knobs_of(name)))
    qwen_grids = [(2, 12, 12), (3, 12, 12)]

    def inputs(seeds):
        if name == "ov":
            return tiny.onevision_inputs([4] * len(seeds), seeds=seeds)
        make = tiny.qwen_inputs if name == "qwen" else tiny.qwen3_inputs
        return make([qwen_grids[s] for s in seeds], seeds=seeds)

    with torch.no_grad():
        both = model.generate(**inputs([0, 1]), **GEN, output_scores=True,
                              return_dict_in_generate=True)
        for row in (0, 1):
            alone = model.generate(**inputs([row]), **GEN, output_scores=True,
                                   return_dict_in_generate=True)
            prompt = alone.sequences.shape[1] - GEN["max_new_tokens"]
            assert torch.equal(both.sequences[row, -GEN["max_new_tokens"]:],
                               alone.sequences[0, prompt:])
            for a, b in zip(both.scores, alone.scores):
                torch.testing.assert_close(a[row], b[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["ov", "qwen", "qwen3"])
def test_generate_returns_the_callers_prompt_then_the_answer(request, applied, name):
    model = _model(request, name)
    inputs = CASES[name][1]()
    applied(model, aot_integrations.hf.config_for(model, 0.2, **knobs_of(name)))
    with torch.no_grad():
        out = model.generate(**inputs, **GEN)
    assert out.shape == (inputs["input_ids"].shape[0],
                         inputs["input_ids"].shape[1] + GEN["max_new_tokens"])
    assert torch.equal(out[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])


@pytest.mark.parametrize("reducer", reducer_names())
@pytest.mark.parametrize("name", ["ov", "qwen", "qwen3"])
def test_every_registered_reducer_runs_at_the_same_exact_budget(request, applied, name, reducer):
    model = _model(request, name)
    config = aot_integrations.hf.config_for(model, 0.25, **knobs_of(name))
    handle = applied(model, Reduction(config, reducer))
    inputs = (ov_inputs(batch=1, frames=4) if name == "ov"
              else CASES[name][0]([(4, 12, 12)]))
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 1
    assert [s.visual_tokens for s in handle.last] == [exact_budget(0.25, 4, 9 if name == "ov"
                                                                   else 36)]


def test_sampling_flags_pass_through(ov, applied):
    applied(ov, aot_integrations.hf.config_for(ov, 0.25, **KNOBS))
    inputs = ov_inputs(batch=2, frames=2)
    with torch.no_grad():
        torch.manual_seed(3)
        a = ov.generate(**inputs, max_new_tokens=6, do_sample=True, temperature=5.0, top_k=50)
        torch.manual_seed(3)
        b = ov.generate(**inputs, max_new_tokens=6, do_sample=True, temperature=5.0, top_k=50)
        greedy = ov.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)
    assert not torch.equal(a, greedy)


def test_bad_settings_are_named(ov, qwen):
    with pytest.raises(ValueError, match="deep_layer=24 but the vision tower has blocks 0..3"):
        aot_integrations.hf.apply(ov, aot_integrations.hf.config_for(ov, 0.25, deep_layer=24, shallow_layer=1))
    with pytest.raises(TypeError, match="expected a Reduction"):
        aot_integrations.hf.apply(qwen, "aot")
    with pytest.raises(ValueError, match="needs exact mode"):
        aot_integrations.hf.reduced_token_count("qwen2_5_vl", (2, 12, 12), aot.AOTConfig())
    with pytest.raises(ValueError, match="supports"):
        aot_integrations.hf.config_for(torch.nn.Linear(2, 2), 0.1)


def test_model_types_are_those_transformers_loads(ov, qwen, qwen3):
    """aot_integrations.hf.MODEL_TYPES (config.json model_type -> class) is transformers' own mapping, and
    the tiny models of those classes carry their model_type."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as transformers_classes,
    )

    assert {t: transformers_classes[t] for t in aot_integrations.hf.MODEL_TYPES} == aot_integrations.hf.MODEL_TYPES
    assert len(aot_integrations.hf.MODEL_TYPES) == len(aot_integrations.hf.ADAPTERS)
    for model in (ov, qwen, qwen3):
        assert aot_integrations.hf.MODEL_TYPES[model.config.model_type] == type(model).__name__


def test_qwen_config_pooling_is_the_backbones(qwen, applied):
    """An OV config (pooling bilinear) on Qwen: the merger is the pooling, so apply() uses
    pooling 'none'."""
    import aot

    handle = applied(qwen, aot.settings_for("ov", 0.25, frames=32, **KNOBS,
                                            ).replace(anchors_per_frame=8, window=3))
    assert handle.reduction.config.pooling == get_backbone("qwen2_5_vl").pooling == "none"


def test_num_return_sequences_keeps_the_callers_prompt(ov, applied):
    applied(ov, aot_integrations.hf.config_for(ov, 0.25, **KNOBS))
    inputs = ov_inputs(batch=2, frames=2)
    with torch.no_grad():
        torch.manual_seed(0)
        out = ov.generate(**inputs, max_new_tokens=3, do_sample=True, num_return_sequences=2)
    width = inputs["input_ids"].shape[1]
    assert out.shape == (4, width + 3)
    assert torch.equal(out[:, :width], inputs["input_ids"].repeat_interleave(2, dim=0))


def test_right_padding_forward_matches_left_padding(ov, applied):
    """Training-style right padding: the shortened batch stays right-padded; each row's last
    real token reads the same logits as with left padding."""
    applied(ov, aot_integrations.hf.config_for(ov, 0.25, **KNOBS))
    left, right = ov_inputs(batch=2, frames=2), ov_inputs(batch=2, frames=2, left=False)
    with torch.no_grad():
        a = ov(**left).logits[:, -1]
        b = ov(**right).logits
    last = right["attention_mask"].sum(1) - 1
    shrink = right["input_ids"].shape[1] - b.shape[1]    # both rows lose the same count here
    torch.testing.assert_close(a, b[torch.arange(2), last - shrink], rtol=0, atol=1e-4)


def test_config_for_fits_the_backbone_grid(ov, qwen):
    assert aot_integrations.hf.config_for(ov, 0.1).window == 9                      # 27x27: released
    assert aot_integrations.hf.config_for(ov, 0.1).anchors_per_frame == 126
    q = aot_integrations.hf.config_for(qwen, 0.1)                                     # 16x16 merged tokens
    assert (q.window, q.anchors_per_frame, q.pooling) == (8, 44, "none")
    # the tiny tower's first and last full-attention blocks (tiny.qwen2_5_vl: 1 and 3)
    assert (q.shallow_layer, q.deep_layer) == (1, 3)
    assert aot_integrations.hf.config_for("qwen2_5_vl", 0.1).deep_layer == 31  # the 7B's
    assert aot_integrations.hf.config_for(qwen, 0.1, grid=(6, 6)).window == 6


def _qwen_image_and_video(grid=(2, 12, 12), image=(8, 8)):
    """One row: text, an image (t=1), text, a video: as Qwen2_5_VLProcessor lays them out."""
    video = tiny.qwen_inputs([grid])
    h, w = image
    ids = video["input_ids"][0].tolist()
    image_run = [tiny.VISION_START] + [tiny.IMAGE_TOKEN] * (h * w // 4) + [tiny.VISION_END]
    ids = ids[:2] + image_run + [7, 8] + ids[2:]
    ids = torch.tensor([ids])
    types = (ids == tiny.VIDEO_TOKEN).long() * 2 + (ids == tiny.IMAGE_TOKEN).long()
    g = torch.Generator().manual_seed(5)
    return dict(video, input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types,
                pixel_values=torch.randn(h * w, 3 * 2 * 14 * 14, generator=g),
                image_grid_thw=torch.tensor([[1, h, w]]))


def test_qwen_images_beside_a_video_stay_stock(qwen, applied):
    inputs = _qwen_image_and_video()
    with torch.no_grad():
        stock = qwen.generate(**inputs, **GEN)
        stock_logits = qwen(**inputs).logits
    applied(qwen, None)
    with torch.no_grad():
        assert torch.equal(qwen.generate(**inputs, **GEN), stock)
        assert torch.equal(qwen(**inputs).logits, stock_logits)
    aot_integrations.hf.remove(qwen)
    handle = applied(qwen, aot_integrations.hf.config_for(qwen, 0.25, anchors_per_frame=8, window=3,
                                             shallow_layer=1, deep_layer=3))
    seen = LLMInput(qwen)
    try:
        with torch.no_grad():
            out = qwen.generate(**inputs, **GEN)
    finally:
        seen.close()
    ids = seen.calls[0]["input_ids"]
    assert int((ids == tiny.IMAGE_TOKEN).sum()) == 16                  # the image untouched
    assert int((ids == tiny.VIDEO_TOKEN).sum()) == exact_budget(0.25, 2, 36)
    assert out.shape[1] == inputs["input_ids"].shape[1] + GEN["max_new_tokens"]
    assert handle.last[0].visual_tokens == exact_budget(0.25, 2, 36)


def test_ov_adapter_joins_the_one_video_path(ov, applied):
    """aot.video_path.visual_sequence on the hf adapter gives the tokens apply() fed the LLM."""
    from aot_integrations.hf.adapters import OneVisionAdapter
    from aot.video_path import visual_sequence

    reduction = Reduction(aot_integrations.hf.config_for(ov, 0.25, **KNOBS))
    handle = applied(ov, reduction)
    inputs = ov_inputs(batch=1, frames=4)
    stages = []
    with torch.no_grad():
        ov(**inputs)
        sequence = visual_sequence(OneVisionAdapter(ov), inputs["pixel_values_videos"][0],
                                   reduction, stages.append)
    assert stages == ["vision", "projector", "reduce"]
    assert torch.equal(sequence.tokens, handle.last[0].tokens)
    assert sequence.newline_tokens == 1 and sequence.visual_tokens == exact_budget(0.25, 4, 9)


@pytest.mark.parametrize("grids", [[(1, 12, 12)], [(2, 12, 12), (4, 8, 8)]])
def test_qwen3_exact_counts_deepstack_and_timestamps(qwen3, applied, grids):
    """Exact count; each kept token sits in its own frame's piece (after its timestamp) at its
    original position; logits equal the stock language model fed the same tokens, the same
    DeepStack features at the same visual positions, and those positions."""
    inputs = tiny.qwen3_inputs(grids)
    with torch.no_grad():
        full, _ = qwen3.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                             video_grid_thw=inputs["video_grid_thw"],
                                             attention_mask=inputs["attention_mask"])
    handle = applied(qwen3, aot_integrations.hf.config_for(qwen3, 0.3, **QWEN_KNOBS))
    seen = LLMInput(qwen3)
    try:
        with torch.no_grad():
            reduced = qwen3(**inputs).logits
    finally:
        seen.close()
    short = seen.calls[0]
    ids, mask = short["input_ids"], short["attention_mask"].bool()
    expected = [exact_budget(0.3, t, h * w // 4) for t, h, w in grids]
    assert (ids == tiny.VIDEO_TOKEN).sum(1).tolist() == expected
    for row, ((t, h, w), seq) in enumerate(zip(grids, handle.last)):
        new_ids = ids[row][mask[row]]
        starts = torch.nonzero(new_ids == tiny.VISION_START).flatten().tolist()
        ends = torch.nonzero(new_ids == tiny.VISION_END).flatten().tolist()
        per_piece = [int((new_ids[a:b] == tiny.VIDEO_TOKEN).sum()) for a, b in zip(starts, ends)]
        assert per_piece == seq.result.tokens_per_frame().tolist()
        real = inputs["attention_mask"][row].bool()
        run = torch.nonzero(inputs["input_ids"][row][real] == tiny.VIDEO_TOKEN).flatten()
        slot = seq.result.token_frame * (h * w // 4) + seq.result.token_position
        kept = short["position_ids"][1:, row][:, mask[row]]
        new_run = torch.nonzero(new_ids == tiny.VIDEO_TOKEN).flatten()
        # the reducer's order inside each piece: frame by frame, stable
        order = torch.sort(seq.result.token_frame, stable=True).indices
        assert torch.equal(kept[:, new_run], full[:, row][:, real][:, run[slot[order]]])
    # reference through the stock language model
    dim = qwen3.config.text_config.hidden_size
    tokens = torch.cat([s.tokens for s in handle.last])
    order = torch.cat([torch.sort(s.result.token_frame, stable=True).indices + offset
                       for s, offset in zip(handle.last, [0] + list(
                           torch.tensor([s.tokens.shape[0] for s in handle.last]).cumsum(0)[:-1]))])
    tokens = tokens[order]
    with torch.no_grad():
        embeds = qwen3.get_input_embeddings()(ids)
        visual = ids == tiny.VIDEO_TOKEN
        embeds[visual] = tokens[:, :dim]
        deepstack = list(tokens[:, dim:].split(dim, dim=-1))
        hidden = qwen3.model.language_model(
            inputs_embeds=embeds, attention_mask=short["attention_mask"],
            position_ids=short["position_ids"], visual_pos_masks=visual,
            deepstack_visual_embeds=deepstack).last_hidden_state
        reference = qwen3.lm_head(hidden)
    torch.testing.assert_close(reduced, reference, rtol=0, atol=1e-5)
    with torch.no_grad():   # dropping DeepStack changes the answer: the levels really arrive
        bare = qwen3.lm_head(qwen3.model.language_model(
            inputs_embeds=embeds, attention_mask=short["attention_mask"],
            position_ids=short["position_ids"]).last_hidden_state)
    assert not torch.allclose(bare, reference, atol=1e-4)


def test_labels_with_videos_are_refused(ov, applied):
    applied(ov, aot_integrations.hf.config_for(ov, 0.25, **KNOBS))
    inputs = ov_inputs(batch=1, frames=2)
    with pytest.raises(ValueError, match="labels with videos are not supported"):
        ov(**inputs, labels=inputs["input_ids"])
