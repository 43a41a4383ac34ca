"""A tiny random-weight LLaVA-OneVision checkpoint, written on the fly in lmms-lab layout.

It lets the demo run offline on a laptop CPU with no download: the SigLIP tower keeps the real
27x27 patch grid and the real layer count (27 published, 26 used), so AOT's default anchor layers
(5 and 24), 9x9 windows and 14x14 bilinear pooling are exactly those of LLaVA-OV-7B; only the
widths are tiny. The weights are random: anchors follow the attention of a random tower and the
answer is gibberish. The checkpoint is loaded through ``llava.model.builder.load_pretrained_model``
like a real one.
"""

from __future__ import annotations

from llava.tiny import write_checkpoint

#: Printed wherever the tiny model's output appears.
RANDOM_LABEL = "tiny RANDOM-weight LLaVA-OV (not a trained model: its answer is meaningless)"

# 27 published layers (26 used), as SigLIP so400m: AOT's default layers 5 and 24 exist.
VISION_LAYERS = 27


def write_tiny_checkpoint(folder: str, seed: int = 0) -> str:
    """Write config.json, model.safetensors and the tokenizer into ``folder``; returns it."""
    write_checkpoint(folder, "ov", seed, vision_layers=VISION_LAYERS,
                     image_grid_pinpoints=[[384, 384]])
    return folder
