"""One instrumented time-to-first-token pass through the LLaVA model, stage by stage.

The visual stages are reported by the model's own video path (``model.video_sequence``, the one
path of :mod:`aot.video_path` that ``prepare_inputs_labels_for_multimodal`` runs), so the benchmark
cannot measure a different sequence than the model reads:

* ``vision``: the SigLIP tower (with AOT: attention capture at its two layers);
* ``projector``: mlp2x_gelu on all 729 patches of every frame;
* ``reduce``: the model's reducer (AOT: ``intra_stage`` + ``inter_stage``) + newline packing
  (full model: LLaVA's native 2x2 pooling + newline packing);
* ``splice``: text embedding and splicing of the visual tokens;
* ``prefill``: the LLM forward over the whole sequence (KV cache on, last-position logits) and
  the greedy first token.

Time to first token is the sum. Decoding continues greedily from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.llava_arch import splice_visual_tokens

from aot.video_path import StageClock, synchronize

from .timing import PeakMemory

STAGES = ("vision", "projector", "reduce", "splice", "prefill")


@dataclass
class PassResult:
    """Seconds per stage, time to first token, decode seconds, sequence sizes, peak memory."""

    stages: dict[str, float]
    ttft: float
    decode_seconds: float
    decode_tokens: int
    visual_tokens: int
    newline_tokens: int
    seq_len: int
    peak_bytes: int
    peak_rise_bytes: int
    extra: dict = field(default_factory=dict)


def make_input_ids(text_tokens: int, vocab: int, device: torch.device, seed: int = 0):
    """(1, text_tokens + 1) ids: a quarter of the text, the ``<image>`` placeholder, the rest
    (like a system prompt before and a question after the video)."""
    if text_tokens < 0:
        raise ValueError(f"text_tokens={text_tokens}: expected >= 0")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (text_tokens,), generator=generator)
    before = text_tokens // 4
    placeholder = torch.tensor([IMAGE_TOKEN_INDEX])
    return torch.cat([ids[:before], placeholder, ids[before:]])[None].to(device)


@torch.no_grad()
def ttft_pass(model, pixels: torch.Tensor, input_ids: torch.Tensor,
              decode_tokens: int = 0) -> PassResult:
    """Run one video + prompt to the first token (and ``decode_tokens`` more), timed by stage,
    under the model's own reduction (``model.set_aot``): the visual sequence comes from the
    model's one video path (:mod:`aot.video_path`), timed through its stage callback."""
    device = pixels.device
    embed = model.get_model().embed_tokens
    with PeakMemory(device) as memory:
        clock = StageClock(device)
        sequence = model.video_sequence(pixels, on_stage=clock.lap)
        embeds, _, _, _, kind_map = splice_visual_tokens(
            input_ids, None, None, [sequence.tokens], embed,
            max_length=getattr(model.config, "tokenizer_model_max_length", None),
            padding_side="right",
            kinds=[model.item_kinds(sequence.tokens.shape[0], "video")])
        # model(inputs_embeds=...) skips prepare_inputs_labels_for_multimodal, so an installed
        # LLM stage learns where the video is from the same note that path leaves
        model.note_visual_map(kind_map, [pixels.shape[0]
                                         * model.video_adapter().pooled_per_frame])
        clock.lap("splice")
        out = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1)
        clock.lap("prefill")
    ttft = clock.total
    decode_seconds = decode(model, out.past_key_values, token, decode_tokens, device)
    return PassResult(stages=dict(clock.stages), ttft=ttft, decode_seconds=decode_seconds,
                      decode_tokens=decode_tokens, visual_tokens=sequence.visual_tokens,
                      newline_tokens=sequence.newline_tokens, seq_len=embeds.shape[1], peak_bytes=memory.peak,
                      peak_rise_bytes=memory.rise, extra={"memory_kind": memory.kind})


