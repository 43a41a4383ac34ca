"""The eval scripts' preflight: one line and exit 2 before anything loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aot_eval import preflight
from aot.backbones import eval_protocols

REPO = Path(__file__).resolve().parents[1]


def test_args_check_names_the_bad_value(capsys):
    assert preflight.main(["args", "--backbone", "ov", "reducer=aot", "preset=paper-ov-mvbenhc"]) \
        == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown preset='paper-ov-mvbenhc'" in err[0]
    assert preflight.main(["args", "--backbone", "video", "--set", "reducer=uniform retention=0.1",
                           "--set", "reducer=aot:no-local retention=0.2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["reducer=uniform (retention=0.1)", "reducer=aot:no-local (retention=0.2)"]


def test_launch_check_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert preflight.main(["launch", "--model", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "neither a folder" in err[0]


def test_launch_check_lmms_eval_missing(monkeypatch):
    monkeypatch.setattr(preflight.importlib.util, "find_spec",
                        lambda name: None if name == "lmms_eval" else object())
    with pytest.raises(RuntimeError, match="setup.sh --eval"):
        preflight.check_lmms_eval()


def test_launch_check_processes_without_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="--nproc 2 needs 2 CUDA devices but 0"):
        preflight.check_processes(2, None)
    preflight.check_processes(2, "cpu")  # CPU processes on purpose
    preflight.check_processes(1, None)


@pytest.mark.slow
def test_eval_script_stops_before_launch_on_a_missing_checkpoint(tmp_path):
    """The script says what is wrong in one line, before torchrun or a model load."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "eval_ov_mvbench.sh"), "--retention",
                           "0.1", "--model", str(tmp_path / "missing"), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_eval_script_without_a_usable_python(tmp_path):
    """PYTHON pointing at an interpreter without the project: what to run, not a traceback."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "eval_ov_mvbench.sh"), "--retention",
                           "0.1", "--dry-run"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(fake)}, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "setup.sh --eval" in lines[0] and "torch" in lines[0]


# ------------------------------------------------------------------ the transformers backbones
@pytest.mark.parametrize("backbone, facts", [("ov", "ov"), ("video", "video"),
                                             ("qwen2_5_vl", "qwen2_5_vl"),
                                             ("qwen3_vl", "qwen3_vl"), ("llava_hf", "ov")])
def test_args_check_parses_with_the_backbones_facts(backbone, facts, monkeypatch):
    """The scripts' backbone reaches parse_reducer as the facts its model parses with:
    llava_hf (transformers' LLaVA-OneVision) as "ov"."""
    from aot_eval import model_args

    seen = []
    real = model_args.parse_reducer
    monkeypatch.setattr(model_args, "parse_reducer",
                        lambda kwargs, name: seen.append(name) or real(kwargs, name))
    assert preflight.main(["args", "--backbone", backbone, "reducer=none"]) == 0
    assert seen == [facts] and preflight.facts_backbone(backbone) == facts


def test_args_check_llava_hf_resolves_as_ov(capsys):
    """Observable without a spy: the default preset of llava_hf is OV's, not LLaVA-Video's."""
    for backbone in ("llava_hf", "ov", "video"):
        assert preflight.main(["args", "--backbone", backbone, "reducer=aot"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "reducer=aot (preset=paper-ov-mvbench (default))",
        "reducer=aot (preset=paper-ov-mvbench (default))",
        "reducer=aot (preset=paper-video (default))"]


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl", "llava_hf"])
@pytest.mark.parametrize("pairs, message", [
    (["reducer=aot", "preset=paper-ov-mvbenhc"], "unknown preset='paper-ov-mvbenhc'"),
    (["reducer=bogus", "retention=0.1"], "unknown reducer='bogus'"),
    (["reducer=aot", "retention=1.5"], "retention=1.5 is outside (0, 1]"),
    (["reducer=none", "retention=0.1"], "reducer=none runs the unreduced model"),
    (["reducer=uniform"], "reducer=uniform needs retention="),
])
def test_args_check_new_backbones_name_the_bad_value(backbone, pairs, message, capsys):
    assert preflight.main(["args", "--backbone", backbone, *pairs]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_args_check_unknown_backbone(capsys):
    assert preflight.main(["args", "--backbone", "qwen2_vl", "reducer=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown backbone 'qwen2_vl'" in err[0] and "llava_hf" in err[0]


def _shell(text: str, names: str) -> dict:
    """The values of ``names`` after bash evaluates ``text``."""
    script = text + "\n" + "".join(f'printf "%s\\0" "${{{n}}}"\n' for n in names.split())
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return dict(zip(names.split(), out.stdout.split("\0")))


@pytest.mark.parametrize("protocol", eval_protocols(), ids=lambda p: p.name)
def test_facts_are_the_records_shell_assignments(protocol, capsys):
    """What eval_common.sh reads for a backbone is its record's protocol, quoted for bash."""
    bench = "egoschema"
    assert preflight.main(["facts", "--backbone", protocol.name, "--benchmark", bench,
                           "reducer=aot", "retention=0.1"]) == 0
    names = " ".join(preflight.SHELL_FACTS) + " paper_preset args_error"
    values = _shell(capsys.readouterr().out, names)
    assert values == {**{n: str(getattr(protocol, n)) for n in preflight.SHELL_FACTS},
                      "paper_preset": protocol.paper_presets.get(bench, ""), "args_error": ""}


def test_facts_carry_the_args_error(capsys):
    assert preflight.main(["facts", "--backbone", "ov", "reducer=aot", "preset=paper-x"]) == 0
    error = _shell(capsys.readouterr().out, "args_error")["args_error"]
    assert "unknown preset='paper-x'" in error and "\n" not in error


def test_facts_without_a_backbone_list_every_protocol(capsys):
    assert preflight.main(["facts"]) == 0
    text = capsys.readouterr().out
    names = [p.name for p in eval_protocols()]
    probe = " ".join(f'"${{AOT_EVAL_PREFIXES[{n}]}}|${{AOT_EVAL_TABLE_RETENTIONS[{n}]}}"'
                     for n in names)
    out = subprocess.run(["bash", "-c", text + '\necho "$AOT_EVAL_BACKBONES"; printf "%s\\n" '
                          + probe], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == " ".join(names)
    assert lines[1:] == [p.prefix + "|" + " ".join(f"{r:.2f}" for r in p.table_retentions)
                         for p in eval_protocols()]


def checkpoint_folder(tmp_path, model_type, name="ckpt"):
    folder = tmp_path / name
    folder.mkdir()
    if model_type is not None:
        (folder / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
    return folder


@pytest.mark.parametrize("backbone, model_type, advice", [
    ("qwen3_vl", "qwen2_5_vl", "evaluate it with the qwen2_5_vl scripts"),
    ("qwen2_5_vl", "qwen3_vl", "evaluate it with the qwen3_vl scripts"),
    ("llava_hf", "llava_qwen", "evaluate it with the ov or video scripts"),
    ("ov", "llava_onevision", "evaluate it with the llava_hf scripts"),
    ("qwen3_vl", "gemma3", "no eval script loads it"),
])
def test_launch_check_refuses_another_backbones_checkpoint(tmp_path, capsys, backbone,
                                                           model_type, advice):
    folder = checkpoint_folder(tmp_path, model_type)
    assert preflight.main(["launch", "--backbone", backbone, "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is a '{model_type}' checkpoint but the {backbone} scripts" in \
        err[0] and err[0].endswith(advice)


@pytest.mark.parametrize("backbone, model_type", [
    ("qwen2_5_vl", "qwen2_5_vl"), ("qwen3_vl", "qwen3_vl"), ("llava_hf", "llava_onevision"),
    ("ov", "llava_qwen"), ("video", "llava_qwen"), ("qwen3_vl", None)])
def test_launch_check_accepts_the_backbones_checkpoint(tmp_path, backbone, model_type):
    """The right architecture passes; a folder without config.json is left to the loader."""
    pytest.importorskip("lmms_eval")
    folder = checkpoint_folder(tmp_path, model_type)
    assert preflight.main(["launch", "--backbone", backbone, "--model", str(folder)]) == 0


@pytest.mark.slow
def test_hf_eval_script_stops_on_the_wrong_checkpoint(tmp_path):
    """The Qwen3-VL script given a Qwen2.5-VL checkpoint: one line, before anything launches."""
    folder = checkpoint_folder(tmp_path, "qwen2_5_vl")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "eval_qwen3_vl_mvbench.sh"),
                           "--reducer", "none", "--model", str(folder), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "evaluate it with the qwen2_5_vl scripts" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("backbone, config_class", [
    ("qwen2_5_vl", "Qwen2_5_VLConfig"), ("qwen3_vl", "Qwen3VLConfig"),
    ("llava_hf", "LlavaOnevisionConfig")])
def test_launch_check_knows_transformers_model_types(tmp_path, backbone, config_class):
    """The model_type each backbone expects is the one transformers writes for that class
    (a config saved by transformers itself, not a string copied from here)."""
    import transformers

    pytest.importorskip("lmms_eval")
    getattr(transformers, config_class)().save_pretrained(tmp_path)
    assert preflight.main(["launch", "--backbone", backbone, "--model", str(tmp_path)]) == 0
    others = [p.name for p in eval_protocols() if p.name != backbone]
    assert all(preflight.main(["launch", "--backbone", b, "--model", str(tmp_path)]) == 2
               for b in others)
