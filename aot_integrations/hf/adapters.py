"""One adapter per stock transformers class (5.24): how its videos are encoded and packed.

Each adapter follows :class:`aot.video_path.VideoAdapter` for the per-video steps (``check``,
``pool``, ``pack_pooled``, ``pack_result``); encoding works on the processor's batch at once
(``encode_batch``), with the same tower call the stock ``get_video_features`` makes, so the
unreduced features are bit-identical to the stock model's. ``slots`` says, for every token of a
packed video, which placeholder of the unreduced run it stands in for (its M-RoPE position).
"""

from __future__ import annotations

import torch

from aot.backbones import Backbone, get_backbone
from aot.video_path import Encoded, Reduction
from aot.result import ReducedVideo
from .capture import capturing, qwen_vision_received, siglip_received


class HFAdapter:
    """Shared parts; subclasses set ``backbone_name`` and the model-specific methods.

    Attributes:
        model: the ``...ForConditionalGeneration`` instance.
        model_type: ``config.json``'s ``model_type`` of the checkpoints this class loads.
        video_keys: processor outputs the encoder consumes (dropped before the LLM runs).
    """

    backbone_name = ""
    model_type = ""
    video_keys: tuple[str, ...] = ()

    def __init__(self, model) -> None:
        self.model = model

    @property
    def backbone(self) -> Backbone:
        return get_backbone(self.backbone_name)

    @property
    def video_token_id(self) -> int:
        return self.model.config.video_token_id

    @property
    def vision_layers(self) -> int:
        raise NotImplementedError

    def default_layers(self) -> tuple[int, int]:
        """(shallow, deep) vision layers for AOT's local / global anchors on this model's tower:
        the paper's layers at the same relative depth (:func:`relative_layers` of
        :attr:`vision_layers`)."""
        return relative_layers(self.vision_layers)

    def model_fields(self) -> dict:
        """AOTConfig fields that are facts of this model, not choices (:func:`aot_integrations.hf.apply`
        and :func:`aot_integrations.hf.config_for` set them): the backbone's pooling."""
        return {"pooling": self.backbone.pooling}

    def check(self, reduction: Reduction) -> None:
        """The reduction's model facts (pooling, ...) must be this model's, its layers inside
        the tower."""
        config = reduction.config
        for name, value in self.model_fields().items():
            if getattr(config, name) != value:
                raise ValueError(f"AOTConfig.{name}={getattr(config, name)!r} but "
                                 f"{self.backbone.title} needs {value!r}; build the config with "
                                 f"aot_integrations.hf.config_for(model, retention)")
        for name in ("shallow_layer", "deep_layer"):
            if getattr(config, name) >= self.vision_layers:
                raise ValueError(f"AOTConfig.{name}={getattr(config, name)} but the vision tower "
                                 f"has blocks 0..{self.vision_layers - 1}")

    def positions(self, inputs: dict) -> torch.Tensor | None:
        """(3, B, L) unreduced M-RoPE positions, or None for 1-D positions."""
        return None

    def slots(self, encoded: Encoded, result: ReducedVideo | None) -> torch.Tensor:
        """(L_v,) index of each packed token's placeholder in the unreduced run."""
        per_frame = self._per_frame(encoded)
        frames = encoded.num_frames
        if result is None:
            visual = torch.arange(frames * per_frame)
        else:
            visual = result.token_frame.cpu() * per_frame + result.token_position.cpu()
        newlines = self.backbone.newlines(frames, encoded.grid)
        tail = torch.arange(frames * per_frame, frames * per_frame + newlines)
        return torch.cat([visual.long(), tail.long()])

    def _per_frame(self, encoded: Encoded) -> int:
        """Unreduced tokens per frame the LLM reads (newlines excluded)."""
        return self.backbone.pooled_per_frame(encoded.grid)

    def run_length(self, encoded: Encoded) -> int:
        """Placeholders the processor wrote for this video (unreduced, newlines included)."""
        frames = encoded.num_frames
        return frames * self._per_frame(encoded) + self.backbone.newlines(frames, encoded.grid)


