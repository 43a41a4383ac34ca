"""transformers' Qwen-VL family (Qwen2.5-VL, Qwen3-VL) as adapters of the one video path."""

from __future__ import annotations

import math

import torch

from aot.anchors import attend_and_receive
from aot.result import ReducedVideo
from aot.video_path import Encoded

from .base import HFAdapter, relative_layers
from .capture import capturing


def qwen_vision_received(module, args, kwargs) -> torch.Tensor:
    """Received attention of a Qwen2.5-VL / Qwen3-VL vision attention module's input.

    hidden_states: (S, C) the packed patches of every image/video (in the tower's order: window
    order for Qwen2.5-VL), with ``cu_seqlens`` the attention segments of that block (one frame
    per temporal patch in a full-attention block, one window in a windowed block) and
    ``position_embeddings`` (cos, sin). Returns (S,) float32 in the same order: the attention
    each patch receives inside its segment (sum over queries, mean over heads).
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    hidden = args[0] if args else kwargs["hidden_states"]
    cu_seqlens = kwargs["cu_seqlens"]
    cos, sin = kwargs["position_embeddings"]
    seq = hidden.shape[0]
    qkv = module.qkv(hidden).reshape(seq, 3, module.num_heads, -1).permute(1, 0, 2, 3)
    q, k = apply_rotary_pos_emb_vision(qkv[0], qkv[1], cos, sin)
    out = torch.empty(seq, dtype=torch.float32, device=hidden.device)
    bounds = cu_seqlens.tolist()
    for start, stop in zip(bounds[:-1], bounds[1:]):
        qs = q[start:stop].transpose(0, 1)[None]  # (1, heads, n, d)
        ks = k[start:stop].transpose(0, 1)[None]
        out[start:stop] = attend_and_receive(qs, ks, None, module.scaling)[0][0]
    return out


class Qwen25VLAdapter(HFAdapter):
    """``Qwen2_5_VLForConditionalGeneration``: windowed ViT, 2x2 merger (its own pooling: AOT
    pools nothing), one AOT frame per temporal patch (two video frames), M-RoPE positions."""

    backbone_name = "qwen2_5_vl"
    model_type = "qwen2_5_vl"
    video_keys = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    video_source = "video_grid_thw"
    grouped_runs = True

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

    def video_pieces(self, inputs: dict) -> list[list[int]]:
        """One run of t*h*w/4 placeholders per video (:meth:`grid_rows` checks the inputs)."""
        merge = self.visual.spatial_merge_size
        return [[t * h * w // merge ** 2] for t, h, w in self.grid_rows(inputs)]

    def token_grids(self, inputs: dict) -> list[tuple[int, int]]:
        """The merged-token grid (h/2, w/2) of every video."""
        merge = self.visual.spatial_merge_size
        return [(h // merge, w // merge) for _, h, w in inputs["video_grid_thw"].tolist()]

    def grid_rows(self, inputs: dict) -> list[list[int]]:
        """video_grid_thw as a list of (t, h, w), after checking it against pixel_values_videos
        and ``mm_token_type_ids`` against ``input_ids``."""
        grid = inputs.get("video_grid_thw")
        if grid is None:
            raise ValueError("aot_integrations.hf: pixel_values_videos came without video_grid_thw "
                             "(the (t, h, w) patches of each video, which the processor writes "
                             "beside them); pass the processor's output unchanged")
        if (not isinstance(grid, torch.Tensor) or grid.dim() != 2 or grid.shape[0] < 1
                or grid.shape[1] != 3 or grid.is_floating_point() or grid.dtype == torch.bool):
            shape = (f"shape {tuple(grid.shape)} and dtype {grid.dtype}"
                     if isinstance(grid, torch.Tensor) else f"type {type(grid).__name__}")
            raise ValueError(f"aot_integrations.hf: video_grid_thw has {shape}; expected a "
                             "(videos, 3) integer tensor, (t, h, w) patches per video, as the "
                             "processor writes it")
        rows = grid.tolist()
        merge = self.visual.spatial_merge_size
        for index, (t, h, w) in enumerate(rows):
            if min(t, h, w) < 1 or h % merge or w % merge:
                raise ValueError(f"aot_integrations.hf: video_grid_thw[{index}] = {[t, h, w]}: "
                                 f"expected t, h, w >= 1 with h and w multiples of "
                                 f"spatial_merge_size={merge}")
        vision = self.model.config.vision_config
        width = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
        patches = sum(t * h * w for t, h, w in rows)
        pixels = inputs["pixel_values_videos"]
        if not isinstance(pixels, torch.Tensor) or tuple(pixels.shape) != (patches, width):
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"aot_integrations.hf: pixel_values_videos has shape {shape} but "
                             f"video_grid_thw {rows} needs ({patches}, {width}): one row per "
                             "patch (the sum of t*h*w); pass the processor's output unchanged")
        self._check_token_types(inputs)
        return rows

    def _check_token_types(self, inputs: dict) -> None:
        """mm_token_type_ids (2 on video placeholders) must be there and agree with input_ids:
        the M-RoPE positions are built from it."""
        types = inputs.get("mm_token_type_ids")
        ids = inputs["input_ids"]
        if types is None:
            raise ValueError("aot_integrations.hf: Qwen inputs with videos need mm_token_type_ids "
                             "(0 text, 1 image, 2 video per token), which the transformers 5.x "
                             "processor writes; pass the processor's output unchanged (without "
                             "it, M-RoPE positions cannot be built)")
        if not isinstance(types, torch.Tensor) or types.shape != ids.shape:
            shape = tuple(types.shape) if isinstance(types, torch.Tensor) else type(types).__name__
            raise ValueError(f"aot_integrations.hf: mm_token_type_ids has shape {shape} but "
                             f"input_ids {tuple(ids.shape)}; pass the processor's output unchanged")
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        placeholders = (ids == self.video_token_id) & mask
        marked = (types.to(ids.device) == 2) & mask
        if not torch.equal(placeholders, marked):
            raise ValueError(f"aot_integrations.hf: mm_token_type_ids marks {int(marked.sum())} "
                             f"video tokens (value 2) but input_ids hold {int(placeholders.sum())} "
                             f"video placeholders ({int((placeholders != marked).sum())} columns "
                             "differ); pass the processor's input_ids and mm_token_type_ids "
                             "unchanged")

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

    def check_inputs(self, inputs: dict) -> None:
        super().check_inputs(inputs)
        seconds = inputs.get("second_per_grid_ts")
        if seconds is not None and "second_per_grid_ts" in self.video_keys:
            videos = inputs["video_grid_thw"].shape[0]
            values = seconds.tolist() if hasattr(seconds, "tolist") else seconds
            if (not isinstance(values, (list, tuple)) or len(values) != videos or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and v > 0 for v in values)):
                raise ValueError(f"aot_integrations.hf: second_per_grid_ts={values!r}: expected "
                                 f"{videos} positive numbers of seconds, one per video of "
                                 "video_grid_thw (the processor's output)")

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

    def video_pieces(self, inputs: dict) -> list[list[int]]:
        """One run of h*w/4 placeholders per temporal patch (its timestamp text between)."""
        merge = self.visual.spatial_merge_size
        return [[h * w // merge ** 2] * t for t, h, w in self.grid_rows(inputs)]

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
