"""Bad arguments and bad inputs of aot_integrations.hf get one line naming the value and what was
expected, raised before any model work (issue 25, items 2, 4 and 5)."""


import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import aot  # noqa: E402
import aot_integrations.hf  # noqa: E402
from aot_integrations import tiny  # noqa: E402
from aot_integrations.hf import config_for, reduced_token_count  # noqa: E402

KNOBS = dict(anchors_per_frame=8, window=3, shallow_layer=1, deep_layer=3)




INPUTS = {
    "ov": lambda: tiny.onevision_inputs([4, 4]),
    "qwen": lambda: tiny.qwen_inputs([(2, 12, 12), (3, 12, 12)]),
    "qwen3": lambda: tiny.qwen3_inputs([(2, 12, 12), (3, 12, 12)]),
}


# ------------------------------------------------------------------ item 2: the serving contract
@pytest.mark.parametrize("retention", [1.5, 0, -1, float("nan"), float("inf")])
def test_reduced_token_count_refuses_retention_outside_0_1(retention):
    with pytest.raises(ValueError, match=r"retention=.* is outside \(0, 1\]"):
        reduced_token_count("ov", (16, 27, 27), retention)


@pytest.mark.parametrize("settings", [True, "0.1", torch.tensor(0.1), [0.1]])
def test_reduced_token_count_refuses_settings_that_are_no_number(settings):
    with pytest.raises(TypeError, match="reduced_token_count: settings=.*expected an AOTConfig"):
        reduced_token_count("ov", (16, 27, 27), settings)


@pytest.mark.parametrize("settings", [None, aot.AOTConfig()])
def test_reduced_token_count_needs_exact_mode(settings):
    with pytest.raises(ValueError, match="reduced_token_count needs exact mode"):
        reduced_token_count("qwen2_5_vl", (2, 12, 12), settings)


@pytest.mark.parametrize("backbone, grid", [
    ("ov", (0, 27, 27)), ("ov", (16, -27, -27)), ("ov", (True, 27, 27)), ("ov", (16, 27)),
    ("ov", None), ("ov", "16,27,27"), ("qwen2_5_vl", (2.5, 8, 8)), ("qwen2_5_vl", (2, 8.0, 8)),
    ("qwen3_vl", (1, 0, 0)), ("qwen2_5_vl", (2, 8, 8, 1))])
def test_reduced_token_count_refuses_bad_grids(backbone, grid):
    with pytest.raises(ValueError, match=r"reduced_token_count: video_grid=.*three integers >= 1"):
        reduced_token_count(backbone, grid, 0.1)


def test_reduced_token_count_refuses_an_odd_qwen_grid():
    with pytest.raises(ValueError, match=r"video_grid=\(2, 7, 7\): h and w must be multiples of 2"):
        reduced_token_count("qwen2_5_vl", (2, 7, 7), 0.1)


@pytest.mark.parametrize("backbone", ["ov", "video"])
def test_reduced_token_count_refuses_a_non_square_siglip_grid(backbone):
    with pytest.raises(ValueError, match=r"video_grid=\(16, 27, 26\): backbone .* takes square"):
        reduced_token_count(backbone, (16, 27, 26), 0.1)


@pytest.mark.parametrize("grid", [torch.tensor([[2, 8, 8], [2, 8, 8]]), torch.tensor([[2, 8, 8]])])
def test_reduced_token_count_refuses_a_whole_video_grid_thw(grid):
    with pytest.raises(ValueError, match=r"video_grid is a tensor of shape \(\d, 3\).*one row"):
        reduced_token_count("qwen2_5_vl", grid, 0.1)


def test_reduced_token_count_refuses_a_float_tensor_row():
    with pytest.raises(TypeError, match="has dtype torch.float32"):
        reduced_token_count("qwen2_5_vl", torch.tensor([2.0, 8.0, 8.0]), 0.1)


