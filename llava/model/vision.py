"""The SigLIP vision tower as LLaVA-OneVision / LLaVA-Video use it, with two-layer attention capture.

LLaVA-NeXT drops the last of SigLIP so400m's 27 layers and uses the output of the 26th layer
without the post-layernorm. Module names follow the raw checkpoint names
(``vision_tower.vision_model.{embeddings,encoder,post_layernorm}``) so the weights load as
published. The layers themselves are transformers' ``SiglipEncoderLayer``.

AOT needs the attention each token *receives* at two layers only. Materialising every layer's
maps (what ``output_attentions=True`` does) costs 26 x frames x heads x 729^2 floats, so instead
every attention call goes through :func:`capture_attention`, which runs the normal kernel (SDPA
by default) unless the layer is being captured; a captured layer computes its softmax block of
queries by block of queries and keeps only the (frames, 729) column sums. Frames are processed
in chunks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface, SiglipVisionConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.siglip.modeling_siglip import (
    SiglipEncoderLayer,
    SiglipVisionEmbeddings,
    eager_attention_forward,
)

from aot.anchors import attend_and_receive

# Hyper-parameters of google/siglip-so400m-patch14-384 (the published tower, 27 layers), built
# in so that loading never reaches the hub.
SIGLIP_SO400M_384 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}

CAPTURE_ATTENTION = "llava_aot_capture"
TOWER_ATTENTION = ("sdpa", "eager")


def capture_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """Attention kernel of the tower (registered with transformers' ``AttentionInterface``).

    query/key/value: (B, heads, T, head_dim). Returns ((B, T, heads, head_dim), None).
    If ``module.aot_keys`` is a list, the keys averaged over heads, (B, T, head_dim) in the
    model's dtype, are appended to it. If ``module.aot_sink`` is a list, the softmax is computed
    in float32, one block of queries at a time (:func:`aot.anchors.attend_and_receive`), and the
    received attention (B, T) is appended to it; otherwise the module's ``base_attention``
    kernel runs.
    """
    keys = module.__dict__.get("aot_keys")
    if keys is not None:
        keys.append(key.mean(1))
    sink = module.__dict__.get("aot_sink")
    if sink is None:
        base = getattr(module, "base_attention", "sdpa")
        kernel = sdpa_attention_forward if base == "sdpa" else eager_attention_forward
        return kernel(module, query, key, value, attention_mask, scaling=scaling,
                      dropout=dropout, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    # one block of queries at a time: the layer's float32 probabilities are never held whole
    received, out = attend_and_receive(query, key, value, scaling, attention_mask)
    sink.append(received)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(CAPTURE_ATTENTION, capture_attention)


def build_vision_config(config) -> SiglipVisionConfig:
    """The SiglipVisionConfig of the layers LLaVA uses (published layers minus one).

    ``config``: the llava_qwen config. Its optional ``vision_config`` dict overrides
    :data:`SIGLIP_SO400M_384` (layers counted as published, i.e. before dropping the last).
    """
    tower = getattr(config, "mm_vision_tower", None) or ""
    override = getattr(config, "vision_config", None)
    if isinstance(override, SiglipVisionConfig):
        override = override.to_dict()
    if override is None and "siglip" not in str(tower).lower():
        raise ValueError(f"mm_vision_tower={tower!r}: only SigLIP towers are supported "
                         "(google/siglip-so400m-patch14-384); give a 'vision_config' dict in "
                         "config.json to describe another SigLIP size")
    fields = dict(SIGLIP_SO400M_384)
    if override:
        allowed = set(SIGLIP_SO400M_384) | {"model_type", "vision_use_head", "projection_dim"}
        unknown = sorted(set(override) - allowed)
        if unknown:
            raise ValueError(f"vision_config has unknown field(s) {unknown}; "
                             f"expected some of {sorted(SIGLIP_SO400M_384)}")
        fields.update({k: v for k, v in override.items() if k in SIGLIP_SO400M_384})
    published = fields["num_hidden_layers"]
    if not isinstance(published, int) or published < 2:
        raise ValueError(f"vision_config num_hidden_layers={published!r}: expected >= 2 "
                         "(the published count; LLaVA drops the last layer)")
    fields["num_hidden_layers"] = published - 1
    vision = SiglipVisionConfig(**fields, vision_use_head=False)
    return vision


class _Encoder(nn.Module):
    """Holds ``layers`` under the raw name ``encoder.layers.N``."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config)
                                    for _ in range(config.num_hidden_layers))


