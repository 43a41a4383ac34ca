"""Settings for a loaded transformers model, and the count a server plans with.

:func:`config_for` is :func:`aot.settings_for` with what only the loaded model knows (its
tower's layers, its pooling, its feature layout); :func:`reduced_token_count` is the serving
contract: the placeholder tokens of one video after exact-mode reduction, before any encoder
runs.
"""

from __future__ import annotations

import numbers
import operator

from aot.budget import exact_budget
from aot.config import AOTConfig, check_retention

from .adapters import adapter_for


def config_for(model, retention: float | None, *, exact: bool = True, frames: int | None = None,
               grid: tuple[int, int] | None = None, **overrides) -> AOTConfig:
    """An :class:`AOTConfig` for ``model`` at ``retention``: :func:`aot.settings_for` with what
    the loaded model adds.

    model: a supported model, or a registered backbone name (then the backbone's declared
        layers; facts only a loaded model has, such as the LLM width that splits main features
        from extra levels in ``similarity_channels``, are added by :func:`apply`).
    retention: share of the unreduced visual tokens in (0, 1]; None with ``exact=False`` gives
        the released preset on the grid.
    exact: exact token count (default); False = the approximate settings, which need ``frames``
        (frames per video; temporal patches on Qwen).
    grid: (rows, cols) of the tokens AOT selects anchors on (default the backbone's declared
        grid: Qwen at 448 px = 16x16 merged tokens). On a grid other than SigLIP's 27x27 the
        anchor count keeps the released share of the grid (126 / 729) and the window is the
        span the released 9 cuts the longer side into (16 -> two spans of 8). Videos of other
        sizes run with the same settings (windows of at most that size; a frame needs at least
        ``anchors_per_frame`` tokens).

    The vision layers come from the loaded model's tower (:meth:`HFAdapter.default_layers`:
    Qwen2.5-VL's first and last full-attention blocks, elsewhere the paper's relative depth);
    the model's facts (:meth:`HFAdapter.model_fields`) are set; ``overrides`` win.
    """
    from aot.settings import settings_for

    if not isinstance(exact, bool):
        raise TypeError(f"config_for: exact={exact!r}: expected True (exact token count) or "
                        "False (the approximate settings)")
    if isinstance(model, str):
        layers, model_fields = None, {}
    else:
        adapter = adapter_for(model)
        model, layers, model_fields = adapter.backbone, adapter.default_layers(), adapter.model_fields()
    return settings_for(model, retention, exact=exact, frames=frames, grid=grid, layers=layers,
                        **{**model_fields, **overrides})


def reduced_token_count(model_or_backbone, video_grid, settings: AOTConfig | float) -> int:
    """Placeholder tokens one video needs after exact-mode reduction, before any encoder runs.

    The serving contract: a pure function of the grid and the settings. Every argument is
    checked (a ValueError or TypeError naming it), so a server never plans with a wrong count.

    model_or_backbone: a supported model, a registered backbone name
        (:data:`aot.backbones.BACKBONES`) or its :class:`aot.backbones.Backbone` record.
    video_grid: one video's grid, three integers >= 1 (a tuple, a list or a 1-D integer
        tensor). LLaVA-OneVision / LLaVA-Video: (frames, rows, cols) of the SigLIP patch grid,
        square (e.g. (32, 27, 27)); Qwen: one row (t, h, w) of the processor's
        ``video_grid_thw`` in patches (t temporal patches, h x w before the 2x2 merger, so h
        and w even), not the whole (videos, 3) tensor.
    settings: an AOTConfig with ``exact_retention`` set, or the retention itself, a number in
        (0, 1].
    Returns:
        floor(r * N + 0.5) visual tokens (N = unreduced visual tokens) plus the backbone's
        newline tokens; never more than the unreduced model's count.
    """
    from aot.backbones import Backbone, get_backbone

    if isinstance(model_or_backbone, Backbone):
        backbone = model_or_backbone
    elif isinstance(model_or_backbone, str):
        backbone = get_backbone(model_or_backbone)
    else:
        backbone = adapter_for(model_or_backbone).backbone
    retention = _check_settings(settings)
    frames, rows, cols = _check_video_grid(backbone, video_grid)
    rows, cols = rows // backbone.patch_merge, cols // backbone.patch_merge
    per_frame = backbone.pooled_per_frame((rows, cols))
    return exact_budget(retention, frames, per_frame) + backbone.newlines(frames, (rows, cols))


def _check_settings(settings) -> float:
    """The exact retention of ``settings`` (an AOTConfig or a number), or an error naming it."""
    if isinstance(settings, AOTConfig):
        if settings.exact_retention is None:
            raise ValueError("reduced_token_count needs exact mode: the released thresholds make "
                             "the count depend on the video; set exact_retention")
        return settings.exact_retention
    if settings is None:
        raise ValueError("reduced_token_count needs exact mode: the released thresholds make "
                         "the count depend on the video; set exact_retention")
    if isinstance(settings, bool) or not isinstance(settings, numbers.Real):
        raise TypeError(f"reduced_token_count: settings={settings!r} ({type(settings).__name__}): "
                        "expected an AOTConfig with exact_retention or a retention in (0, 1] "
                        "such as 0.10")
    return check_retention(settings if isinstance(settings, (int, float)) else float(settings),
                           "retention")


def _check_video_grid(backbone, video_grid) -> tuple[int, int, int]:
    """``video_grid`` as (frames, rows, cols) of this backbone, or an error naming it."""
    import torch

    what = ("one video_grid_thw row (t, h, w) in patches" if backbone.patch_merge > 1
            else "(frames, rows, cols) of the SigLIP patch grid")
    if isinstance(video_grid, torch.Tensor):
        if video_grid.dim() != 1:
            raise ValueError(f"reduced_token_count: video_grid is a tensor of shape "
                             f"{tuple(video_grid.shape)}; expected {what}: pass one row "
                             "(video_grid_thw[i]) per video")
        if video_grid.is_floating_point() or video_grid.dtype == torch.bool:
            raise TypeError(f"reduced_token_count: video_grid={video_grid.tolist()!r} has dtype "
                            f"{video_grid.dtype}; expected {what}, three integers >= 1")
        video_grid = video_grid.tolist()
    if not isinstance(video_grid, (tuple, list)) or len(video_grid) != 3:
        raise ValueError(f"reduced_token_count: video_grid={video_grid!r}; expected {what}, "
                         "three integers >= 1")
    values = []
    for value in video_grid:
        try:
            number = None if isinstance(value, bool) else operator.index(value)
        except TypeError:
            number = None
        if number is None or number < 1:
            raise ValueError(f"reduced_token_count: video_grid={tuple(video_grid)!r}; expected "
                             f"{what}, three integers >= 1")
        values.append(number)
    frames, rows, cols = values
    merge = backbone.patch_merge
    if merge > 1:
        if rows % merge or cols % merge:
            raise ValueError(f"reduced_token_count: video_grid={tuple(values)!r}: h and w must be "
                             f"multiples of {merge} (backbone {backbone.name!r} merges "
                             f"{merge}x{merge} patches; the processor's video_grid_thw rows are)")
    elif rows != cols:
        raise ValueError(f"reduced_token_count: video_grid={tuple(values)!r}: backbone "
                         f"{backbone.name!r} takes square frames (rows == cols: 27 x 27 patches "
                         "at 384 px)")
    return frames, rows, cols
