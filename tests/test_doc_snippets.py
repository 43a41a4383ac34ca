"""The code blocks of README.md, docs/backbones.md and docs/reducers/README.md run as printed.

A block that uses a name it does not define (``features``, ``model``, ``processor``...) gets it
from the namespace prepared here: synthetic features, tiny random models, processor-shaped
inputs. Only README's loading example changes one string: the hub id becomes a local tiny
checkpoint (no download in tests). The add-a-reducer and add-a-backbone recipes have their own
tests (test_recipes.py, test_backbone_recipe.py).
"""

from __future__ import annotations

import pytest
import torch
from doc_code import ROOT, python_blocks, run_code

import aot
from aot.synthetic import synthetic_video
from aot_integrations import tiny

QWEN_GRID = (2, 32, 32)      # 2 temporal patches of 16 x 16 merged tokens (the declared grid)


def video_inputs() -> dict:
    features, shallow, deep = synthetic_video(32, grid=27, dim=16)
    return {"features": features, "shallow_attention": shallow, "deep_attention": deep,
            "shallow": shallow, "deep": deep}


def qwen_namespace() -> dict:
    model = tiny.qwen2_5_vl()
    inputs = tiny.qwen_inputs([QWEN_GRID])
    return {"model": model, "inputs": inputs, "prompt": "Describe the video.", "video": None,
            "processor": lambda **_: tiny.qwen_inputs([QWEN_GRID]),
            "video_grid_thw": inputs["video_grid_thw"]}


def test_readme_blocks(tmp_path, capsys):
    code = python_blocks("README.md")
    assert len(code) == 3
    namespace = run_code(code[0], {"__name__": "readme", **video_inputs()}, "README.md")
    assert namespace["result"].num_tokens == aot.exact_budget(0.10, 32, 196)
    assert "retention" in capsys.readouterr().out

    checkpoint = tmp_path / "ov"
    tiny.write_checkpoint(checkpoint, "ov", vision_layers=27)   # the published 5 and 24 exist
    loading = code[1].replace('"lmms-lab/llava-onevision-qwen2-7b-ov"', repr(str(checkpoint)))
    assert loading != code[1], "README's loading example no longer names the hub checkpoint"
    namespace = run_code(loading, namespace, "README.md")
    assert namespace["model"].aot_config == aot.settings_for("ov", 0.10, exact=False, frames=32)

    namespace = run_code(code[2], {"__name__": "readme", **qwen_namespace()}, "README.md")
    sequence = namespace["handle"].last[0]
    frames, rows, cols = QWEN_GRID
    assert sequence.visual_tokens == aot.exact_budget(0.10, frames, rows * cols // 4)


def test_reducers_readme_block():
    code = python_blocks("docs/reducers/README.md")[0]
    namespace = run_code(code, {"__name__": "reducers", **video_inputs()}, "docs/reducers/README.md")
    assert namespace["result"].num_tokens == aot.exact_budget(0.10, 32, 196)
    assert "visionzip" in namespace["reducer_names"]()


@pytest.mark.parametrize("index", [1, 2])
def test_backbones_blocks(index):
    code = python_blocks("docs/backbones.md")[index]
    namespace = {"__name__": "backbones", **video_inputs(), **qwen_namespace(), "num_frames": 32,
                 "model_dtype": torch.float16}
    namespace = run_code(code, namespace, "docs/backbones.md")
    if index == 1:
        assert namespace["visual_tokens"].shape == (aot.exact_budget(0.15, 32, 196), 16)
        assert namespace["visual_tokens"].dtype == torch.float16
    else:
        frames, rows, cols = QWEN_GRID
        budget = aot.exact_budget(0.10, frames, rows * cols // 4)
        assert namespace["handle"].last[0].visual_tokens == budget
        assert namespace["handle"].reduction.reducer == "visionzip"
        namespace["handle"].remove()


def test_readme_names_every_registered_eval_model():
    from aot.backbones import eval_protocols

    readme = (ROOT / "README.md").read_text()
    missing = [p.model_id for p in eval_protocols() if f"`{p.model_id}`" not in readme]
    assert not missing, f"README's 'Reproduce the paper' does not name {missing}"
