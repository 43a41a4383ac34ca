"""The python code blocks of the repository's markdown pages, for tests that run them as printed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(page: str, heading: str | None = None) -> list[str]:
    """The ```python blocks of ``page`` (relative to the repository root), or of its section
    that starts at ``heading`` and ends at the next ``## `` heading."""
    text = (ROOT / page).read_text()
    if heading is not None:
        start = text.index(heading)
        following = text.find("\n## ", start + len(heading))
        text = text[start:following if following >= 0 else len(text)]
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"no python block{f' under {heading!r}' if heading else ''} in {page}"
    return blocks


def run_code(code: str, namespace: dict, page: str) -> dict:
    """Execute ``code`` (from ``page``, named in tracebacks) in ``namespace``; returns it."""
    exec(compile(code, page, "exec"), namespace)
    return namespace
