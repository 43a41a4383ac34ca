"""Batched ``generate`` equals one-at-a-time ``generate``: any padding side of the prompts, any
frame counts, any reducer.

The prompts are padded as lmms-eval's wrappers pad them (``pad_sequence``, flipped for left
padding; ``attention_mask = ids != pad``); lmms-lab configs say ``tokenizer_padding_side: right``,
which is where visual tokens are spliced in, and generation must still continue each sample
right after its own last token.
"""

from __future__ import annotations

import copy

import pytest
import torch

import aot
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava_testkit import video_pixels

QUESTIONS = ["What?", "Describe the video in one sentence. A person walks a dog in the park. "
             "Answer with the option's letter from the given choices. (A) red (B) blue"]
FRAMES = (8, 12)
REDUCERS = {
    "none": None,
    "aot-exact-0.25": aot.settings_for("ov", 0.25, frames=8, layers=(0, 2)),
}


@pytest.fixture(scope="module")
def ov(ov_checkpoint):
    folder, _ = ov_checkpoint
    return load_pretrained_model(folder, None, "llava_qwen", device_map="cpu",
                                 torch_dtype="float32")


def prompt_ids(tokenizer, question: str) -> tuple[torch.Tensor, object]:
    conv = copy.deepcopy(conv_templates["qwen_1_5"])
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX,
                                return_tensors="pt")
    return ids, conv


def pad(ids: list[torch.Tensor], value: int, side: str) -> torch.Tensor:
    """lmms-eval's ``pad_sequence`` (llava_onevision / llava_vid)."""
    if side == "left":
        ids = [torch.flip(row, [0]) for row in ids]
    out = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=value)
    return torch.flip(out, [1]) if side == "left" else out


def generate(model, tokenizer, ids: torch.Tensor, videos: list, conv) -> list[list[int]]:
    """Greedy generation as the stock wrappers call it, with the repetition penalty of
    LLaVA-Video's generation_config.json; each row cut after its first pad."""
    pad_id = tokenizer.pad_token_id
    stop = KeywordsStoppingCriteria([conv.sep], tokenizer, ids)
    out = model.generate(ids, attention_mask=ids.ne(pad_id), pad_token_id=pad_id, images=videos,
                         modalities=["video"] * len(videos), do_sample=False, max_new_tokens=24,
                         use_cache=True, stopping_criteria=[stop],
                         repetition_penalty=1.05)  # LLaVA-Video-7B-Qwen2 generation_config
    rows = []
    for row in out.tolist():
        rows.append(row[:row.index(pad_id)] if pad_id in row else row)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("reducer", ["none", "aot-exact-0.25"])
def test_batch_equals_one_at_a_time(ov, reducer, monkeypatch):
    """Two videos (8 and 12 frames) with prompts of different lengths, padded right (lmms-lab's
    configs) and left: the batch gives each sample the answer it gets alone."""
    tokenizer, model, _, _ = ov
    model.set_aot(REDUCERS[reducer])
    try:
        videos = [video_pixels(n, seed=n) for n in FRAMES]
        prompts = [prompt_ids(tokenizer, q) for q in QUESTIONS]
        alone, alone_results = [], []
        for (ids, conv), video in zip(prompts, videos):
            alone += generate(model, tokenizer, ids[None], [video], conv)
            alone_results.append(model.last_aot_results[0])
        for side in ("right", "left"):
            monkeypatch.setattr(model.config, "tokenizer_padding_side", side)
            batch_ids = pad([ids for ids, _ in prompts], tokenizer.pad_token_id, side)
            together = generate(model, tokenizer, batch_ids, videos, prompts[0][1])
            assert together == alone, f"padding side {side}"
            if reducer != "none":  # the reducer ran per video, as alone
                assert [r.tokens.shape[0] for r in model.last_aot_results] == \
                    [r.tokens.shape[0] for r in alone_results]
    finally:
        model.set_aot(None)
    assert all(len(answer) >= 2 for answer in alone)  # the probe generated something
    assert len(set(map(tuple, alone))) == 2


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_forward_logits_match(ov, side, monkeypatch):
    """The spliced prefix is right: per-sample logits of a batched forward equal the single
    forward's at every real position (the layout follows ``tokenizer_padding_side``)."""
    tokenizer, model, _, _ = ov
    monkeypatch.setattr(model.config, "tokenizer_padding_side", side)
    videos = [video_pixels(n, seed=n) for n in FRAMES]
    prompts = [prompt_ids(tokenizer, q)[0] for q in QUESTIONS]
    batch_ids = pad(prompts, tokenizer.pad_token_id, side)
    with torch.no_grad():
        together = model(batch_ids, attention_mask=batch_ids.ne(tokenizer.pad_token_id),
                         images=videos, modalities=["video"] * 2).logits
        for row, (ids, video) in enumerate(zip(prompts, videos)):
            alone = model(ids[None], images=[video], modalities=["video"]).logits[0]
            n = alone.shape[0]
            got = together[row, -n:] if side == "left" else together[row, :n]
            torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-4)


def test_left_align_moves_real_positions_last_in_order():
    from llava.model.language_model.llava_qwen import left_align

    embeds = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    aligned, new_mask = left_align(embeds, mask)
    assert new_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert aligned[:, :, 0].tolist() == [[0, 0, 0, 1], [4, 5, 6, 7]]
    assert left_align(aligned, new_mask)[0] is aligned  # already left-aligned: unchanged
    assert left_align(embeds, None) == (embeds, None)