class OneVisionAdapter(HFAdapter):
    """``LlavaOnevisionForConditionalGeneration``: SigLIP, projector, 2x bilinear pooling, one
    newline after the whole video; 1-D positions."""

    backbone_name = "ov"
    model_type = "llava_onevision"
    video_keys = ("pixel_values_videos", "image_sizes_videos")

    @property
    def vision_layers(self) -> int:
        return len(self._encoder_layers())

    def default_layers(self) -> tuple[int, int]:
        """The paper's relative layers over the blocks whose output the projector reads
        (``vision_feature_layer``; a list of layers: the whole tower)."""
        total = self.vision_layers
        layer = self.model.config.vision_feature_layer
        used = total
        if isinstance(layer, int):
            # hidden_states[k] is the output of block k - 1 (hidden_states[0]: the embeddings)
            used = min(max(total + 1 + layer if layer < 0 else layer, 1), total)
        return relative_layers(used)

    def _encoder_layers(self):
        tower = self.model.model.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers

    def encode_batch(self, inputs: dict, layers: tuple[int, ...]) -> list[Encoded]:
        """pixel_values_videos (B, F, 3, S, S) -> one :class:`Encoded` per video: (F, T, D)
        projected features before pooling (T = grid^2), received attention at ``layers``."""
        inner = self.model.model
        config = self.model.config
        pixels = inputs["pixel_values_videos"]
        batch, frames = pixels.shape[:2]
        layer = inputs.get("vision_feature_layer") or config.vision_feature_layer
        strategy = (inputs.get("vision_feature_select_strategy")
                    or config.vision_feature_select_strategy)
        encoder_layers = self._encoder_layers()
        modules = {index: encoder_layers[index].self_attn for index in layers}
        with capturing(modules, siglip_received) as sinks:
            out = inner.vision_tower(pixels.view(batch * frames, *pixels.shape[2:]),
                                     output_hidden_states=True, return_dict=True)
        if isinstance(layer, int):
            selected = out.hidden_states[layer]
        else:
            selected = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        if strategy == "default":
            selected = selected[:, 1:]
        features = inner.multi_modal_projector(selected)
        tokens = features.shape[1]
        grid = int(round(tokens ** 0.5))   # SigLIP frames are square (image_size x image_size)
        received = {index: torch.cat(sinks[index]) for index in layers}
        return [Encoded(features[v * frames:(v + 1) * frames], grid,
                        {index: received[index][v * frames:(v + 1) * frames] for index in layers})
                for v in range(batch)]

    def encode(self, pixels: torch.Tensor, layers: tuple[int, ...], on_stage) -> Encoded:
        """:class:`aot.video_path.VideoAdapter` step for one video, (F, 3, S, S) pixels (the tower
        and the projector run together: ``"vision"`` and ``"projector"`` are reported at once)."""
        encoded = self.encode_batch({"pixel_values_videos": pixels[None]}, layers)[0]
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


