"""Test helpers: tiny lmms-lab-layout checkpoints (from :mod:`aot_integrations.tiny`) and random pixels.

Test towers keep SigLIP-384's 27x27 patch grid with 4 published layers (3 used).
"""

from __future__ import annotations

import torch

from aot_integrations.tiny import config_dict, make_tokenizer, random_model
from aot_integrations.tiny import write_checkpoint as _write_checkpoint

__all__ = ["config_dict", "make_tokenizer", "random_model", "video_pixels", "write_checkpoint"]


def write_checkpoint(folder, backbone: str = "ov", seed: int = 0, shards: int = 2, **kwargs):
    """:func:`aot_integrations.tiny.write_checkpoint`, sharded in two files by default (as lmms-lab's)."""
    return _write_checkpoint(folder, backbone, seed, shards=shards, **kwargs)


def video_pixels(frames: int, seed: int = 0) -> torch.Tensor:
    """(frames, 3, 384, 384) preprocessed-looking pixels in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 3, 384, 384, generator=generator) * 2 - 1
