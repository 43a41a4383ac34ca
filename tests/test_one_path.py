"""One video path: the model, the efficiency benchmark and the demo produce the same visual
sequence for every registered reducer on both backbones; the registry owns reducer metadata;
backbone facts have one home."""

from __future__ import annotations

import pytest
import torch

import aot
from aot import video_path
from aot.backbones import backbone_names, get_backbone

# the backbones of our llava/ models (the benchmark's and the demo's)
LLAVA = backbone_names("llava")
from aot.reducers import REDUCERS, reducer_info, reducer_names
from aot.video_path import StageClock
from llava.constants import IMAGE_TOKEN_INDEX
from aot_integrations.llava import backbone_name, llava_layout
from aot_integrations.tiny import random_model
from playground import pipeline
from reducer_checks import attach_head_if_read, with_inputs

FRAMES = 4


def tiny_config(backbone: str) -> aot.AOTConfig:
    """Exact 25% on the tiny tower (4 layers: AOT reads layers 1 and 2; its 27x27 grid in 3x3
    windows of 9, one local anchor each; 2 each in the no-global ablation)."""
    return aot.settings_for(backbone, 0.25, frames=FRAMES, layers=(1, 2), window=9,
                            anchors_per_frame=18)


@pytest.fixture(scope="module")
def models():
    return {name: random_model(name, seed=3) for name in LLAVA}


def pixels(seed: int = 0) -> torch.Tensor:
    size = 384
    return torch.rand(FRAMES, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def model_embeds(model, video: torch.Tensor) -> torch.Tensor:
    ids = torch.tensor([[5, 6, IMAGE_TOKEN_INDEX, 7]])
    with torch.no_grad():
        return model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [video],
                                                          ["video"])[4][0]


@pytest.mark.parametrize("backbone", sorted(LLAVA))
@pytest.mark.parametrize("reducer", reducer_names())
def test_model_benchmark_and_demo_read_the_same_sequence(models, backbone, reducer):
    model = models[backbone]
    config = tiny_config(backbone)
    video = pixels(1)
    attach_head_if_read(model, reducer)
    model.set_aot(config, reducer=reducer)
    try:
        embeds = model_embeds(model, video)
        result = model.last_aot_results[0]
        # the efficiency benchmark: the model's own path, timed through the stage callback
        clock = StageClock(torch.device("cpu"))
        with torch.no_grad():
            bench = model.video_sequence(video, on_stage=clock.lap)
        # the demo: the path's three steps, with AOT's count as a baseline's budget
        loaded = pipeline.LoadedModel(None, model, None, "tiny", True, backbone)
        encoded = pipeline.encode(loaded, video, config, reducers=(reducer,))
        demo = pipeline.reduce(loaded, encoded, config, reducer).sequence
    finally:
        model.set_aot(None)
    assert list(clock.stages) == ["vision", "projector", "reduce"]
    # the spliced prompt is 3 text tokens + the visual sequence
    assert embeds.shape[0] == 3 + bench.tokens.shape[0]
    assert torch.equal(embeds[2:2 + bench.tokens.shape[0]], bench.tokens)
    assert torch.equal(bench.tokens, demo.tokens)
    facts = get_backbone(backbone)
    budget = aot.exact_budget(0.25, FRAMES, facts.pooled_per_frame(model.get_vision_tower().grid))
    assert bench.visual_tokens == demo.visual_tokens == result.num_tokens == budget
    assert bench.newline_tokens == facts.newlines(FRAMES, model.get_vision_tower().grid)
    # a real reduction, not a silent no-op
    full = model_embeds(model, video)
    assert full.shape[0] > embeds.shape[0]


@pytest.mark.parametrize("backbone", sorted(LLAVA))
def test_unreduced_path_is_the_stock_pooling(models, backbone):
    """Reduction None: native pooling + newlines, the count the backbone facts declare."""
    model = models[backbone]
    video = pixels(2)
    with torch.no_grad():
        sequence = model.video_sequence(video)
    grid = model.get_vision_tower().grid
    facts = get_backbone(backbone)
    assert sequence.result is None
    assert sequence.visual_tokens == FRAMES * facts.pooled_per_frame(grid)
    assert sequence.newline_tokens == facts.newlines(FRAMES, grid)
    assert model.video_adapter().pooled_per_frame == facts.pooled_per_frame(grid)
    assert backbone_name(model) == backbone


def test_registry_owns_the_budget_rule():
    """needs_budget is what the reducers do: the budgeted ones refuse to run without a count,
    the others run on their own thresholds."""
    features = torch.randn(2, 9, 4)
    attention = torch.rand(2, 9)
    config = aot.AOTConfig(window=1, anchors_per_frame=9, shallow_layer=0, deep_layer=0,
                           pooling="none")
    for name in reducer_names():
        info = reducer_info(name)
        if info.needs_budget:
            with pytest.raises(ValueError, match="budget"):
                with_inputs(name)(features, attention, attention, config)
            with pytest.raises(ValueError, match="needs a token budget"):
                video_path.Reduction(config, name)
        else:
            assert with_inputs(name)(features, attention, attention, config).num_tokens > 0
            video_path.Reduction(config, name)
    assert {n for n, i in REDUCERS.items() if i.ablation} == \
        {"aot:" + a for a in aot.ABLATIONS}


def test_reduction_validates_once_with_clear_errors():
    with pytest.raises(ValueError, match="unknown reducer 'bogus'"):
        video_path.Reduction(aot.AOTConfig(), "bogus")
    with pytest.raises(TypeError, match="aot.AOTConfig"):
        video_path.Reduction({"keep_ratio": 0.3})
    with pytest.raises(TypeError, match="takes no options"):
        video_path.Reduction(aot.AOTConfig(), "aot", options={"x": 1})
    with pytest.raises(ValueError, match="budget=0"):
        video_path.Reduction(aot.AOTConfig(), "uniform", budget=0)
    assert video_path.Reduction(aot.AOTConfig(), "uniform", budget=12).budget == 12


def test_model_refuses_a_mismatched_reduction_before_any_work(models):
    with pytest.raises(ValueError, match="mm_spatial_pool_mode='average'"):
        models["video"].set_aot(aot.AOTConfig.preset("paper-ov-mvbench"))
    with pytest.raises(ValueError, match="shallow_layer=5 but the vision tower"):
        models["ov"].set_aot(aot.AOTConfig.preset("paper-ov-mvbench"))
    assert models["ov"].reduction is None


def test_backbone_facts_are_the_paper_numbers():
    ov, video = get_backbone("ov"), get_backbone("video")
    assert (ov.pooled_per_frame(), video.pooled_per_frame()) == (196, 169)
    assert (ov.newlines(32), video.newlines(64)) == (1, 64 * 13)
    assert (ov.frames, video.frames) == (32, 64)
    assert aot.AOTConfig.preset(ov.preset).pooling == ov.pooling
    assert aot.AOTConfig.preset(video.preset).pooling == video.pooling
    for facts in map(get_backbone, LLAVA):
        layout = llava_layout(type("Config", (), {
            "mm_spatial_pool_mode": facts.pooling, "mm_newline_position": facts.newline})())
        assert layout.backbone is facts
    with pytest.raises(ValueError, match="unknown backbone 'qwen'"):
        get_backbone("qwen")
