"""AOT (or any registry reducer, exact mode) inside vLLM's Qwen2.5-VL.

:class:`AOTQwen2_5_VLProcessor` reads the request's options (:mod:`aot_integrations.vllm.options`), ships them
to the model as two per-video fields and sizes the video's placeholders with
:func:`aot.serving.reduced_token_count`. :class:`AOTQwen2_5_VLForConditionalGeneration` runs
vLLM's own vision tower, capturing the attention each patch receives at the reducer's two layers
(:func:`vision_received`), reduces each video with :func:`aot.video_path.reduce` and returns the
kept tokens with their unreduced M-RoPE positions in the four extra channels vLLM's video pruning
(EVS) already carries, so vLLM's ``recompute_mrope_positions`` places them.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder, Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor, Qwen2_5_VLProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement
from vllm.multimodal.video_prune.evs import compute_mrope_for_media

from aot.anchors import received_attention
from aot.backbones import get_backbone, relative_layers
from aot.serving import kept_slots, reduced_token_count
from aot.settings import settings_for
from aot.video_path import Encoded, Reduction, reduce

from ..capture import capturing
from .common import (RETENTION, UNREDUCED, check_count, check_layers, check_pixel_videos,
                     embed_media, option_fields, server_overrides, video_reductions,
                     with_option_fields, without_options)
from .options import parse_options

BACKBONE = "qwen2_5_vl"


class AOTQwen2_5_VLProcessor(Qwen2_5_VLMultiModalProcessor):
    """The stock processor, plus the request's reduction per video and the reduced placeholder
    count."""

    def _call_hf_processor(self, hf_data, hf_kwargs):
        merged = self.info.ctx.get_merged_mm_kwargs(hf_kwargs)
        options = parse_options(merged)
        out = self.info.ctx.call_hf_processor(
            self.info.get_hf_processor(**without_options(hf_kwargs)), hf_data,
            without_options(merged))
        if "video_grid_thw" in out:
            out.update(option_fields(options, out["video_grid_thw"].shape[0]))
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        return with_option_fields(
            super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs), MultiModalFieldConfig)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        stock = without_options(hf_processor_mm_kwargs)
        updates = [update for update in super()._get_prompt_updates(mm_items, stock, out_mm_kwargs)
                   if update.modality != "video"]
        hf_processor = self.info.get_hf_processor(**stock)
        video_token = self.info.get_tokenizer().get_vocab()[hf_processor.video_token]

        def replacement(item_idx: int) -> list[int]:
            item = out_mm_kwargs["video"][item_idx]
            return [video_token] * video_token_count(item["video_grid_thw"].data,
                                                     float(item[RETENTION].data))

        return updates + [PromptReplacement(modality="video", target=[video_token],
                                            replacement=replacement)]


def video_token_count(grid_thw: torch.Tensor, retention: float) -> int:
    """Placeholders of one video: ``reduced_token_count`` of its (t, h, w) grid in patches, or
    the unreduced t*h*w/4 when ``retention`` is :data:`UNREDUCED`."""
    t, h, w = (int(v) for v in grid_thw.tolist())
    if retention == UNREDUCED:
        merge = get_backbone(BACKBONE).patch_merge
        return t * (h // merge) * (w // merge)
    return reduced_token_count(BACKBONE, (t, h, w), retention)


def vision_received(module, args, kwargs) -> torch.Tensor:
    """Received attention of a vLLM ``Qwen2_5_VisionAttention`` call.

    The input x is (S, 1, C), the tower's packed patches in its window order; ``cu_seqlens``
    bounds the attention segments of that block (a frame in a full-attention block, a window in a
    windowed one). q and k are recomputed from x with the module's own projection and rotary
    embedding; the softmax of one segment at a time is materialised in float32. Returns (S,)
    float32: the attention each patch receives inside its segment (sum over queries, mean over
    heads), in the input's order.
    """
    x = args[0] if args else kwargs["x"]
    cu_seqlens = kwargs["cu_seqlens"]
    cos, sin = kwargs["rotary_pos_emb_cos"], kwargs["rotary_pos_emb_sin"]
    heads = module.num_attention_heads_per_partition
    head_dim = module.hidden_size_per_attention_head
    qkv, _ = module.qkv(x)
    seq, batch, _ = qkv.shape
    qk = qkv.view(seq, batch, 3, heads, head_dim)[:, :, :2]          # (S, 1, 2, H, d)
    qk = qk.permute(2, 1, 0, 3, 4).reshape(2 * batch, seq, heads, head_dim).contiguous()
    q, k = module.apply_rotary_emb(qk, cos, sin).view(2, batch, seq, heads, head_dim)[:, 0]
    out = torch.empty(seq, dtype=torch.float32, device=x.device)
    bounds = cu_seqlens.tolist()
    for start, stop in zip(bounds[:-1], bounds[1:]):
        qs = q[start:stop].transpose(0, 1).float()                    # (H, n, d)
        ks = k[start:stop].transpose(0, 1).float()
        probs = (torch.matmul(qs, ks.transpose(-1, -2)) * head_dim ** -0.5).softmax(-1)
        out[start:stop] = received_attention(probs[None])[0]
    return out


def anchor_layers(vision_config) -> tuple[int, int]:
    """(shallow, deep) vision blocks AOT reads on a Qwen2.5-VL tower: the first and last
    full-attention blocks (the windowed ones between only see 112-px windows), else the paper's
    relative layers; the same choice ``aot_integrations.hf.config_for`` makes."""
    full = sorted(vision_config.fullatt_block_indexes or ())
    if not full:
        return relative_layers(vision_config.depth)
    return full[0], full[-1]


def mrope_channels(grid_thw: list[int], merge: int, tokens_per_second: float,
                   second_per_grid: float) -> torch.Tensor:
    """(N, 4) long for the N = t*h*w/merge^2 tokens of one unreduced video: its (t, h, w) M-RoPE
    positions counted from the video's start, then, in every row, the offset from the video's
    start at which the text after it continues, the fourth channel vLLM's
    ``recompute_mrope_positions`` reads.

    The offset is max(h, w) / merge, transformers' ``get_rope_index`` rule (the text after a
    video does not move with its duration); the text after a reduced video keeps it, so the
    positions are those of the transformers integration. (vLLM's EVS writes w / merge, the same
    for landscape frames; stock vLLM without pruning continues after the largest (t, h, w).)"""
    positions = compute_mrope_for_media(torch.tensor(grid_thw), merge,
                                        tokens_per_second=tokens_per_second,
                                        video_second_per_grid=second_per_grid)
    positions[:, 3] = max(grid_thw[1], grid_thw[2]) // merge
    return positions


@MULTIMODAL_REGISTRY.register_processor(AOTQwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class AOTQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with each video reduced as its request asks (:mod:`aot_integrations.vllm.options`).

    Every media embedding carries four position channels (vLLM's pruning layout), so the model
    runner recomputes M-RoPE positions (:func:`aot_integrations.vllm.patch_model_runners`).
    """

    def __init__(self, *, vllm_config, prefix: str = ""):
        if vllm_config.model_config.multimodal_config.is_multimodal_pruning_enabled():
            raise ValueError("aot_integrations.vllm: --video-pruning-rate turns on vLLM's EVS, which would "
                             "prune the videos a second time; leave it unset (AOT's retention is "
                             "the aot_retention key of --mm-processor-kwargs)")
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.is_multimodal_pruning_enabled = True
        self.aot_overrides = server_overrides(self.config)
        # refuse bad server settings at start, not per request
        check_layers(self._reduction(1.0, "aot"), len(self.visual.blocks))

    def _postprocess_image_embeds_evs(self, image_embeds_split, image_input):
        """Each image's embeddings with its four position channels, the fourth being the
        offset of the text after it: max(h, w) / merge, where stock vLLM and transformers
        continue (vLLM's EVS writes w / merge, which moves the text after a portrait image)."""
        merge = self.visual.spatial_merge_size
        out = []
        for embeds, (t, h, w) in zip(image_embeds_split, image_input["image_grid_thw"].tolist()):
            positions = compute_mrope_for_media(torch.tensor([t, h, w]), merge)
            positions[:, 3] = max(h, w) // merge
            out.append(torch.cat([embeds, positions.to(embeds.device, embeds.dtype)], dim=1))
        return tuple(out)

    def embed_multimodal(self, **kwargs):
        """Image embeddings as stock; each video reduced (:meth:`_embed_videos`); every item
        with its four position channels."""
        return embed_media(self, kwargs, lambda inputs: self._postprocess_image_embeds_evs(
            self._process_image_input(inputs), inputs))

    def _embed_videos(self, video_input, retention, reducer) -> tuple[torch.Tensor, ...]:
        """The tower on every video at once (received attention captured at the layers the
        reductions read), then per video: the reducer's kept tokens (t*h*w/4 when unreduced),
        each with its unreduced position channels (:func:`mrope_channels`)."""
        check_pixel_videos(video_input, self.use_data_parallel)
        visual = self.visual
        grid = video_input["video_grid_thw"].tolist()
        reductions = video_reductions(retention, reducer, len(grid), self._reduction)
        layers = sorted({layer for reduction in reductions if reduction is not None
                         for layer in reduction.layers})
        metadata = visual.prepare_encoder_metadata(grid)
        with torch.no_grad(), capturing({layer: visual.blocks[layer].attn for layer in layers},
                                        vision_received) as sinks:
            merged = visual(video_input["pixel_values_videos"], grid_thw=grid,
                            encoder_metadata=metadata)
        unit = visual.spatial_merge_unit
        order = metadata["reverse_indices"].to(merged.device)
        received = {layer: sinks[layer][0].view(-1, unit)[order].mean(1) for layer in layers}
        seconds = video_input.get("second_per_grid_ts")
        merge = visual.spatial_merge_size
        out, start = [], 0
        for index, ((t, h, w), reduction) in enumerate(zip(grid, reductions)):
            rows, cols = h // merge, w // merge
            stop = start + t * rows * cols
            per_second = 1.0 if seconds is None else float(seconds[index])
            positions = mrope_channels([t, h, w], merge,
                                       self.config.vision_config.tokens_per_second, per_second)
            tokens = merged[start:stop]
            if reduction is not None:
                encoded = Encoded(tokens.view(t, rows * cols, -1), (rows, cols),
                                  {layer: att[start:stop].view(t, rows * cols)
                                   for layer, att in received.items()})
                result = reduce(encoded, reduction)
                check_count(result, reduced_token_count(BACKBONE, (t, h, w), reduction.config),
                            reduction.reducer, index)
                tokens = result.tokens.to(merged.dtype)
                positions = positions[kept_slots(result, rows * cols)]
            out.append(torch.cat([tokens, positions.to(tokens.device, tokens.dtype)], dim=1))
            start = stop
        return tuple(out)

    def _reduction(self, retention: float, reducer: str) -> Reduction:
        """The exact-mode :class:`Reduction` at ``retention``: the settings
        ``aot_integrations.hf.config_for`` gives the same checkpoint (layers of
        :func:`anchor_layers`, the backbone's pooling)."""
        backbone = get_backbone(BACKBONE)
        config = settings_for(backbone, retention, exact=True,
                              layers=anchor_layers(self.config.vision_config),
                              **{"pooling": backbone.pooling, **self.aot_overrides})
        return Reduction(config, reducer)

