"""AOT (or any registry reducer, exact mode) inside vLLM's LLaVA-OneVision.

LLaVA-OneVision's positions are 1-D, so only the count and the tokens matter: the processor
sizes each video's placeholders with :func:`aot.serving.reduced_token_count` (``"ov"``: frames x
pooled tokens kept, plus the one newline after the video), and the model runs vLLM's SigLIP
tower capturing the attention each patch receives at AOT's two layers
(:func:`siglip_received`), the projector, the reducer and the newline, as the transformers
integration's LLaVA-OneVision adapter does.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder, LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor, LlavaOnevisionProcessingInfo)
from vllm.model_executor.models.utils import WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement

from aot.anchors import received_attention
from aot.backbones import get_backbone, relative_layers
from aot.serving import reduced_token_count
from aot.settings import settings_for
from aot.video_path import Encoded, Reduction, reduce

from ..capture import capturing
from .common import (RETENTION, UNREDUCED, check_count, check_layers, embed_media, option_fields,
                     server_overrides, video_reductions, with_option_fields, without_options)
from .options import parse_options

BACKBONE = "ov"


class AOTLlavaOnevisionProcessor(LlavaOnevisionMultiModalProcessor):
    """The stock processor, plus the request's reduction per video and the reduced placeholder
    count."""

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        options = parse_options(self.info.ctx.get_merged_mm_kwargs(hf_kwargs))
        out = super()._apply_hf_processor_main(mm_items, without_options(hf_kwargs))
        if "pixel_values_videos" in out:
            out.update(option_fields(options, len(out["pixel_values_videos"])))
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        return with_option_fields(
            super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs), MultiModalFieldConfig)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        stock = without_options(hf_processor_mm_kwargs)
        updates = [update for update in super()._get_prompt_updates(mm_items, stock, out_mm_kwargs)
                   if update.modality != "video"]
        video_token = self.info.get_hf_config().video_token_index
        side = self.info.get_vision_encoder_info().get_patch_grid_length()

        def replacement(item_idx: int) -> list[int]:
            item = out_mm_kwargs["video"][item_idx]
            frames = item["pixel_values_videos"].data.shape[0]
            return [video_token] * video_token_count(frames, side, float(item[RETENTION].data))

        return updates + [PromptReplacement(modality="video", target=[video_token],
                                            replacement=replacement)]


def video_token_count(frames: int, side: int, retention: float) -> int:
    """Placeholders of one video of ``frames`` frames on a ``side`` x ``side`` patch grid:
    ``reduced_token_count`` (kept tokens + the newline), or frames x pooled + 1 unreduced."""
    if retention == UNREDUCED:
        backbone = get_backbone(BACKBONE)
        return (frames * backbone.pooled_per_frame((side, side))
                + backbone.newlines(frames, (side, side)))
    return reduced_token_count(BACKBONE, (frames, side, side), retention)


def siglip_received(module, args, kwargs) -> torch.Tensor:
    """Received attention of a vLLM ``SiglipAttention`` call.

    hidden_states: (N, T, C), one frame per row. q and k are recomputed with the module's own
    projection; the softmax of one frame at a time is materialised in float32. Returns (N, T)
    float32: the attention each patch receives (sum over queries, mean over heads).
    """
    hidden = args[0] if args else kwargs["hidden_states"]
    frames, tokens, _ = hidden.shape
    qkv, _ = module.qkv_proj(hidden)
    q, k, _ = qkv.chunk(3, dim=-1)
    heads = module.num_heads_per_partition
    out = []
    for frame in range(frames):
        qs = q[frame].view(tokens, heads, -1).transpose(0, 1).float()      # (H, T, d)
        ks = k[frame].view(tokens, heads, -1).transpose(0, 1).float()
        probs = (torch.matmul(qs, ks.transpose(-1, -2)) * module.scale).softmax(-1)
        out.append(received_attention(probs[None]))
    return torch.cat(out)


@MULTIMODAL_REGISTRY.register_processor(AOTLlavaOnevisionProcessor,
                                        info=LlavaOnevisionProcessingInfo,
                                        dummy_inputs=LlavaOnevisionDummyInputsBuilder)
class AOTLlavaOnevisionForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision with each video reduced as its request asks
    (:mod:`aot_integrations.vllm.options`)."""

    # transformers 5 saves the SigLIP tower without its ``vision_model`` level
    # (``vision_tower.encoder...``), which vLLM 0.32's mapper does not expect.
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={
        **LlavaOnevisionForConditionalGeneration.hf_to_vllm_mapper.orig_to_new_prefix,
        **{f"vision_tower.{part}.": f"vision_tower.vision_model.{part}."
           for part in ("embeddings", "encoder", "post_layernorm", "head")}})

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.aot_overrides = server_overrides(self.config)
        # refuse bad server settings at start, not per request
        check_layers(self._reduction(1.0, "aot"), len(self.vision_tower.vision_model.encoder.layers))

    def embed_multimodal(self, **kwargs):
        """Image embeddings as stock; each video through :meth:`_embed_videos`."""
        return embed_media(self, kwargs, self._process_image_input)

    def _embed_videos(self, video_input, retention, reducer) -> tuple[torch.Tensor, ...]:
        """Per video (F, 3, S, S) pixels -> (L, D): the stock pooled sequence when unreduced,
        else the tower with attention capture, the projector, the reducer's tokens, the newline."""
        pixels = video_input["pixel_values_videos"]
        videos = list(pixels) if isinstance(pixels, (list, tuple)) else list(pixels.unbind(0))
        reductions = video_reductions(retention, reducer, len(videos), self._reduction)
        newline = self.image_newline[None]
        out = []
        for index, (frames, reduction) in enumerate(zip(videos, reductions)):
            if reduction is None:
                pooled = self._video_pixels_to_features(self.vision_tower, frames)
                out.append(torch.cat([pooled.reshape(-1, pooled.shape[-1]),
                                      newline.to(pooled.dtype)]))
                continue
            layers = self.vision_tower.vision_model.encoder.layers
            with torch.no_grad(), capturing({layer: layers[layer].self_attn
                                             for layer in reduction.layers},
                                            siglip_received) as sinks:
                features = self.vision_tower(
                    frames, feature_select_strategy=self.config.vision_feature_select_strategy)
            features = self.multi_modal_projector(features)
            side = int(round(features.shape[1] ** 0.5))
            encoded = Encoded(features, side, {layer: sink[0] for layer, sink in sinks.items()})
            result = reduce(encoded, reduction)
            newlines = get_backbone(BACKBONE).newlines(len(frames), (side, side))
            check_count(result, reduced_token_count(BACKBONE, (len(frames), side, side),
                                                    reduction.config) - newlines,
                        reduction.reducer, index)
            out.append(torch.cat([result.tokens.to(features.dtype), newline.to(features.dtype)]))
        return tuple(out)

    def _reduction(self, retention: float, reducer: str) -> Reduction:
        """The exact-mode :class:`Reduction` at ``retention``: the settings
        ``aot_integrations.hf.config_for`` gives the same checkpoint (the paper's relative layers
        over the tower's blocks up to the one the projector reads, which is all vLLM builds; the
        backbone's pooling)."""
        backbone = get_backbone(BACKBONE)
        depth = len(self.vision_tower.vision_model.encoder.layers)
        config = settings_for(backbone, retention, exact=True, layers=relative_layers(depth),
                              **{"pooling": backbone.pooling, **self.aot_overrides})
        return Reduction(config, reducer)
