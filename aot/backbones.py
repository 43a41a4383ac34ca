"""Every fact of a video backbone that code outside its adapter needs: one :class:`Backbone`
record per backbone, kept in one registry (:func:`register_backbone`, :func:`get_backbone`).

The settings (:func:`aot.settings_for`), the eval plugin (model ids, prompts,
checkpoint checks), the eval scripts, the summary's titles and paper numbers, the efficiency
benchmark's shapes, the demo and the tiny test models all read these records, so adding a
backbone is one record plus one adapter (docs/backbones.md). An adapter (model code implementing
the path of :mod:`aot.video_path`) holds only model-specific code. This module is pure Python: no
model library, no lmms-eval.

Facts hold for the backbone's published input size; a per-video grid (native resolution, a tiny
test model) is the adapter's business and travels with the encoded features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional

from .config import POOLING_MODES as POOLINGS
from .pooling import pooled_side

NEWLINE_RULES = ("one_token", "grid", "frame", "no_token")
POSITION_SCHEMES = ("1d", "mrope")
#: Where a backbone's model code lives: this project's ``llava/`` models
#: (:mod:`aot_integrations.llava`) or transformers' own classes (:mod:`aot_integrations.hf`).
INTEGRATIONS = ("llava", "transformers")


@dataclass(frozen=True)
class EvalProtocol:
    """One way lmms-eval runs a backbone: a stock lmms-eval model and our plugin model over it.

    A backbone may have several (transformers' LLaVA-OneVision class runs the ``"ov"`` facts
    under the stock ``llava_hf`` protocol, beside the ``llava_onevision`` one).

    name: the eval scripts' and the summary's key (``scripts/eval_<script_prefix>_<bench>.sh``,
        ``--backbone`` of :mod:`aot_eval.preflight`, ``outputs/eval/<name>/``).
    stock_model: the stock lmms-eval model id; ours is :attr:`model_id` (``<stock>_aot``), and
        the tasks give ours the stock model's prompts.
    plugin, chat_plugin: dotted paths of our simple and chat lmms-eval classes (``None``: no chat
        class; lmms-eval then runs the simple one).
    checkpoint_type: ``config.json``'s ``model_type`` of the checkpoints the plugin loads.
    title: the summary's table heading.
    paper: the paper's scores, row (``"full"`` or a retention with two decimals) -> benchmark
        (and ``"avg"``) -> score in %; empty when the paper did not evaluate this protocol.
    paper_ablations: the paper's ablation averages at retention ``paper_ablation_row``,
        ablation name -> score.
    default_model: the checkpoint the scripts evaluate unless ``--model`` is given.
    script_prefix: the eval scripts' file-name prefix (default: ``name``).
    frames_key, default_frames: the stock class's frames-per-video key and the scripts' default.
    dtype_key, default_dtype: its weights-dtype key (``""``: fixed by the stock class) and default
        (``""``: the stock class's).
    pixels_key, default_pixels: its pixels-per-frame key (``""``: none) and the stock default.
    fps_key: its frame-rate sampling key (``""``: none).
    conv_template: LLaVA-NeXT conversation template (``""``: the checkpoint's chat template).
    paper_presets: benchmark -> the released preset the paper ran (empty: none published).
    table_retentions: the retention rows of a sweep's table.
    """

    name: str
    stock_model: str
    plugin: str
    checkpoint_type: str
    title: str
    default_model: str
    chat_plugin: Optional[str] = None
    paper: Mapping = field(default_factory=dict)
    paper_ablations: Mapping = field(default_factory=dict)
    paper_ablation_row: str = "0.10"
    script_prefix: str = ""
    frames_key: str = "max_frames_num"
    default_frames: int = 32
    dtype_key: str = "torch_dtype"
    default_dtype: str = "float16"
    pixels_key: str = ""
    default_pixels: str = ""
    fps_key: str = ""
    conv_template: str = ""
    paper_presets: Mapping = field(default_factory=dict)
    table_retentions: tuple = (0.25, 0.20, 0.15, 0.10)

    @property
    def model_id(self) -> str:
        """Our lmms-eval model id: the stock id + ``_aot``."""
        return f"{self.stock_model}_aot"

    @property
    def prefix(self) -> str:
        """The eval scripts' file-name prefix."""
        return self.script_prefix or self.name


@dataclass(frozen=True)
class Backbone:
    """Declared facts of one video backbone.

    name: short name used everywhere (``aot.settings_for(name, r)``, ``--backbone``,
        :class:`EvalProtocol` ``name`` of its first protocol).
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
    patch_merge: k when the processor's video grid (``video_grid_thw``) counts patches before a
        k x k spatial merge (Qwen: 2), 1 when it counts the tokens AOT sees; the serving count
        (``reduced_token_count``) divides the grid's rows and columns by it.
    integration: where its model code lives (:data:`INTEGRATIONS`): ``"llava"`` (our ``llava/``
        models; the benchmark's and the demo's random-weight models) or ``"transformers"``.
    bench_shapes: key of :data:`aot_bench.configs.SHAPE_TABLES` (the model shapes the efficiency
        benchmark builds), ``None``: not benchmarked.
    tiny: AOTConfig overrides that fit this backbone's tiny test model (``aot_integrations.tiny``).
    protocols: how lmms-eval runs it (:class:`EvalProtocol`), in the summary's order.
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
    patch_merge: int = 1
    integration: str = "transformers"
    bench_shapes: Optional[str] = None
    tiny: Mapping = field(default_factory=dict)
    protocols: tuple[EvalProtocol, ...] = ()

    def __post_init__(self) -> None:
        for label, value, allowed in (("pooling", self.pooling, POOLINGS),
                                      ("newline", self.newline, NEWLINE_RULES),
                                      ("positions", self.positions, POSITION_SCHEMES),
                                      ("integration", self.integration, INTEGRATIONS)):
            if value not in allowed:
                raise ValueError(f"Backbone {self.name!r}: {label}={value!r}, expected one of "
                                 f"{allowed}")
        if isinstance(self.patch_merge, bool) or not isinstance(self.patch_merge, int) \
                or self.patch_merge < 1:
            raise ValueError(f"Backbone {self.name!r}: patch_merge={self.patch_merge!r}, expected "
                             f"an integer >= 1")
        object.__setattr__(self, "tiny", MappingProxyType(dict(self.tiny)))

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


#: The paper's anchor layers and the depth they index: 5 and 24 of the 26 SigLIP layers the
#: LLaVA models use (docs/knobs.md, vision layers per backbone).
PAPER_LAYERS, PAPER_DEPTH = (5, 24), 26


def relative_layers(depth: int) -> tuple[int, int]:
    """(shallow, deep) at the paper's relative depth in a tower of ``depth`` blocks, rounded
    down: (5, 24) for 26 blocks (SigLIP in LLaVA-OneVision) and for 27 (Qwen3-VL)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth={depth!r}: expected the number of vision blocks, an integer >= 1")
    shallow, deep = PAPER_LAYERS
    return shallow * depth // PAPER_DEPTH, deep * depth // PAPER_DEPTH


def _pair(grid) -> tuple[int, int]:
    if isinstance(grid, int):
        return grid, grid
    rows, cols = grid
    return int(rows), int(cols)


#: Every registered backbone by name, in registration order (the summary's order).
BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Add ``backbone`` to :data:`BACKBONES`; every consumer knows it from then on. Its name and
    its protocols' names and model ids must be new (re-registering an equal record is a no-op,
    so a module that registers can be imported twice)."""
    if not isinstance(backbone, Backbone):
        raise TypeError(f"register_backbone takes a Backbone, got {type(backbone).__name__}")
    known = BACKBONES.get(backbone.name)
    if known == backbone:
        return known
    if known is not None:
        raise ValueError(f"backbone {backbone.name!r} is registered already with other facts")
    taken = {key for p in eval_protocols() for key in (p.name, p.model_id)}
    clash = sorted({key for p in backbone.protocols for key in (p.name, p.model_id)} & taken)
    if clash:
        raise ValueError(f"backbone {backbone.name!r}: protocol names / model ids {clash} are "
                         "registered already")
    BACKBONES[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    """The registered :class:`Backbone` called ``name``."""
    facts = BACKBONES.get(name)
    if facts is None:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return facts


def backbone_names(integration: Optional[str] = None) -> list[str]:
    """Registered backbone names (of one ``integration`` when given), in registration order."""
    return [b.name for b in BACKBONES.values()
            if integration is None or b.integration == integration]


def eval_protocols() -> list[EvalProtocol]:
    """Every backbone's eval protocols: each backbone's first (its own) in registration order,
    then the second ones, and so on (the summary's table order)."""
    depth = max((len(b.protocols) for b in BACKBONES.values()), default=0)
    return [b.protocols[i] for i in range(depth) for b in BACKBONES.values()
            if i < len(b.protocols)]


def get_protocol(name: str) -> EvalProtocol:
    """The eval protocol called ``name`` (the eval scripts' backbone name)."""
    for protocol in eval_protocols():
        if protocol.name == name:
            return protocol
    raise ValueError(f"unknown backbone {name!r}; expected one of "
                     f"{sorted(p.name for p in eval_protocols())}")


def backbone_of_protocol(name: str) -> Backbone:
    """The backbone whose facts the eval protocol ``name`` runs (``llava_hf`` -> ``ov``)."""
    get_protocol(name)  # an unknown name: one clear error
    return next(b for b in BACKBONES.values() if any(p.name == name for p in b.protocols))


def backbone_for_pooling(pooling: str) -> Backbone:
    """The ``llava`` backbone whose native pooling is ``pooling`` (LLaVA configs name their
    backbone only through ``mm_spatial_pool_mode``)."""
    llava = [b for b in BACKBONES.values() if b.integration == "llava"]
    for backbone in llava:
        if backbone.pooling == pooling:
            return backbone
    raise ValueError(f"no declared backbone pools with {pooling!r}; known: "
                     f"{ {b.name: b.pooling for b in llava} }")


def _row(mvb, ego, lvb, vmme, avg):
    return {"mvbench": mvb, "egoschema": ego, "longvideobench": lvb, "videomme": vmme, "avg": avg}


# ------------------------------------------------------------------ the declared backbones
# The paper's numbers (lmms-eval, greedy, batch 1) are those of its tables; the paper evaluated
# LLaVA-OneVision-7B at 32 frames and LLaVA-Video-7B-Qwen2 at 64 frames only.
_OV_PRESETS = {"mvbench": "paper-ov-mvbench", "egoschema": "paper-ov-mvbench",
               "longvideobench": "paper-ov-videomme", "videomme": "paper-ov-videomme"}

register_backbone(Backbone(
    "ov", "LLaVA-OneVision (lmms-lab llava-onevision-qwen2-*)", (27, 27), pooling="bilinear",
    newline="one_token", shallow_layer=5, deep_layer=24, preset="paper-ov-mvbench", frames=32,
    prompt_template="qwen_1_5", integration="llava", bench_shapes="llava",
    tiny={"anchors_per_frame": 12, "window": 3, "shallow_layer": 1, "deep_layer": 3},
    protocols=(
        EvalProtocol(
            "ov", "llava_onevision", "aot_eval.lmms_models.LlavaOneVisionAOT",
            checkpoint_type="llava_qwen", title="LLaVA-OneVision-7B (32 frames)",
            default_model="lmms-lab/llava-onevision-qwen2-7b-ov", conv_template="qwen_1_5",
            paper_presets=_OV_PRESETS,
            paper={"full": _row(58.3, 60.4, 56.4, 58.6, 58.4),
                   "0.25": _row(58.7, 61.3, 56.3, 57.5, 58.5),
                   "0.20": _row(58.1, 61.3, 56.2, 57.2, 58.2),
                   "0.15": _row(57.8, 61.3, 55.2, 56.6, 57.7),
                   "0.10": _row(57.0, 60.6, 54.2, 56.1, 57.0)},
            # Table 3: averages of the four benchmarks at 10% retention
            paper_ablations={"no-local": 56.6, "no-global": 55.4, "prune-only": 56.4,
                             "no-intra-ot": 56.3, "no-inter": 56.4, "cosine-merge": 52.4,
                             "random-anchors": 55.1}),
        # transformers' LlavaOnevision class on the same weights, run with the stock llava_hf
        # protocol (not the paper's): no paper numbers. No chat class: stock chat llava_hf
        # passes images=[] to the processor on every video doc.
        EvalProtocol(
            "llava_hf", "llava_hf", "aot_eval.hf_models.LlavaHfAOT",
            checkpoint_type="llava_onevision",
            title="LLaVA-OneVision in transformers (stock lmms-eval llava_hf protocol)",
            default_model="llava-hf/llava-onevision-qwen2-7b-ov-hf", dtype_key="dtype",
            default_dtype="", paper_presets=_OV_PRESETS),
    )))

register_backbone(Backbone(
    "video", "LLaVA-Video (lmms-lab LLaVA-Video-7B-Qwen2)", (27, 27), pooling="average",
    newline="grid", shallow_layer=5, deep_layer=24, preset="paper-video", frames=64,
    prompt_template="qwen_1_5", integration="llava",
    bench_shapes="llava",
    protocols=(EvalProtocol(
        "video", "llava_vid", "aot_eval.lmms_models.LlavaVidAOT", checkpoint_type="llava_qwen",
        title="LLaVA-Video-7B (64 frames)", default_model="lmms-lab/LLaVA-Video-7B-Qwen2",
        script_prefix="vid", default_frames=64, conv_template="qwen_1_5",
        paper_presets=dict.fromkeys(_OV_PRESETS, "paper-video"), table_retentions=(0.25, 0.15),
        paper={"full": _row(60.4, 57.2, 58.9, 64.3, 60.2),
               "0.25": _row(58.8, 55.4, 56.2, 62.4, 58.2),
               "0.15": _row(57.8, 55.2, 55.0, 62.0, 57.5)}),)))

# Qwen2.5-VL: the grid is the 2x2 merger's output (the LLM's tokens; 448 px frames give 16x16),
# a "frame" is a temporal patch (two video frames), the merger is the pooling. Layers 7 and 31
# are the first and last full-attention blocks (fullatt_block_indexes); windowed blocks only see
# 112-px windows (docs/knobs.md).
register_backbone(Backbone(
    "qwen2_5_vl", "Qwen2.5-VL in transformers (Qwen/Qwen2.5-VL-*)", (16, 16), pooling="none",
    newline="no_token", shallow_layer=7, deep_layer=31, preset="paper-ov-mvbench", frames=16,
    prompt_template="chat_template", positions="mrope", patch_merge=2, bench_shapes="qwen_vit",
    tiny={"anchors_per_frame": 8, "window": 3, "shallow_layer": 1, "deep_layer": 3},
    protocols=(EvalProtocol(
        "qwen2_5_vl", "qwen2_5_vl", "aot_eval.hf_models.Qwen2_5_VLAOT",
        chat_plugin="aot_eval.hf_models.Qwen2_5_VLChatAOT", checkpoint_type="qwen2_5_vl",
        title="Qwen2.5-VL (stock lmms-eval qwen2_5_vl protocol)",
        default_model="Qwen/Qwen2.5-VL-7B-Instruct", frames_key="max_num_frames", dtype_key="",
        default_dtype="", pixels_key="max_pixels", default_pixels="1605632"),)))

# Qwen3-VL: a SigLIP-2-style 27-block ViT with full attention everywhere (the paper's 5 and 24
# keep their roles), 16-px patches, 2x2 merger (512 px frames give 16x16), DeepStack.
register_backbone(Backbone(
    "qwen3_vl", "Qwen3-VL in transformers (Qwen/Qwen3-VL-*)", (16, 16), pooling="none",
    newline="no_token", shallow_layer=5, deep_layer=24, preset="paper-ov-mvbench", frames=16,
    prompt_template="chat_template", positions="mrope", patch_merge=2,
    tiny={"anchors_per_frame": 8, "window": 3, "shallow_layer": 1, "deep_layer": 3},
    protocols=(EvalProtocol(
        "qwen3_vl", "qwen3_vl", "aot_eval.hf_models.Qwen3_VLAOT",
        chat_plugin="aot_eval.hf_models.Qwen3_VLChatAOT", checkpoint_type="qwen3_vl",
        title="Qwen3-VL (stock lmms-eval qwen3_vl protocol)",
        default_model="Qwen/Qwen3-VL-8B-Instruct", frames_key="max_num_frames", dtype_key="",
        default_dtype="", pixels_key="max_pixels", default_pixels="1605632", fps_key="fps"),)))
