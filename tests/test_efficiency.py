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
from aot_bench.timing import StageClock
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
    assert isinstance(aot.AOTConfig.from_retention(0.1, "video", exact=True, frames=16),
                      aot.AOTConfig)


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
