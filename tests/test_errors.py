"""Bad model inputs and demo arguments get one sentence naming the value, not a traceback."""

from __future__ import annotations

import os

import pytest
import torch

import aot
from llava.constants import IMAGE_TOKEN_INDEX
from aot_integrations.tiny import random_model
from playground import demo


@pytest.fixture(scope="module")
def model():
    return random_model("ov", seed=0)


def test_video_frames_sent_without_modalities_get_a_hint(model):
    ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 6]])
    frames = torch.rand(8, 3, 384, 384)
    # as a list entry: 8 tiles of one image
    with pytest.raises(ValueError, match=r"modalities=\['video'\]"):
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [frames])
    # as a 4-D tensor: a batch of 8 images for 1 placeholder
    with pytest.raises(ValueError, match=r"8 visual input\(s\).*modalities=\['video'\]"):
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, frames)


def test_readme_import_reaches_the_baselines():
    """README: ``import aot; aot.reducers.get_reducer(...)`` (was an AttributeError)."""
    assert callable(aot.reducers.get_reducer("uniform"))
    assert aot.video_path.visual_sequence is not None and aot.backbones.BACKBONES


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_demo_unwritable_out_fails_before_any_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    code = demo.main(["--out", str(locked / "pictures"), "--frames", "4"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "not a writable folder" in err[0]


def test_demo_out_that_is_a_file_fails_before_any_work(tmp_path, capsys):
    """Works as root too: a file where the folder should be."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = demo.main(["--out", str(blocker), "--frames", "4", "--video",
                      str(tmp_path / "never-read.mp4")])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "not a writable folder" in lines[0], err
    assert "model:" not in out  # no stage ran


def _break_json(folder):
    (folder / "config.json").write_text('{"model_type": "llava_qwen",')


def _break_type(folder):
    import json

    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = "wide"
    (folder / "config.json").write_text(json.dumps(config))


def _truncate_weights(folder):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def _drop_tokenizer(folder):
    for path in folder.iterdir():
        if "token" in path.name or path.name in ("vocab.json", "merges.txt"):
            path.unlink()


@pytest.mark.parametrize("breaker, words", [
    (_break_json, ["config.json is not valid JSON", "line 1"]),
    (_break_type, ["config.json", "hidden_size"]),
    (_truncate_weights, ["model.safetensors cannot be read", "Download it again"]),
    (_drop_tokenizer, ["no usable tokenizer"]),
])
def test_demo_broken_checkpoint_is_one_line_exit_2(breaker, words, tmp_path, capsys):
    """Broken config.json, a field of the wrong type, truncated weights, no tokenizer: one line,
    exit 2 (were 26-42-line tracebacks, exit 1)."""
    from aot_integrations.tiny import write_checkpoint

    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "ov", seed=0)
    breaker(folder)
    code = demo.main(["--model", str(folder), "--frames", "4", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
