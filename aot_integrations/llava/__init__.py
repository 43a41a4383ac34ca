"""Our ``llava/`` models (LLaVA-OneVision, LLaVA-Video) on the one video path.

:mod:`.adapter` reads a LLaVA-NeXT config's layout and encodes, pools and packs a video;
:mod:`.packing` lays per-frame tokens and newlines out as the LLM reads them.
"""

from .adapter import (AOT_POOLING, LlavaLayout, LlavaVideoAdapter, backbone_name,
                      llava_config_fields, llava_layout)

__all__ = ["AOT_POOLING", "LlavaLayout", "LlavaVideoAdapter", "backbone_name",
           "llava_config_fields", "llava_layout"]
