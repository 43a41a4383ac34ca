"""Tiny video files for the tests: every test that needs a real mp4 writes it here."""

from __future__ import annotations

from pathlib import Path


def write_mp4(path, frames, rate, codec: str = "libx264", options: dict | None = None) -> str:
    """Encode ``frames`` ((H, W, 3) uint8 arrays, all of one size) at ``rate`` fps into ``path``.

    ``rate`` may be a Fraction (29.97 fps clips); ``options`` are the encoder's (e.g. lossless
    H.264 with ``{"crf": "0"}``). Returns the path as a string.
    """
    import av

    frames = list(frames)
    height, width = frames[0].shape[:2]
    with av.open(str(Path(path)), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if options:
            stream.options = options
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)
