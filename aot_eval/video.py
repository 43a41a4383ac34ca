"""Frames for what a task's ``doc_to_visual`` returns, read exactly as the stock wrappers read them.

Video files go through :mod:`llava.video` (decord when installed, as the stock wrappers use, so the
frames are identical; PyAV otherwise): uniform ``max_frames_num`` frames for LLaVA-OneVision, 1 fps
capped at ``max_frames_num`` for LLaVA-Video, with the stock ``llava_vid`` frame stamps.

Frame folders (MVBench ``episodic_reasoning`` stores TVQA clips as folders of jpgs) are where the
stock wrappers differ from each other and from a careful reader, and ``frame_folders`` picks:

* ``"stock"`` (default, the protocol published numbers use): ``llava_onevision`` cannot decode a
  folder and asks the question without the video; ``llava_vid`` globs the folder (file-system
  order, not sorted) and samples ``max_frames_num`` of the files with ``np.linspace``, but only when
  the task name contains ``"mvbench"`` (otherwise it answers that the video cannot be loaded).
* ``"sorted"``: both read the folder's image files in name order, ``np.linspace`` over them, for
  any task.

A failure raises :class:`VisualLoadError` with the paths the stock answer names.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# TVQA frames are extracted at 3 fps (stock llava_vid's stamps for frame folders).
FRAME_FOLDER_FPS = 3
FRAME_FOLDER_MODES = ("stock", "sorted")


class VisualLoadError(RuntimeError):
    """A visual could not be turned into frames.

    paths: the files as the stock wrapper holds them at that point (a folder already globbed),
    which its "Video ... can not load" answer lists.
    """

    def __init__(self, message: str, paths: list):
        super().__init__(message)
        self.paths = list(paths)


@dataclass
class Frames:
    """frames: (T, H, W, 3) uint8; duration in seconds; times: the stamp of each frame."""

    frames: np.ndarray
    duration: float
    times: list

    def time_string(self) -> str:
        return ",".join(f"{t:.2f}s" for t in self.times)


def check_frame_folders(mode: str) -> str:
    if mode not in FRAME_FOLDER_MODES:
        raise ValueError(f"frame_folders={mode!r}: expected one of {FRAME_FOLDER_MODES} ('stock' "
                         "reproduces the stock wrappers, 'sorted' reads folders in name order)")
    return mode


def as_paths(visual) -> list:
    """``doc_to_visual``'s output as a non-empty list of path strings."""
    if isinstance(visual, (str, os.PathLike)):
        visual = [visual]
    if not visual or not all(isinstance(v, (str, os.PathLike)) for v in visual):
        raise TypeError(f"expected video paths from doc_to_visual, got {type(visual).__name__}: "
                        f"{str(visual)[:200]}")
    return [os.fspath(v) for v in visual]


def llava_vid_stamps(indices, total: int, average_fps: float, max_frames: int, video_fps: int,
                     force_sample: bool) -> list:
    """Stock ``llava_vid``'s frame stamps: on the 1-per-``1/video_fps``-second path frame ``i``
    is stamped ``i / round(average_fps / video_fps)`` (at 1 fps: ``i / round(fps)``, not the true
    time ``i / fps``); when it resamples uniformly (too many frames, or ``force_sample``),
    ``i / average_fps``."""
    step = round(average_fps / video_fps)
    if step < 1:  # stock: range() with step 0 raises, and the video "can not load"
        raise ValueError(f"average fps {average_fps} < video_fps / 2 = {video_fps / 2}: the stock "
                         "llava_vid cannot sample this video")
    resampled = force_sample or len(range(0, total, step)) > max_frames
    return [float(i) / (average_fps if resampled else step) for i in indices]


def read_image_files(paths: list, max_frames: int, rgb: bool = True) -> Frames:
    """A video given as image files: ``max_frames`` of them picked with ``np.linspace`` (repeats
    when there are fewer files), stamped at :data:`FRAME_FOLDER_FPS`.

    rgb: convert to RGB (stock ``llava_vid`` does not; TVQA's jpgs are RGB already).
    """
    from PIL import Image

    if not paths:
        raise FileNotFoundError("no frame images found for this video")
    indices = np.linspace(0, len(paths) - 1, max_frames, dtype=int).tolist()
    images = [Image.open(paths[i]) for i in indices]
    frames = np.stack([np.array(im.convert("RGB") if rgb else im) for im in images])
    return Frames(frames, len(paths) / FRAME_FOLDER_FPS, [i / FRAME_FOLDER_FPS for i in indices])


def sorted_frame_files(folder: str) -> list:
    """The image files of ``folder`` in name order."""
    return sorted(p for p in glob.glob(os.path.join(folder, "*"))
                  if p.lower().endswith(IMAGE_SUFFIXES))


def _guarded(read, paths: list) -> Frames:
    try:
        return read()
    except VisualLoadError:
        raise
    except Exception as error:  # decoders and PIL raise their own types; stock catches all
        raise VisualLoadError(f"{type(error).__name__}: {error}", paths) from error


def ov_frames(visual, max_frames: int, frame_folders: str = "stock") -> Frames:
    """Frames as stock ``llava_onevision`` reads them: the first path decoded as a video file,
    ``max_frames`` uniform frames."""
    from llava import video

    paths = as_paths(visual)
    if os.path.isdir(paths[0]):
        if check_frame_folders(frame_folders) == "sorted":
            return _guarded(lambda: read_image_files(sorted_frame_files(paths[0]), max_frames),
                            paths)
        raise VisualLoadError(f"{paths[0]} is a folder of frames: stock llava_onevision cannot "
                              "decode it and asks the question without the video "
                              "(frame_folders=sorted reads it)", paths)

    def read():
        got = video.read_frames(paths[0], lambda total, fps: video.uniform_indices(total,
                                                                                   max_frames))
        return Frames(got.frames, float(got.duration), [float(t) for t in got.timestamps])

    return _guarded(read, paths)


def llava_vid_frames(visual, max_frames: int, task: str, video_fps: int = 1,
                     force_sample: bool = False, frame_folders: str = "stock") -> Frames:
    """Frames as stock ``llava_vid`` reads them (see the module docstring for folders)."""
    from llava import video

    paths = as_paths(visual)
    if os.path.isdir(paths[0]):
        if check_frame_folders(frame_folders) == "sorted":
            files = sorted_frame_files(paths[0])
            return _guarded(lambda: read_image_files(files, max_frames), files)
        paths = glob.glob(paths[0] + "/*")  # stock: every file, file-system order
    if len(paths) == 1:
        def read():
            got = video.read_video_fps(paths[0], max_frames, fps=video_fps,
                                       force_sample=force_sample)
            return Frames(got.frames, float(got.duration), llava_vid_stamps(
                got.indices.tolist(), got.total_frames, got.average_fps, max_frames, video_fps,
                force_sample))

        return _guarded(read, paths)
    if frame_folders == "sorted":
        return _guarded(lambda: read_image_files(paths, max_frames), paths)
    if task == "seedbench":
        raise NotImplementedError("stock llava_vid hands seedbench's image list to the image "
                                  "processor as paths; this wrapper does not reproduce that")
    if "mvbench" in task:
        return _guarded(lambda: read_image_files(paths, max_frames, rgb=False), paths)
    raise VisualLoadError(f"task {task!r}: stock llava_vid reads a list of frames only for "
                          "tasks named *mvbench* (frame_folders=sorted reads it)", paths)
