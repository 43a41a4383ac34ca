"""vLLM + aot_integrations.vllm equals transformers + aot_integrations.hf on the same tiny checkpoint (float32,
text head_dim 32): prompt token counts and greedy ids, a batch of videos of several grids, frame
counts, retentions and reducers sent together."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import CASES, IMAGE_PROMPT, NEW_TOKENS, PROMPT, frames, image, metadata  # noqa: E402


def _requests(tokenizer, names):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}],
        tokenize=False, add_generation_prompt=True)
    requests = []
    for name in names:
        count, _, _, retention, reducer = CASES[name]
        options = {} if retention is None else {"aot_retention": retention, "aot_reducer": reducer}
        requests.append({"prompt": prompt, "mm_processor_kwargs": options,
                         "multi_modal_data": {"video": (frames(name), metadata(count))}})
    return requests


def test_batch_equals_transformers(llm, reference):
    from vllm import SamplingParams

    _, expected = reference
    names = list(CASES)
    outputs = llm.generate(_requests(llm.get_tokenizer(), names),
                           SamplingParams(temperature=0, max_tokens=NEW_TOKENS, logprobs=0))
    got = {name: {"prompt_tokens": len(out.prompt_token_ids),
                  "output_ids": list(out.outputs[0].token_ids)}
           for name, out in zip(names, outputs)}
    want = {name: {key: expected[name][key] for key in ("prompt_tokens", "output_ids")}
            for name in names}
    assert got == want
    # The tiny model's next-token distribution is nearly flat, so greedy ids barely notice a
    # wrong position; the log-probabilities do (a text offset of w instead of max(h, w) after a
    # portrait video moves them by 1.5e-4, float32 noise is below 1e-6).
    for name, out in zip(names, outputs):
        logprobs = [step[token].logprob
                    for step, token in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
        assert logprobs == pytest.approx(expected[name]["logprobs"], abs=1e-5), name
    # the reduced cases really are reduced, and the answers depend on the retention
    assert got["16x112x112-r0.25"]["prompt_tokens"] < got["16x112x112-full"]["prompt_tokens"]
    assert got["16x112x112-r0.25"]["output_ids"] != got["16x112x112-r0.5"]["output_ids"]


def test_one_request_equals_its_place_in_the_batch(llm, reference):
    """A request alone gets what it got in the batch (no state crosses requests)."""
    from vllm import SamplingParams

    _, expected = reference
    name = "8x112x168-r0.3"
    out, = llm.generate(_requests(llm.get_tokenizer(), [name]),
                        SamplingParams(temperature=0, max_tokens=NEW_TOKENS, logprobs=0))
    assert len(out.prompt_token_ids) == expected[name]["prompt_tokens"]
    assert list(out.outputs[0].token_ids) == expected[name]["output_ids"]
    logprobs = [step[token].logprob
                for step, token in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
    assert logprobs == pytest.approx(expected[name]["logprobs"], abs=1e-5)


def test_an_image_request_equals_transformers(llm, reference):
    """Images are not reduced, but they too carry position channels through the plugin; the
    text after a portrait image continues where stock vLLM and transformers put it."""
    from vllm import SamplingParams

    _, expected = reference
    out, = llm.generate([{"prompt": IMAGE_PROMPT, "multi_modal_data": {"image": image()}}],
                        SamplingParams(temperature=0, max_tokens=NEW_TOKENS, logprobs=0))
    assert len(out.prompt_token_ids) == expected["image"]["prompt_tokens"]
    assert list(out.outputs[0].token_ids) == expected["image"]["output_ids"]
    logprobs = [step[token].logprob
                for step, token in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
    assert logprobs == pytest.approx(expected["image"]["logprobs"], abs=1e-5)


def test_text_after_a_video_continues_at_its_longer_side():
    """The fourth channel: max(h, w) / 2 merged tokens after the video's start (transformers'
    rule), for portrait and landscape grids alike; the first three are vLLM's positions."""
    from aot_integrations.vllm.qwen import mrope_channels

    portrait = mrope_channels([2, 12, 8], 2, tokens_per_second=2, second_per_grid=1.0)
    assert portrait.shape == (2 * 6 * 4, 4)
    assert set(portrait[:, 3].tolist()) == {6}
    assert portrait[:, 0].unique().tolist() == [0, 2]            # t: 2 tokens per second
    assert portrait[:, 1].max() == 5 and portrait[:, 2].max() == 3
    landscape = mrope_channels([4, 8, 12], 2, tokens_per_second=2, second_per_grid=1.0)
    assert set(landscape[:, 3].tolist()) == {6}


@pytest.mark.parametrize("options, message", [
    ({"aot_retention": 0}, "aot_retention=0 is outside (0, 1]"),
    ({"aot_retention": 1.5}, "aot_retention=1.5 is outside (0, 1]"),
    ({"aot_retention": 0.25, "aot_reducer": "fastv"}, "aot_reducer='fastv'"),
    ({"aot_retention": 0.25, "aot_mode": "released"}, "aot_mode='released'"),
])
def test_bad_options_are_refused(llm, options, message):
    from vllm import SamplingParams

    request, = _requests(llm.get_tokenizer(), ["4x168x112-r0.2-uniform"])
    request["mm_processor_kwargs"] = options
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        llm.generate([request], SamplingParams(temperature=0, max_tokens=1))


@pytest.mark.parametrize("aot_config, message", [
    ({"bogus": 1}, "aot_config key 'bogus': expected an aot.AOTConfig field"),
    ({"exact_retention": 0.5}, "aot_config key 'exact_retention'"),
    ({"deep_layer": 9}, r"vision layers \[1, 9\] but the tower has blocks 0..3"),
])
def test_bad_server_settings_stop_the_engine_at_start(reference, aot_config, message):
    import os

    from vllm import LLM

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    with pytest.raises(ValueError, match=message):
        LLM(model=str(reference[0] / "qwen2_5_vl"), max_model_len=4096, enforce_eager=True,
            dtype="float32", limit_mm_per_prompt={"video": 1, "image": 0},
            kv_cache_memory_bytes=256 << 20, hf_overrides={"aot_config": aot_config})