def decode(model, cache, token: torch.Tensor, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` greedy decode steps from ``cache`` (one token at a time)."""
    if steps <= 0:
        return 0.0
    clock = StageClock(device)
    for _ in range(steps):
        out = model(input_ids=token[:, None], past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1)
    synchronize(device)
    return clock.lap("decode")


# ------------------------------------------------------------------ Qwen2.5-VL (aot_integrations.hf)
def qwen_grid(shape, frames: int, size) -> tuple[int, int, int]:
    """(t, h, w) ``video_grid_thw`` of ``frames`` frames of ``size`` px (an int: square, or
    (height, width); multiples of patch x merge): the processor pads the frames to a multiple of
    the temporal patch."""
    height, width = (size, size) if isinstance(size, int) else size
    factor = shape.patch_size * shape.merge_size
    if min(height, width) < factor or height % factor or width % factor:
        raise ValueError(f"Qwen frame size {height}x{width}: expected positive multiples of "
                         f"{factor} px")
    t = -(-frames // shape.temporal_patch_size)
    return t, height // shape.patch_size, width // shape.patch_size


#: Tokens :func:`make_qwen_inputs` puts around one video's ``<video_pad>`` run (``<vision_start>``,
#: ``<vision_end>``): the sequence is visual tokens + these + the text tokens.
VIDEO_DELIMITER_TOKENS = 2


def make_qwen_inputs(shape, frames: int, size, text_tokens: int, device: torch.device,
                     dtype: torch.dtype, seed: int = 0) -> dict:
    """One video as ``Qwen2_5_VLProcessor`` lays it out: a quarter of ``text_tokens`` random
    text ids, ``<vision_start>``, t*h*w/4 ``<video_pad>``, ``<vision_end>``, the rest; random
    patches (t*h*w, 3*2*14*14) in ``dtype``; video_grid_thw; second_per_grid_ts (2 fps
    sampling); mm_token_type_ids."""
    from .configs import qwen_token_ids

    ids_of = qwen_token_ids(shape)
    t, h, w = qwen_grid(shape, frames, size)
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(0, min(ids_of.values()), (text_tokens,), generator=generator)
    before = text_tokens // 4
    run = torch.tensor([ids_of["vision_start_token_id"]]
                       + [ids_of["video_token_id"]] * (t * h * w // shape.merge_size ** 2)
                       + [ids_of["vision_end_token_id"]])
    ids = torch.cat([text[:before], run, text[before:]])[None]
    pixels = torch.randn(t * h * w, 3 * shape.temporal_patch_size * shape.patch_size ** 2,
                         generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values_videos": pixels.to(device, dtype),
            "video_grid_thw": torch.tensor([[t, h, w]], device=device),
            "second_per_grid_ts": torch.tensor([shape.temporal_patch_size / 2.0], device=device),
            "mm_token_type_ids": (ids == ids_of["video_token_id"]).long().mul(2).to(device)}


@torch.no_grad()
def qwen_ttft_pass(model, inputs: dict, decode_tokens: int = 0) -> PassResult:
    """One video + prompt to the first token on transformers' Qwen2.5-VL, under whatever
    :func:`aot_integrations.hf.apply` installed (nothing: the stock model). Stages come from hooks on the
    model's modules: ``vision`` (the ViT and its merger, with attention capture when reducing),
    ``reduce`` (aot_integrations.hf's reduction, packing and positions; for the stock model its placeholder
    scatter and ``get_rope_index``), ``prefill`` (the language model and the first token).
    ``projector`` and ``splice`` are part of those (0 here)."""
    device = inputs["input_ids"].device
    video_token = model.config.video_token_id
    seen: dict = {}

    def vision_done(module, args, output):
        clock.lap("vision")

    def llm_start(module, args, kwargs):
        if "embeds" not in seen:
            seen["embeds"] = kwargs["inputs_embeds"].shape[1]
            clock.lap("reduce")

    def record_ids(module, args, kwargs):
        seen.setdefault("ids", kwargs.get("input_ids"))

    hooks = [model.model.visual.register_forward_hook(vision_done),
             model.model.language_model.register_forward_pre_hook(llm_start, with_kwargs=True),
             model.model.register_forward_pre_hook(record_ids, with_kwargs=True)]
    try:
        with PeakMemory(device) as memory:
            clock = StageClock(device)
            out = model(**inputs, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1)
            clock.lap("prefill")
    finally:
        for hook in hooks:
            hook.remove()
    ttft = clock.total
    decode_seconds = decode(model, out.past_key_values, token, decode_tokens, device)
    visual = int((seen["ids"] == video_token).sum())
    return PassResult(stages=dict(clock.stages), ttft=ttft, decode_seconds=decode_seconds,
                      decode_tokens=decode_tokens, visual_tokens=visual, newline_tokens=0,
                      seq_len=seen["embeds"], peak_bytes=memory.peak,
                      peak_rise_bytes=memory.rise, extra={"memory_kind": memory.kind})
