"""Mutation check: does some test turn red when a knob is ignored?

For every field of :class:`aot.AOTConfig` and of each baseline's options dataclass
(the ``options`` of :data:`aot.reducers.REDUCERS`), this script

1. copies the package code (``aot/`` and ``llava/``) and ``tests/`` into a temporary directory,
2. rewrites every *read* of the knob in the copied code, ``config.<knob>`` (any receiver named
   ``config``, ``cfg``, ``*_config``, ``options`` or ``self``), into the knob's default value, so
   the code behaves as if the knob were hard-coded. Declarations and validation
   (``aot/config.py``, ``__post_init__`` bodies) are left alone; the tests are never rewritten,
   so the plain-loop oracle (tests/oracle.py) still reads the real value,
3. runs the tests on the copy (``pytest -x``, from the copy's root, so the mutated copy is what
   gets imported; the script checks that it is, and that the unmutated copy passes): first the
   method tests named after the knob (``-k <knob>``, a speed-up), then all method tests, then
   tests/llava (the model code reads the layer indices),
4. prints one row per knob: the first test that failed (KILLED), SURVIVED, or NO READS when the
   pattern found nothing to mutate (a refactor that reads knobs another way must extend the
   pattern, not silently pass).

Why textual: patching the config object at run time would also patch what the oracle reads, so
both sides would agree and nothing would fail. Reads are found by pattern, not line number, so
the check survives refactors of the modules' internals.

    python scripts/mutation_check.py                   # every knob
    python scripts/mutation_check.py sigma log_domain  # some knobs
    python scripts/mutation_check.py --list            # the read sites per knob, no test run

Exit status 1 when a knob SURVIVED or has NO READS. Runtime: a few minutes on 2 CPU cores
(a killed mutant stops at its first failing test).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Code whose knob reads are mutated, and the tests run against each mutant (fast method tests
# first, so a mutant usually dies within seconds; tests/llava covers the two layer indices, which
# only the model code reads).
CODE_DIRS = ("aot", "llava")
# Two stages: the method tests (seconds to collect), then the model tests (which import
# transformers) only for a mutant that the first stage did not kill.
TEST_STAGES = (("tests/test_knobs.py", "tests/test_oracle.py", "tests/test_config.py",
                "tests/test_anchors.py", "tests/test_reduce.py", "tests/test_sinkhorn.py",
                "tests/test_reducers.py", "tests/test_fastvid.py"),
               ("tests/llava",))
# Files that declare or validate knobs rather than use them.
SKIP_FILES = ("aot/config.py",)
# Who holds the knob: an AOTConfig is passed around as `config` (or `cfg`, `*_config`); a
# baseline's options as `options`, or `self` inside its own dataclass's methods.
RECEIVERS = {"AOTConfig": r"(?<![\w.])(?:config|cfg|\w+_config)",
             "baseline": r"(?<![\w.])(?:options|self)"}


@dataclasses.dataclass
class Knob:
    owner: str  # dataclass name
    name: str
    default: object


def knobs() -> list[Knob]:
    """Every field of AOTConfig and of the baselines' option classes, with its default."""
    from aot.reducers import REDUCERS
    from aot.config import AOTConfig

    out = []
    for cls in (AOTConfig, *{i.options for i in REDUCERS.values() if i.options}):
        for field in dataclasses.fields(cls):
            out.append(Knob(cls.__name__, field.name, field.default))
    return out


def read_pattern(knob: Knob) -> re.Pattern:
    # `config.sigma` but not `config.sigma_x`, and not an assignment `config.sigma = ...`.
    receiver = RECEIVERS["AOTConfig" if knob.owner == "AOTConfig" else "baseline"]
    return re.compile(receiver + r"\." + re.escape(knob.name) + r"\b(?!\s*=[^=])")


def post_init_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of ``def __post_init__`` bodies (validation, not use)."""
    spans = []
    for match in re.finditer(r"^(\s*)def __post_init__\(.*?$", text, flags=re.M):
        indent = len(match.group(1))
        end = len(text)
        for line in re.finditer(r"^(\s*)\S.*$", text[match.end():], flags=re.M):
            if len(line.group(1)) <= indent:
                end = match.end() + line.start()
                break
        spans.append((match.start(), end))
    return spans


def code_files(root: pathlib.Path) -> list[pathlib.Path]:
    files = []
    for directory in CODE_DIRS:
        files += sorted((root / directory).rglob("*.py"))
    return [f for f in files if f.relative_to(root).as_posix() not in SKIP_FILES]


def read_sites(root: pathlib.Path, knob: Knob, owner_files: dict) -> dict[pathlib.Path, list]:
    """{file: [match, ...]} of the reads to mutate (baseline knobs: only in their own file)."""
    pattern = read_pattern(knob)
    sites = {}
    for path in code_files(root):
        rel = path.relative_to(root).as_posix()
        if knob.owner != "AOTConfig" and rel != owner_files[knob.owner]:
            continue
        text = path.read_text()
        spans = post_init_spans(text)
        found = [m for m in pattern.finditer(text)
                 if not any(s <= m.start() < e for s, e in spans)]
        if found:
            sites[path] = found
    return sites


def mutate(root: pathlib.Path, knob: Knob, owner_files: dict) -> list[str]:
    """Rewrite the knob's reads under ``root`` into its default; returns 'file:line' sites."""
    sites = read_sites(root, knob, owner_files)
    described = []
    for path, matches in sites.items():
        text = path.read_text()
        for m in matches:
            described.append(f"{path.relative_to(root)}:{text.count(chr(10), 0, m.start()) + 1}")
        text = read_pattern(knob).sub(lambda m: _replace(m, text, knob), text)
        compile(text, str(path), "exec")  # a mutant must still be valid Python
        path.write_text(text)
    return described


