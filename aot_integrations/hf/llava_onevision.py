"""transformers' LLaVA-OneVision class as an adapter of the one video path."""

from __future__ import annotations

import torch

from aot.anchors import attend_and_receive
from aot.result import ReducedVideo
from aot.video_path import Encoded

from ..pooling_head import head_inputs, pooling_head_of
from .base import HFAdapter, relative_layers
from ..capture import capturing


def siglip_received(module, args, kwargs) -> torch.Tensor:
    """Received attention of a SigLIP attention module's input.

    hidden_states: (N, T, C), one image (frame) per row. Returns (N, T) float32, all frames at
    once, one block of queries at a time (:func:`aot.anchors.attend_and_receive`: the float32
    probabilities are never held whole).
    """
    hidden = args[0] if args else kwargs["hidden_states"]
    frames, tokens, _ = hidden.shape
    q = module.q_proj(hidden).view(frames, tokens, -1, module.head_dim).transpose(1, 2)
    k = module.k_proj(hidden).view(frames, tokens, -1, module.head_dim).transpose(1, 2)
    return attend_and_receive(q, k, None, module.scale)[0]


def siglip_keys(module, args, kwargs) -> torch.Tensor:
    """Key states of a SigLIP attention module's input, averaged over heads.

    hidden_states: (N, T, C). Returns (N, T, head_dim) in the module's dtype: only the key
    projection runs (no attention map).
    """
    hidden = args[0] if args else kwargs["hidden_states"]
    frames, tokens, _ = hidden.shape
    return module.k_proj(hidden).view(frames, tokens, -1, module.head_dim).mean(2)


