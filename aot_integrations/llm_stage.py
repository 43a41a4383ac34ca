"""Install an LLM stage (:mod:`aot.llm_stages`) on one model instance by hooks on its decoder.

::

    import aot, aot_integrations.llm_stage as llm_stage
    handle = llm_stage.install(model, aot.llm_stages.get_stage("fastv"))
    out = model.generate(...)          # as before; layers K.. see only the kept visual tokens
    handle.last.kept                   # kept visual tokens per row of the last prefill
    handle.remove()

Supported: our ``llava/`` models (``LlavaQwenForCausalLM``) and transformers'
``LlavaOnevisionForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
``Qwen3VLForConditionalGeneration`` (with or without :func:`aot_integrations.hf.apply`).

How (no modified decoder, no eager attention for the whole model):

* a pre-hook on the text model notes, per call, whether it is a prefill (empty cache) and where
  the visual tokens are (the host tells: placeholder ids on transformers models, the spliced
  columns on ours);
* a pre-hook on layer K-1's attention keeps its input; the pre-hook on layer K recomputes the
  last real token's query and every key of that one layer from it (the layer's own projections,
  norms and rotary), scores, selects, optionally merges, and hands layer K a shorter sequence:
  hidden states, rotary cos/sin and the attention mask gathered to the kept columns. Layers K..
  therefore cache only the kept tokens (transformers' DynamicCache is per layer), layers < K
  cache all of them, and every kept token keeps its original (M-)RoPE position;
* in generation the text model still builds masks for the full length (the cache of layer 0
  holds every token, so new positions continue as without the stage); the layer-K pre-hook maps
  each mask's key columns to the kept columns. Rows that keep fewer columns than the longest
  start with masked filler columns, like left padding.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from aot.llm_stages import LLMStageConfig, keep_index, last_query_attention, merge_dropped, \
    select_tokens

_ATTRIBUTE = "_aot_llm_stage"
VISUAL, NEWLINE = 1, 2


@dataclass
class StageRecord:
    """What the stage did in the last prefill (for inspection, tests and eval records).

    candidates / kept: per row, visual tokens that competed / survived.
    chosen: (B, L) bool, the surviving candidates (merge targets of a merging stage).
    keep: (B, L) bool, the original columns layers K.. still see.
    index, valid: (B, L') the new columns' original columns, and False on filler columns.
    scores: (B, L) float32 attention the last real token paid each column at layer K-1.
    real: (B, L) bool, the non-padding columns of the prompt.
    length: L, the prefill length.
    """

    candidates: list[int]
    kept: list[int]
    chosen: torch.Tensor
    keep: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor
    scores: torch.Tensor
    real: torch.Tensor
    length: int


class StageHandle:
    """What :func:`install` put on one model; ``remove()`` takes every hook off."""

    def __init__(self, model, config: LLMStageConfig, text_model, kinds_source,
                 unreduced_source):
        self.model, self.config, self.text_model = model, config, text_model
        self._kinds_source = kinds_source
        self._unreduced_source = unreduced_source
        self._unreduced = None
        self.last: StageRecord | None = None
        self._phase = None            # "prefill" / "decode" / None (stage idle for this call)
        self._kinds = None
        self._real = None
        self._captured = None
        self._rewritten = None        # the kwargs layers K.. get in this call
        self._hooks = []
        self._patched = []

    # ----------------------------------------------------------------- the text model's call
    def _begin(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids", args[0] if args else None)
        shaped = embeds if embeds is not None else ids
        cache = _cache(kwargs)
        self._rewritten = None
        if cache is not None and cache.get_seq_length() > 0:
            self._phase = "decode" if self.last is not None else None
            return None
        batch, length = shaped.shape[:2]
        kinds = self._kinds_source(kwargs, batch, length)
        if kinds is None:
            raise ValueError("LLM stage: cannot tell where the visual tokens are in this call "
                             "(inputs_embeds without the host's visual map); pass input_ids / "
                             "images as the model's own generate does")
        self._real = _real_tokens(kwargs.get("attention_mask"), batch, length, shaped.device)
        self._kinds = kinds.to(shaped.device) * self._real
        self.last, self._captured, self._unreduced = None, None, None
        self._phase = "prefill" if bool((self._kinds > 0).any()) else None
        if self._phase and self.config.final_retention is not None:
            self._unreduced = self._unreduced_source(self._kinds)
        if self._phase and cache is not None:
            _check_cache(cache, self.config.layer)
        return None

    def _capture(self, module, args, kwargs):
        if self._phase == "prefill":
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            self._captured = (hidden, kwargs["position_embeddings"])
        return None

    # ----------------------------------------------------------------- layers K.. inputs
    def _shrink(self, module, args, kwargs):
        if self._phase == "prefill":
            return self._shrink_prefill(args, kwargs)
        if self._phase == "decode":
            self._rewritten = {"attention_mask": self._decode_mask(kwargs)}
            kwargs.update(self._rewritten)
            return args, kwargs
        return None

    def _follow(self, module, args, kwargs):
        """Layers after K get the same rewritten mask (and rotary tables) as layer K: the text
        model hands every layer the full-length ones."""
        if self._phase is not None and self._rewritten is not None:
            kwargs.update(self._rewritten)
            return args, kwargs
        return None

    def _shrink_prefill(self, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        config = self.config
        with torch.no_grad():
            # a model split over devices (device_map) may hold layer K elsewhere than the input
            scores = self._scores().to(self._kinds.device)
            candidates = self._kinds == VISUAL
            if not config.newline_is_text:
                candidates |= self._kinds == NEWLINE
            chosen = select_tokens(scores, candidates, config, self._unreduced)
            dropped = candidates & ~chosen
            if config.merge:
                hidden = merge_dropped(hidden, chosen.to(hidden.device),
                                       dropped.to(hidden.device))
            keep = ~dropped
            index, valid = keep_index(keep)
        self.last = StageRecord(candidates.sum(1).tolist(), chosen.sum(1).tolist(), chosen,
                                keep, index, valid, scores, self._real, hidden.shape[1])
        self._captured = None
        gather = index.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
        hidden = hidden.gather(1, gather)
        cos, sin = kwargs["position_embeddings"]
        self._rewritten = {
            "position_embeddings": (_take(cos, index), _take(sin, index)),
            "attention_mask": _prefill_mask(kwargs.get("attention_mask"), index, valid,
                                            self._implementation(), hidden.dtype),
            # positions live in the gathered cos/sin; the layers' position_ids only feed
            # flash-attention's packed-sequence test, which would read the gaps as new sequences
            "position_ids": None}
        kwargs.update(self._rewritten)
        return (hidden,) + tuple(args[1:]), kwargs

    def _decode_mask(self, kwargs):
        record, cache = self.last, _cache(kwargs)
        queries = kwargs["position_embeddings"][0].shape[-2]
        new = cache.layers[self.config.layer].get_seq_length() - record.index.shape[1] + queries
        return _decode_mask(kwargs.get("attention_mask"), record, new, queries,
                            self._implementation(), self.text_model.dtype)

    def _scores(self) -> torch.Tensor:
        """(B, L) the attention the last real token pays each column at layer K-1, recomputed
        from that layer's input with its own projections, norms and rotary."""
        attention = self.text_model.layers[self.config.layer - 1].self_attn
        hidden, (cos, sin) = self._captured
        batch, length, _ = hidden.shape
        rows = torch.arange(batch, device=hidden.device)
        real = self._real.to(hidden.device)
        last = length - 1 - real.flip(1).int().argmax(dim=1)
        head_dim = attention.head_dim
        query = attention.q_proj(hidden[rows, last][:, None]).view(batch, 1, -1, head_dim)
        keys = attention.k_proj(hidden).view(batch, length, -1, head_dim)
        if hasattr(attention, "q_norm"):       # Qwen3: per-head RMSNorm before the rotary
            query, keys = attention.q_norm(query), attention.k_norm(keys)
        query, keys = query.transpose(1, 2), keys.transpose(1, 2)
        rotate = sys.modules[type(attention).__module__].apply_rotary_pos_emb
        last_index = last[:, None]
        query = rotate(query, query, _take(cos, last_index), _take(sin, last_index))[0]
        keys = rotate(keys, keys, cos, sin)[1]
        columns = torch.arange(length, device=hidden.device)
        key_mask = real & (columns[None] <= last[:, None])
        return last_query_attention(query[:, :, 0], keys, key_mask, attention.scaling)

    def _implementation(self) -> str:
        return self.text_model.config._attn_implementation

    # ----------------------------------------------------------------- Qwen3-VL DeepStack
    def _deepstack(self, original):
        def process(hidden_states, visual_pos_masks, visual_embeds):
            record = self.last
            if (self._phase == "prefill" and record is not None
                    and visual_pos_masks.shape[1] != hidden_states.shape[1]):
                flags = visual_pos_masks.to(hidden_states.device)
                index = record.index.to(flags.device)
                ordinal = (flags.flatten().long().cumsum(0) - 1).view_as(flags)
                kept = flags.gather(1, index) & record.valid.to(flags.device)
                visual_embeds = visual_embeds[ordinal.gather(1, index)[kept].to(
                    visual_embeds.device)]
                visual_pos_masks = kept
            return original(hidden_states, visual_pos_masks, visual_embeds)
        return process

    def remove(self) -> None:
        """Take the stage off the model (a ValueError when it is not installed)."""
        if getattr(self.model, _ATTRIBUTE, None) is not self:
            raise ValueError("LLM stage: this handle is not installed on its model")
        for hook in self._hooks:
            hook.remove()
        for module, name in self._patched:
            module.__dict__.pop(name, None)
        delattr(self.model, _ATTRIBUTE)


def install(model, stage: LLMStageConfig) -> StageHandle:
    """Install ``stage`` on ``model`` (an instance; the class is untouched); returns a
    :class:`StageHandle`. Raises ValueError for a layer out of range, a second stage, or a
    model whose decoder this module does not know."""
    if not isinstance(stage, LLMStageConfig):
        raise TypeError(f"LLM stage: expected an aot.llm_stages.LLMStageConfig, got "
                        f"{type(stage).__name__} (aot.llm_stages.get_stage(name) builds one)")
    if getattr(model, _ATTRIBUTE, None) is not None:
        raise ValueError("LLM stage: this model already has one; call handle.remove() first")
    text_model, kinds_source, unreduced_source, multimodal = _host(model)
    layers = len(text_model.layers)
    if not 1 <= stage.layer < layers:
        raise ValueError(f"LLM stage {stage.name!r}: layer={stage.layer} is out of range for "
                         f"a language model of {layers} layers (expected 1..{layers - 1})")
    handle = StageHandle(model, stage, text_model, kinds_source, unreduced_source)
    if multimodal is not None:
        handle._hooks.append(multimodal.register_forward_pre_hook(_record_ids(handle),
                                                                   with_kwargs=True))
    handle._hooks += [
        text_model.register_forward_pre_hook(handle._begin, with_kwargs=True),
        text_model.layers[stage.layer - 1].self_attn.register_forward_pre_hook(
            handle._capture, with_kwargs=True),
        text_model.layers[stage.layer].register_forward_pre_hook(handle._shrink,
                                                                 with_kwargs=True),
    ] + [layer.register_forward_pre_hook(handle._follow, with_kwargs=True)
         for layer in text_model.layers[stage.layer + 1:]]
    if hasattr(text_model, "_deepstack_process"):
        text_model._deepstack_process = handle._deepstack(text_model._deepstack_process)
        handle._patched.append((text_model, "_deepstack_process"))
    setattr(model, _ATTRIBUTE, handle)
    return handle


def remove(model) -> None:
    """Take the installed stage off ``model`` (a ValueError when none is installed)."""
    handle = getattr(model, _ATTRIBUTE, None)
    if handle is None:
        raise ValueError("LLM stage: none is installed on this model")
    handle.remove()


# --------------------------------------------------------------------------- hosts
def _host(model):
    """(text model with ``.layers``, kinds source, unreduced-count source, module whose pre-hook
    sees input_ids)."""
    if hasattr(model, "prepare_inputs_labels_for_multimodal") and hasattr(model.model, "layers"):
        return model.model, _llava_kinds(model), _llava_unreduced(model), None
    inner = getattr(model, "model", None)
    text = getattr(inner, "language_model", None)
    if text is not None and hasattr(text, "layers"):
        return text, None, _hf_unreduced(model), inner
    raise ValueError(f"LLM stage: {type(model).__name__} is not supported; expected a llava/ "
                     "LlavaQwenForCausalLM or transformers' LlavaOnevision / Qwen2.5-VL / "
                     "Qwen3-VL ForConditionalGeneration")


def _llava_kinds(model):
    def source(kwargs, batch, length):
        kinds = getattr(model, "last_visual_kinds", None)
        model.last_visual_kinds = None        # read once: a later text-only call is text
        if kinds is not None and tuple(kinds.shape) == (batch, length):
            return kinds
        if kwargs.get("input_ids") is not None:
            return torch.zeros(batch, length, dtype=torch.int8)
        return None
    return source


def _llava_unreduced(model):
    """Per row, the visual tokens before any reducer (frames x pooled tokens per video), as
    ``prepare_inputs_labels_for_multimodal`` counted them for this prompt."""
    def source(kinds):
        counts = getattr(model, "last_visual_unreduced", None)
        model.last_visual_unreduced = None
        if counts is None or len(counts) != kinds.shape[0]:
            raise ValueError("LLM stage final_retention: the model did not count this prompt's "
                             "unreduced visual tokens (pass images to generate / forward)")
        return counts
    return source


def _hf_unreduced(model):
    """Per row, the visual tokens before any reducer: the videos' unreduced runs (newlines
    excluded) when :func:`aot_integrations.hf.apply` reduced them in this call, else the
    row's video placeholders (newlines excluded: what reaches the LLM is the whole video)."""
    def source(kinds):
        applied = getattr(model, "_aot_hf_handle", None)
        if applied is None or applied.reduction is None or not applied.last:
            return (kinds == VISUAL).sum(dim=1).tolist()
        adapter = applied.adapter
        counts = [adapter.run_length(s.encoded)
                  - adapter.backbone.newlines(s.encoded.num_frames, s.encoded.grid)
                  for s in applied.last]
        rows = int((kinds > 0).any(dim=1).sum())
        if len(counts) != kinds.shape[0] or rows != kinds.shape[0]:
            raise ValueError(f"LLM stage final_retention after a vision reducer needs one video "
                             f"per row; this batch has {len(counts)} videos in "
                             f"{kinds.shape[0]} rows")
        return counts
    return source


def _record_ids(handle: StageHandle):
    """Pre-hook on a transformers multimodal model: the kinds of the columns of this call."""
    config = handle.model.config
    placeholders = [t for t in (getattr(config, "video_token_id", None),
                                getattr(config, "image_token_id", None)) if t is not None]
    trailing_newline = getattr(config, "model_type", "") == "llava_onevision"

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            handle._kinds_source = lambda kwargs, batch, length: None
            return None
        kinds = torch.isin(ids, torch.tensor(placeholders, device=ids.device)).to(torch.int8)
        if trailing_newline:    # LLaVA-OneVision packs one newline after each video's frames
            video = ids == config.video_token_id
            ends = video & ~torch.cat([video[:, 1:], torch.zeros_like(video[:, :1])], dim=1)
            kinds = kinds.masked_fill(ends, NEWLINE)

        def source(kwargs, batch, length):
            return kinds if tuple(kinds.shape) == (batch, length) else None
        handle._kinds_source = source
        return None
    return hook


# --------------------------------------------------------------------------- tensors
def _cache(kwargs):
    return kwargs.get("cache", kwargs.get("past_key_values"))


def _check_cache(cache, layer: int) -> None:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) <= layer or type(layers[layer]) is not DynamicLayer:
        raise ValueError(f"LLM stage: the cache is a {type(cache).__name__}; the stage needs "
                         "transformers' DynamicCache (layers after K hold fewer tokens)")