class _VisionModel(nn.Module):
    """Raw names ``embeddings``, ``encoder``, ``post_layernorm`` (the last is loaded, unused)."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = _Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class _Holder(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.vision_model = _VisionModel(config)


@dataclass
class VisionOutput:
    """features: (N, T, C) output of the last used layer (no post-layernorm), T = grid^2.
    received: layer index -> (N, T) float32 attention received at that layer.
    keys: (N, T, head_dim) key states of the ``keys_layer`` asked for, averaged over heads, in
    the tower's dtype (None when none was asked for)."""

    features: torch.Tensor
    received: dict[int, torch.Tensor] = field(default_factory=dict)
    keys: torch.Tensor | None = None


class SigLipVisionTower(nn.Module):
    """SigLIP tower: (N, 3, S, S) pixels -> (N, (S/patch)^2, C) features."""

    def __init__(self, vision_config: SiglipVisionConfig, attention: str = "sdpa"):
        super().__init__()
        # A private copy: every layer's attention dispatches through capture_attention.
        self.config = copy.deepcopy(vision_config)
        self.config._attn_implementation = CAPTURE_ATTENTION
        self.vision_tower = _Holder(self.config)
        self.set_attention(attention)

    @property
    def layers(self) -> nn.ModuleList:
        return self.vision_tower.vision_model.encoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def grid(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.device

    def set_attention(self, attention: str) -> None:
        """Kernel of the non-captured layers: ``"sdpa"`` or ``"eager"``."""
        if attention not in TOWER_ATTENTION:
            raise ValueError(f"vision attention {attention!r}: expected one of {TOWER_ATTENTION}")
        for layer in self.layers:
            layer.self_attn.base_attention = attention

    def forward(self, pixel_values: torch.Tensor, capture_layers: tuple[int, ...] = (),
                chunk_size: int | None = None, keys_layer: int | None = None) -> VisionOutput:
        """Encode images in chunks of ``chunk_size`` (None: all at once).

        Args:
            pixel_values: (N, 3, S, S).
            capture_layers: 0-based layer indices whose received attention is returned.
            keys_layer: 0-based layer index whose key states (averaged over heads) are returned
                as ``keys``; None: none.
        """
        for layer in (*capture_layers, *(() if keys_layer is None else (keys_layer,))):
            if not 0 <= layer < self.num_layers:
                raise ValueError(f"cannot capture attention at vision layer {layer}: the tower "
                                 f"uses layers 0..{self.num_layers - 1}")
        if self.config._attn_implementation != CAPTURE_ATTENTION:
            # Someone re-targeted our private config (e.g. a transformers model built from it):
            # route attention through the capture kernel again, or capture would silently fail.
            self.config._attn_implementation = CAPTURE_ATTENTION
        chunks = pixel_values.split(chunk_size) if chunk_size else (pixel_values,)
        outputs = [self._forward_chunk(chunk, capture_layers, keys_layer) for chunk in chunks]
        features = torch.cat([o.features for o in outputs])
        received = {layer: torch.cat([o.received[layer] for o in outputs])
                    for layer in capture_layers}
        keys = None if keys_layer is None else torch.cat([o.keys for o in outputs])
        return VisionOutput(features, received, keys)

    def _forward_chunk(self, pixels: torch.Tensor, capture_layers,
                       keys_layer: int | None = None) -> VisionOutput:
        model = self.vision_tower.vision_model
        hidden = model.embeddings(pixels.to(device=self.device, dtype=self.dtype))
        received = {}
        keys = None
        for index, layer in enumerate(self.layers):
            if index not in capture_layers and index != keys_layer:
                hidden = layer(hidden, None)
                continue
            attention = layer.self_attn
            if index in capture_layers:
                attention.aot_sink = []
            if index == keys_layer:
                attention.aot_keys = []
            try:
                hidden = layer(hidden, None)
                if index in capture_layers:
                    received[index] = attention.aot_sink[0]
                if index == keys_layer:
                    keys = attention.aot_keys[0]
            finally:
                attention.__dict__.pop("aot_sink", None)
                attention.__dict__.pop("aot_keys", None)
        return VisionOutput(hidden, received, keys)
