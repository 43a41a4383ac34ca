"""aot.settings_for: the one route from (backbone, retention, grid, frames, exact) to an AOTConfig.

The equivalence tests compare it with a plain restatement of the two routes it replaced (the
LLaVA backbones' calibrated model at 27x27, the transformers backbones' grid-scaled preset).
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

import aot
from aot.backbones import Backbone, get_backbone
from aot.config import PRESETS
from aot.settings import lowest_retention, settings_for
from aot.synthetic import synthetic_video

ROOT = Path(__file__).resolve().parents[1]
RETENTIONS = [1e-3, 0.012, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.7, 0.79, 0.8, 0.85,
              0.9, 0.95, 1.0]
FRAMES = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 64, 65, 128]


# ------------------------------------------------------------------ the two replaced routes
def calibrated_27(retention: float, backbone: str, frames: int) -> dict:
    """The LLaVA backbones' retention model on 27x27 patches, written out plainly: survivor
    share c * V / 729 (c = 0.99 bilinear, 1.12 average), V >= 18, saturation above 0.8."""
    c, pooled = {"ov": (0.99, 196), "video": (1.12, 169)}[backbone]
    if backbone == "video":
        weight, later = frames, 0
    else:
        length = max(1, math.ceil(frames / 8))
        clips = [(s, min(s + length, frames)) for s in range(0, frames, length)]
        weight = sum(2 if b - a >= 2 else 1 for a, b in clips)
        later = sum(max(b - a - 1, 0) for a, b in clips)
    rho = 0.3 if later else 0.0
    share = retention * frames / (weight + later * rho)
    anchors = round(share * 729 / c)
    if share > 0.8 and later:
        kept = math.floor((retention * frames - weight) * pooled / later + 1e-9)
        if kept >= 0:
            return {"anchors_per_frame": 729,
                    "keep_ratio": min(max((kept - 0.5) / (pooled - 1), 0.0), 1.0)}
    if not later:
        return {"anchors_per_frame": min(max(anchors, 18), 729)}
    if 18 <= anchors <= 729:
        return {"anchors_per_frame": anchors, "keep_ratio": 0.3}
    anchors = min(max(anchors, 18), 729)
    survive = 1.0 if anchors >= 729 else min(1.0, c * anchors / 729)
    rho = (retention * frames / survive - weight) / later
    return {"anchors_per_frame": anchors, "keep_ratio": min(max(rho, 0.0), 1.0)}


def grid_scaled(backbone: str, grid: tuple[int, int]) -> dict:
    """The transformers backbones' settings: the preset with V at its share of 729 and the window
    the released 9 cuts the longer side into, off 27x27."""
    facts = get_backbone(backbone)
    fields = {"pooling": facts.pooling, "shallow_layer": facts.shallow_layer,
              "deep_layer": facts.deep_layer}
    rows, cols = grid
    if (rows, cols) != (27, 27):
        longer = max(rows, cols)
        fields["anchors_per_frame"] = max(1, round(126 * rows * cols / 729))
        fields["window"] = -(-longer // -(-longer // 9))
    return fields


@pytest.mark.parametrize("backbone", ["ov", "video"])
@pytest.mark.parametrize("exact", [False, True])
def test_llava_backbones_keep_the_calibrated_settings(backbone, exact):
    preset = PRESETS[get_backbone(backbone).preset]
    for frames in FRAMES:
        lowest = lowest_retention(backbone, frames)
        for retention in RETENTIONS:
            if not exact and retention < lowest:
                continue
            expected = preset.replace(**calibrated_27(retention, backbone, frames),
                                      exact_retention=retention if exact else None)
            assert settings_for(backbone, retention, exact=exact, frames=frames) == expected, (
                retention, frames)


@pytest.mark.parametrize("backbone", ["ov", "qwen2_5_vl", "qwen3_vl"])
def test_transformers_backbones_keep_the_grid_scaled_preset(backbone):
    preset = PRESETS[get_backbone(backbone).preset]
    for grid in [(27, 27), (16, 16), (6, 6), (6, 10), (10, 6), (4, 8), (1, 1), (40, 30)]:
        for retention in (1e-3, 0.1, 0.25, 1.0):
            expected = preset.replace(**grid_scaled(backbone, grid), exact_retention=retention)
            assert settings_for(backbone, retention, grid=grid) == expected
            assert aot_integrations_config_for(backbone, retention, grid) == expected
        assert settings_for(backbone, grid=grid) == preset.replace(**grid_scaled(backbone, grid))


def aot_integrations_config_for(backbone, retention, grid):
    hf = pytest.importorskip("aot_integrations.hf")
    return hf.config_for(backbone, retention, grid=grid)


def test_a_backbone_record_is_accepted_as_well_as_its_name():
    facts = get_backbone("video")
    assert settings_for(facts, 0.2, frames=64) == settings_for("video", 0.2, frames=64)
    mine = Backbone("mine", "a tiny average-pooled tower", (12, 12), pooling="average",
                    newline="no_token", shallow_layer=1, deep_layer=2, preset="paper-video",
                    frames=8, prompt_template="qwen_1_5")
    config = settings_for(mine, 0.25, frames=8)
    assert (config.pooling, config.shallow_layer, config.deep_layer) == ("average", 1, 2)
    assert config.exact_retention == 0.25 and config.window == 6


# --------------------------------------------------------------------------- the three modes
def test_modes_and_their_defaults():
    released = settings_for("ov")
    assert released == PRESETS["paper-ov-mvbench"]
    assert settings_for("ov", 0.1).exact_retention == 0.1              # exact by default
    assert settings_for("ov", 0.1, exact=False, frames=32).exact_retention is None
    # without frames, exact mode keeps the released share of anchors; with them, the calibrated
    assert settings_for("ov", 0.1).anchors_per_frame == 126
    assert settings_for("ov", 0.1, frames=32).anchors_per_frame == 102
    assert settings_for("ov", 0.1, layers=(3, 20), keep_ratio=0.2).keep_ratio == 0.2
    assert (settings_for("ov", layers=(3, 20)).shallow_layer,
            settings_for("ov", layers=(3, 20)).deep_layer) == (3, 20)


def test_approximate_mode_needs_the_frame_count():
    with pytest.raises(ValueError, match=r"retention=0.9 exact=False needs frames="):
        settings_for("ov", 0.9, exact=False)
    # the settings follow the frame count: fewer frames, fewer keyframe repeats to pay for
    assert (settings_for("ov", 0.9, exact=False, frames=16)
            != settings_for("ov", 0.9, exact=False, frames=32))


@pytest.mark.parametrize("bad", [(0, 0), (-3, 6), 6, (6,), (6, 6, 6), (2.5, 6), (True, 6),
                                 "16x16", (6, None)])
def test_bad_grids_are_refused(bad):
    with pytest.raises(ValueError, match=r"grid=.*expected \(rows, cols\), two integers >= 1"):
        settings_for("qwen2_5_vl", 0.1, grid=bad)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="exact=True needs a retention"):
        settings_for("ov", None, exact=True)
    for exact in ("no", "false", 0, 1):     # a string or a number is not read as a switch
        with pytest.raises(TypeError, match=f"exact={exact!r}: expected True"):
            settings_for("ov", 0.1, exact=exact, frames=32)
    for frames in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"frames=.*expected an integer >= 1"):
            settings_for("ov", 0.1, frames=frames)
    with pytest.raises(ValueError, match=r"layers=5: expected \(shallow, deep\)"):
        settings_for("ov", 0.1, layers=5)
    with pytest.raises(ValueError, match="AOTConfig.shallow_layer=-1"):
        settings_for("ov", 0.1, layers=(-1, 3))
    with pytest.raises(ValueError, match="unknown backbone 'mine'"):
        settings_for("mine", 0.1)
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
        settings_for("ov", 1.5)


@pytest.mark.parametrize("backbone, grid, frames", [
    ("ov", None, 9), ("ov", None, 16), ("ov", None, 33), ("video", None, 16),
    ("qwen2_5_vl", (8, 8), 2), ("qwen2_5_vl", (8, 8), 16), ("qwen3_vl", (6, 6), 9)])
def test_approximate_mode_never_exceeds_the_unreduced_video(backbone, grid, frames):
    """At high targets the settings never give more tokens than the unreduced model (the
    approximate count lands near the target, exactness is exact mode's job)."""
    facts = get_backbone(backbone)
    rows, cols = facts.grid if grid is None else grid
    feats, shallow, deep = synthetic_video(frames, rows, dim=4, seed=frames)  # square grids
    for retention in (1.0, 0.95, 0.9):
        config = settings_for(backbone, retention, exact=False, frames=frames, grid=grid,
                              intra_merge="prune")
        result = aot.reduce_video(feats, shallow, deep, config, grid=(rows, cols))
        assert result.num_tokens <= result.denominator, (retention, config)


def test_pooling_none_survivors_are_the_anchors():
    """Without pooling every anchor survives: V is the share of the grid the target needs."""
    config = settings_for("qwen2_5_vl", 0.2, exact=False, frames=1, grid=(16, 16))
    assert config.anchors_per_frame == round(0.2 * 256)
    assert lowest_retention("qwen2_5_vl", 1, (16, 16)) == 8 / 256    # 2 anchors x 4 windows


# ------------------------------------------------------------------------- the import graph
def aot_imports() -> dict[str, set[str]]:
    """module -> the aot modules it imports anywhere (module level and inside functions), from
    the source with ``ast``; ``from . import x`` counts as importing the package and x."""
    package = ROOT / "aot"
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)

    def resolve(name: str, here: str, is_package: bool, level: int) -> str:
        if level == 0:
            return name
        base = here.split(".") if is_package else here.split(".")[:-1]
        base = base[:len(base) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    graph = {}
    for module, (path, is_package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                source = resolve(node.module or "", module, is_package, node.level)
                targets.add(source)
                targets |= {f"{source}.{alias.name}" for alias in node.names}
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_aot_import_graph_is_acyclic():
    """Submodules of aot import each other without a cycle, counting imports inside functions
    and the packages' ``__init__`` modules)."""
    graph = aot_imports()
    assert {"aot", "aot.settings", "aot.config", "aot.budget", "aot.reducers"} <= set(graph)
    assert "aot.settings" in graph["aot"] and "aot.config" in graph["aot.settings"]
    assert "aot.budget" not in graph["aot.config"]
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
