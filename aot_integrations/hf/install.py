"""Install a reducer on one transformers model instance (:func:`apply`) and undo it (:func:`remove`).

:func:`apply` patches the *instance* (never the class): its ``generate`` and ``forward`` encode
the videos first (capturing received attention at the reducer's two vision layers), reduce each
video, shorten ``input_ids`` / ``attention_mask`` (and ``mm_token_type_ids``) to the reduced
runs, and call the stock method with the ready features as ``mm_encoder_outputs`` (and, for
M-RoPE models, every kept token's original (t, h, w) position). ``generate`` returns the caller's
original prompt ids followed by the new tokens, as the stock model does; KV cache, padding,
batches and sampling flags are the stock ones. Inference only: the videos are encoded under
``torch.no_grad``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from aot.config import AOTConfig
from aot.video_path import Reduction, pack, reduce

from .adapters import HFAdapter, adapter_for
from .sequence import Shortened, piece_order, shorten
from .settings import config_for

_ATTRIBUTE = "_aot_hf_handle"


@dataclass
class Handle:
    """What :func:`apply` installed on one model; ``remove()`` restores the stock model.

    adapter: the backbone adapter. reduction: the reducer and its settings (None: the unreduced
    path, for identity checks). last: per-video :class:`aot.video_path.VisualSequence` of the last
    call (token counts, the reducer's result), for inspection.
    """

    model: object
    adapter: HFAdapter
    reduction: Reduction | None
    last: list | None = None

    def remove(self) -> None:
        remove(self.model)


def _ids_as_keyword(args: tuple, kwargs: dict, first: str = "input_ids") -> tuple[tuple, dict]:
    """``generate(ids, ...)`` / ``generate(inputs=ids, ...)`` / ``forward(ids, ...)`` ->
    ``input_ids=ids`` in the keywords (the wrappers read and rewrite it there). ``first``: the
    stock method's name of its first parameter (``inputs`` for generate)."""
    given = None
    if args:
        given, args = args[0], args[1:]
    elif first != "input_ids" and first in kwargs:
        given = kwargs.pop(first)
    if given is not None:
        if kwargs.get("input_ids") is not None:
            raise ValueError(f"aot_integrations.hf: the ids came twice ({first} and input_ids); "
                             "pass them once")
        kwargs["input_ids"] = given
    return args, kwargs


def apply(model, reduction, *, reducer: str | None = None) -> Handle:
    """Install a reducer on ``model`` (an instance of a supported class); returns a :class:`Handle`.

    reduction: an :class:`aot.video_path.Reduction`, an :class:`AOTConfig` (AOT, or ``reducer``),
        a float (exact retention with :func:`config_for`'s settings), or None (the unreduced
        path through the same plumbing: generate is identical to the stock model's).
        An AOTConfig whose pooling is not the backbone's gets the backbone's (pooling is a fact
        of the model, e.g. none for Qwen, whose merger already pools); likewise Qwen3-VL's
        ``similarity_channels`` (the main features, not the DeepStack levels).
    """
    if getattr(model, _ATTRIBUTE, None) is not None:
        raise ValueError("aot_integrations.hf.apply: this model already has a reducer; call "
                         "aot_integrations.hf.remove(model) first")
    adapter = adapter_for(model)
    reduction = _as_reduction(model, adapter, reduction, reducer)
    if reduction is not None:
        adapter.check(reduction)
    handle = Handle(model, adapter, reduction)
    stock_generate, stock_forward = model.generate, model.forward

    @functools.wraps(stock_generate)
    def generate(*args, **kwargs):
        if kwargs.get("pixel_values_videos") is None:
            return stock_generate(*args, **kwargs)
        args, kwargs = _ids_as_keyword(args, kwargs, "inputs")
        reduced = _reduce_inputs(handle, kwargs)
        out = stock_generate(*args, **reduced)
        return _restore_prompt(out, kwargs["input_ids"], reduced["input_ids"].shape[1])

    @functools.wraps(stock_forward)
    def forward(*args, **kwargs):
        if kwargs.get("pixel_values_videos") is None:
            return stock_forward(*args, **kwargs)
        args, kwargs = _ids_as_keyword(args, kwargs)
        return stock_forward(*args, **_reduce_inputs(handle, kwargs))

    model.generate = generate
    model.forward = forward
    setattr(model, _ATTRIBUTE, handle)
    return handle


def remove(model) -> None:
    """Undo :func:`apply`: the instance's stock ``generate`` and ``forward`` again (a ValueError
    when nothing is installed)."""
    if getattr(model, _ATTRIBUTE, None) is None:
        raise ValueError("aot_integrations.hf.remove: no reducer is installed on this model")
    for name in ("generate", "forward", _ATTRIBUTE):
        model.__dict__.pop(name, None)


def _as_reduction(model, adapter, reduction, reducer) -> Reduction | None:
    if reduction is None:
        if reducer is not None:
            raise ValueError("aot_integrations.hf.apply: reducer given without settings")
        return None
    if isinstance(reduction, Reduction):
        if reducer is not None:
            raise ValueError("aot_integrations.hf.apply: give the reducer inside the Reduction")
        config = _with_model_fields(adapter, reduction.config)
        if config != reduction.config:
            reduction = Reduction(config, reduction.reducer, reduction.options, reduction.budget)
        return reduction
    if isinstance(reduction, bool) or not isinstance(reduction, (AOTConfig, int, float)):
        raise TypeError(f"aot_integrations.hf.apply: expected a Reduction, an AOTConfig, a retention or None; "
                        f"got {type(reduction).__name__}")
    if not isinstance(reduction, AOTConfig):
        reduction = config_for(model, reduction)
    return Reduction(_with_model_fields(adapter, reduction), reducer or "aot")


def _with_model_fields(adapter, config: AOTConfig) -> AOTConfig:
    """``config`` with the model's facts (:meth:`HFAdapter.model_fields`)."""
    changes = {name: value for name, value in adapter.model_fields().items()
               if getattr(config, name) != value}
    return config.replace(**changes) if changes else config


def _reduce_inputs(handle: Handle, kwargs: dict) -> dict:
    """The stock kwargs with every video reduced: shortened ids/mask (+ positions), the video
    keys replaced by ``mm_encoder_outputs``."""
    adapter, reduction, model = handle.adapter, handle.reduction, handle.model
    _check_call(kwargs)
    adapter.check_inputs(kwargs)
    if reduction is not None:
        _check_grids(adapter, reduction, kwargs)
    layers = () if reduction is None else reduction.layers
    with torch.no_grad():
        extra = () if reduction is None else reduction.extra_inputs
        encoded = adapter.encode_batch(kwargs, layers, extra)
        sequences = []
        for video in encoded:
            result = None if reduction is None else reduce(video, reduction)
            sequences.append(pack(adapter, video, result))
    handle.last = sequences
    runs = [adapter.run_length(video) for video in encoded]
    slots = [adapter.slots(s.encoded, s.result) for s in sequences]
    # tokens and slots in the order the shortened prompt holds them (piece by piece)
    orders = [piece_order(slot, pieces)
              for slot, pieces in zip(slots, adapter.video_pieces(kwargs))]
    slots = [slot[order] for slot, order in zip(slots, orders)]
    tokens = [s.tokens[order.to(s.tokens.device)] for s, order in zip(sequences, orders)]
    positions = adapter.positions(kwargs)
    pad = model.generation_config.pad_token_id
    pad = pad if isinstance(pad, int) else 0
    short = shorten(kwargs["input_ids"], kwargs.get("attention_mask"), adapter.video_token_id,
                    runs, slots, pad)
    out = {key: value for key, value in kwargs.items() if key not in adapter.video_keys}
    out["input_ids"] = short.input_ids
    out["attention_mask"] = short.attention_mask
    if kwargs.get("mm_token_type_ids") is not None:
        out["mm_token_type_ids"] = short.take(kwargs["mm_token_type_ids"])
    encoder_outputs = {"video": adapter.encoder_outputs(tokens)}
    if out.get("pixel_values") is not None:
        # forward refuses pixels beside mm_encoder_outputs: encode the images as stock does
        encoder_outputs["image"] = _stock_image_outputs(model, out)
    out["mm_encoder_outputs"] = encoder_outputs
    if positions is not None:
        out["position_ids"] = _mrope_positions(model, short, positions)
    return out


def _check_call(kwargs: dict) -> None:
    """The keys every model needs beside videos: input_ids alone (a (batch, length) integer
    tensor), its mask, no labels, no ready encoder outputs. One line each, before any work."""
    ids = kwargs.get("input_ids")
    if ids is None:
        raise ValueError("aot_integrations.hf: videos need input_ids (the processor's output), not "
                         "inputs_embeds")
    if kwargs.get("inputs_embeds") is not None:
        raise ValueError("aot_integrations.hf: videos need input_ids alone, not inputs_embeds as "
                         "well (the reducer shortens the ids; embeddings of the unreduced prompt "
                         "would not fit)")
    if (not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point()
            or ids.dtype == torch.bool):
        what = (f"shape {tuple(ids.shape)} and dtype {ids.dtype}" if isinstance(ids, torch.Tensor)
                else f"type {type(ids).__name__}")
        raise ValueError(f"aot_integrations.hf: input_ids has {what}; expected a (batch, length) "
                         "integer tensor (the processor's output with return_tensors='pt')")
    mask = kwargs.get("attention_mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != ids.shape):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"aot_integrations.hf: attention_mask has shape {shape} but input_ids "
                         f"{tuple(ids.shape)}; pass the processor's output unchanged")
    if kwargs.get("labels") is not None:
        raise ValueError("aot_integrations.hf: labels with videos are not supported (the reduced sequence is "
                         "shorter than the labels; aot_integrations.hf is for inference)")
    if kwargs.get("mm_encoder_outputs"):
        raise ValueError("aot_integrations.hf: pass pixel_values_videos or mm_encoder_outputs, not both")


def _check_grids(adapter: HFAdapter, reduction: Reduction, kwargs: dict) -> None:
    """Every video's frames hold at least ``anchors_per_frame`` tokens (the reducers' own check,
    made before the tower runs)."""
    config = reduction.config
    if not config.intra:
        return
    for video, (rows, cols) in enumerate(adapter.token_grids(kwargs)):
        if config.anchors_per_frame > rows * cols:
            raise ValueError(f"anchors_per_frame={config.anchors_per_frame} exceeds the "
                             f"{rows * cols} tokens of a {rows}x{cols} frame (video {video}); "
                             f"build the settings for this grid: aot_integrations.hf.config_for("
                             f"model, retention, grid=({rows}, {cols}))")


def _stock_image_outputs(model, kwargs: dict):
    """The stock ``get_image_features`` on the batch's images (the call generate makes); pops
    the keys it consumed, except those the position ids still need."""
    import inspect

    encoder = model.model.get_image_features
    names = [n for n in inspect.signature(encoder).parameters if n != "kwargs" and n in kwargs]
    outputs = encoder(**{n: kwargs[n] for n in names}, return_dict=True)
    for name in names:
        kwargs.pop(name)
    return outputs


def _mrope_positions(model, short: Shortened, positions: torch.Tensor) -> torch.Tensor:
    """(4, B, L') what stock generate builds: text positions of the shortened rows, then the
    kept columns' original (t, h, w) positions. Sets ``rope_deltas`` as ``get_rope_index`` does
    (next position minus the row's length) for a later continuation from the cache."""
    mask = short.attention_mask.to(positions.device)
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    kept = short.positions(positions)
    lengths = mask.sum(-1)
    model.model.rope_deltas = (kept.amax(dim=(0, 2)) + 1 - lengths)[:, None]
    return torch.cat([text[None], kept], dim=0)


def _restore_prompt(out, original_ids: torch.Tensor, short_length: int):
    """Stock ``generate`` returns the prompt ids it was given, then the new tokens: give back
    the caller's unreduced prompt so ``out[:, inputs.input_ids.shape[1]:]`` stays the answer."""
    def fix(sequences):
        prompt = original_ids.to(sequences.device)
        if sequences.shape[0] != prompt.shape[0]:      # num_return_sequences / beams expand rows
            prompt = prompt.repeat_interleave(sequences.shape[0] // prompt.shape[0], dim=0)
        return torch.cat([prompt, sequences[:, short_length:]], dim=1)

    if isinstance(out, torch.Tensor):
        return fix(out)
    out.sequences = fix(out.sequences)
    return out
