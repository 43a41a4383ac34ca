"""vLLM's LLaVA-OneVision + aot_integrations.vllm equals transformers + aot_integrations.hf on the
same tiny checkpoint (float32, text head_dim 32, 112 px frames): prompt token counts (frames x
kept + the newline), greedy ids and their log-probabilities, a batch of four requests with two
reducers, two frame counts and an unreduced one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import NEW_TOKENS, OV_CASES, PROMPT, metadata, ov_frames  # noqa: E402


@pytest.fixture(scope="module")
def llm_ov(reference):
    from conftest import engine

    return engine(reference[0] / "llava_onevision", images=0)


def test_batch_equals_transformers(llm_ov, reference):
    from vllm import SamplingParams

    _, expected = reference
    prompt = llm_ov.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}],
        tokenize=False, add_generation_prompt=True)
    names = list(OV_CASES)
    requests = []
    for name in names:
        count, retention, reducer = OV_CASES[name]
        options = {} if retention is None else {"aot_retention": retention, "aot_reducer": reducer}
        requests.append({"prompt": prompt, "mm_processor_kwargs": options,
                         "multi_modal_data": {"video": (ov_frames(name), metadata(count))}})
    outputs = llm_ov.generate(requests, SamplingParams(temperature=0, max_tokens=NEW_TOKENS,
                                                       logprobs=0))
    for name, out in zip(names, outputs):
        want = expected[name]
        assert len(out.prompt_token_ids) == want["prompt_tokens"], name
        assert list(out.outputs[0].token_ids) == want["output_ids"], name
        logprobs = [step[token].logprob
                    for step, token in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
        assert logprobs == pytest.approx(want["logprobs"], abs=1e-5), name
    assert expected["ov-8-r0.25"]["prompt_tokens"] == expected["ov-8-full"]["prompt_tokens"] - 96