def test_reduced_token_count_of_valid_grids_is_unchanged(qwen):
    """Tuples, lists, tensor rows, numpy ints, a model or its record: the same count; r = 1 is
    the unreduced count, never more."""
    row = tiny.qwen_inputs([(2, 12, 12)])["video_grid_thw"][0]
    counts = {reduced_token_count("qwen2_5_vl", g, 0.25)
              for g in [(2, 12, 12), [2, 12, 12], row, tuple(np.array([2, 12, 12]))]}
    counts.add(reduced_token_count(qwen, (2, 12, 12), config_for(qwen, 0.25)))
    counts.add(reduced_token_count(aot.backbones.get_backbone("qwen2_5_vl"), (2, 12, 12),
                                   np.float64(0.25)))
    assert counts == {aot.exact_budget(0.25, 2, 36)}
    assert reduced_token_count("ov", (16, 27, 27), 1) == 16 * 196 + 1
    assert reduced_token_count("qwen3_vl", (3, 16, 16), 1.0) == 3 * 64


# ------------------------------------------------------------------------- item 4: config_for
def test_config_for_approximate_mode_follows_the_retention(qwen):
    anchors = [config_for(qwen, r, exact=False, frames=8).anchors_per_frame for r in (0.05, 0.9)]
    assert anchors[0] < anchors[1]
    with pytest.raises(ValueError, match=r"retention=7 is outside \(0, 1\]"):
        config_for(qwen, 7, exact=False, frames=8)


@pytest.mark.parametrize("exact", ["no", "false", 0, 1, None])
def test_config_for_refuses_exact_that_is_no_bool(qwen, exact):
    with pytest.raises(TypeError, match=r"config_for: exact=.*: expected True .* or False"):
        config_for(qwen, 0.1, exact=exact, frames=8)


@pytest.mark.parametrize("grid", [(0, 0), (-3, 6), 6, (6.0, 6), (6, 6, 6), "6x6", (True, 6)])
def test_config_for_refuses_bad_grids(qwen, grid):
    with pytest.raises(ValueError, match=r"grid=.*expected \(rows, cols\), two integers >= 1"):
        config_for(qwen, 0.1, grid=grid)


@pytest.mark.parametrize("frames", [0, -2, True, 2.0, "8"])
def test_config_for_refuses_bad_frames(qwen, frames):
    with pytest.raises(ValueError, match="frames=.*: expected an integer >= 1"):
        config_for(qwen, 0.1, exact=False, frames=frames)


@pytest.mark.parametrize("retention", [True, float("nan"), "0.1", 1.5, -1, 0])
def test_config_for_refuses_bad_retention(qwen, retention):
    with pytest.raises(ValueError, match=r"retention=.* is outside \(0, 1\]"):
        config_for(qwen, retention)


def test_config_for_none_is_refused_unless_the_released_preset_is_asked_for(qwen):
    with pytest.raises(ValueError, match="exact=True needs a retention"):
        config_for(qwen, None)
    assert config_for(qwen, None, exact=False).exact_retention is None


# ------------------------------------------------------------ item 5: inputs of generate/forward
def _call(model, inputs, generate):
    if generate:
        return model.generate(**inputs, max_new_tokens=1, do_sample=False)
    return model(**inputs)


@pytest.fixture
def installed(request, applied):
    def install(name):
        model = request.getfixturevalue(name)
        applied(model, config_for(model, 0.25, **KNOBS))
        return model
    return install


@pytest.mark.parametrize("generate", [True, False], ids=["generate", "forward"])
@pytest.mark.parametrize("name", ["ov", "qwen", "qwen3"])
def test_inputs_embeds_with_videos_is_refused(installed, name, generate):
    model = installed(name)
    inputs = INPUTS[name]()
    inputs["inputs_embeds"] = model.get_input_embeddings()(inputs.pop("input_ids"))
    with pytest.raises(ValueError, match="videos need input_ids .*not inputs_embeds"):
        _call(model, inputs, generate)


@pytest.mark.parametrize("name", ["ov", "qwen", "qwen3"])
def test_generate_takes_the_ids_as_inputs_keyword(installed, name):
    model = installed(name)
    inputs = INPUTS[name]()
    ids = inputs["input_ids"]
    out = model.generate(inputs=inputs.pop("input_ids"), **inputs, max_new_tokens=1,
                         do_sample=False)
    assert torch.equal(out[:, :ids.shape[1]], ids)
    inputs["input_ids"] = ids
    with pytest.raises(ValueError, match="the ids came twice"):
        model.generate(ids, **inputs, max_new_tokens=1)