def _real_tokens(mask, batch: int, length: int, device) -> torch.Tensor:
    """(B, L) bool real (non-padding) columns from a 2-D mask, a prepared 4-D mask (its
    diagonal: a padding key is masked for every query, itself included) or None."""
    if isinstance(mask, dict):
        mask = mask.get("full_attention", next(iter(mask.values())))
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if mask.dim() == 2:
        return mask[:, -length:].bool().to(device).expand(batch, -1)
    diagonal = mask[:, 0].diagonal(offset=mask.shape[-1] - length, dim1=-2, dim2=-1)
    real = diagonal if diagonal.dtype == torch.bool else diagonal == 0
    return real.to(device).expand(batch, -1)


def _take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(..., B or 1, L, d) per-column table (rotary cos/sin) -> (..., B, n, d) at ``index``
    (B, n)."""
    batch, index = index.shape[0], index.to(table.device)
    table = table.expand(*table.shape[:-3], batch, *table.shape[-2:])
    gather = index[..., None].expand(*table.shape[:-3], -1, -1, table.shape[-1])
    return table.gather(-2, gather)


def _masked(allowed: torch.Tensor, implementation: str, dtype) -> torch.Tensor:
    """A bool (B, 1, q, k) allowed-map in the form the implementation's attention reads."""
    if implementation == "eager":
        return torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min).expand(allowed.shape).contiguous()
    return allowed


