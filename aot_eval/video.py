"""Frames for what a task's ``doc_to_visual`` returns, sampled as the stock wrappers sample them.

Video files go through :mod:`llava.video` (decord when installed, as the stock wrappers use, so the
frames are identical; PyAV otherwise): uniform ``max_frames_num`` frames for LLaVA-OneVision, 1 fps
capped at ``max_frames_num`` for LLaVA-Video. A folder of images or a list of image files is
treated as the frames of one video and subsampled with ``np.linspace`` (the stock ``llava_vid``
rule for MVBench's frame folders, at 3 fps for the time stamps).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FRAME_FOLDER_FPS = 3.0


@dataclass
class Frames:
    """frames: (T, H, W, 3) uint8; duration in seconds; times: seconds of each sampled frame."""

    frames: np.ndarray
    duration: float
    times: list

    def time_string(self) -> str:
        return ",".join(f"{t:.2f}s" for t in self.times)


def read_video_file(path: str, max_frames: int, mode: str, video_fps: float = 1.0,
                    force_sample: bool = False) -> Frames:
    """``mode="uniform"`` (OV) or ``"fps"`` (LLaVA-Video) sampling of one video file."""
    from llava import video

    if mode == "uniform":
        got = video.read_frames(path, lambda total, fps: video.uniform_indices(total, max_frames))
    elif mode == "fps":
        got = video.read_video_fps(path, max_frames, fps=video_fps, force_sample=force_sample)
    else:
        raise ValueError(f"mode={mode!r}: expected 'uniform' or 'fps'")
    return Frames(got.frames, float(got.duration), [float(t) for t in got.timestamps])


def read_image_frames(paths: list, max_frames: int) -> Frames:
    """A video given as image files: ``max_frames`` of them picked with ``np.linspace``."""
    from PIL import Image

    if not paths:
        raise FileNotFoundError("no frame images found for this video")
    indices = np.linspace(0, len(paths) - 1, max_frames, dtype=int).tolist()
    frames = np.stack([np.array(Image.open(paths[i]).convert("RGB")) for i in indices])
    return Frames(frames, len(paths) / FRAME_FOLDER_FPS, [i / FRAME_FOLDER_FPS for i in indices])


def load_visual(visual, max_frames: int, mode: str, video_fps: float = 1.0,
                force_sample: bool = False) -> Frames:
    """Frames for ``[video file]``, ``[folder of images]`` or ``[image, image, ...]``."""
    if isinstance(visual, (str, os.PathLike)):
        visual = [visual]
    if not visual or not all(isinstance(v, (str, os.PathLike)) for v in visual):
        raise TypeError(f"expected video paths from doc_to_visual, got {type(visual).__name__}: "
                        f"{str(visual)[:200]}")
    visual = [os.fspath(v) for v in visual]
    if len(visual) == 1 and os.path.isdir(visual[0]):
        files = sorted(p for p in glob.glob(os.path.join(visual[0], "*"))
                       if p.lower().endswith(IMAGE_SUFFIXES))
        return read_image_frames(files, max_frames)
    if len(visual) == 1:
        return read_video_file(visual[0], max_frames, mode, video_fps, force_sample)
    return read_image_frames(visual, max_frames)