class OneVisionAdapter(HFAdapter):
    """``LlavaOnevisionForConditionalGeneration``: SigLIP, projector, 2x bilinear pooling, one
    newline after the whole video; 1-D positions."""

    backbone_name = "ov"
    model_type = "llava_onevision"
    video_keys = ("pixel_values_videos", "image_sizes_videos")

    @property
    def vision_layers(self) -> int:
        return len(self._encoder_layers())

    @property
    def feature_depth(self) -> int:
        """Blocks up to the one whose output the projector reads (``vision_feature_layer``; a
        list of layers: the whole tower)."""
        total = self.vision_layers
        layer = self.model.config.vision_feature_layer
        if not isinstance(layer, int):
            return total
        # hidden_states[k] is the output of block k - 1 (hidden_states[0]: the embeddings)
        return min(max(total + 1 + layer if layer < 0 else layer, 1), total)

    def default_layers(self) -> tuple[int, int]:
        """The paper's relative layers over the blocks whose output the projector reads."""
        return relative_layers(self.feature_depth)

    def pooling_head(self):
        """The attached head, else the tower's own (``vision_use_head=True``), else None."""
        return pooling_head_of(self.model, self.model.model.vision_tower)

    def _encoder_layers(self):
        tower = self.model.model.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers

    def video_pieces(self, inputs: dict) -> list[list[int]]:
        """One run per video: frames x pooled tokens + the newline, from pixel_values_videos
        (videos, frames, 3, S, S) with S the tower's image size."""
        pixels = inputs["pixel_values_videos"]
        vision = self.model.config.vision_config
        size, channels = vision.image_size, vision.num_channels
        if (not isinstance(pixels, torch.Tensor) or pixels.dim() != 5 or min(pixels.shape[:2]) < 1
                or tuple(pixels.shape[2:]) != (channels, size, size)):
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"aot_integrations.hf: pixel_values_videos has shape {shape}; expected "
                             f"(videos, frames, {channels}, {size}, {size}) as "
                             "LlavaOnevisionProcessor writes it (at least one video of one frame)")
        if not pixels.is_floating_point():
            raise TypeError(f"aot_integrations.hf: pixel_values_videos has dtype {pixels.dtype}; "
                            "expected floating-point pixels (the processor's output)")
        videos, frames = pixels.shape[:2]
        side = size // vision.patch_size
        run = frames * self.backbone.pooled_per_frame((side, side)) + \
            self.backbone.newlines(frames, (side, side))
        return [[run] for _ in range(videos)]

    def token_grids(self, inputs: dict) -> list[tuple[int, int]]:
        """The SigLIP patch grid of every video (square: image_size // patch_size)."""
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        return [(side, side)] * inputs["pixel_values_videos"].shape[0]

    def _encode_batch(self, inputs: dict, layers: tuple[int, ...],
                      extra_inputs: tuple[str, ...] = ()) -> list[Encoded]:
        """pixel_values_videos (B, F, 3, S, S) -> one :class:`Encoded` per video: (F, T, D)
        projected features before pooling (T = grid^2), received attention at ``layers``, the
        pooling head's ``extra_inputs`` on the output of the last block the projector reads and
        ``last_keys`` (F, T, head_dim), that block's keys averaged over heads."""
        inner = self.model.model
        config = self.model.config
        pixels = inputs["pixel_values_videos"]
        batch, frames = pixels.shape[:2]
        layer = inputs.get("vision_feature_layer") or config.vision_feature_layer
        strategy = (inputs.get("vision_feature_select_strategy")
                    or config.vision_feature_select_strategy)
        encoder_layers = self._encoder_layers()
        modules = {index: encoder_layers[index].self_attn for index in layers}
        last = self.feature_depth - 1
        keyed = ({last: encoder_layers[last].self_attn} if "last_keys" in extra_inputs else {})
        with capturing(modules, siglip_received) as sinks, \
                capturing(keyed, siglip_keys) as keys:
            out = inner.vision_tower(pixels.view(batch * frames, *pixels.shape[2:]),
                                     output_hidden_states=True, return_dict=True)
        if isinstance(layer, int):
            selected = out.hidden_states[layer]
        else:
            selected = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        if strategy == "default":
            selected = selected[:, 1:]
        features = inner.multi_modal_projector(selected)
        tower_output = out.hidden_states[self.feature_depth]
        if strategy == "default":
            tower_output = tower_output[:, 1:]
        extra = head_inputs(tower_output, self.pooling_head() if extra_inputs else None,
                            extra_inputs)
        if keyed:
            extra["last_keys"] = keys[last][0][:, 1:] if strategy == "default" else keys[last][0]
        tokens = features.shape[1]
        grid = int(round(tokens ** 0.5))   # SigLIP frames are square (image_size x image_size)
        received = {index: torch.cat(sinks[index]) for index in layers}
        return [Encoded(features[v * frames:(v + 1) * frames], grid,
                        {index: received[index][v * frames:(v + 1) * frames] for index in layers},
                        {name: value[v * frames:(v + 1) * frames] for name, value in extra.items()})
                for v in range(batch)]

    def encode(self, pixels: torch.Tensor, layers: tuple[int, ...], on_stage,
               extra_inputs: tuple[str, ...] = ()) -> Encoded:
        """:class:`aot.video_path.VideoAdapter` step for one video, (F, 3, S, S) pixels (the tower
        and the projector run together: ``"vision"`` and ``"projector"`` are reported at once)."""
        encoded = self.encode_batch({"pixel_values_videos": pixels[None]}, layers,
                                    extra_inputs)[0]
        on_stage("vision")
        on_stage("projector")
        return encoded

    def pool(self, encoded: Encoded) -> torch.Tensor:
        return self.model.model.apply_pooling(encoded.features)

    def pack_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.cat([pooled.reshape(-1, pooled.shape[-1]), self._newline(pooled.dtype)])

    def pack_result(self, result: ReducedVideo, dtype: torch.dtype) -> torch.Tensor:
        return torch.cat([result.tokens.to(dtype), self._newline(dtype)])

    def _newline(self, dtype) -> torch.Tensor:
        return self.model.model.image_newline[None].to(dtype)

    def encoder_outputs(self, sequences: list[torch.Tensor]):
        """What ``forward(mm_encoder_outputs=...)`` reads: pooler_output (1, sum L_v, D), which
        ``forward`` flattens and scatters into the placeholders in batch order."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=torch.cat(sequences)[None])
