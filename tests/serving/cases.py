"""The identity cases shared by both sides (pure numpy): vLLM in .venv-serve and transformers +
aot_integrations.hf in .venv, which pin different transformers versions and so run apart."""

from __future__ import annotations

import numpy as np

PROMPT = "What happens in the video?"
#: Greedy tokens generated per case.
NEW_TOKENS = 8
#: name -> (frames, height, width, retention or None for unreduced, reducer)
CASES = {
    "16x112x112-r0.25": (16, 112, 112, 0.25, "aot"),
    "16x112x112-r0.5": (16, 112, 112, 0.5, "aot"),
    "8x112x168-r0.3": (8, 112, 168, 0.3, "aot"),
    "4x168x112-r0.2-uniform": (4, 168, 112, 0.2, "uniform"),
    "8x112x112-r0.3-flashvid": (8, 112, 112, 0.3, "flashvid"),
    "16x112x112-full": (16, 112, 112, None, "aot"),
}
#: Qwen3-VL cases (16 px patches: the processor resizes frames to multiples of 32 px, 112 ->
#: 128; one piece of 4x4 merged tokens per two frames). From 18 frames on, the clips hold two
#: pieces, so keyframes emit their survivors twice and later frames their keep; at 24 frames
#: and r = 0.1 the later frames keep nothing (empty pieces).
QWEN3_CASES = {
    "q3-20x112x112-r0.25": (20, 112, 112, 0.25, "aot"),
    "q3-20x112x112-r0.5": (20, 112, 112, 0.5, "aot"),
    "q3-24x112x168-r0.1": (24, 112, 168, 0.1, "aot"),
    "q3-8x112x112-r0.3": (8, 112, 112, 0.3, "aot"),
    "q3-4x168x112-r0.3-uniform": (4, 168, 112, 0.3, "uniform"),
    "q3-6x112x112-r0.4-dycoke": (6, 112, 112, 0.4, "dycoke"),
    "q3-8x112x112-r0.3-dycoke-ttm": (8, 112, 112, 0.3, "dycoke-ttm"),
    "q3-16x112x112-full": (16, 112, 112, None, "aot"),
}
#: LLaVA-OneVision cases (its tiny tower is built for 112 px square frames: 8x8 patches, 4x4
#: pooled tokens, one newline after the video): name -> (frames, retention or None, reducer).
OV_CASES = {
    "ov-8-r0.25": (8, 0.25, "aot"),
    "ov-8-r0.5-visionzip": (8, 0.5, "visionzip"),
    "ov-4-r0.3": (4, 0.3, "aot"),
    "ov-8-full": (8, None, "aot"),
}
OV_FRAME = 112


def ov_frames(name: str) -> np.ndarray:
    """(T, 112, 112, 3) uint8 frames of LLaVA-OneVision case ``name`` (already at the tower's
    size, so neither processor resizes them)."""
    count = OV_CASES[name][0]
    rng = np.random.default_rng(sum(map(ord, name)))
    low = rng.integers(0, 256, size=(count, 5, 5, 3))
    up = low.repeat(28, axis=1).repeat(28, axis=2)[:, :OV_FRAME, :OV_FRAME]
    return np.clip(up + rng.integers(-20, 21, size=up.shape), 0, 255).astype(np.uint8)


#: The server's AOT knobs for the tiny checkpoint (frames of 4x4 to 6x6 merged tokens, smaller
#: than the 16x16 the default anchor count is made for); the transformers side gets the same.
SERVER_AOT_CONFIG = {"anchors_per_frame": 8, "window": 3}


def frames(name: str) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of case ``name``: smooth random blobs (a seed per case), so the
    vision tower's attention has structure to rank."""
    count, height, width = {**CASES, **QWEN3_CASES}[name][:3]
    rng = np.random.default_rng(sum(map(ord, name)))
    low = rng.integers(0, 256, size=(count, height // 28 + 1, width // 28 + 1, 3))
    up = low.repeat(28, axis=1).repeat(28, axis=2)[:, :height, :width]
    noise = rng.integers(-20, 21, size=up.shape)
    return np.clip(up + noise, 0, 255).astype(np.uint8)


#: An image request (no video): a portrait 168x112 picture, 6x4 merged tokens. The tiny chat
#: template knows videos only, so both sides take this prompt as written.
IMAGE_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the "
                "picture?<|im_end|>\n<|im_start|>assistant\n")


#: Qwen3-VL: an image (the first frame of case ``QWEN3_IMAGE_VIDEO``: square, where vLLM's and
#: transformers' towers agree within 1e-4), then that case's video at its retention.
QWEN3_IMAGE_VIDEO_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                            "<|vision_start|><|video_pad|><|vision_end|>What happens after the "
                            "picture?<|im_end|>\n<|im_start|>assistant\n")
QWEN3_IMAGE_VIDEO = "q3-20x112x112-r0.25"


def image() -> np.ndarray:
    """(168, 112, 3) uint8: the first frame of a portrait case."""
    return frames("4x168x112-r0.2-uniform")[0]


def metadata(count: int, fps: float = 2.0) -> dict:
    """The video metadata vLLM needs with pre-decoded frames (all frames kept, no resampling)."""
    return {"total_num_frames": count, "fps": fps, "duration": count / fps,
            "video_backend": "opencv", "frames_indices": list(range(count)),
            "do_sample_frames": False}
