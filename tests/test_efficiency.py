"""aot_bench: prefill FLOPs formula vs FlopCounterMode, stage pipeline vs the model, CPU smoke run."""

from __future__ import annotations

import json
import os

import pytest
import torch

import aot
from aot_bench import efficiency
from aot_bench.configs import get_shape
from aot_bench.flops import (
    count_flops,
    counted_prefill_flops,
    llm_prefill_flops,
    paper_prefill_flops,
)
from aot_bench.models import random_model, set_backbone
from aot_bench.pipeline import make_input_ids
from aot.video_path import StageClock
from llava.model.llava_arch import splice_visual_tokens

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_eager():
    """The tiny preset with eager LLM attention (FLOP counting needs the explicit matmuls)."""
    return random_model(get_shape("tiny"), "ov", CPU, torch.float32, attn="eager")


@pytest.mark.parametrize("seq_len", [1, 37, 300])
def test_analytic_prefill_flops_equal_counted_on_tiny_model(tiny_eager, seq_len):
    shape = get_shape("tiny")
    embeds = torch.randn(1, seq_len, shape.lm_hidden)
    with torch.no_grad():
        counted, out = count_flops(tiny_eager, inputs_embeds=embeds, use_cache=True,
                                   logits_to_keep=1)
    assert out.logits.shape == (1, 1, shape.vocab)
    assert counted == llm_prefill_flops(shape, seq_len)


def test_counted_flops_on_meta_match_formula_for_7b():
    shape = get_shape("7b")
    for seq_len in (6337, 32 * 196 + 1 + 64):
        assert counted_prefill_flops(shape, seq_len) == llm_prefill_flops(shape, seq_len)


def test_paper_convention_reproduces_paper_totals():
    shape = get_shape("7b")
    assert round(paper_prefill_flops(shape, 32 * 196) / 1e12, 1) == 40.8
    assert round(paper_prefill_flops(shape, 64 * 169) / 1e12, 1) == 80.2


@pytest.mark.parametrize("backbone", ["ov", "video"])
@pytest.mark.parametrize("retention", [None, 0.2])
def test_stage_pipeline_gives_the_model_embeddings(backbone, retention):
    shape = get_shape("tiny")
    model = random_model(shape, backbone, CPU, torch.float32)
    set_backbone(model, backbone)
    config = efficiency.aot_config(retention, backbone, 4, shape)
    model.set_aot(config)
    pixels = torch.rand(4, 3, 384, 384, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ids = make_input_ids(10, shape.vocab, CPU)
    with torch.no_grad():
        clock = StageClock(CPU)
        sequence = model.video_sequence(pixels, on_stage=clock.lap)
        ours = splice_visual_tokens(ids, None, None, [sequence.tokens],
                                    model.get_model().embed_tokens)[0]
        ref = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [pixels],
                                                         ["video"])[4]
    assert torch.equal(ours, ref)
    visual, expected_newlines = efficiency.expected_visual_tokens(backbone, 4, retention)
    assert (sequence.visual_tokens, sequence.newline_tokens) == (visual, expected_newlines)
    assert list(clock.stages) == ["vision", "projector", "reduce"]


