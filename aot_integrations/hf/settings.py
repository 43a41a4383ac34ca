"""Settings for a loaded transformers model, and the count a server plans with.

:func:`config_for` is :func:`aot.settings_for` with what only the loaded model knows (its
tower's layers, its pooling, its feature layout); :func:`reduced_token_count` is the serving
contract: the placeholder tokens of one video after exact-mode reduction, before any encoder
runs.
"""

from __future__ import annotations

from aot.config import AOTConfig

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
    """Placeholder tokens one video needs after exact-mode reduction, before any encoder runs:
    :func:`aot.serving.reduced_token_count` (the serving contract, every argument checked), with
    a loaded model accepted for its backbone.

    model_or_backbone: a supported model, a registered backbone name
        (:data:`aot.backbones.BACKBONES`) or its :class:`aot.backbones.Backbone` record.
    video_grid, settings: as :func:`aot.serving.reduced_token_count` takes them (one video's
        (t, h, w) ``video_grid_thw`` row on Qwen, (frames, rows, cols) on LLaVA-OneVision; an
        exact AOTConfig or a retention in (0, 1]).
    """
    from aot.backbones import Backbone
    from aot.serving import reduced_token_count as count

    if not isinstance(model_or_backbone, (Backbone, str)):
        model_or_backbone = adapter_for(model_or_backbone).backbone
    return count(model_or_backbone, video_grid, settings)
