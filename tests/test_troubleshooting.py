"""docs/troubleshooting.md quotes every user-facing error message; these tests keep it honest.

Each message is the first code span of a line starting with "- `" (or "- ``" when the message
holds a backtick). `<placeholder>`s stand for the variable parts. A message is current when its
fixed parts, in order, occur in one message template of the source: a Python string or f-string
(adjacent literals joined, as the interpreter joins them) or one line of a shell script.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "troubleshooting.md"
SOURCE_DIRS = ("aot", "aot_integrations", "aot_eval", "aot_bench", "llava", "playground", "scripts")
SHELL_SUFFIXES = (".sh", ".sbatch")
BULLET = re.compile(r"^- (`+) ?(.+?) ?\1(?!`)")
PLACEHOLDER = re.compile(r"<[^<>]*>")
FIELD = "\x00"  # stands for a formatted value inside a rendered f-string


def documented_messages(text: str) -> list[str]:
    """The quoted message of every "- `...`" bullet, in page order."""
    return [match.group(2) for line in text.splitlines() if (match := BULLET.match(line))]


def _render(node: ast.AST) -> str | None:
    """A str constant or f-string -> its text, each formatted value as FIELD; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else FIELD for v in node.values)
    return None


def _python_templates(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        text = _render(node)
        if text:
            found.append(text)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = _render(node.left), _render(node.right)
            if left and right:  # "..." + f"..." spelt with a plus
                found.append(left + right)
    return found


def source_templates() -> list[str]:
    """Every message template of the package, the scripts and setup.sh."""
    files = [ROOT / "setup.sh"]
    for folder in SOURCE_DIRS:
        files += sorted((ROOT / folder).rglob("*"))
    templates = []
    for path in files:
        if path.suffix == ".py":
            templates += _python_templates(path)
        elif path.suffix in SHELL_SUFFIXES or path.name == "setup.sh":
            templates += path.read_text(encoding="utf-8").splitlines()
    return templates


def message_pattern(message: str) -> re.Pattern:
    """The fixed parts of a documented message, in order, with anything between them."""
    fixed = PLACEHOLDER.split(message)
    return re.compile(".*?".join(re.escape(part) for part in fixed), re.DOTALL)


def is_current(message: str, templates: list[str]) -> bool:
    # Only templates holding the longest fixed part can match: the lazy gaps of the pattern
    # backtrack badly on long strings, so filter with a plain substring test first.
    longest = max(PLACEHOLDER.split(message), key=len)
    pattern = message_pattern(message)
    return any(pattern.search(template) for template in templates if longest in template)


@pytest.fixture(scope="module")
def templates() -> list[str]:
    return source_templates()


MESSAGES = documented_messages(PAGE.read_text(encoding="utf-8"))


def test_page_documents_many_messages():
    # Every section of the page contributes; a markup change that loses the bullets shows here.
    assert len(MESSAGES) >= 150, len(MESSAGES)
    assert len(set(MESSAGES)) == len(MESSAGES), "a message is documented twice"
    for message in MESSAGES:  # a message that is all placeholders would match anything
        assert len("".join(PLACEHOLDER.split(message)).strip()) >= 8, message


@pytest.mark.parametrize("message", MESSAGES, ids=[m[:50] for m in MESSAGES])
def test_documented_message_occurs_in_source(message, templates):
    assert is_current(message, templates), (
        f"docs/troubleshooting.md quotes {message!r}, but no string in the source holds its fixed "
        "text any more: update the page to the new wording")


def test_a_reworded_message_is_caught(templates):
    # The check must fail for text the code does not say: reword one word of real messages.
    quoted = "unknown AOT preset <name>; expected one of <presets>"
    assert quoted in MESSAGES and is_current(quoted, templates)
    assert not is_current("unknown AOT preset <name>; expected any of <presets>", templates)
    assert not is_current("features hold <n> tokens per frame, not a square grid (27*27 = 729 "
                          "for SigLIP-400); strip [CLS]/newline tokens first", templates)


def test_fixed_parts_must_come_in_order():
    assert is_current("AOTConfig.<f>=<v>: expected a number > 0", ["AOTConfig.\x00=\x00: expected a number > 0"])
    assert not is_current("expected a number > 0 <x> AOTConfig.", ["AOTConfig.\x00: expected a number > 0"])


def test_bullet_parsing():
    text = ("- `plain <x> message` — meaning\n"
            "- `` holds `a backtick` <y> `` — meaning\n"
            "  `continuation code is prose`\n"
            "not a bullet `code`\n")
    assert documented_messages(text) == ["plain <x> message", "holds `a backtick` <y>"]
