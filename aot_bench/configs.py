"""Model shapes for the benchmark: the real 7B configs and reduced presets, as llava_qwen dicts.

LLaVA-OneVision-7B and LLaVA-Video-7B-Qwen2 share one architecture (Qwen2-7B LM, SigLIP
so400m-patch14-384 tower with its last layer dropped, mlp2x_gelu projector); they differ only in
pooling and newline packing. The presets:

* ``7b``: the published shapes (what a GPU run uses).
* ``cpu``: reduced widths and depths so that the whole frame/retention grid runs on a laptop CPU
  in minutes (the report states the shapes). Patch grid (27x27), pooling and token counts are the
  real ones, so visual token counts and retention are exactly those of the 7B models.
* ``tiny``: for tests (seconds).

Qwen2.5-VL-7B (:data:`QWEN_SHAPES`, the backbone whose ``bench_shapes`` is ``qwen_vit``, run through transformers' own class
and :mod:`aot_integrations.hf`) has the same three presets. Its 7B values: transformers 5.24
``Qwen2_5_VLVisionConfig`` defaults (depth 32, MLP 3420, 16 heads, 14-px patches, temporal patch
2, 2x2 merger, 112-px windows, full attention in blocks 7/15/23/31, out_hidden 3584) except the
tower width, 1280 in the published Qwen/Qwen2.5-VL-7B-Instruct config (transformers' default is
3584): its module tree shows ``Conv3d(3, 1280, kernel_size=(2, 14, 14))``, ``qkv 1280 -> 3840``,
``merger 5120 -> 5120 -> 3584``. The language model is Qwen2.5-7B, the same widths as the
Qwen2-7B above (28 layers x 3584, 28 heads, 4 KV heads, MLP 18944, vocab 152064), with a
128000-token context (max_position_embeddings of the published config).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aot.backbones import BACKBONES as ALL_BACKBONES

#: The backbones of this project's ``llava/`` models (the benchmark's random-weight LLaVA shapes).
BACKBONES = {name: facts for name, facts in ALL_BACKBONES.items() if facts.integration == "llava"}
from aot_integrations.llava import llava_config_fields

#: Frames each backbone is evaluated at in the paper (the reference point of the plots).
PAPER_FRAMES = {name: facts.frames for name, facts in BACKBONES.items()}


@dataclass(frozen=True)
class Shape:
    """Widths and depths of one model preset.

    lm_*: Qwen2 language model (layers, hidden, heads, key/value heads, MLP width, vocabulary).
    vision_*: SigLIP tower; ``vision_layers`` counts the layers LLaVA *uses* (published - 1).
    shallow_layer / deep_layer: AOT's attention layers for this tower depth.
    max_context: the LLM's context (max_position_embeddings / tokenizer_model_max_length).
    """

    name: str
    lm_layers: int
    lm_hidden: int
    lm_heads: int
    lm_kv_heads: int
    lm_intermediate: int
    vocab: int
    vision_layers: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    shallow_layer: int
    deep_layer: int
    max_context: int = 32768

    @property
    def lm_head_dim(self) -> int:
        return self.lm_hidden // self.lm_heads

    def describe(self) -> str:
        """One line naming every width (for reports)."""
        return (f"LM {self.lm_layers} layers x hidden {self.lm_hidden} ({self.lm_heads} heads, "
                f"{self.lm_kv_heads} KV heads, MLP {self.lm_intermediate}, vocab {self.vocab}); "
                f"vision {self.vision_layers} layers x {self.vision_hidden} ({self.vision_heads} "
                f"heads, MLP {self.vision_intermediate}); AOT layers {self.shallow_layer}/"
                f"{self.deep_layer}; context {self.max_context}")

    def to_dict(self) -> dict:
        return asdict(self)


SHAPES = {
    "7b": Shape("7b", lm_layers=28, lm_hidden=3584, lm_heads=28, lm_kv_heads=4,
                lm_intermediate=18944, vocab=152064, vision_layers=26, vision_hidden=1152,
                vision_heads=16, vision_intermediate=4304, shallow_layer=5, deep_layer=24),
    # LM at 1/14 width and 2 of 28 layers; tower at 1/18 width, 1 head, 3 of 26 layers (AOT's
    # layers become 0 and 1, the deep one again second-to-last): the full grid (2 backbones x 4
    # frame counts x 5 retentions) runs on 2 CPU cores in about ten minutes.
    "cpu": Shape("cpu", lm_layers=2, lm_hidden=256, lm_heads=4, lm_kv_heads=1,
                 lm_intermediate=1352, vocab=19008, vision_layers=3, vision_hidden=64,
                 vision_heads=1, vision_intermediate=239, shallow_layer=0, deep_layer=1),
    "tiny": Shape("tiny", lm_layers=2, lm_hidden=32, lm_heads=4, lm_kv_heads=2,
                  lm_intermediate=64, vocab=512, vision_layers=3, vision_hidden=16,
                  vision_heads=2, vision_intermediate=32, shallow_layer=1, deep_layer=2),
}


@dataclass(frozen=True)
class QwenShape(Shape):
    """A Qwen2.5-VL preset: the :class:`Shape` fields (``vision_layers`` = ViT blocks, all used)
    plus the ViT's windowing and patching facts.

    fullatt_blocks: blocks with full attention per temporal patch (the others attend inside
        ``window_size``-px windows). patch_size, temporal_patch_size, merge_size: 14-px patches
        of two frames, merged 2x2 into one LLM token.
    """

    fullatt_blocks: tuple[int, ...] = (7, 15, 23, 31)
    window_size: int = 112
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2

    def describe(self) -> str:
        return (super().describe() + f"; ViT full attention in blocks {list(self.fullatt_blocks)}"
                f", {self.window_size}-px windows elsewhere, {self.patch_size}-px patches x "
                f"{self.temporal_patch_size} frames, {self.merge_size}x{self.merge_size} merger")


QWEN_SHAPES = {
    "7b": QwenShape("7b", lm_layers=28, lm_hidden=3584, lm_heads=28, lm_kv_heads=4,
                    lm_intermediate=18944, vocab=152064, vision_layers=32, vision_hidden=1280,
                    vision_heads=16, vision_intermediate=3420, shallow_layer=7, deep_layer=31,
                    max_context=128000),
    # LM as the llava ``cpu`` preset; ViT at 1/16 width, 4 of 32 blocks with full attention in
    # 1 and 3 (AOT's layers, the first and last full-attention blocks as in 7B's 7 / 31).
    "cpu": QwenShape("cpu", lm_layers=2, lm_hidden=256, lm_heads=4, lm_kv_heads=1,
                     lm_intermediate=1352, vocab=19008, vision_layers=4, vision_hidden=80,
                     vision_heads=1, vision_intermediate=214, shallow_layer=1, deep_layer=3,
                     max_context=128000, fullatt_blocks=(1, 3)),
    "tiny": QwenShape("tiny", lm_layers=2, lm_hidden=32, lm_heads=4, lm_kv_heads=2,
                      lm_intermediate=64, vocab=512, vision_layers=4, vision_hidden=32,
                      vision_heads=2, vision_intermediate=64, shallow_layer=1, deep_layer=3,
                      max_context=128000, fullatt_blocks=(1, 3)),
}

#: A backbone record's ``bench_shapes`` -> its presets: the LLaVA models share :data:`SHAPES`,
#: transformers' windowed-ViT Qwen model has :data:`QWEN_SHAPES`.
SHAPE_TABLES = {"llava": SHAPES, "qwen_vit": QWEN_SHAPES}

#: The ``bench_shapes`` of the backbones the benchmark runs through transformers' own windowed-ViT
#: class (Qwen2.5-VL architecture, :data:`QWEN_SHAPES`) and :mod:`aot_integrations.hf`.
QWEN_VIT = "qwen_vit"


def bench_shapes_of(backbone: str):
    """The registered ``backbone``'s ``bench_shapes`` (a key of :data:`SHAPE_TABLES`); None for a
    backbone that is not benchmarked or not registered (an old report's name)."""
    facts = ALL_BACKBONES.get(backbone)
    return None if facts is None else facts.bench_shapes


def hf_bench_backbones() -> tuple[str, ...]:
    """Registered backbones benchmarked on the :data:`QWEN_VIT` shapes (transformers' class),
    in registration order; read at call time, so a backbone registered later is included."""
    return tuple(name for name in ALL_BACKBONES if bench_shapes_of(name) == QWEN_VIT)



def get_shape(name: str, backbone: str = "ov") -> Shape:
    """The preset ``name`` (``7b``, ``cpu``, ``tiny``) of ``backbone``'s architecture (its
    record's ``bench_shapes``, a key of :data:`SHAPE_TABLES`), or a ValueError."""
    benched = {b: f.bench_shapes for b, f in ALL_BACKBONES.items() if f.bench_shapes}
    if backbone not in benched:
        raise ValueError(f"backbone {backbone!r} has no benchmark shapes; expected one of "
                         f"{sorted(benched)}")
    table = SHAPE_TABLES[benched[backbone]]
    if name not in table:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(table)}")
    return table[name]


