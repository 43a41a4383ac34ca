"""What a serving engine plans with before any encoder runs (pure Python and torch).

An engine (vLLM, SGLang) sizes a request's placeholder tokens when it tokenizes the prompt, so a
reducer it serves must give a count that depends only on the video's grid and the settings:
AOT's exact mode and every registry reducer under ``exact_retention`` do
(:func:`reduced_token_count`). An engine that also lays out each frame's tokens after its own
timestamp (Qwen3-VL) needs each frame's count in advance (:func:`frame_token_counts`): only
reducers whose split over the frames is fixed give one. :func:`kept_slots` says which
placeholder of the unreduced run each kept token stands for, so the engine can give it that
placeholder's M-RoPE position.
docs/serving.md.
"""

from __future__ import annotations

import numbers
import operator

import torch

from .backbones import Backbone, get_backbone
from .budget import exact_budget
from .config import AOTConfig, check_retention
from .result import ReducedVideo


def kept_slots(result: ReducedVideo, per_frame: int) -> torch.Tensor:
    """(L,) long: for each token of ``result`` (frame ``f``, position ``p`` on the frame's grid of
    ``per_frame`` tokens), its placeholder's index ``f * per_frame + p`` in the unreduced run
    (a merged anchor keeps its anchor's)."""
    return result.token_frame.long().cpu() * per_frame + result.token_position.long().cpu()


def reduced_token_count(backbone: Backbone | str, video_grid,
                        settings: AOTConfig | float) -> int:
    """Placeholder tokens one video needs after exact-mode reduction, before any encoder runs.

    The serving contract: a pure function of the grid and the settings. Every argument is
    checked (a ValueError or TypeError naming it), so a server never plans with a wrong count.

    backbone: a registered backbone name (:data:`aot.backbones.BACKBONES`) or its
        :class:`aot.backbones.Backbone` record.
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
    if isinstance(backbone, str):
        backbone = get_backbone(backbone)
    elif not isinstance(backbone, Backbone):
        raise TypeError(f"reduced_token_count: backbone={backbone!r}: expected a backbone name "
                        "or an aot.backbones.Backbone (aot_integrations.hf.reduced_token_count "
                        "also takes a loaded model)")
    retention = _check_settings(settings)
    frames, rows, cols = _check_video_grid(backbone, video_grid)
    rows, cols = rows // backbone.patch_merge, cols // backbone.patch_merge
    per_frame = backbone.pooled_per_frame((rows, cols))
    return exact_budget(retention, frames, per_frame) + backbone.newlines(frames, (rows, cols))


def frame_token_counts(backbone: Backbone | str, video_grid, settings: AOTConfig | float,
                       reducer: str = "aot") -> list[int]:
    """Placeholder tokens of each frame of one video after exact-mode reduction, before any
    encoder runs: the layout of an engine that writes each frame's tokens after its own
    timestamp (Qwen3-VL). Each kept token counts for the frame whose slot it keeps (a merged
    anchor: its anchor's frame), where the transformers integration emits it.

    backbone, video_grid: as :func:`reduced_token_count` (on Qwen one ``video_grid_thw`` row
        (t, h, w): t frames, one per temporal patch).
    settings: an AOTConfig with ``exact_retention`` set (the reducer's settings: AOT's clips and
        keep ratio decide its split), or the retention itself (then the backbone's exact
        settings, :func:`aot.settings_for`).
    reducer: a registry name (:data:`aot.reducers.REDUCERS`), with its default options.
    Returns:
        (t,) ints that sum to ``reduced_token_count(backbone, video_grid, settings)`` minus the
        backbone's newline tokens.
    Raises:
        ValueError: a reducer whose split over the frames follows the content (its registry
            entry has no ``frame_counts``), or settings that make AOT's split content-dependent
            (dynamic clips); bad arguments as :func:`reduced_token_count`.
    """
    from .reducers import REDUCERS, reducer_info
    from .settings import settings_for

    if isinstance(backbone, str):
        backbone = get_backbone(backbone)
    elif not isinstance(backbone, Backbone):
        raise TypeError(f"frame_token_counts: backbone={backbone!r}: expected a backbone name "
                        "or an aot.backbones.Backbone")
    retention = _check_settings(settings)
    config = settings if isinstance(settings, AOTConfig) else settings_for(backbone, retention,
                                                                           exact=True)
    frames, rows, cols = _check_video_grid(backbone, video_grid)
    per_frame = backbone.pooled_per_frame((rows // backbone.patch_merge,
                                           cols // backbone.patch_merge))
    info = reducer_info(reducer)
    if info.frame_counts is None:
        fixed = [name for name, entry in REDUCERS.items() if entry.frame_counts is not None]
        raise ValueError(f"reducer={reducer!r} splits its tokens over the frames by the video's "
                         f"content, so no fixed per-frame layout exists before the encoder runs; "
                         f"expected one of {fixed}")
    counts = [int(count) for count in info.frame_counts(config, frames, per_frame)]
    budget = exact_budget(retention, frames, per_frame)
    if len(counts) != frames or sum(counts) != budget or min(counts) < 0:
        raise RuntimeError(f"frame_token_counts: reducer {reducer!r} declared {counts} for "
                           f"{frames} frames but exact mode keeps {budget} tokens")
    return counts


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
