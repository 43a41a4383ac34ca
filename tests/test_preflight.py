"""The eval scripts' preflight: one line and exit 2 before anything loads (issue 14, item 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aot_eval import preflight

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
