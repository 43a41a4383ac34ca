"""vLLM's Qwen3-VL + aot_integrations.vllm equals transformers + aot_integrations.hf on the same
tiny checkpoint (float32, text head_dim 32): prompt token counts (each frame's reduced count
after its timestamp), greedy ids and their log-probabilities, for a batch of videos of several
grids, frame counts, retentions and reducers, one of them unreduced; reducers whose split over
the frames follows the content are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import (NEW_TOKENS, PROMPT, QWEN3_CASES, QWEN3_IMAGE_VIDEO,  # noqa: E402
                   QWEN3_IMAGE_VIDEO_PROMPT, frames, metadata)
from pieces import piece_lengths  # noqa: E402

#: Log-probabilities agree within this. vLLM's Qwen3-VL vision tower gives features within
#: 1e-4 of transformers' on these landscape and square grids, but within 1.3e-3 on the portrait
#: one (its position-embedding interpolation), which moves that case's log-probabilities by
#: 2e-4; float32 noise elsewhere stays below 2e-5.
LOGPROB_TOLERANCE = {"q3-4x168x112-r0.3-uniform": 5e-4}
DEFAULT_TOLERANCE = 3e-5


@pytest.fixture(scope="module")
def llm_q3(reference):
    from conftest import engine

    return engine(reference[0] / "qwen3_vl", images=1)


def _requests(llm, names, options=None):
    prompt = llm.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}],
        tokenize=False, add_generation_prompt=True)
    requests = []
    for name in names:
        count, _, _, retention, reducer = QWEN3_CASES[name]
        case = {} if retention is None else {"aot_retention": retention, "aot_reducer": reducer}
        requests.append({"prompt": prompt, "mm_processor_kwargs": options or case,
                         "multi_modal_data": {"video": (frames(name), metadata(count))}})
    return requests


def _check(name, out, want):
    assert len(out.prompt_token_ids) == want["prompt_tokens"], name
    assert list(out.outputs[0].token_ids) == want["output_ids"], name
    logprobs = [step[token].logprob
                for step, token in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
    tolerance = LOGPROB_TOLERANCE.get(name, DEFAULT_TOLERANCE)
    assert logprobs == pytest.approx(want["logprobs"], abs=tolerance), name


def test_batch_equals_transformers(llm_q3, reference):
    from vllm import SamplingParams

    _, expected = reference
    names = list(QWEN3_CASES)
    outputs = llm_q3.generate(_requests(llm_q3, names),
                              SamplingParams(temperature=0, max_tokens=NEW_TOKENS, logprobs=0))
    for name, out in zip(names, outputs):
        _check(name, out, expected[name])
    # reduced is shorter, and the retention changes the answer
    assert (expected["q3-20x112x112-r0.25"]["prompt_tokens"]
            < expected["q3-20x112x112-r0.5"]["prompt_tokens"])
    assert (expected["q3-20x112x112-r0.25"]["output_ids"]
            != expected["q3-20x112x112-r0.5"]["output_ids"])


def test_one_request_equals_its_place_in_the_batch(llm_q3, reference):
    """Alone, and again: the second time the prompt's first blocks, inside the video's pieces,
    come from the prefix cache, and the rest of the video resumes there."""
    from vllm import SamplingParams

    _, expected = reference
    name = "q3-24x112x168-r0.1"
    for _ in range(2):
        out, = llm_q3.generate(_requests(llm_q3, [name]),
                               SamplingParams(temperature=0, max_tokens=NEW_TOKENS, logprobs=0))
        _check(name, out, expected[name])
    assert out.num_cached_tokens > 0


def test_an_image_before_a_reduced_video(llm_q3, reference):
    """The image is encoded as stock and placed before the video's pieces; the reduced video
    and the text after it keep their unreduced positions, as in transformers."""
    from vllm import SamplingParams

    _, expected = reference
    count, _, _, retention, reducer = QWEN3_CASES[QWEN3_IMAGE_VIDEO]
    request = {"prompt": QWEN3_IMAGE_VIDEO_PROMPT,
               "mm_processor_kwargs": {"aot_retention": retention, "aot_reducer": reducer},
               "multi_modal_data": {"image": frames(QWEN3_IMAGE_VIDEO)[0],
                                    "video": (frames(QWEN3_IMAGE_VIDEO), metadata(count))}}
    out, = llm_q3.generate([request],
                           SamplingParams(temperature=0, max_tokens=NEW_TOKENS, logprobs=0))
    _check("q3-image+video", out, expected["q3-image+video"])


def test_each_frame_holds_its_planned_count(llm_q3, reference):
    """The prompt's pieces: after each timestamp, ``frame_token_counts`` video tokens (the
    keyframes of two-frame clips twice their survivors, later frames possibly none)."""
    from vllm import SamplingParams

    from aot_integrations.vllm.qwen3 import reduction_for
    from aot.serving import frame_token_counts

    name = "q3-24x112x168-r0.1"
    out, = llm_q3.generate(_requests(llm_q3, [name]),
                           SamplingParams(temperature=0, max_tokens=1))
    config = llm_q3.llm_engine.model_config.hf_config
    pieces = piece_lengths(out.prompt_token_ids, config.vision_start_token_id,
                           config.vision_end_token_id, config.video_token_id)
    planned = frame_token_counts("qwen3_vl", (12, 8, 10),
                                 reduction_for(config, 0.1, "aot").config)
    assert pieces[1:] == planned             # pieces[0]: the prompt's own <|vision_start|>
    assert 0 in planned and pieces[0] == 0


@pytest.mark.parametrize("reducer", ["vidcom2", "holitom", "flashvid"])
def test_content_dependent_reducers_are_refused(llm_q3, reducer):
    from vllm import SamplingParams

    request, = _requests(llm_q3, ["q3-8x112x112-r0.3"],
                         {"aot_retention": 0.3, "aot_reducer": reducer})
    with pytest.raises(ValueError, match=rf"aot_reducer='{reducer}' splits its tokens over the "
                                         r"frames by the video's content"):
        llm_q3.generate([request], SamplingParams(temperature=0, max_tokens=1))


def test_with_frame_counts_rewrites_each_run():
    from aot_integrations.vllm.qwen3 import with_frame_counts

    v = 9
    ids = [1, 2, v, v, v, 3, 4, v, v, v, 5, v, v, v, 6]
    assert with_frame_counts(ids, v, [1, 0, 4]) == [1, 2, v, 3, 4, 5, v, v, v, v, 6]
    with pytest.raises(ValueError, match="holds 3 runs of video placeholders but its videos "
                                         "have 2 frames"):
        with_frame_counts(ids, v, [1, 2])


def test_piece_positions_follow_the_qwen3_rule():
    """Text advances by one; a frame of rows x cols sits at (s, s + r, s + c); the text after
    it resumes past its largest position (portrait: rows)."""
    from aot_integrations.vllm.qwen3 import piece_positions

    v = 9
    positions = piece_positions([1, 2] + [v] * 6 + [3], v, rows=3, cols=2)
    assert positions[:, :2].tolist() == [[0, 1]] * 3
    assert positions[:, 2:8].T.tolist() == [[2, 2 + r, 2 + c] for r in range(3) for c in range(2)]
    assert positions[:, 8].tolist() == [5, 5, 5]


@pytest.fixture(scope="module")
def llm_q3_chunked(reference, llm_q3):
    """A second engine, prefill in chunks of 64 tokens (built after the first one, and kept
    until the module ends: dropping an engine tears down vLLM's process-wide state)."""
    from conftest import engine

    return engine(reference[0] / "qwen3_vl", images=0, max_num_batched_tokens=64,
                  enable_chunked_prefill=True, enable_prefix_caching=False)


def test_a_video_split_over_prefill_chunks(llm_q3_chunked, reference):
    """Prefill chunks of 64 tokens cut the videos' piece sequences (about 200 tokens) apart."""
    from vllm import SamplingParams

    _, expected = reference
    llm = llm_q3_chunked
    names = ["q3-20x112x112-r0.25", "q3-24x112x168-r0.1"]
    outputs = llm.generate(_requests(llm, names),
                           SamplingParams(temperature=0, max_tokens=NEW_TOKENS, logprobs=0))
    for name, out in zip(names, outputs):
        _check(name, out, expected[name])
