"""transformers' Qwen-VL family (Qwen2.5-VL, Qwen3-VL) as adapters of the one video path."""

from __future__ import annotations

import contextlib
import functools
import math

import torch

from aot.anchors import attend_and_receive
from aot.result import ReducedVideo
from aot.video_path import Encoded

from .base import HFAdapter, relative_layers
from ..capture import capturing


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


def qwen_probe_attention(module, args, kwargs, unit: int = 4) -> torch.Tensor:
    """FastVID's Qwen2.5-VL stand-in for a pooling head's attention, from a vision attention
    module's input (its release computes it in the last block, ``modeling_qwen2_5_vl.py`` L193).

    Per attention segment (a frame in a full-attention block): one query, the mean of the
    segment's queries after RoPE, against one key per merge group, the mean of its ``unit``
    consecutive keys; softmax over the groups (scaled by 1/sqrt(head_dim)), averaged over heads.
    Returns (S / unit,) float32, one value per merge group in the tower's order.
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    hidden = args[0] if args else kwargs["hidden_states"]
    cos, sin = kwargs["position_embeddings"]
    seq = hidden.shape[0]
    qkv = module.qkv(hidden).reshape(seq, 3, module.num_heads, -1).permute(1, 0, 2, 3)
    q, k = apply_rotary_pos_emb_vision(qkv[0], qkv[1], cos, sin)
    bounds = kwargs["cu_seqlens"].tolist()
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        query = q[start:stop].float().mean(0)                                   # (heads, d)
        keys = k[start:stop].float().view(-1, unit, *k.shape[1:]).mean(1)       # (groups, heads, d)
        logits = torch.einsum("hd,ghd->hg", query, keys) * module.scaling
        out.append(logits.softmax(-1).mean(0))
    return torch.cat(out)


def qwen_vision_keys(module, args, kwargs) -> torch.Tensor:
    """Key states of a Qwen2.5-VL / Qwen3-VL vision attention module's input, averaged over
    heads, before the rotary embedding.

    hidden_states: (S, C) packed patches. Returns (S, head_dim) in the module's dtype, in the
    tower's order; only the key third of the fused qkv projection runs. The keys are taken before
    rotary: RoPE rotates each patch's key by its position, so the cosine similarity VisionZip's
    contextual merge takes would mix where two patches are with what they show (SigLIP's keys,
    which the release compares, carry position only through the embeddings added at the input).
    """
    hidden = args[0] if args else kwargs["hidden_states"]
    dim = module.qkv.in_features
    bias = None if module.qkv.bias is None else module.qkv.bias[dim:2 * dim]
    keys = torch.nn.functional.linear(hidden, module.qkv.weight[dim:2 * dim], bias)
    return keys.view(hidden.shape[0], module.num_heads, -1).mean(1)


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

    def pooling_head(self):
        """None: the Qwen ViT has no attention-pooling head; :meth:`check_extra_inputs` accepts
        a reducer reading one anyway (the stand-ins of FastVID's Qwen2.5-VL port)."""
        return None

    def check_extra_inputs(self, reduction) -> None:
        """Always servable: ``head_attention`` / ``head_features`` are FastVID's Qwen stand-ins
        (:func:`qwen_probe_attention` at the last block; the mean merged token per frame);
        ``last_keys`` is the last block's keys (:func:`qwen_vision_keys`) averaged over each
        merged token's 2x2 patches, as its received attention is."""

    def _keyed(self, extra_inputs) -> dict:
        """layer -> module hooking the last block for ``last_keys``, if asked."""
        if "last_keys" not in extra_inputs:
            return {}
        return {self.vision_layers - 1: self.visual.blocks[-1].attn}

    def _probe(self, extra_inputs):
        """(layer -> module, compute) hooking the last block for ``head_attention``, if asked."""
        if "head_attention" not in extra_inputs:
            return {}
        unit = self.visual.spatial_merge_size ** 2
        return {self.vision_layers - 1: self.visual.blocks[-1].attn}, \
            functools.partial(qwen_probe_attention, unit=unit)

    def _encode_batch(self, inputs: dict, layers: tuple[int, ...],
                      extra_inputs: tuple[str, ...] = ()) -> list[Encoded]:
        """Packed patches + video_grid_thw (V, 3) -> one :class:`Encoded` per video: (t, h*w/4, D)
        merger outputs (the LLM's tokens), received attention per merged token (mean over its
        2x2 patches) at ``layers``, and the ``extra_inputs`` (:meth:`_split`)."""
        from transformers.vision_utils import get_vision_window_index

        visual = self.visual
        grid_thw = inputs["video_grid_thw"]
        pixels = inputs["pixel_values_videos"].type(visual.dtype)
        modules = {index: visual.blocks[index].attn for index in layers}
        probe = self._probe(extra_inputs)
        keyed = self._keyed(extra_inputs)
        with capturing(modules, qwen_vision_received) as sinks, \
                capturing(*probe) if probe else _nothing() as probed, \
                capturing(keyed, qwen_vision_keys) as keys:
            merged = visual(pixels, grid_thw=grid_thw).pooler_output
        unit = visual.spatial_merge_size ** 2
        received = {}
        if layers or probe or keyed:
            window_index, _ = get_vision_window_index(
                grid_thw, spatial_merge_size=visual.spatial_merge_size,
                window_size=visual.window_size, patch_size=visual.patch_size)
            restore = torch.argsort(window_index.to(merged.device))
            for index in layers:
                patches = sinks[index][0]
                received[index] = patches.view(-1, unit)[restore].mean(1)
        attention = probed[self.vision_layers - 1][0][restore] if probe else None
        last_keys = None
        if keyed:
            patches = keys[self.vision_layers - 1][0]
            last_keys = patches.view(-1, unit, patches.shape[-1])[restore].mean(1)
        return self._split(merged, grid_thw, received, extra_inputs, attention, last_keys)

    def _split(self, merged, grid_thw, received, extra_inputs=(), probe=None,
               keys=None) -> list[Encoded]:
        """Packed (sum t*h*w/4, C) merger outputs and received attention -> one Encoded per
        video, (t, h*w/4, C) on its own (h/2, w/2) grid of merged tokens (native resolution:
        landscape, portrait or square, each video its own). ``extra_inputs``: ``head_attention``
        from ``probe`` (packed, one value per merged token), ``head_features`` the mean merged
        token of each frame on the main channels (FastVID's Qwen2.5-VL port), ``last_keys`` from
        ``keys`` (packed, (sum t*h*w/4, head_dim), one row per merged token)."""
        merge = self.visual.spatial_merge_size
        main = self.model_fields().get("similarity_channels")
        encoded = []
        start = 0
        for t, h, w in grid_thw.tolist():
            rows, cols = h // merge, w // merge
            count = t * rows * cols
            stop = start + count
            features = merged[start:stop].view(t, rows * cols, -1)
            extra = {}
            if "head_attention" in extra_inputs:
                extra["head_attention"] = probe[start:stop].view(t, rows * cols)
            if "head_features" in extra_inputs:
                extra["head_features"] = features[..., :main].float().mean(1)
            if "last_keys" in extra_inputs:
                extra["last_keys"] = keys[start:stop].view(t, rows * cols, -1)
            encoded.append(Encoded(
                features, (rows, cols),
                {index: attention[start:stop].view(t, rows * cols)
                 for index, attention in received.items()}, extra))
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

    def _encode_batch(self, inputs: dict, layers: tuple[int, ...],
                      extra_inputs: tuple[str, ...] = ()) -> list[Encoded]:
        visual = self.visual
        grid_thw = inputs["video_grid_thw"]
        pixels = inputs["pixel_values_videos"].type(visual.dtype)
        modules = {index: visual.blocks[index].attn for index in layers}
        probe = self._probe(extra_inputs)
        keyed = self._keyed(extra_inputs)
        with capturing(modules, qwen_vision_received) as sinks, \
                capturing(*probe) if probe else _nothing() as probed, \
                capturing(keyed, qwen_vision_keys) as keys:
            out = visual(pixels, grid_thw=grid_thw, return_dict=True)
        merged = torch.cat([out.pooler_output, *out.deepstack_features], dim=-1)
        unit = visual.spatial_merge_size ** 2
        received = {index: sinks[index][0].view(-1, unit).mean(1) for index in layers}
        attention = probed[self.vision_layers - 1][0] if probe else None
        last_keys = None
        if keyed:
            patches = keys[self.vision_layers - 1][0]
            last_keys = patches.view(-1, unit, patches.shape[-1]).mean(1)
        return self._split(merged, grid_thw, received, extra_inputs, attention, last_keys)

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


@contextlib.contextmanager
def _nothing():
    yield {}
