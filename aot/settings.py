"""Retention -> AOT settings for any declared backbone: the one route (docs/budget.md).

:func:`settings_for` turns (backbone, retention, grid, frames, exact) into an :class:`AOTConfig`
for every backbone of :mod:`aot.backbones`: the library, the eval plugin, the scripts, the demo and
the benchmark all call it. Three kinds of settings:

* the released preset (no retention): the backbone's preset on its grid;
* exact mode: ``exact_retention`` makes the count exact on any grid; the anchor count only
  decides which tokens carry merged content;
* approximate mode: the released thresholds decide the count, the anchor count V and the keep
  ratio are solved with a calibrated model of how many pooled tokens survive the anchor mask.

Retention is measured against the backbone's unreduced count: frames x pooled tokens per frame
(newlines excluded).
"""

from __future__ import annotations

import math

from .backbones import Backbone, get_backbone
from .clips import default_clip_length, fixed_clips
from .config import PRESETS, AOTConfig, check_retention
from .pooling import pooled_side

#: The patch grid the released presets were tuned on (SigLIP-384: 27 x 27 patches).
PRESET_GRID = (27, 27)

#: Survivor share factor c per pooling kind: (pooled survivors / pooled tokens) divided by
#: (V / patches), measured by scripts/calibrate_retention.py on synthetic videos
#: (V = 54..486). Average pooling drops the last row and column, where anchors are rarer, so its
#: share comes out higher. Without pooling every anchor is a survivor: c = 1 exactly.
SURVIVOR_SHARE = {"bilinear": 0.99, "average": 1.12, "none": 1.0}

#: Above this survivor share the linear model saturates (almost every pooled token survives),
#: so high targets use V = patches, where survival is certain and the count is exact.
SATURATED_SHARE = 0.8


def settings_for(backbone: Backbone | str, retention: float | None = None, *,
                 exact: bool | None = None, frames: int | None = None,
                 grid: tuple[int, int] | None = None, layers: tuple[int, int] | None = None,
                 **overrides) -> AOTConfig:
    """The :class:`AOTConfig` for ``backbone`` at ``retention``.

    Args:
        backbone: a declared backbone name (:func:`aot.backbones.get_backbone`) or a
            :class:`aot.backbones.Backbone`; gives the preset, the pooling, the default vision
            layers and the default grid.
        retention: share of the unreduced visual tokens in (0, 1], or None for the released
            preset (its thresholds decide the count).
        exact: True = exactly ``floor(retention * frames * pooled + 0.5)`` tokens per video
            (``exact_retention``); False = the approximate settings; None (default) = exact
            when a retention is given.
        frames: frames per video (for M-RoPE backbones: temporal patches). Required by the
            approximate mode, whose settings depend on the clips. In exact mode it sizes the
            anchors with the same model (anchors covering about the tokens the exact plan
            keeps); without it exact mode keeps the released share of anchors.
        grid: (rows, cols) of the tokens AOT selects anchors on, one frame (default the
            backbone's declared grid). On a grid other than :data:`PRESET_GRID` the released
            anchor count keeps its share of the grid and the window is the span the released
            window cuts the longer side into (:func:`scaled_window`).
        layers: (shallow, deep) vision layers (default the backbone's).
        overrides: :class:`AOTConfig` fields, applied last.

    Returns:
        The preset's fields with the backbone's pooling and layers, then the retention's
        fields, then ``overrides``.

    Raises:
        ValueError: unknown backbone, retention outside (0, 1], a bad grid / frames / layers,
            ``exact=True`` without a retention, approximate mode without ``frames`` or below
            :func:`lowest_retention`.
    """
    if exact is not None and not isinstance(exact, bool):
        raise TypeError(f"settings_for: exact={exact!r}: expected True (exact token count), False "
                        f"(the approximate settings) or None (exact when a retention is given)")
    facts = backbone if isinstance(backbone, Backbone) else get_backbone(backbone)
    rows, cols = check_grid(facts.grid if grid is None else grid)
    if frames is not None:
        check_frames(frames)
    if layers is not None and (not isinstance(layers, (tuple, list)) or len(layers) != 2):
        raise ValueError(f"layers={layers!r}: expected (shallow, deep), two vision layer indices")
    shallow, deep = (facts.shallow_layer, facts.deep_layer) if layers is None else layers
    base = PRESETS[facts.preset].replace(pooling=facts.pooling, shallow_layer=shallow,
                                         deep_layer=deep)
    if retention is None:
        if exact:
            raise ValueError("exact=True needs a retention in (0, 1]; leave exact out (or "
                             "False) for the released preset, whose thresholds decide the count")
        fields = released_fields(base, (rows, cols))
    else:
        retention = check_retention(retention, "retention")
        exact = True if exact is None else exact
        if not exact and frames is None:
            raise ValueError(
                f"retention={retention!r} exact=False needs frames= (frames per video): the "
                f"approximate settings depend on the clips, so they hold only for the frame "
                f"count they were solved for; or use exact mode")
        if frames is None:
            fields = released_fields(base, (rows, cols))
        else:
            if not exact:
                check_reachable(retention, base, frames, (rows, cols), facts.name)
            fields = calibrated_fields(retention, base, frames, (rows, cols))
        if exact:
            fields["exact_retention"] = retention
    fields.update(overrides)
    return base.replace(**fields)