class Qwen25VLAdapter(HFAdapter):
    """``Qwen2_5_VLForConditionalGeneration``: windowed ViT, 2x2 merger (its own pooling: AOT
    pools nothing), one AOT frame per temporal patch (two video frames), M-RoPE positions."""

    backbone_name = "qwen2_5_vl"
    model_type = "qwen2_5_vl"
    video_keys = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")

    @property
    def visual(self):
        return self.model.model.visual

    @property
    def vision_layers(self) -> int:
        return len(self.visual.blocks)

    def default_layers(self) -> tuple[int, int]:
        """The first and last full-attention blocks (``fullatt_block_indexes``; 7 and 31 at 7B):
        the windowed blocks between them only see 112-px windows, so their received attention
        is not a frame-wide ranking (docs/knobs.md). A tower without full-attention blocks: the
        paper's relative layers."""
        full = sorted(self.model.config.vision_config.fullatt_block_indexes or ())
        if not full:
            return relative_layers(self.vision_layers)
        return full[0], full[-1]

    def encode_batch(self, inputs: dict, layers: tuple[int, ...]) -> list[Encoded]:
        """Packed patches + video_grid_thw (V, 3) -> one :class:`Encoded` per video: (t, h*w/4, D)
        merger outputs (the LLM's tokens), received attention per merged token (mean over its
        2x2 patches) at ``layers``."""
        from transformers.vision_utils import get_vision_window_index

        visual = self.visual
        grid_thw = inputs["video_grid_thw"]
        pixels = inputs["pixel_values_videos"].type(visual.dtype)
        modules = {index: visual.blocks[index].attn for index in layers}
        with capturing(modules, qwen_vision_received) as sinks:
            merged = visual(pixels, grid_thw=grid_thw).pooler_output
        unit = visual.spatial_merge_size ** 2
        received = {}
        if layers:
            window_index, _ = get_vision_window_index(
                grid_thw, spatial_merge_size=visual.spatial_merge_size,
                window_size=visual.window_size, patch_size=visual.patch_size)
            restore = torch.argsort(window_index.to(merged.device))
            for index in layers:
                patches = sinks[index][0]
                received[index] = patches.view(-1, unit)[restore].mean(1)
        return self._split(merged, grid_thw, received)

    def _split(self, merged, grid_thw, received) -> list[Encoded]:
        """Packed (sum t*h*w/4, C) merger outputs and received attention -> one Encoded per
        video, (t, h*w/4, C) on its own (h/2, w/2) grid of merged tokens (native resolution:
        landscape, portrait or square, each video its own)."""
        merge = self.visual.spatial_merge_size
        encoded = []
        start = 0
        for t, h, w in grid_thw.tolist():
            rows, cols = h // merge, w // merge
            count = t * rows * cols
            stop = start + count
            encoded.append(Encoded(
                merged[start:stop].view(t, rows * cols, -1), (rows, cols),
                {index: attention[start:stop].view(t, rows * cols)
                 for index, attention in received.items()}))
            start = stop
        return encoded

    def pool(self, encoded: Encoded) -> torch.Tensor:
        return encoded.features

    def pack_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled.reshape(-1, pooled.shape[-1])

    def pack_result(self, result: ReducedVideo, dtype: torch.dtype) -> torch.Tensor:
        return result.tokens.to(dtype)

    def positions(self, inputs: dict) -> torch.Tensor:
        """(3, B, L) the stock ``get_rope_index`` positions of the unreduced batch."""
        position_ids, _ = self.model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs.get("second_per_grid_ts"),
            attention_mask=inputs.get("attention_mask"))
        return position_ids

    def encoder_outputs(self, sequences: list[torch.Tensor]):
        """pooler_output: one (L_v, D) tensor per video (``forward`` concatenates them)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=tuple(sequences))


class Qwen3VLAdapter(Qwen25VLAdapter):
    """``Qwen3VLForConditionalGeneration``: full-attention ViT, 2x2 merger, DeepStack features of
    a few ViT layers added into the LLM at the visual positions, per-frame timestamp text.

    The reducer sees the main features and every DeepStack level concatenated along channels,
    (t, h*w/4, D * (1 + levels)): each reducer's selection and merge is a per-token linear map,
    so one run applies the same map to all levels. Its similarities read the main features only
    (``AOTConfig.similarity_channels = D``, :meth:`model_fields`), so the levels' values never
    change which tokens are kept. :meth:`encoder_outputs` splits them again. Each kept token stays after its own frame's
    timestamp (:func:`aot_integrations.hf.sequence.shorten` emits it in its frame's piece).
    """

    backbone_name = "qwen3_vl"
    model_type = "qwen3_vl"
    video_keys = ("pixel_values_videos", "video_grid_thw")

    def default_layers(self) -> tuple[int, int]:
        """Full attention in every block: the paper's relative layers (5 and 24 of 27 at 8B)."""
        return relative_layers(self.vision_layers)

    def model_fields(self) -> dict:
        """The pooling, and similarities on the main features only (the first D channels, D the
        LLM width; the DeepStack levels follow)."""
        return dict(super().model_fields(),
                    similarity_channels=self.model.config.text_config.hidden_size)

    def encode_batch(self, inputs: dict, layers: tuple[int, ...]) -> list[Encoded]:
        visual = self.visual
        grid_thw = inputs["video_grid_thw"]
        pixels = inputs["pixel_values_videos"].type(visual.dtype)
        modules = {index: visual.blocks[index].attn for index in layers}
        with capturing(modules, qwen_vision_received) as sinks:
            out = visual(pixels, grid_thw=grid_thw, return_dict=True)
        merged = torch.cat([out.pooler_output, *out.deepstack_features], dim=-1)
        unit = visual.spatial_merge_size ** 2
        received = {index: sinks[index][0].view(-1, unit).mean(1) for index in layers}
        return self._split(merged, grid_thw, received)

    def positions(self, inputs: dict) -> torch.Tensor:
        position_ids, _ = self.model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs["video_grid_thw"],
            attention_mask=inputs.get("attention_mask"))
        return position_ids

    def encoder_outputs(self, sequences: list[torch.Tensor]):
        """pooler_output and deepstack_features (one tuple per level), each a (L_v, D) per video,
        as ``get_video_features`` returns them."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import (
            BaseModelOutputWithDeepstackFeatures)

        dim = self.model.config.text_config.hidden_size
        levels = len(self.visual.deepstack_visual_indexes)
        parts = [s.split(dim, dim=-1) for s in sequences]
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=tuple(p[0] for p in parts),
            deepstack_features=[tuple(p[1 + level] for p in parts) for level in range(levels)])


#: The paper's anchor layers and the depth they index: 5 and 24 of the 26 SigLIP layers the
#: LLaVA models use (aot-method.md section 2).
PAPER_LAYERS, PAPER_DEPTH = (5, 24), 26


def relative_layers(depth: int) -> tuple[int, int]:
    """(shallow, deep) at the paper's relative depth in a tower of ``depth`` blocks, rounded
    down: (5, 24) for 26 blocks (SigLIP in LLaVA-OneVision) and for 27 (Qwen3-VL)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth={depth!r}: expected the number of vision blocks, an integer >= 1")
    shallow, deep = PAPER_LAYERS
    return shallow * depth // PAPER_DEPTH, deep * depth // PAPER_DEPTH


#: transformers class name -> adapter class.
ADAPTERS = {
    "LlavaOnevisionForConditionalGeneration": OneVisionAdapter,
    "Qwen2_5_VLForConditionalGeneration": Qwen25VLAdapter,
    "Qwen3VLForConditionalGeneration": Qwen3VLAdapter,
}

#: ``config.json`` ``model_type`` -> the transformers class name of :data:`ADAPTERS` that loads it.
MODEL_TYPES = {adapter.model_type: name for name, adapter in ADAPTERS.items()}


def adapter_for(model) -> HFAdapter:
    """The adapter of a stock transformers model (by class, walking its bases)."""
    for cls in type(model).__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__](model)
    raise ValueError(f"aot_integrations.hf supports {sorted(ADAPTERS)}; got {type(model).__name__}")
