"""Serving tests: they run in the serving environment (.venv-serve, ``bash setup.sh --serve``),
``.venv-serve/bin/python -m pytest tests/serving`` (.ci/run does); elsewhere they skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    try:
        import vllm  # noqa: F401
    except ImportError:
        skip = pytest.mark.skip(reason="vLLM is not installed here: the serving tests run in "
                                ".venv-serve (bash setup.sh --serve; .venv-serve/bin/python -m "
                                "pytest tests/serving)")
        for item in items:
            if Path(str(item.fspath)).resolve().is_relative_to(HERE):
                item.add_marker(skip)


def main_python() -> Path:
    """The project's main environment's python (transformers + aot_integrations.hf):
    ``AOT_HF_PYTHON`` if set (e.g. a git worktree without its own .venv), else ``.venv``."""
    return Path(os.environ.get("AOT_HF_PYTHON") or ROOT / ".venv" / "bin" / "python")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """(folder, transformers answers per case): the tiny checkpoints (``folder / model_type``)
    and :mod:`hf_reference`'s output, made once by the main environment's python."""
    python = main_python()
    if not python.exists():
        pytest.skip(f"{python} is missing: the transformers side runs in the main environment "
                    "(bash setup.sh), or set AOT_HF_PYTHON to its python")
    root = tmp_path_factory.mktemp("serving")
    folder, out = root / "checkpoints", root / "hf.json"
    run = subprocess.run([str(python), str(HERE / "hf_reference.py"), str(folder), str(out)],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return folder, json.loads(out.read_text())


def engine(checkpoint: Path, images: int, **options):
    """vLLM's engine on a tiny checkpoint with the plugin, in this process (the engine core
    otherwise starts in a subprocess, ~20 s more), the server's AOT knobs of :mod:`cases`;
    ``options``: more ``LLM`` arguments."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    sys.path.insert(0, str(HERE))
    from cases import SERVER_AOT_CONFIG
    from vllm import LLM

    return LLM(model=str(checkpoint), max_model_len=4096, enforce_eager=True, dtype="float32",
               limit_mm_per_prompt={"video": 1, "image": images}, kv_cache_memory_bytes=256 << 20,
               max_num_seqs=8, hf_overrides={"aot_config": SERVER_AOT_CONFIG}, **options)


@pytest.fixture(scope="session")
def llm(reference):
    """The engine on the tiny Qwen2.5-VL."""
    return engine(reference[0] / "qwen2_5_vl", images=1)