@pytest.mark.parametrize("generate", [True, False], ids=["generate", "forward"])
@pytest.mark.parametrize("name", ["qwen", "qwen3"])
@pytest.mark.parametrize("missing, message", [
    ("mm_token_type_ids", "need mm_token_type_ids .*the transformers 5.x processor"),
    ("video_grid_thw", "pixel_values_videos came without video_grid_thw")])
def test_qwen_inputs_without_a_key_say_what_is_missing(installed, name, generate, missing,
                                                        message):
    model = installed(name)
    inputs = INPUTS[name]()
    del inputs[missing]
    with pytest.raises(ValueError, match=message):
        _call(model, inputs, generate)


class NoWork:
    """Fails the test if the vision tower or the rope index runs."""

    def __init__(self, model):
        inner = model.model
        tower = getattr(inner, "visual", None) or inner.vision_tower
        self.handles = [tower.register_forward_pre_hook(self.fail)]
        if hasattr(inner, "get_rope_index"):
            inner.get_rope_index = self.fail

    def fail(self, *args, **kwargs):
        raise AssertionError("model work started before the inputs were checked")

    def close(self, model):
        for handle in self.handles:
            handle.remove()
        model.model.__dict__.pop("get_rope_index", None)


def _insert_text(inputs, column):
    """One text token inserted at ``column`` of every row (ids, mask and token types)."""
    for key, value in (("input_ids", 5), ("attention_mask", 1), ("mm_token_type_ids", 0)):
        if key in inputs:
            x = inputs[key]
            inputs[key] = torch.cat([x[:, :column], torch.full_like(x[:, :1], value),
                                     x[:, column:]], 1)
    return inputs


def _placeholder_short(inputs):
    ids = inputs["input_ids"]
    ids[0, int((ids[0] == tiny.VIDEO_TOKEN).nonzero()[0])] = 5
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = (ids == tiny.VIDEO_TOKEN).long() * 2


def _split_by_text(inputs):
    """One video (OV or Qwen2.5-VL) whose placeholder run has a text token inside."""
    qwen = "video_grid_thw" in inputs
    inputs.clear()
    inputs.update(tiny.qwen_inputs([(2, 12, 12)]) if qwen else tiny.onevision_inputs([4]))
    first = int((inputs["input_ids"][0] == tiny.VIDEO_TOKEN).nonzero()[10])
    _insert_text(inputs, first)


def _set(key, value):
    return lambda inputs: inputs.__setitem__(key, value(inputs) if callable(value) else value)


