"""Reading frames from video files the way the two backbones' evaluation wrappers sample them.

* LLaVA-OneVision: ``num_frames`` frames uniformly spread over the video
  (``np.linspace(0, total - 1, num_frames)``, as lmms-eval's ``llava_onevision``).
* LLaVA-Video: one frame per second (every ``round(avg_fps / fps)``-th frame); if that gives more
  than ``max_frames`` frames (or ``force_sample``), ``max_frames`` uniform frames instead
  (lmms-eval's ``llava_vid``). Short videos therefore give fewer frames.

Decoding uses decord when it is installed (the wrappers' default) and PyAV otherwise; both give
(N, H, W, 3) uint8 RGB arrays. An unreadable or corrupt file raises :class:`VideoReadError`
naming the file and the backend.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np

BACKENDS = ("auto", "decord", "pyav")


class VideoReadError(RuntimeError):
    """A video file could not be opened or decoded."""


@dataclass
class VideoFrames:
    """Frames read from one video.

    frames: (N, H, W, 3) uint8 RGB.
    indices: (N,) frame indices in the file.
    timestamps: (N,) seconds of each frame (index / average fps).
    duration: length of the video in seconds (total frames / average fps).
    total_frames: frames in the file; average_fps: its average frame rate.
    """

    frames: np.ndarray
    indices: np.ndarray
    timestamps: np.ndarray
    duration: float
    total_frames: int
    average_fps: float

    def time_string(self) -> str:
        """``"0.00s,1.00s,..."``: the frames' times in seconds (lmms-eval's llava_vid writes
        slightly different stamps into its prompt; see ``aot_eval.video``)."""
        return ",".join(f"{t:.2f}s" for t in self.timestamps)


def uniform_indices(total: int, num_frames: int) -> np.ndarray:
    """(num_frames,) int indices spread uniformly over ``total`` frames (ends included)."""
    _check_count(num_frames, "num_frames")
    return np.linspace(0, total - 1, num_frames, dtype=int)


def fps_indices(total: int, average_fps: float, max_frames: int, fps: float = 1.0,
                force_sample: bool = False) -> np.ndarray:
    """Indices of 1-per-``1/fps``-second sampling, capped at ``max_frames`` uniform frames."""
    _check_count(max_frames, "max_frames")
    if not fps > 0:
        raise ValueError(f"fps={fps!r}: expected a positive sampling rate")
    step = max(int(round(average_fps / fps)), 1)
    indices = np.arange(0, total, step, dtype=int)
    if len(indices) > max_frames or force_sample:
        indices = uniform_indices(total, max_frames)
    return indices


def read_video(path: str, num_frames: int = 32, *, backend: str = "auto") -> np.ndarray:
    """(num_frames, H, W, 3) uint8: uniformly sampled frames (LLaVA-OneVision's sampling)."""
    _check_count(num_frames, "num_frames")
    return read_frames(path, lambda total, fps: uniform_indices(total, num_frames),
                       backend=backend).frames


def read_video_fps(path: str, max_frames: int = 64, *, fps: float = 1.0,
                   force_sample: bool = False, backend: str = "auto") -> VideoFrames:
    """Frames at ``fps`` per second capped at ``max_frames`` (LLaVA-Video's sampling)."""
    fps_indices(1, 1.0, max_frames, fps)  # validates the arguments before any decoding
    return read_frames(
        path, lambda total, avg: fps_indices(total, avg, max_frames, fps, force_sample),
        backend=backend)


def read_frames(path: str, choose, *, backend: str = "auto") -> VideoFrames:
    """Decode the frames ``choose(total_frames, average_fps) -> indices`` picks.

    Raises:
        FileNotFoundError: no such file.
        VideoReadError: the file cannot be opened or decoded, or holds no video frames.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file {path!r} does not exist")
    backend = resolve_backend(backend)
    reader = _read_decord if backend == "decord" else _read_pyav
    try:
        return reader(path, choose)
    except VideoReadError:
        raise
    except Exception as error:  # decoders raise their own exception types
        raise VideoReadError(f"cannot read video {path!r} with {backend}: "
                             f"{type(error).__name__}: {error}") from error


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"decord"`` if importable, else ``"pyav"``; checks explicit choices."""
    if backend not in BACKENDS:
        raise ValueError(f"video backend {backend!r}: expected one of {BACKENDS}")
    if backend == "auto":
        return "decord" if importlib.util.find_spec("decord") is not None else "pyav"
    module = "decord" if backend == "decord" else "av"
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"video backend {backend!r} needs the {module!r} package")
    return backend


def _read_decord(path: str, choose) -> VideoFrames:
    from decord import VideoReader, cpu

    reader = VideoReader(path, ctx=cpu(0), num_threads=1)
    total = len(reader)
    if total == 0:
        raise VideoReadError(f"video {path!r} holds no frames")
    average_fps = float(reader.get_avg_fps())
    indices = np.asarray(choose(total, average_fps), dtype=int)
    frames = reader.get_batch(indices.tolist()).asnumpy()
    return _frames(frames, indices, total, average_fps)


def _read_pyav(path: str, choose) -> VideoFrames:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise VideoReadError(f"{path!r} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        average_fps = float(rate) if rate else 0.0
        total = stream.frames
    if total <= 0:  # some containers do not store the count: count packets instead
        with av.open(path) as container:
            total = sum(1 for p in container.demux(video=0) if p.size > 0)
    if total <= 0:
        raise VideoReadError(f"video {path!r} holds no frames")
    if average_fps <= 0:
        raise VideoReadError(f"video {path!r} has no frame rate")
    indices = np.asarray(choose(total, average_fps), dtype=int)
    decoded = _decode_pyav(path, indices)
    if len(decoded) < int(indices.max()) + 1 and len(decoded) < total:
        # The stored count overestimated the decodable frames: sample again on the true count.
        total = _count_decodable(path)
        indices = np.asarray(choose(total, average_fps), dtype=int)
        decoded = _decode_pyav(path, indices)
    frames = np.stack([decoded[i] for i in indices.tolist()])
    return _frames(frames, indices, total, average_fps)


def _decode_pyav(path: str, indices: np.ndarray) -> dict[int, np.ndarray]:
    """Decode sequentially, keeping the wanted frames (a frame may be wanted several times)."""
    import av

    wanted = set(indices.tolist())
    last = max(wanted)
    out: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return out


def _count_decodable(path: str) -> int:
    import av

    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def _frames(frames: np.ndarray, indices: np.ndarray, total: int, fps: float) -> VideoFrames:
    return VideoFrames(frames=frames, indices=indices, timestamps=indices / fps,
                       duration=total / fps, total_frames=int(total), average_fps=float(fps))


def _check_count(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
