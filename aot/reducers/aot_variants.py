"""AOT itself, its random-anchor ablation and every named ablation, behind the baselines' signature.

The only addition to :func:`aot.reduce_video` is ``budget=``: an exact token count is turned into
the ``exact_retention`` whose exact budget is that count, so AOT can be given any other reducer's
count (or the other way round) for the same video.
"""

from __future__ import annotations

import torch

from ..budget import frame_emissions, plan_exact_budget
from ..clips import split_clips
from ..config import ABLATIONS, AOTConfig
from ..pooling import pooled_shape
from ..reduce import check_inputs, reduce_video
from ..result import ReducedVideo
from .common import resolve_budget, retention_for_budget


def ablation_config(name: str, base: AOTConfig | None = None) -> AOTConfig:
    """``base`` (default :class:`AOTConfig`) with the paper ablation ``name`` switched on.

    Names: the keys of :data:`aot.config.ABLATIONS` (no-local, no-global, prune-only,
    no-intra-ot, no-inter, cosine-merge, random-anchors).
    """
    if name not in ABLATIONS:
        raise ValueError(f"unknown AOT ablation {name!r}; expected one of {sorted(ABLATIONS)}")
    return (base or AOTConfig()).replace(**ABLATIONS[name])


def config_for_budget(config: AOTConfig, budget, frames: int, pooled_per_frame: int) -> AOTConfig:
    """``config`` in exact mode with exactly ``budget`` tokens for a video of ``frames`` frames.

    Raises:
        ValueError: the budget is not an integer in [1, frames * pooled_per_frame].
    """
    count = resolve_budget(config, frames, pooled_per_frame, budget, reducer="aot")
    return config.replace(exact_retention=retention_for_budget(count, frames, pooled_per_frame))


def aot_frame_counts(config: AOTConfig, frames: int, pooled_per_frame: int,
                     ablation: str | None = None) -> list[int]:
    """Exact mode's tokens per frame (the registry entries' ``frame_counts``): the clips of
    ``config`` and :func:`aot.budget.plan_exact_budget` fix how many tokens each frame emits
    (:func:`aot.budget.frame_emissions`) before any content is seen.

    Raises:
        ValueError: no ``exact_retention`` (the released thresholds decide the counts from the
            content), or dynamic clips (their cuts follow the content, and with them which
            frames are keyframes).
    """
    if ablation is not None:
        config = ablation_config(ablation, config)
    if config.exact_retention is None:
        raise ValueError("aot: exact_retention=None runs the released thresholds, whose counts "
                         "depend on the video; set exact_retention for fixed per-frame counts")
    if config.inter and config.dynamic_clips:
        raise ValueError("aot: dynamic_clips=True cuts the clips where the content changes, so "
                         "each frame's token count depends on the video; a fixed per-frame "
                         "layout needs dynamic_clips=False")
    clips = split_clips(frames, config) if config.inter and frames >= 2 else []
    plan = plan_exact_budget(config.exact_retention, frames, pooled_per_frame, clips,
                             keep_ratio=config.keep_ratio)
    return frame_emissions(plan, clips)


def reduce_aot(features: torch.Tensor, shallow_attention: torch.Tensor,
               deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
               budget: int | None = None, frame_features: torch.Tensor | None = None,
               ablation: str | None = None, grid=None) -> ReducedVideo:
    """:func:`aot.reduce_video` with an optional exact ``budget`` and a named ablation.

    Args:
        features, shallow_attention, deep_attention, frame_features: as :func:`aot.reduce_video`.
        config: an :class:`AOTConfig` (default: the paper-ov-mvbench preset). Without ``budget``
            and with ``exact_retention=None`` AOT runs with its released thresholds (its count
            then varies per video; :func:`aot.reducers.matched_budget` reads it).
        budget: exact token count; switches AOT to exact mode at that count.
        ablation: a key of :data:`aot.config.ABLATIONS`, applied on top of ``config``.
        grid: the patch grid, ``(rows, cols)`` or a square's side (as :func:`aot.reduce_video`).
    Returns:
        :class:`ReducedVideo`.
    """
    config = config or AOTConfig()
    if ablation is not None:
        config = ablation_config(ablation, config)
    if budget is not None:
        grid = check_inputs(features, shallow_attention, deep_attention, config, grid)
        rows, cols = pooled_shape(grid, config.pooling)
        config = config_for_budget(config, budget, features.shape[0], rows * cols)
    return reduce_video(features, shallow_attention, deep_attention, config,
                        frame_features=frame_features, grid=grid)


def reduce_random(features: torch.Tensor, shallow_attention: torch.Tensor,
                  deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                  budget: int | None = None, frame_features: torch.Tensor | None = None,
                  grid=None) -> ReducedVideo:
    """AOT with random anchors (the paper's ablation): V anchors per frame drawn uniformly from
    ``config.seed``, then AOT's OT aggregation, pooling and temporal phase unchanged."""
    return reduce_aot(features, shallow_attention, deep_attention, config, budget=budget,
                      frame_features=frame_features, ablation="random-anchors", grid=grid)