BAD_INPUTS = [
    # (id, models, change, message)
    ("placeholder short", ["ov", "qwen", "qwen3"], _placeholder_short,
     r"input_ids hold \d+ video placeholders but the 2 videos of \w+ need \d+"),
    ("one video's pixels", ["ov"], _set("pixel_values_videos", lambda i: i["pixel_values_videos"][:1]),
     "input_ids hold 74 video placeholders but the 1 videos of pixel_values_videos need 37"),
    ("pixels 4-D", ["ov"], _set("pixel_values_videos", lambda i: i["pixel_values_videos"][0]),
     r"pixel_values_videos has shape \(4, 3, 84, 84\); expected \(videos, frames, 3, 84, 84\)"),
    ("pixels as a list", ["ov"], _set("pixel_values_videos", lambda i: list(i["pixel_values_videos"])),
     "pixel_values_videos has shape list; expected"),
    ("frames of another size", ["ov"],
     _set("pixel_values_videos", lambda i: i["pixel_values_videos"][..., :70, :70]),
     r"pixel_values_videos has shape \(2, 4, 3, 70, 70\)"),
    ("no frames", ["ov"], _set("pixel_values_videos", lambda i: i["pixel_values_videos"][:, :0]),
     r"pixel_values_videos has shape \(2, 0, 3, 84, 84\)"),
    ("integer pixels", ["ov"], _set("pixel_values_videos", lambda i: i["pixel_values_videos"].long()),
     "pixel_values_videos has dtype torch.int64; expected floating-point pixels"),
    ("NaN pixels", ["ov", "qwen", "qwen3"],
     _set("pixel_values_videos", lambda i: i["pixel_values_videos"] * float("nan")),
     "pixel_values_videos holds NaN or inf values"),
    ("float ids", ["ov", "qwen"], _set("input_ids", lambda i: i["input_ids"].float()),
     r"input_ids has shape \(2, \d+\) and dtype torch.float32; expected a \(batch, length\) integer"),
    ("1-D ids", ["ov"], _set("input_ids", lambda i: i["input_ids"][0]),
     r"input_ids has shape \(\d+,\) and dtype torch.int64"),
    ("ids as a list", ["qwen"], _set("input_ids", lambda i: i["input_ids"].tolist()),
     "input_ids has type list"),
    ("mask shorter", ["ov", "qwen3"], _set("attention_mask", lambda i: i["attention_mask"][:, 1:]),
     r"attention_mask has shape \(2, \d+\) but input_ids \(2, \d+\)"),
    ("ids and embeddings", ["ov"], _set("inputs_embeds", lambda i: torch.zeros(2, 3, 32)),
     "videos need input_ids alone, not inputs_embeds as well"),
    ("float grid", ["qwen"], _set("video_grid_thw", lambda i: i["video_grid_thw"].float()),
     r"video_grid_thw has shape \(2, 3\) and dtype torch.float32; expected a \(videos, 3\) integer"),
    ("one grid row", ["qwen3"], _set("video_grid_thw", lambda i: i["video_grid_thw"][0]),
     r"video_grid_thw has shape \(3,\)"),
    ("grid as a list", ["qwen"], _set("video_grid_thw", lambda i: i["video_grid_thw"].tolist()),
     "video_grid_thw has type list"),
    ("odd grid", ["qwen", "qwen3"], _set("video_grid_thw", torch.tensor([[2, 12, 12], [3, 11, 12]])),
     r"video_grid_thw\[1\] = \[3, 11, 12\]: expected t, h, w >= 1 with h and w multiples of "
     "spatial_merge_size=2"),
    ("zero frames in the grid", ["qwen"], _set("video_grid_thw", torch.tensor([[0, 12, 12], [3, 12, 12]])),
     r"video_grid_thw\[0\] = \[0, 12, 12\]"),
    ("negative grid", ["qwen3"], _set("video_grid_thw", torch.tensor([[-2, 12, 12], [3, 12, 12]])),
     r"video_grid_thw\[0\] = \[-2, 12, 12\]"),
    ("grid says fewer frames", ["qwen", "qwen3"],
     _set("video_grid_thw", torch.tensor([[2, 12, 12], [2, 12, 12]])),
     r"pixel_values_videos has shape \(720, \d+\) but video_grid_thw \[\[2, 12, 12\], \[2, 12, 12\]\] "
     r"needs \(576, \d+\)"),
    ("pixel rows short", ["qwen", "qwen3"],
     _set("pixel_values_videos", lambda i: i["pixel_values_videos"][:-4]),
     r"pixel_values_videos has shape \(716, \d+\) but video_grid_thw .* needs \(720, \d+\)"),
    ("pixel width", ["qwen"], _set("pixel_values_videos", lambda i: i["pixel_values_videos"][:, :100]),
     r"pixel_values_videos has shape \(720, 100\) but video_grid_thw .* needs \(720, 1176\)"),
    ("grid rows swapped", ["qwen", "qwen3"],
     _set("video_grid_thw", torch.tensor([[3, 12, 12], [2, 12, 12]])),
     "row 0 ends after 72 of the 108 placeholders video_grid_thw gives video 0; a video's "
     "placeholders must not span rows"),
    ("token types as a list", ["qwen"], _set("mm_token_type_ids", lambda i: i["mm_token_type_ids"].tolist()),
     "mm_token_type_ids has shape list but input_ids"),
    ("token types shorter", ["qwen3"], _set("mm_token_type_ids", lambda i: i["mm_token_type_ids"][:, 1:]),
     r"mm_token_type_ids has shape \(2, \d+\) but input_ids \(2, \d+\)"),
    ("token types say text", ["qwen", "qwen3"],
     _set("mm_token_type_ids", lambda i: torch.zeros_like(i["mm_token_type_ids"])),
     r"mm_token_type_ids marks 0 video tokens \(value 2\) but input_ids hold 180 video placeholders"),
    ("seconds for one video", ["qwen"], _set("second_per_grid_ts", torch.tensor([1.0])),
     r"second_per_grid_ts=\[1.0\]: expected 2 positive numbers of seconds"),
    ("NaN seconds", ["qwen"], _set("second_per_grid_ts", torch.tensor([1.0, float("nan")])),
     r"second_per_grid_ts=\[1.0, nan\]"),
    ("text inside a video", ["ov", "qwen"], _split_by_text,
     r"video 0's placeholders come in runs of \[10, \d+\] but \w+ needs runs of \[\d+\] with text "
     "between"),
    ("labels", ["ov"], _set("labels", lambda i: i["input_ids"]), "labels with videos are not supported"),
]