# ------------------------------------------------------------------------------ validation
def check_grid(grid) -> tuple[int, int]:
    """``grid`` as (rows, cols) of two integers >= 1, or a ValueError naming it."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid):
        raise ValueError(f"grid={grid!r}: expected (rows, cols), two integers >= 1")
    return int(grid[0]), int(grid[1])


def check_frames(frames) -> int:
    """``frames`` as an integer >= 1, or a ValueError naming it."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames={frames!r}: expected an integer >= 1")
    return frames


# ------------------------------------------------------------------------- released settings
def scaled_window(window: int, grid: tuple[int, int]) -> int:
    """The window on ``grid``: the longer side cut into as many spans as the released
    ``window`` cuts it into, each span ``ceil(longer / spans)`` long (16 with window 9: two
    spans of 8). The released window on :data:`PRESET_GRID`."""
    if tuple(grid) == PRESET_GRID:
        return window
    longer = max(grid)
    return -(-longer // -(-longer // window))


def released_fields(base: AOTConfig, grid: tuple[int, int]) -> dict:
    """The preset's anchor count and window on ``grid``: on :data:`PRESET_GRID` as released,
    elsewhere V keeps its share of the grid (126 / 729 of a 16 x 16 grid: 44), at least 1."""
    if tuple(grid) == PRESET_GRID:
        return {}
    rows, cols = grid
    anchors = base.anchors_per_frame * rows * cols / (PRESET_GRID[0] * PRESET_GRID[1])
    return {"anchors_per_frame": max(1, round(anchors)),
            "window": scaled_window(base.window, grid)}


# --------------------------------------------------------------------- the calibrated model
def clip_weights(base: AOTConfig, frames: int) -> tuple[int, int]:
    """(A, C) of the preset's clips at ``frames`` frames: A = keyframe multiplicities (2 for a
    clip of two or more frames, whose keyframe is emitted as is and as merged anchors; 1 for a
    one-frame clip), C = later frames. Without a temporal phase: (frames, 0)."""
    if not base.inter:
        return frames, 0
    length = base.clip_length or default_clip_length(frames, base.num_clips)
    clips = fixed_clips(frames, length)
    weight = sum(2 if stop - start >= 2 else 1 for start, stop in clips)
    return weight, sum(max(stop - start - 1, 0) for start, stop in clips)


def min_anchors(base: AOTConfig, grid: tuple[int, int]) -> int:
    """Smallest V that still gives every local window an anchor (``int(V * (1 - g)) //
    windows >= 1``; 18 on 27 x 27 with windows of 9), at most the grid's patches."""
    rows, cols = grid
    window = scaled_window(base.window, grid)
    windows = -(-rows // window) * -(-cols // window)
    anchors = windows
    while int(anchors * (1 - base.global_share)) < windows and anchors < rows * cols:
        anchors += 1
    return min(anchors, rows * cols)


def survivor_share(pooling: str, anchors: int, patches: int) -> float:
    """Modelled share of pooled tokens that survive the anchor mask: c * V / patches
    (:data:`SURVIVOR_SHARE`), exactly 1 when every patch is an anchor."""
    if anchors >= patches:
        return 1.0
    return min(1.0, SURVIVOR_SHARE[pooling] * anchors / patches)


def lowest_retention(backbone: Backbone | str, frames: int,
                     grid: tuple[int, int] | None = None) -> float:
    """The smallest retention the approximate settings reach at ``frames`` frames: V =
    :func:`min_anchors` and, with a temporal phase, keep ratio 0 (later frames keep nothing).
    Below it only exact mode hits a target."""
    facts = backbone if isinstance(backbone, Backbone) else get_backbone(backbone)
    grid = check_grid(facts.grid if grid is None else grid)
    base = PRESETS[facts.preset].replace(pooling=facts.pooling)
    return _lowest(base, check_frames(frames), grid)


def _lowest(base: AOTConfig, frames: int, grid: tuple[int, int]) -> float:
    weight, _ = clip_weights(base, frames)
    share = survivor_share(base.pooling, min_anchors(base, grid), grid[0] * grid[1])
    return share * weight / frames


def check_reachable(retention: float, base: AOTConfig, frames: int, grid: tuple[int, int],
                    name: str) -> None:
    """A ValueError when ``retention`` is below what the approximate settings reach: the fewest
    anchors and no kept tokens still give about :func:`lowest_retention`, so a lower target
    would silently land many times too high."""
    lowest = _lowest(base, frames, grid)
    if retention < lowest:
        raise ValueError(
            f"retention={retention!r} is below what the approximate settings reach "
            f"(about {lowest:.4f} for backbone {name!r} at {frames} frames: "
            f"{min_anchors(base, grid)} anchors per frame, nothing kept in later frames); use "
            f"exact=True for an exact token count")


def calibrated_fields(retention: float, base: AOTConfig, frames: int,
                      grid: tuple[int, int]) -> dict:
    """AOTConfig fields (anchors_per_frame, keep_ratio, window) aimed at ``retention``.

    Model: the pooled mask lets through about the same share of pooled tokens as the share of
    patches that are anchors, times the pooling's factor c (:data:`SURVIVOR_SHARE`): survivors
    share s(V) ~= c * V / patches (exactly 1 at V = patches). With the preset's clips
    (:func:`clip_weights`: A keyframe multiplicities, C later frames),
    retention ~= s(V) * (A + C * keep_ratio) / frames.

    * V is solved with the preset's keep ratio while s(V) <= :data:`SATURATED_SHARE`.
    * Higher targets take V = patches (every pooled token survives, P per frame) and the keep
      ratio that makes each later frame keep k = floor((r * frames - A) * P / C) tokens: the
      released rule keeps ceil((P - 1) * rho) tokens of P distinct scores, so
      rho = (k - 1/2) / (P - 1) keeps k, and the video never gets more than ``r * frames * P``
      tokens (at r = 1: never more than the unreduced video). When even k = 0 is too many (short
      clips: the keyframes alone exceed the target) the first rule stands.
    * Below V = :func:`min_anchors`, V is clamped and the keep ratio solved (down to 0).
    """
    rows, cols = grid
    patches = rows * cols
    c = SURVIVOR_SHARE[base.pooling]
    weight, later = clip_weights(base, frames)
    pooled = pooled_side(rows, base.pooling) * pooled_side(cols, base.pooling)
    fields = {"window": scaled_window(base.window, grid)} if tuple(grid) != PRESET_GRID else {}
    keep_ratio = base.keep_ratio
    rho = keep_ratio if later else 0.0
    share = retention * frames / (weight + later * rho)  # survivors share the target needs
    anchors = round(share * patches / c)
    lowest = min_anchors(base, grid)
    if share > SATURATED_SHARE and later:
        kept = math.floor((retention * frames - weight) * pooled / later + 1e-9)
        if kept >= 0:
            rho = min(max((kept - 0.5) / (pooled - 1), 0.0), 1.0) if pooled > 1 else 0.0
            return {**fields, "anchors_per_frame": patches, "keep_ratio": rho}
    if not later:
        return {**fields, "anchors_per_frame": min(max(anchors, lowest), patches)}
    if lowest <= anchors <= patches:
        return {**fields, "anchors_per_frame": anchors, "keep_ratio": keep_ratio}
    anchors = min(max(anchors, lowest), patches)
    rho = (retention * frames / survivor_share(base.pooling, anchors, patches) - weight) / later
    return {**fields, "anchors_per_frame": anchors, "keep_ratio": min(max(rho, 0.0), 1.0)}
