"""Cutting a video into the short clips of the temporal phase (docs/knobs.md: ``clip_length``,
``num_clips``, ``dynamic_clips``).

A clip is a half-open frame range ``(start, stop)``; clips are consecutive and cover the video.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import AOTConfig

Clip = tuple[int, int]


def fixed_clips(num_frames: int, clip_length: int) -> list[Clip]:
    """Consecutive clips of ``clip_length`` frames; the last one is shorter when it must be."""
    if clip_length < 1:
        raise ValueError(f"clip_length={clip_length}: expected >= 1")
    return [(s, min(s + clip_length, num_frames)) for s in range(0, num_frames, clip_length)]


def default_clip_length(num_frames: int, num_clips: int) -> int:
    """``ceil(frames / num_clips)``: 4 at 32 frames and 8 at 64 frames with 8 clips (released)."""
    return max(1, math.ceil(num_frames / num_clips))


def check_frame_features(frame_features, num_frames: int) -> None:
    """Raise a ValueError unless ``frame_features`` is a finite (num_frames, D) float tensor.

    The per-frame features of dynamic clips must describe exactly the video's frames: with fewer
    rows the missing frames would fall out of every clip (and emit nothing), with more the cuts
    would point past the video.
    """
    if not isinstance(frame_features, torch.Tensor):
        raise TypeError(f"frame_features must be a torch.Tensor (frames, D), "
                        f"got {type(frame_features).__name__}")
    shape = tuple(frame_features.shape)
    if frame_features.dim() != 2 or shape[0] != num_frames or shape[1] < 1:
        raise ValueError(f"frame_features has shape {shape}; expected (frames, D) = "
                         f"({num_frames}, D): one feature vector per frame of the video")
    if not frame_features.is_floating_point():
        raise TypeError(f"frame_features must be floating point, got dtype {frame_features.dtype}")
    if frame_features.device.type == "meta":
        raise ValueError(f"frame_features is on the meta device (shape {shape}, no values): "
                         "the clip cuts read the values; pass real tensors")
    if not bool(torch.isfinite(frame_features).all()):
        raise ValueError("frame_features holds NaN or inf values")


def dynamic_clips(frame_features: torch.Tensor, num_clips: int, threshold: float) -> list[Clip]:
    """FastVID-style clips: cut at the weakest links between neighbouring frames.

    Args:
        frame_features: (F, D) one global feature per frame (e.g. the mean of its tokens).
        num_clips: cut after the ``num_clips - 1`` lowest adjacent-frame cosine similarities...
        threshold: ...and after every transition whose similarity is below this.
    Returns:
        list of (start, stop) clips.
    """
    check_frame_features(frame_features, frame_features.shape[0] if frame_features.dim() else 0)
    frames = frame_features.shape[0]
    if frames <= 1:
        return [(0, frames)] if frames else []
    similarity = F.cosine_similarity(frame_features[:-1].float(), frame_features[1:].float(), dim=-1)
    order = torch.sort(similarity, stable=True).indices  # ties: earlier transition first
    cuts = set(order[: max(num_clips - 1, 0)].tolist())
    cuts |= set(torch.nonzero(similarity < threshold).flatten().tolist())
    bounds = [0] + sorted(c + 1 for c in cuts) + [frames]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def split_clips(num_frames: int, config: AOTConfig,
                frame_features: torch.Tensor | None = None) -> list[Clip]:
    """The clips of a video under ``config`` (fixed by default, dynamic when enabled).

    Args:
        num_frames: frames of the video (>= 1).
        frame_features: (F, D) per-frame global features, needed for dynamic clips (checked
            whenever given, see :func:`check_frame_features`).
    """
    if frame_features is not None:
        check_frame_features(frame_features, num_frames)
    if config.dynamic_clips:
        if frame_features is None:
            raise ValueError("dynamic_clips=True needs per-frame features (frame_features)")
        return dynamic_clips(frame_features, config.num_clips, config.dynamic_threshold)
    length = config.clip_length or default_clip_length(num_frames, config.num_clips)
    return fixed_clips(num_frames, length)