def _replace(match: re.Match, text: str, knob: Knob) -> str:
    spans = post_init_spans(text)
    if any(s <= match.start() < e for s, e in spans):
        return match.group(0)
    return f"({knob.default!r})"


def make_copy(dest: pathlib.Path) -> None:
    for directory in CODE_DIRS + ("tests",):
        shutil.copytree(ROOT / directory, dest / directory,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def run_tests(root: pathlib.Path, timeout: int, knob: str | None = None) -> tuple[str, str]:
    """(status, first failing test) of the test stages run on the copy at ``root``.

    With ``knob``, the tests whose name mentions it run first (``-k knob``): only a speed-up,
    a mutant they do not kill still meets every stage."""
    if knob is not None:
        status, first = run_stage(root, list(TEST_STAGES[0]), timeout, ["-k", knob])
        if status == "KILLED":
            return status, first
    for stage in TEST_STAGES:
        status, first = run_stage(root, [t for t in stage if (root / t).exists()], timeout)
        if status != "SURVIVED":
            return status, first
    return "SURVIVED", ""


def run_stage(root: pathlib.Path, tests: list[str], timeout: int,
              extra: list[str] = ()) -> tuple[str, str]:
    tests = [t for t in tests if (root / t).exists()]
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "--tb=no", "-rfE", "-p", "no:cacheprovider",
           "-m", "not slow", *extra, *tests]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "TIMEOUT", ""
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    if proc.returncode in (0, 5):  # 5: no test selected by -k
        return "SURVIVED", ""
    if proc.returncode == 1 and failed:
        return "KILLED", failed[0]
    return "ERROR", (failed[0] if failed else proc.stdout.strip().splitlines()[-1:] or [""])[0]


def imported_from(root: pathlib.Path) -> str:
    out = subprocess.run([sys.executable, "-c", "import aot, llava; print(aot.__file__); "
                          "print(llava.__file__)"], cwd=root, capture_output=True, text=True,
                         check=True)
    return out.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="knobs to check (default: all)")
    parser.add_argument("--list", action="store_true", help="print the read sites and stop")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = parser.parse_args()

    from aot.reducers import REDUCERS

    owner_files = {cls.__name__: pathlib.Path(sys.modules[cls.__module__].__file__)
                   .relative_to(ROOT).as_posix() for cls in {i.options for i in REDUCERS.values() if i.options}}
    selected = [k for k in knobs() if not args.names or k.name in args.names]
    unknown = set(args.names) - {k.name for k in selected}
    if unknown:
        parser.error(f"unknown knob(s) {sorted(unknown)}")

    if args.list:
        for knob in selected:
            sites = read_sites(ROOT, knob, owner_files)
            where = ", ".join(f"{p.relative_to(ROOT)}:{p.read_text().count(chr(10), 0, m.start()) + 1}"
                              for p, ms in sites.items() for m in ms)
            print(f"{knob.owner}.{knob.name} -> {where or 'NO READS'}")
        return 0

    with tempfile.TemporaryDirectory(prefix="aot-mutation-") as tmp:
        clean = pathlib.Path(tmp) / "clean"
        make_copy(clean)
        where = imported_from(clean)
        if not all(line.startswith(str(clean)) for line in where.split()):
            print(f"the copy does not import its own aot/llava:\n{where}", file=sys.stderr)
            return 2
        status, first = run_tests(clean, args.timeout)
        if status != "SURVIVED":  # the unmutated code must pass, else a kill means nothing
            print(f"the unmutated tests fail ({status} {first}); fix them first", file=sys.stderr)
            return 2

        rows, bad = [], 0
        print(f"{'knob':<36} {'default':<10} {'result':<9} {'killed by / note'}")
        for knob in selected:
            work = pathlib.Path(tmp) / f"mutant-{knob.owner}-{knob.name}"
            shutil.copytree(clean, work)
            start = time.perf_counter()
            sites = mutate(work, knob, owner_files)
            if not sites:
                status, first = "NO READS", ""
            else:
                status, first = run_tests(work, args.timeout, knob.name)
            shutil.rmtree(work)
            bad += status != "KILLED"
            label = f"{knob.owner}.{knob.name}"
            note = first if status == "KILLED" else f"{first} ({len(sites)} read sites)"
            print(f"{label:<36} {knob.default!r:<10} {status:<9} {note}  "
                  f"[{time.perf_counter() - start:.0f} s]", flush=True)
            rows.append((label, status))
        killed = sum(s == "KILLED" for _, s in rows)
        print(f"\n{killed} of {len(rows)} knobs killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