@pytest.mark.parametrize("generate", [True, False], ids=["generate", "forward"])
@pytest.mark.parametrize("name, change, message", [
    pytest.param(name, change, message, id=f"{name}-{label}")
    for label, names, change, message in BAD_INPUTS for name in names])
def test_bad_inputs_get_one_line_before_any_model_work(installed, name, change, message, generate):
    model = installed(name)
    inputs = INPUTS[name]()
    change(inputs)
    guard = NoWork(model)
    try:
        with pytest.raises((ValueError, TypeError), match=message) as error:
            _call(model, inputs, generate)
    finally:
        guard.close(model)
    assert "\n" not in str(error.value)


def test_two_qwen_videos_without_text_between_are_refused_before_the_rope_index(installed):
    """M-RoPE groups placeholders by runs of mm_token_type_ids: two videos in one run would fail
    inside get_rope_index; the runs are checked first."""
    model = installed("qwen")
    inputs = INPUTS["qwen"]()
    row = [3, 4, tiny.VISION_START] + [tiny.VIDEO_TOKEN] * 180 + [tiny.VISION_END, 7]
    ids = torch.tensor([row])
    inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids),
                  mm_token_type_ids=(ids == tiny.VIDEO_TOKEN).long() * 2)
    guard = NoWork(model)
    try:
        with pytest.raises(ValueError, match=r"video 0's placeholders come in runs of \[180\] but "
                                             r"video_grid_thw needs runs of \[72\]"):
            model(**inputs)
    finally:
        guard.close(model)


def test_two_ov_videos_in_one_run_still_run(installed):
    """LLaVA-OneVision scatters placeholders in order: two videos back to back in one row are
    valid (the check only refuses breaks where the grid has none)."""
    model = installed("ov")
    inputs = INPUTS["ov"]()
    row = [3, 4] + [tiny.VIDEO_TOKEN] * 74 + [6]
    ids = torch.tensor([row])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       pixel_values_videos=inputs["pixel_values_videos"]).logits
    assert torch.isfinite(logits).all()


def test_frames_smaller_than_the_anchor_count_are_refused_before_encoding(ov, applied):
    applied(ov, config_for(ov, 0.25))          # the 27 x 27 settings on a 6 x 6 tiny tower
    guard = NoWork(ov)
    try:
        with pytest.raises(ValueError, match=r"anchors_per_frame=126 exceeds the 36 tokens of a "
                                             r"6x6 frame \(video 0\); build the settings for this "
                                             r"grid: .*grid=\(6, 6\)"):
            ov(**INPUTS["ov"]())
    finally:
        guard.close(ov)


def test_register_adapter_refuses_a_class_name_that_is_no_string():
    from aot_integrations.hf.qwen import Qwen25VLAdapter

    with pytest.raises(TypeError, match="register_adapter: class_name=5: expected the transformers "
                                        "class name"):
        aot_integrations.hf.register_adapter(5, Qwen25VLAdapter)


def test_check_placeholders_is_pure_and_finds_a_video_spanning_rows():
    from aot_integrations.hf.sequence import check_placeholders

    ids = torch.tensor([[1, 9, 9, 9], [9, 9, 2, 2]])
    with pytest.raises(ValueError, match="row 0 ends after 3 of the 5 placeholders grid gives "
                                         "video 0"):
        check_placeholders(ids, None, 9, [[5]], "grid", False)
    check_placeholders(ids, None, 9, [[3], [2]], "grid", True)