def _restrict(mask: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """A 4-D mask (bool: True attends; float: 0 attends) further limited to ``allowed``."""
    if mask.dtype == torch.bool:
        return mask & allowed
    return mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)


def _prefill_mask(mask, index: torch.Tensor, valid: torch.Tensor, implementation: str, dtype):
    """Layer K's mask over the kept columns. Filler columns are masked for every query; a
    filler query may see itself so that no row of the softmax is empty."""
    if _is_block_mask(mask):
        raise ValueError("LLM stage: flex attention masks are not supported; use sdpa, eager or "
                         "flash_attention_2")
    batch, length = index.shape
    if mask is not None:
        index, valid = index.to(mask.device), valid.to(mask.device)
    if implementation.startswith("flash"):
        if mask is None:
            return None if bool(valid.all()) else valid
        return mask.bool().gather(1, index) & valid
    eye = torch.eye(length, dtype=torch.bool, device=index.device)
    allowed = (valid[:, None, None, :] | eye)
    if mask is None:
        if bool(valid.all()):
            return None     # kept columns stay in order: still plain causal
        causal = torch.ones(length, length, dtype=torch.bool, device=index.device).tril()
        return _masked(allowed & causal, implementation, dtype)
    mask = mask.expand(batch, *mask.shape[1:])
    rows = index[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[-1])
    mask = mask.gather(2, rows)
    cols = index[:, None, None, :].expand(-1, mask.shape[1], length, -1)
    return _restrict(mask.gather(3, cols), allowed)


