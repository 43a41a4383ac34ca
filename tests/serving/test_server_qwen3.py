"""A real vLLM server on the tiny Qwen3-VL with the plugin: the served prompt holds, after each
frame's timestamp, the count :func:`aot.serving.frame_token_counts` plans, for retentions in
flight together; a reducer whose split over the frames follows the content gets a 400 and the
server keeps serving. The test stops the server it started."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import SERVER_AOT_CONFIG  # noqa: E402
from pieces import piece_lengths  # noqa: E402
from test_server import FRAMES, QUESTION, SERVER_RETENTION, serve, video_path  # noqa: E402

from aot_bench.serving import chat, video_data_url, video_message  # noqa: E402


@pytest.fixture(scope="module")
def server_q3(reference, tmp_path_factory):
    """(base url, checkpoint folder) of the server on the tiny Qwen3-VL, default retention
    0.25."""
    checkpoint = reference[0] / "qwen3_vl"
    with serve(checkpoint, tmp_path_factory.mktemp("server_q3") / "server.log") as url:
        yield url, checkpoint


def _pieces(prompt_ids: list[int], config: dict) -> list[int]:
    """Video tokens of each piece (the first: the prompt's own marker before the timestamps,
    which holds none)."""
    return piece_lengths(prompt_ids, config["vision_start_token_id"],
                         config["vision_end_token_id"], config["video_token_id"])


def _ask(url: str, retention) -> tuple[int, dict]:
    options = None if retention == "server" else {"aot_retention": retention}
    return chat(url, video_message(video_data_url(video_path()), QUESTION), options,
                extra={"return_token_ids": True})


def test_each_frame_holds_its_planned_count_in_flight(server_q3):
    from transformers import AutoConfig

    from aot.serving import frame_token_counts
    from aot_integrations.vllm.qwen3 import reduction_for

    url, checkpoint = server_q3
    ids = json.loads((checkpoint / "config.json").read_text())
    hf_config = AutoConfig.from_pretrained(checkpoint)
    hf_config.aot_config = SERVER_AOT_CONFIG
    retentions = [0.5, 0.1, None, "server", 0.25]
    with ThreadPoolExecutor(len(retentions)) as pool:
        answers = list(pool.map(lambda r: _ask(url, r), retentions))
    for retention, (status, body) in zip(retentions, answers):
        assert status == 200, (retention, body)
    unreduced = _pieces(answers[retentions.index(None)][1]["prompt_token_ids"], ids)[1:]
    assert len(unreduced) == FRAMES // 2 and len(set(unreduced)) == 1, unreduced
    for retention, (_, body) in zip(retentions, answers):
        # the random model's tokens may decode to nothing: count them instead of the text
        assert body["usage"]["completion_tokens"] >= 1, retention
        assert body["usage"]["prompt_tokens"] == len(body["prompt_token_ids"])
        pieces = _pieces(body["prompt_token_ids"], ids)
        assert pieces[0] == 0 and len(pieces) == 1 + FRAMES // 2, pieces
        if retention is None:
            continue
        r = SERVER_RETENTION if retention == "server" else retention
        # the plan depends on the frame's token count, not on its shape: one row of n tokens
        planned = frame_token_counts("qwen3_vl", (FRAMES // 2, 2, 2 * unreduced[0]),
                                     reduction_for(hf_config, r, "aot").config)
        assert pieces[1:] == planned, (retention, pieces, planned)
    counts = {str(r): sum(_pieces(body["prompt_token_ids"], ids)) for r, (_, body)
              in zip(retentions, answers)}
    assert counts["0.1"] < counts["0.25"] == counts["server"] < counts["0.5"] < counts["None"]


def test_a_content_dependent_reducer_gets_a_4xx_and_the_server_keeps_serving(server_q3):
    url, _ = server_q3
    status, body = chat(url, video_message(video_data_url(video_path()), QUESTION),
                        {"aot_retention": 0.3, "aot_reducer": "vidcom2"})
    assert 400 <= status < 500, (status, body)
    message = body["error"]["message"]
    print(f"[server] qwen3_vl vidcom2 -> HTTP {status}: {message}")
    assert "aot_reducer='vidcom2' splits its tokens over the frames" in message, message
    assert len(message) < 600 and "Traceback" not in message, message
    status, good = _ask(url, 0.2)
    assert status == 200, good
