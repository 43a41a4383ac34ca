"""LLaVA-OneVision / LLaVA-Video as an adapter of the one video path (:mod:`aot.video_path`).

The layout of a LLaVA-NeXT checkpoint (pooling mode and stride, newline position) is read from its
config once, in :func:`llava_layout`, with LLaVA-NeXT's defaults; which declared backbone it is
(:data:`aot.backbones.BACKBONES`) follows from the pooling mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aot.backbones import Backbone, backbone_for_pooling, get_backbone
from aot.video_path import Encoded, Reduction, StageHook, resolve_layers

from ..pooling_head import check_extra_inputs, head_inputs, pooling_head_of
from . import packing

#: AOT's pooling name of each LLaVA ``mm_spatial_pool_mode`` it can reduce under.
AOT_POOLING = {"bilinear": "bilinear", "average": "average"}


@dataclass(frozen=True)
class LlavaLayout:
    """How a LLaVA-NeXT config lays visual tokens out (its ``mm_*`` fields, defaults as
    LLaVA-NeXT's ``getattr`` defaults).

    pool_mode: ``mm_spatial_pool_mode`` (``"bilinear"`` OV, ``"average"`` LLaVA-Video, ``"max"``).
    pool_stride: ``mm_spatial_pool_stride``.
    newline: ``mm_newline_position`` (``"one_token"``, ``"grid"``, ``"frame"``, ``"no_token"``).
    """

    pool_mode: str = "average"
    pool_stride: int = 2
    newline: str = "one_token"

    def __post_init__(self) -> None:
        packing.check_pooling(self.pool_mode, self.pool_stride)
        packing.check_newline_position(self.newline)

    @property
    def backbone(self) -> Backbone | None:
        """The declared backbone with this pooling (None for a layout AOT cannot reduce)."""
        pooling = AOT_POOLING.get(self.pool_mode)
        if pooling is None or self.pool_stride != 2:
            return None
        return backbone_for_pooling(pooling)


def llava_layout(config) -> LlavaLayout:
    """The :class:`LlavaLayout` of a LLaVA-NeXT config (the one place its ``mm_*`` layout fields
    are read)."""
    return LlavaLayout(getattr(config, "mm_spatial_pool_mode", "average"),
                       getattr(config, "mm_spatial_pool_stride", 2),
                       getattr(config, "mm_newline_position", "one_token"))


def llava_config_fields(backbone: str) -> dict:
    """The ``mm_*`` layout fields a LLaVA-NeXT config.json carries for the declared backbone
    ``backbone`` (``"ov"``: bilinear, one newline; ``"video"``: average, a newline per row)."""
    facts = get_backbone(backbone)
    return {"mm_spatial_pool_mode": facts.pooling, "mm_newline_position": facts.newline}


def backbone_name(model) -> str:
    """Name of the declared backbone a loaded LLaVA model is (from its pooling mode)."""
    layout = llava_layout(model.config)
    if layout.backbone is None:
        raise ValueError(f"mm_spatial_pool_mode={layout.pool_mode!r} with stride "
                         f"{layout.pool_stride} is none of the declared backbones "
                         "(bilinear = 'ov', average = 'video', stride 2)")
    return layout.backbone.name


class LlavaVideoAdapter:
    """:class:`aot.video_path.VideoAdapter` of a ``LlavaMetaForCausalLM`` model (``llava/``)."""

    def __init__(self, model) -> None:
        self.model = model
        self.layout = llava_layout(model.config)
        self.tower = model.get_vision_tower()

    @property
    def backbone(self) -> Backbone | None:
        return self.layout.backbone

    @property
    def pooled_per_frame(self) -> int:
        """Tokens per frame of the unreduced model, newlines excluded (retention denominator)."""
        side = packing.pooled_side(self.tower.grid, self.layout.pool_mode, self.layout.pool_stride)
        return side * side

    def check(self, reduction: Reduction) -> None:
        """The reduction's pooling must be the model's, its layers inside the tower."""
        config, layout = reduction.config, self.layout
        expected = AOT_POOLING.get(layout.pool_mode)
        if expected != config.pooling:
            hint = (f"use pooling={expected!r} (e.g. aot.settings_for("
                    f"{backbone_for_pooling(expected).name!r}, r))" if expected else
                    "AOT supports 'bilinear' and 'average' only")
            raise ValueError(f"AOTConfig.pooling={config.pooling!r} does not match this model's "
                             f"mm_spatial_pool_mode={layout.pool_mode!r}; {hint}")
        if layout.pool_stride != 2:
            raise ValueError(f"AOT pools 2x2 but mm_spatial_pool_stride={layout.pool_stride!r}; "
                             "set it to 2")
        layers = self.tower.num_layers
        for name in ("shallow_layer", "deep_layer"):
            if getattr(config, name) >= layers:
                raise ValueError(f"AOTConfig.{name}={getattr(config, name)} but the vision tower "
                                 f"uses layers 0..{layers - 1}")
        check_extra_inputs(reduction, pooling_head_of(self.model), "LLaVA's SigLIP tower")

    def encode(self, pixels: torch.Tensor, layers: tuple[int, ...],
               on_stage: StageHook, extra_inputs: tuple[str, ...] = ()) -> Encoded:
        """SigLIP (capturing received attention at ``layers``; -1 is the last of the tower's
        layers; ``extra_inputs``: the attached pooling head's outputs on the tower output, and
        ``last_keys``, the last layer's keys averaged over heads, (F, 729, head_dim)), then the
        projector."""
        plan = resolve_layers(layers, self.tower.num_layers)
        keys_layer = self.tower.num_layers - 1 if "last_keys" in extra_inputs else None
        out = self.tower(pixels, capture_layers=tuple(sorted(set(plan.values()))),
                         chunk_size=self.model.vision_chunk_size, keys_layer=keys_layer)
        extra = head_inputs(out.features, pooling_head_of(self.model), extra_inputs)
        if keys_layer is not None:
            extra["last_keys"] = out.keys
        on_stage("vision")
        projected = self.model.get_model().mm_projector(out.features)
        on_stage("projector")
        return Encoded(projected, self.tower.grid,
                       {layer: out.received[actual] for layer, actual in plan.items()}, extra)

    def pool(self, encoded: Encoded) -> torch.Tensor:
        pooled = packing.pool_frames(encoded.features, self.layout.pool_mode,
                                     self.layout.pool_stride)
        return pooled.reshape(pooled.shape[0], -1, pooled.shape[-1])

    def pack_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        frames, count, dim = pooled.shape
        side = int(round(count ** 0.5))
        return packing.pack_frames(pooled.reshape(frames, side, side, dim), self._newline(),
                                   self.layout.newline)

    def pack_result(self, result, dtype: torch.dtype) -> torch.Tensor:
        return packing.pack_aot(result, self._newline(), self.layout.newline, dtype=dtype)

    def _newline(self) -> torch.Tensor | None:
        return self.model.get_model().image_newline
