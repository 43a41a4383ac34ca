"""The layers import downward only: the core imports torch and itself; the integration layer
imports no entry point; nothing imports the entry points but themselves (checked on the source,
module-level and function-level imports alike)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("aot", "aot_integrations", "llava", "aot_eval", "aot_bench", "playground")

#: package -> the project packages it may import (itself included). Third-party libraries are
#: free above the core; the core may import torch only.
ALLOWED = {
    "aot": {"aot"},
    "aot_integrations": {"aot", "aot_integrations", "llava"},
    "llava": {"aot", "aot_integrations", "llava"},
    "aot_bench": {"aot", "aot_integrations", "llava", "aot_bench"},
    "aot_eval": {"aot", "aot_integrations", "llava", "aot_eval"},
    "playground": {"aot", "aot_integrations", "llava", "playground"},
}


def imported_roots(package: str) -> dict[str, set[str]]:
    """Top-level names each module of ``package`` imports (relative imports resolve to it)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        roots: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots.add(package if node.level else (node.module or "").split(".")[0])
        found[str(path.relative_to(ROOT))] = roots
    return found


@pytest.mark.parametrize("package", PROJECT)
def test_project_imports_go_downward(package):
    wrong = {module: sorted(roots & set(PROJECT) - ALLOWED[package])
             for module, roots in imported_roots(package).items()}
    assert not {m: r for m, r in wrong.items() if r}, f"{package} imports above its layer"


def test_core_imports_torch_only():
    stdlib = set(sys.stdlib_module_names)
    third_party = {module: sorted(roots - stdlib - {"aot", "torch", "__future__"})
                   for module, roots in imported_roots("aot").items()}
    assert not {m: r for m, r in third_party.items() if r}


def test_import_aot_loads_no_model_library():
    import subprocess

    code = ("import sys, aot, aot.reducers, aot.video_path, aot.backbones; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('transformers', 'lmms_eval', 'vllm', 'llava', 'aot_integrations', 'PIL', 'av')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    assert out.stdout.strip() == "[]"
