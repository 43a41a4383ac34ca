"""What a reducer needs to know about a backbone: one declared table of facts per backbone.

Everything else that used to know "OV pools bilinear to 14, LLaVA-Video averages to 13 and adds a
newline per row" asks this table: the retention settings of :func:`aot.settings_for`,
the eval plugin's retention denominator, the efficiency benchmark's shapes, the demo's default
preset. Model code implements the path of :mod:`aot.video_path` for a backbone (an *adapter*); this
module only holds facts and is pure Python.

Facts hold for the backbone's published input size; a per-video grid (native resolution, a tiny
test model) is the adapter's business and travels with the encoded features.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import POOLING_MODES as POOLINGS
from .pooling import pooled_side

NEWLINE_RULES = ("one_token", "grid", "frame", "no_token")
POSITION_SCHEMES = ("1d", "mrope")


@dataclass(frozen=True)
class Backbone:
    """Declared facts of one video backbone.

    name: short name used everywhere (``aot.settings_for(name, r)``,
        ``--backbone``, eval model ids).
    title: human name.
    grid: (rows, cols) patch grid of one frame at the published input size.
    pooling: the backbone's native spatial pooling, as :attr:`aot.AOTConfig.pooling` spells it:
        ``"bilinear"`` (resize to ceil(side / 2)), ``"average"`` (2x2 average, floor(side / 2)),
        ``"none"`` (every patch token reaches the LLM).
    newline: where learned newline tokens go (``mm_newline_position`` of LLaVA-NeXT):
        ``"one_token"`` one after the whole video, ``"grid"`` one after every pooled row,
        ``"frame"`` one after every frame, ``"no_token"`` none.
    shallow_layer, deep_layer: default vision layers for AOT's local / global anchors.
    preset: the :data:`aot.config.PRESETS` name its released scripts use.
    frames: frames its evaluation protocol samples per video.
    prompt_template: conversation template of the chat prompt.
    positions: ``"1d"`` (positions count tokens, a reducer only shortens the sequence) or
        ``"mrope"`` (kept tokens carry their original (t, h, w) positions).
    """

    name: str
    title: str
    grid: tuple[int, int]
    pooling: str
    newline: str
    shallow_layer: int
    deep_layer: int
    preset: str
    frames: int
    prompt_template: str
    positions: str = "1d"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"Backbone {self.name!r}: pooling={self.pooling!r}, expected one of "
                             f"{POOLINGS}")
        if self.newline not in NEWLINE_RULES:
            raise ValueError(f"Backbone {self.name!r}: newline={self.newline!r}, expected one of "
                             f"{NEWLINE_RULES}")
        if self.positions not in POSITION_SCHEMES:
            raise ValueError(f"Backbone {self.name!r}: positions={self.positions!r}, expected "
                             f"one of {POSITION_SCHEMES}")

    def pooled_grid(self, grid: tuple[int, int] | int | None = None) -> tuple[int, int]:
        """(rows, cols) after the native pooling of a ``grid`` (default: the published one)."""
        rows, cols = _pair(self.grid if grid is None else grid)
        return pooled_side(rows, self.pooling), pooled_side(cols, self.pooling)

    def pooled_per_frame(self, grid: tuple[int, int] | int | None = None) -> int:
        """Tokens per frame the unreduced model feeds the LLM, newlines excluded (the retention
        denominator: 196 for LLaVA-OneVision, 169 for LLaVA-Video)."""
        rows, cols = self.pooled_grid(grid)
        return rows * cols

    def newlines(self, frames: int, grid: tuple[int, int] | int | None = None) -> int:
        """Newline tokens of a video of ``frames`` frames (they do not depend on the reducer:
        every pooled row keeps its newline even when none of its tokens survives)."""
        if self.newline == "one_token":
            return 1
        if self.newline == "grid":
            return frames * self.pooled_grid(grid)[0]
        if self.newline == "frame":
            return frames
        return 0


def _pair(grid) -> tuple[int, int]:
    if isinstance(grid, int):
        return grid, grid
    rows, cols = grid
    return int(rows), int(cols)


BACKBONES: dict[str, Backbone] = {
    "ov": Backbone("ov", "LLaVA-OneVision (lmms-lab llava-onevision-qwen2-*)", (27, 27),
                   pooling="bilinear", newline="one_token", shallow_layer=5, deep_layer=24,
                   preset="paper-ov-mvbench", frames=32, prompt_template="qwen_1_5"),
    "video": Backbone("video", "LLaVA-Video (lmms-lab LLaVA-Video-7B-Qwen2)", (27, 27),
                      pooling="average", newline="grid", shallow_layer=5, deep_layer=24,
                      preset="paper-video", frames=64, prompt_template="qwen_1_5"),
}


#: Backbones reached only through transformers' own classes (:mod:`aot_integrations.hf`); kept apart from
#: :data:`BACKBONES`, whose entries are also the ``llava/`` models, the benchmark's and the
#: demo's choices. transformers' LLaVA-OneVision class is the ``"ov"`` backbone.
HF_BACKBONES: dict[str, Backbone] = {
    # Qwen2.5-VL: the grid is the 2x2 merger's output (the LLM's tokens; 448 px frames give
    # 16x16), a "frame" is a temporal patch (two video frames), the merger is the pooling.
    # Layers 7 and 31 are the first and last full-attention blocks (fullatt_block_indexes);
    # windowed blocks only see 112-px windows (docs/knobs.md).
    "qwen2_5_vl": Backbone("qwen2_5_vl", "Qwen2.5-VL in transformers (Qwen/Qwen2.5-VL-*)",
                           (16, 16), pooling="none", newline="no_token", shallow_layer=7,
                           deep_layer=31, preset="paper-ov-mvbench", frames=16,
                           prompt_template="chat_template", positions="mrope"),
    # Qwen3-VL: a SigLIP-2-style 27-block ViT with full attention everywhere (the paper's 5 and
    # 24 keep their roles), 16-px patches, 2x2 merger (512 px frames give 16x16), DeepStack.
    "qwen3_vl": Backbone("qwen3_vl", "Qwen3-VL in transformers (Qwen/Qwen3-VL-*)", (16, 16),
                         pooling="none", newline="no_token", shallow_layer=5, deep_layer=24,
                         preset="paper-ov-mvbench", frames=16, prompt_template="chat_template",
                         positions="mrope"),
}


def get_backbone(name: str) -> Backbone:
    """The declared :class:`Backbone` called ``name`` (:data:`BACKBONES` or
    :data:`HF_BACKBONES`)."""
    facts = BACKBONES.get(name) or HF_BACKBONES.get(name)
    if facts is None:
        raise ValueError(f"unknown backbone {name!r}; expected one of "
                         f"{sorted(BACKBONES) + sorted(HF_BACKBONES)}")
    return facts


def backbone_for_pooling(pooling: str) -> Backbone:
    """The declared backbone whose native pooling is ``pooling`` (LLaVA configs name their
    backbone only through ``mm_spatial_pool_mode``)."""
    for backbone in BACKBONES.values():
        if backbone.pooling == pooling:
            return backbone
    raise ValueError(f"no declared backbone pools with {pooling!r}; known: "
                     f"{ {b.name: b.pooling for b in BACKBONES.values()} }")
