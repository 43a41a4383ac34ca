"""Model shapes for the benchmark: the real 7B configs and reduced presets, as llava_qwen dicts.

LLaVA-OneVision-7B and LLaVA-Video-7B-Qwen2 share one architecture (Qwen2-7B LM, SigLIP
so400m-patch14-384 tower with its last layer dropped, mlp2x_gelu projector); they differ only in
pooling and newline packing. The presets:

* ``7b``: the published shapes (what a GPU run uses).
* ``cpu``: reduced widths and depths so that the whole frame/retention grid runs on a laptop CPU
  in minutes (the report states the shapes). Patch grid (27x27), pooling and token counts are the
  real ones, so visual token counts and retention are exactly those of the 7B models.
* ``tiny``: for tests (seconds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aot.backbones import BACKBONES
from llava.model.adapter import llava_config_fields

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


def get_shape(name: str) -> Shape:
    """The preset ``name`` (``7b``, ``cpu``, ``tiny``) or a ValueError listing them."""
    if name not in SHAPES:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(SHAPES)}")
    return SHAPES[name]


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
