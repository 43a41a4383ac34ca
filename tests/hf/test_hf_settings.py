"""aot_integrations.hf.config_for: aot.settings_for with the loaded model's vision layers and facts."""

import pytest
import torch

pytest.importorskip("transformers")

import aot  # noqa: E402
import aot_integrations.hf  # noqa: E402
from aot.budget import exact_budget  # noqa: E402
from aot_integrations import tiny  # noqa: E402
from aot_integrations.hf.adapters import adapter_for, relative_layers  # noqa: E402
from test_hf_models import LLMInput  # noqa: E402


@pytest.fixture(scope="module")
def qwen8():
    """A Qwen2.5-VL tower of 8 blocks with full attention in 1, 3, 5 and 7."""
    return tiny.qwen2_5_vl(depth=8, fullatt=(1, 3, 5, 7))


def test_qwen2_5_layers_are_the_towers_first_and_last_full_attention_blocks(qwen8, applied):
    config = aot_integrations.hf.config_for(qwen8, 0.25, anchors_per_frame=8, window=3)
    assert (config.shallow_layer, config.deep_layer) == (1, 7)
    grids = [(2, 12, 12)]
    applied(qwen8, config)
    seen = LLMInput(qwen8)
    try:
        with torch.no_grad():
            logits = qwen8(**tiny.qwen_inputs(grids)).logits
    finally:
        seen.close()
    assert torch.isfinite(logits).all()
    count = int((seen.calls[0]["input_ids"] == tiny.VIDEO_TOKEN).sum())
    assert count == exact_budget(0.25, 2, 36)


def test_the_default_layers_at_7b_are_the_declared_ones():
    """The rules reproduce the 7B defaults: SigLIP's 26 used layers and Qwen3-VL's 27 blocks
    give the paper's 5 and 24; Qwen2.5-VL's full-attention blocks 7, 15, 23, 31 give 7 and 31."""
    assert relative_layers(26) == relative_layers(27) == (5, 24)
    for name in ("ov", "qwen3_vl"):
        facts = aot.backbones.get_backbone(name)
        assert (facts.shallow_layer, facts.deep_layer) == (5, 24)
    with pytest.raises(ValueError, match="depth=0"):
        relative_layers(0)


def test_tiny_towers_get_layers_inside_them():
    for model in (tiny.onevision(), tiny.qwen2_5_vl(), tiny.qwen3_vl()):
        adapter = adapter_for(model)
        shallow, deep = adapter.default_layers()
        assert 0 <= shallow <= deep < adapter.vision_layers


def test_approximate_mode_follows_the_retention(qwen8):
    """exact=False solves the anchors for the retention at the given frame count (never
    ignores it), and needs that frame count."""
    anchors = {r: aot_integrations.hf.config_for(qwen8, r, exact=False, frames=8, grid=(16, 16))
               .anchors_per_frame for r in (0.05, 0.25, 0.9)}
    assert anchors[0.05] < anchors[0.25] < anchors[0.9]
    assert aot_integrations.hf.config_for(qwen8, 0.25, exact=False, frames=8).exact_retention is None
    with pytest.raises(ValueError, match="exact=False needs frames="):
        aot_integrations.hf.config_for(qwen8, 0.25, exact=False)
    with pytest.raises(ValueError, match=r"retention=7 is outside \(0, 1\]"):
        aot_integrations.hf.config_for(qwen8, 7, exact=False, frames=8)


def test_no_retention_is_refused_in_exact_mode(qwen8):
    with pytest.raises(ValueError, match="exact=True needs a retention"):
        aot_integrations.hf.config_for(qwen8, None)
    released = aot_integrations.hf.config_for(qwen8, None, exact=False)
    assert released.exact_retention is None and released.pooling == "none"


@pytest.mark.parametrize("grid", [(0, 0), (-3, 6), 6, (6.0, 6)])
def test_bad_grids_are_refused(qwen8, grid):
    with pytest.raises(ValueError, match=r"grid=.*expected \(rows, cols\), two integers >= 1"):
        aot_integrations.hf.config_for(qwen8, 0.1, grid=grid)