def _decode_mask(mask, record: StageRecord, new: int, queries: int, implementation: str,
                 dtype):
    """A generation step's mask for layers K..: key columns of the prompt mapped to the kept
    ones (fillers masked), the ``new`` columns generated since (this step's included) kept."""
    if _is_block_mask(mask):
        raise ValueError("LLM stage: flex attention masks are not supported")
    batch = record.index.shape[0]
    device = record.index.device if mask is None else mask.device
    full = record.length + new
    columns = torch.cat([record.index.to(device), torch.arange(record.length, full,
                                                                device=device)
                         .expand(batch, -1)], dim=1)
    allowed = torch.cat([record.valid.to(device),
                         torch.ones(batch, new, dtype=torch.bool, device=device)], dim=1)
    if mask is not None and mask.shape[-1] != full:
        raise ValueError(f"LLM stage: a mask over {mask.shape[-1]} keys where the prompt and "
                         f"the generated tokens make {full}; the stage needs a DynamicCache")
    if implementation.startswith("flash"):
        if mask is None:
            return None if bool(allowed.all()) else allowed
        return mask.bool().gather(1, columns) & allowed
    if mask is None:
        if bool(allowed.all()):
            return None
        query_columns = torch.arange(full - queries, full, device=device)
        causal = columns[:, None, None, :] <= query_columns[None, None, :, None]
        return _masked(allowed[:, None, None, :] & causal, implementation, dtype)
    mask = mask.expand(batch, *mask.shape[1:])
    gathered = mask.gather(3, columns[:, None, None, :].expand(-1, mask.shape[1],
                                                                mask.shape[2], -1))
    return _restrict(gathered, allowed[:, None, None, :])


def _is_block_mask(mask) -> bool:
    return mask is not None and not isinstance(mask, torch.Tensor)


__all__ = ["StageHandle", "StageRecord", "install", "remove"]