def llava_config_dict(shape: Shape, backbone: str) -> dict:
    """An lmms-lab ``config.json`` (model_type ``llava_qwen``) for ``shape`` and ``backbone``.

    The 7B values are those of lmms-lab/llava-onevision-qwen2-7b-ov and LLaVA-Video-7B-Qwen2
    (Qwen2-7B: rope_theta 1e6, rms_norm_eps 1e-6, untied embeddings); the tower is described by a
    ``vision_config`` dict with the *published* layer count (LLaVA drops the last layer).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
    config = {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen",
        "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": shape.lm_hidden,
        "intermediate_size": shape.lm_intermediate, "num_attention_heads": shape.lm_heads,
        "num_hidden_layers": shape.lm_layers, "num_key_value_heads": shape.lm_kv_heads,
        "max_position_embeddings": shape.max_context, "max_window_layers": shape.lm_layers,
        "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": shape.max_context, "use_sliding_window": False,
        "tie_word_embeddings": False, "vocab_size": shape.vocab, "use_cache": True,
        "torch_dtype": "bfloat16", "image_aspect_ratio": "anyres_max_9",
        "mm_hidden_size": shape.vision_hidden, "mm_patch_merge_type": "spatial_unpad",
        "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "mm_spatial_pool_stride": 2, "tokenizer_model_max_length": shape.max_context,
        "tokenizer_padding_side": "right",
        "vision_config": {"hidden_size": shape.vision_hidden,
                          "intermediate_size": shape.vision_intermediate,
                          "num_hidden_layers": shape.vision_layers + 1,
                          "num_attention_heads": shape.vision_heads},
    }
    config.update(llava_config_fields(backbone))
    return config


def shape_from_config(config, name: str = "checkpoint") -> Shape:
    """A :class:`Shape` read from a loaded llava_qwen config (for real checkpoints)."""
    from llava.model.vision import build_vision_config

    vision = build_vision_config(config)
    layers = vision.num_hidden_layers
    return Shape(name, lm_layers=config.num_hidden_layers, lm_hidden=config.hidden_size,
                 lm_heads=config.num_attention_heads,
                 lm_kv_heads=getattr(config, "num_key_value_heads", config.num_attention_heads),
                 lm_intermediate=config.intermediate_size, vocab=config.vocab_size,
                 vision_layers=layers, vision_hidden=vision.hidden_size,
                 vision_heads=vision.num_attention_heads,
                 vision_intermediate=vision.intermediate_size,
                 shallow_layer=min(5, layers - 1), deep_layer=max(0, layers - 2),
                 max_context=int(getattr(config, "tokenizer_model_max_length", None)
                                 or config.max_position_embeddings))


#: Qwen2.5-VL's special token ids (Qwen/Qwen2.5-VL-7B-Instruct's tokenizer); presets whose
#: vocabulary is smaller take the last four ids instead.
QWEN_TOKEN_IDS = {"vision_start_token_id": 151652, "vision_end_token_id": 151653,
                  "image_token_id": 151655, "video_token_id": 151656}


def qwen_token_ids(shape: QwenShape) -> dict[str, int]:
    """The special token ids a :func:`qwen_config` of ``shape`` uses."""
    if shape.vocab > max(QWEN_TOKEN_IDS.values()):
        return dict(QWEN_TOKEN_IDS)
    return {name: shape.vocab - 4 + i for i, name in enumerate(QWEN_TOKEN_IDS)}


def qwen_config(shape: QwenShape, attn: str = "sdpa"):
    """A transformers ``Qwen2_5_VLConfig`` at ``shape`` (the published 7B config's other values:
    rope_theta 1e6, M-RoPE sections 16/24/24 scaled to the head size, rms_norm_eps 1e-6,
    untied embeddings, 2 tokens per second), ``attn`` for the LLM and the ViT."""
    from transformers import Qwen2_5_VLConfig

    head = shape.lm_head_dim // 2
    section = [head * 16 // 64, head * 24 // 64]
    section.append(head - sum(section))
    return Qwen2_5_VLConfig(
        text_config={"vocab_size": shape.vocab, "hidden_size": shape.lm_hidden,
                     "intermediate_size": shape.lm_intermediate,
                     "num_hidden_layers": shape.lm_layers,
                     "num_attention_heads": shape.lm_heads,
                     "num_key_value_heads": shape.lm_kv_heads,
                     "max_position_embeddings": shape.max_context, "rms_norm_eps": 1e-6,
                     "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": None,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                         "mrope_section": section}},
        vision_config={"depth": shape.vision_layers, "hidden_size": shape.vision_hidden,
                       "intermediate_size": shape.vision_intermediate,
                       "num_heads": shape.vision_heads, "out_hidden_size": shape.lm_hidden,
                       "fullatt_block_indexes": list(shape.fullatt_blocks),
                       "window_size": shape.window_size, "patch_size": shape.patch_size,
                       "spatial_merge_size": shape.merge_size,
                       "temporal_patch_size": shape.temporal_patch_size,
                       "tokens_per_second": 2},
        tie_word_embeddings=False, attn_implementation=attn, **qwen_token_ids(shape))