@pytest.mark.slow
def test_cpu_smoke_run_writes_every_output(tmp_path):
    out = tmp_path / "bench"
    code = efficiency.main(["--preset", "tiny", "--frames", "2", "4", "--retentions", "full",
                            "0.25", "--warmup", "0", "--repeats", "1", "--decode-tokens", "2",
                            "--text-tokens", "16", "--max-context", "500",
                            "--out", str(out)])
    assert code == 0
    for name in ("efficiency.json", "efficiency.md", "latency_breakdown.png",
                 "ttft_vs_frames.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "efficiency.json").read_text())
    rows = {(r["backbone"], r["frames"], r["retention"]): r for r in report["rows"]}
    assert len(rows) == 8
    # 4 frames of OV / Video, full: 785 / 728 visual tokens + 16 text > 500 -> not run
    assert rows[("ov", 4, None)]["status"] == "over_context"
    assert rows[("video", 4, None)]["status"] == "over_context"
    assert rows[("ov", 4, 0.25)]["ratios"] is None
    reduced = rows[("ov", 2, 0.25)]
    assert reduced["status"] == "ok" and reduced["visual_tokens"] == 98
    assert reduced["prefill_flops_counted"] == reduced["prefill_flops_analytic"]
    assert reduced["ratios"]["ttft_speedup"] > 0
    assert 0 < reduced["ratios"]["prefill_flops"] < 1
    assert rows[("video", 2, 0.25)]["visual_tokens"] == int(0.25 * 2 * 169 + 0.5)
    assert set(reduced["seconds"]) >= {"vision", "reduce", "prefill", "ttft"}
    assert report["environment"]["reduced_widths"] is True
    text = (out / "efficiency.md").read_text()
    assert "over_context" in text and "reduced widths" in text


def test_bad_arguments_give_clear_errors():
    with pytest.raises(SystemExit):
        efficiency.parse_args(["--retentions", "lots"])
    with pytest.raises(ValueError, match="outside"):
        efficiency.parse_retention("1.5")
    with pytest.raises(ValueError, match="unknown model preset"):
        get_shape("13b")
    assert efficiency.parse_retention("full") is None
    assert aot.settings_for("video", 0.1, frames=16).exact_retention == 0.1


@pytest.mark.slow
def test_bench_script_passes_options_through():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_efficiency.sh"
    done = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "--retentions" in done.stdout and "--checkpoint" in done.stdout


# ------------------------------------------------------------------ Qwen2.5-VL-7B shapes
@pytest.fixture(scope="module")
def tiny_qwen_eager():
    """The tiny Qwen2.5-VL preset, eager attention in the ViT and the LLM (counted FLOPs)."""
    from aot_bench.models import random_qwen_model

    return random_qwen_model(get_shape("tiny", "qwen2_5_vl"), CPU, torch.float32, attn="eager")


@pytest.mark.parametrize("grid", [(1, 8, 8), (2, 16, 16), (3, 14, 10), (1, 6, 22)])
def test_qwen_vision_flops_equal_counted_on_tiny_model(tiny_qwen_eager, grid):
    """Patch embedding, windowed and full-attention blocks, merger: the formula counts what
    the ViT computes, for grids whose merged sides do and do not divide into 4x4 windows."""
    from aot_bench.flops import qwen_vision_flops

    shape = get_shape("tiny", "qwen2_5_vl")
    t, h, w = grid
    pixels = torch.randn(t * h * w, 3 * 2 * 14 * 14)
    with torch.no_grad():
        counted, merged = count_flops(tiny_qwen_eager.model.visual, pixels,
                                      grid_thw=torch.tensor([grid]))
    assert merged.pooler_output.shape == (t * h * w // 4, shape.lm_hidden)
    assert counted == qwen_vision_flops(shape, grid)


def test_qwen_window_lengths_follow_transformers_windows():
    from transformers.vision_utils import get_vision_window_index

    from aot_bench.flops import qwen_window_lengths

    shape = get_shape("7b", "qwen2_5_vl")
    for rows, cols in ((16, 16), (7, 9), (4, 13)):
        _, cu = get_vision_window_index(torch.tensor([[1, 2 * rows, 2 * cols]]), 2, 112, 14)
        lengths = torch.unique_consecutive(torch.as_tensor(cu)).diff().tolist()
        assert sorted(lengths) == sorted(qwen_window_lengths(rows, cols, shape))


@pytest.mark.parametrize("seq_len", [1, 37, 300])
def test_qwen_llm_prefill_flops_equal_counted_on_tiny_model(tiny_qwen_eager, seq_len):
    shape = get_shape("tiny", "qwen2_5_vl")
    embeds = torch.randn(1, seq_len, shape.lm_hidden)
    with torch.no_grad():
        counted, _ = count_flops(tiny_qwen_eager, inputs_embeds=embeds, use_cache=True,
                                 logits_to_keep=1)
    assert counted == llm_prefill_flops(shape, seq_len)


def test_qwen_whole_forward_is_vision_plus_prefill(tiny_qwen_eager):
    """The stock model on processor-shaped video inputs: counted FLOPs = ViT + LLM prefill over
    the whole sequence (text + start/end + t*h*w/4 video tokens)."""
    from aot_bench.flops import qwen_vision_flops
    from aot_bench.pipeline import make_qwen_inputs, qwen_grid

    shape = get_shape("tiny", "qwen2_5_vl")
    inputs = make_qwen_inputs(shape, 6, 112, 10, CPU, torch.float32)
    grid = qwen_grid(shape, 6, 112)
    assert grid == (3, 8, 8) and inputs["input_ids"].shape[1] == 10 + 2 + 3 * 16
    with torch.no_grad():
        counted, out = count_flops(tiny_qwen_eager, **inputs, logits_to_keep=1)
    assert out.logits.shape == (1, 1, shape.vocab)
    assert counted == qwen_vision_flops(shape, grid) + llm_prefill_flops(shape, 10 + 2 + 48)


def test_qwen_7b_preset_builds_the_published_model():
    """transformers' class at the 7B preset (meta device): 8.29 B parameters as published for
    Qwen2.5-VL-7B-Instruct, and the published module shapes."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from aot_bench.configs import qwen_config

    shape = get_shape("7b", "qwen2_5_vl")
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(qwen_config(shape))
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 8.29
    visual = model.model.visual
    assert visual.patch_embed.proj.weight.shape == (1280, 3, 2, 14, 14)
    assert visual.blocks[0].attn.qkv.weight.shape == (3840, 1280)
    assert [layer.weight.shape for layer in visual.merger.mlp if hasattr(layer, "weight")] == \
        [(5120, 5120), (3584, 5120)]
    assert list(visual.fullatt_block_indexes) == [7, 15, 23, 31] and len(visual.blocks) == 32
    assert model.config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (shape.shallow_layer, shape.deep_layer) == (aot.backbones.get_backbone(
        "qwen2_5_vl").shallow_layer, aot.backbones.get_backbone("qwen2_5_vl").deep_layer)
    # counted on the meta device: the 7B LLM prefill of 32 frames at 448 px (16 x 256 tokens)
    assert counted_prefill_flops(shape, 16 * 256 + 66) == llm_prefill_flops(shape, 16 * 256 + 66)


@pytest.mark.slow
def test_qwen_cpu_smoke_run_reduces_to_the_exact_budget(tmp_path):
    import aot_integrations.hf

    out = tmp_path / "bench"
    code = efficiency.main(["--preset", "tiny", "--backbones", "qwen2_5_vl", "--frames", "4",
                            "8", "--retentions", "full", "0.25", "0.10", "--warmup", "0",
                            "--repeats", "1", "--decode-tokens", "1", "--text-tokens", "16",
                            "--qwen-frame-size", "224", "--no-plots", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "efficiency.json").read_text())
    rows = {(r["frames"], r["retention"]): r for r in report["rows"]}
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows.values())
    for (frames, retention), row in rows.items():
        grid = (frames // 2, 16, 16)
        assert row["video_grid_thw"] == list(grid)
        full = grid[0] * 64
        expected = full if retention is None else \
            aot_integrations.hf.reduced_token_count("qwen2_5_vl", grid, retention)
        # measured: the video ids the language model received, and its sequence length
        assert row["visual_tokens"] == expected and row["seq_len"] == expected + 2 + 16
        assert row["prefill_flops_counted"] == row["prefill_flops_analytic"]
        assert row["prefill_flops_7b_counted"] == row["prefill_flops_7b_analytic"]
    reduced = rows[(8, 0.10)]
    assert reduced["visual_tokens"] < rows[(8, None)]["visual_tokens"]
    assert 0 < reduced["ratios"]["prefill_flops"] < reduced["ratios"]["tokens"] < 1
    assert reduced["ratios"]["ttft_speedup"] > 0
    assert reduced["vision_flops_7b_analytic"] == rows[(8, None)]["vision_flops_7b_analytic"]
    text = (out / "efficiency.md").read_text()
    assert "## qwen2_5_vl: prefill FLOPs" in text and "Qwen2_5_VLForConditionalGeneration" in text


def test_qwen_arguments_are_checked():
    assert efficiency.parse_frame_size("448") == (448, 448)
    assert efficiency.parse_frame_size("560x1008") == (560, 1008)
    for bad in ("100", "448x", "0", "wide"):
        with pytest.raises(ValueError, match="multiple of 28"):
            efficiency.parse_frame_size(bad)
    with pytest.raises(SystemExit):
        efficiency.parse_args(["--backbones", "qwen2_5_vl", "--qwen-frame-size", "100"])
    with pytest.raises(SystemExit):
        efficiency.parse_args(["--backbones", "qwen2_5_vl", "--checkpoint", "x"])
    with pytest.raises(ValueError, match="unknown model preset"):
        get_shape("13b", "qwen2_5_vl")


def test_qwen_benchmark_on_landscape_frames(tmp_path):
    """HxW frames (the stock processor's 16:9 shape, scaled down): the LLM receives exactly
    reduced_token_count tokens of the (t, h, w) grid, FLOPs counted = analytic."""
    import aot_integrations.hf

    out = tmp_path / "bench"
    assert efficiency.main(["--preset", "tiny", "--backbones", "qwen2_5_vl", "--frames", "4",
                            "--retentions", "full", "0.25", "--warmup", "0", "--repeats", "1",
                            "--decode-tokens", "0", "--text-tokens", "8",
                            "--qwen-frame-size", "112x196", "--no-plots",
                            "--out", str(out)]) == 0
    rows = json.loads((out / "efficiency.json").read_text())["rows"]
    assert [r["video_grid_thw"] for r in rows] == [[2, 8, 14]] * 2
    assert [r["visual_tokens"] for r in rows] == [
        2 * 4 * 7, aot_integrations.hf.reduced_token_count("qwen2_5_vl", (2, 8, 14), 0.25)]
    assert all(r["prefill_flops_counted"] == r["prefill_flops_analytic"] for r in rows)


# ------------------------------------------------------------------ with an LLM stage
def test_llm_stage_rows_on_tiny_run(tmp_path):
    """``--llm-stage fastv --llm-stage-opt layer=1``: every point also runs with FastV installed;
    the stage kept what kept_count says (measured by the installed stage, checked by the
    benchmark), its analytic FLOPs are llm_stage_prefill_flops and below the stage-free row's,
    and ratios are against the full row without a stage."""
    from aot.llm_stages import get_stage, kept_count
    from aot_bench.flops import llm_stage_prefill_flops

    out = tmp_path / "bench"
    assert efficiency.main(["--preset", "tiny", "--backbones", "ov", "--frames", "2",
                            "--retentions", "full", "0.25", "--warmup", "0", "--repeats", "1",
                            "--decode-tokens", "1", "--text-tokens", "16", "--llm-stage",
                            "fastv", "--llm-stage-opt", "layer=1", "--out", str(out)]) == 0
    report = json.loads((out / "efficiency.json").read_text())
    rows = {(r["retention"], bool(r.get("llm_stage"))): r for r in report["rows"]}
    assert len(report["rows"]) == 4 and set(rows) == {(None, False), (None, True),
                                                       (0.25, False), (0.25, True)}
    assert all(r["status"] == "ok" for r in rows.values())
    stage = get_stage("fastv", layer=1)
    shape = get_shape("tiny")
    for retention in (None, 0.25):
        plain, staged = rows[(retention, False)], rows[(retention, True)]
        assert staged["llm_stage"]["name"] == "fastv" and staged["llm_stage"]["layer"] == 1
        assert staged["llm_stage_label"] == "fastv(K=1, r=0.5)"
        # the same sequence enters the LLM; the one-token newline competes (newline_is_text off)
        assert staged["seq_len"] == plain["seq_len"]
        candidates = plain["visual_tokens"] + plain["newline_tokens"]
        assert staged["llm_stage_candidates"] == candidates
        kept = kept_count(candidates, stage)
        assert staged["llm_stage_kept"] == staged["llm_stage_kept_expected"] == kept < candidates
        after = staged["seq_len"] - candidates + kept
        assert staged["seq_len_after_stage"] == after
        assert staged["prefill_flops_analytic"] == llm_stage_prefill_flops(
            shape, staged["seq_len"], 1, after)
        assert staged["prefill_flops_analytic"] < plain["prefill_flops_analytic"]
        assert staged["prefill_flops_7b_analytic"] < plain["prefill_flops_7b_analytic"]
        assert staged["prefill_flops_counted"] is None and "llm_stage" not in plain
    full = rows[(None, False)]
    assert full["ratios"]["prefill_flops"] == 1.0 and full["ratios"]["tokens"] == 1.0
    for key in ((None, True), (0.25, False), (0.25, True)):
        row = rows[key]
        assert row["ratios"]["prefill_flops"] == pytest.approx(
            row["prefill_flops_analytic"] / full["prefill_flops_analytic"])
    assert rows[(0.25, True)]["ratios"]["prefill_flops"] < rows[(0.25, False)]["ratios"][
        "prefill_flops"]
    assert report["environment"]["llm_stage"]["name"] == "fastv"
    text = (out / "efficiency.md").read_text()
    assert "| 2 | 0.25 + fastv(K=1, r=0.5) | 98 → 50 kept of 99 from layer 1 |" in text
    assert "115 → 66" in text


def test_llm_stage_rows_on_qwen(tmp_path):
    """The transformers path: the stage reads the video placeholders of the (reduced) ids."""
    from aot.llm_stages import get_stage, kept_count
    from aot_bench.flops import llm_stage_prefill_flops

    out = tmp_path / "bench"
    assert efficiency.main(["--preset", "tiny", "--backbones", "qwen2_5_vl", "--frames", "4",
                            "--retentions", "full", "0.25", "--warmup", "0", "--repeats", "1",
                            "--decode-tokens", "1", "--text-tokens", "8",
                            "--qwen-frame-size", "112", "--llm-stage", "fastv",
                            "--llm-stage-opt", "layer=1", "--llm-stage-opt", "retention=0.25",
                            "--no-plots", "--out", str(out)]) == 0
    rows = json.loads((out / "efficiency.json").read_text())["rows"]
    staged = [r for r in rows if r.get("llm_stage")]
    assert len(rows) == 4 and len(staged) == 2
    shape, stage = get_shape("tiny", "qwen2_5_vl"), get_stage("fastv", layer=1, retention=0.25)
    for row in staged:
        kept = kept_count(row["visual_tokens"], stage)
        assert row["llm_stage_kept"] == kept and row["llm_stage_candidates"] == \
            row["visual_tokens"]
        assert row["prefill_flops_analytic"] == llm_stage_prefill_flops(
            shape, row["seq_len"], 1, row["seq_len"] - row["visual_tokens"] + kept)
        assert 0 < row["ratios"]["prefill_flops"] < 1


@pytest.mark.parametrize("argv, message", [
    (["--llm-stage", "fastvv"], "unknown LLM stage 'fastvv'"),
    (["--llm-stage", "fastv", "--llm-stage-opt", "layer"], "'layer': must be KEY=VALUE"),
    (["--llm-stage", "fastv", "--llm-stage-opt", "layr=1"], "unknown LLM stage knob 'layr'"),
    (["--llm-stage", "fastv", "--llm-stage-opt", "layer=two"], "two"),
    (["--llm-stage", "fastv", "--llm-stage-opt", "retention=1.5"], "retention=1.5"),
    (["--llm-stage-opt", "layer=1"], "given without --llm-stage=NAME"),
])
def test_bad_llm_stage_exits_with_one_line(argv, message):
    with pytest.raises(SystemExit) as exit_info:
        efficiency.parse_args(argv)
    text = str(exit_info.value.code)
    assert message in text and "\n" not in text


def test_llm_stage_layer_beyond_the_model_exits_before_running(tmp_path):
    args = efficiency.parse_args(["--preset", "tiny", "--backbones", "ov", "--frames", "2",
                                  "--llm-stage", "fastv", "--llm-stage-opt", "layer=2",
                                  "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        efficiency.run(args)
    text = str(exit_info.value.code)
    assert "layer=2" in text and "2 layers" in text and "\n" not in text
