"""AOT: training-free visual-token reduction for video LLMs with local/global anchors and OT.

Entry point: :func:`reduce_video`. Configuration: :class:`AOTConfig` (presets, ablations);
:func:`settings_for` gives the AOTConfig of any backbone at a retention target. The stages are
importable on their own for model integrations.
"""

from .anchors import received_attention, select_anchors
from .budget import ExactPlan, exact_budget, plan_exact_budget
from .clips import dynamic_clips, fixed_clips, split_clips
from .config import ABLATIONS, PRESETS, AOTConfig
from .intra import aggregate_into_anchors
from .pooling import pool_at, pool_grid, pooled_side
from .reduce import IntraOutput, inter_stage, intra_stage, reduce_video
from .result import KIND_ANCHOR, KIND_FRAME, KIND_KEPT, ReducedVideo
from .settings import settings_for
from .sinkhorn import SinkhornResult, sinkhorn
from .temporal import temporal_merge

# Subpackages users reach as ``aot.reducers`` / ``aot.backbones`` / ``aot.video_path`` after ``import aot``.
from . import backbones, reducers, video_path  # noqa: E402  (they import the names above)

__version__ = "0.1.0"

__all__ = [
    "ABLATIONS", "AOTConfig", "ReducedVideo", "ExactPlan", "IntraOutput", "KIND_ANCHOR", "KIND_FRAME",
    "KIND_KEPT", "PRESETS", "SinkhornResult", "aggregate_into_anchors", "dynamic_clips",
    "exact_budget", "fixed_clips", "inter_stage", "intra_stage", "plan_exact_budget", "pool_at",
    "pool_grid", "pooled_side", "received_attention", "reduce_video", "select_anchors",
    "settings_for", "sinkhorn", "split_clips", "temporal_merge",
    "backbones", "reducers", "video_path",
]
