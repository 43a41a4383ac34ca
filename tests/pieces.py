"""Qwen3-VL prompts as pieces (pure Python): each frame's video placeholders sit between a
``<|vision_start|>`` and a ``<|vision_end|>``, after that frame's timestamp."""

from __future__ import annotations


def piece_lengths(ids, vision_start: int, vision_end: int, video_token: int) -> list[int]:
    """The video tokens between each ``vision_start`` and the next ``vision_end`` of ``ids``
    (a list or a 1-D tensor), in order; a piece may hold none (a frame that kept nothing, or
    the prompt's own marker before the timestamps)."""
    counts, inside = [], False
    for token in (ids.tolist() if hasattr(ids, "tolist") else ids):
        if token == vision_start:
            inside = True
            counts.append(0)
        elif token == vision_end:
            inside = False
        elif inside and token == video_token:
            counts[-1] += 1
    return counts
