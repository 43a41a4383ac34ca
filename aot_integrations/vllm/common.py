"""What the plugin's model families share (vLLM-free helpers; :mod:`.qwen`, :mod:`.onevision`).

The processor ships a request's options (:mod:`.options`) to the model as two per-video fields,
since vLLM passes the model only tensors: :data:`RETENTION` (:data:`UNREDUCED` when the video is
not reduced) and :data:`REDUCER` (the reducer's index in
:func:`aot_integrations.vllm.options.reducer_names`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from .options import OPTION_KEYS, Options, reducer_names

RETENTION, REDUCER = "aot_retention", "aot_reducer"
UNREDUCED = 0.0
#: The server's AOT knobs: ``--hf-overrides '{"aot_config": {"anchors_per_frame": 8}}'`` sets
#: this attribute of the checkpoint's config.
SERVER_KEY = "aot_config"
#: AOTConfig fields a server may not set: the request's retention and the model's facts decide them.
FIXED_FIELDS = ("exact_retention", "pooling", "similarity_channels")


def without_options(kwargs: Mapping[str, object]) -> dict:
    """``kwargs`` without the plugin's keys (the HF processor does not know them)."""
    return {key: value for key, value in kwargs.items() if key not in OPTION_KEYS}


def option_fields(options: Options, videos: int) -> dict[str, torch.Tensor]:
    """The two per-video fields for ``videos`` videos of one request: (videos,) float64 retention
    and (videos,) long reducer index."""
    retention = UNREDUCED if options.retention is None else options.retention
    return {RETENTION: torch.full((videos,), retention, dtype=torch.float64),
            REDUCER: torch.full((videos,), reducer_names().index(options.reducer))}


def with_option_fields(fields: Mapping, field_config) -> dict:
    """The stock processor's ``fields`` config plus the two per-video option fields, batched
    over videos and kept on the CPU (the model reads them as Python numbers).

    field_config: vLLM's ``MultiModalFieldConfig`` class (passed in: this module imports no
    vLLM, so the option logic stays testable without it)."""
    out = dict(fields)
    out[RETENTION] = field_config.batched("video", keep_on_cpu=True)
    out[REDUCER] = field_config.batched("video", keep_on_cpu=True)
    return out


def embed_media(model, kwargs: dict, embed_images, no_media=()) -> tuple | None:
    """A family's ``embed_multimodal``: the request's two option fields taken out of
    ``kwargs``, then, in the order vLLM gives the modalities, each batch of images through
    ``embed_images(inputs)`` (the stock embeddings, an iterable of tensors) and each batch of
    videos through ``model._embed_videos(inputs, retention, reducer)``.

    no_media: what to return when the request has no media items (Qwen3-VL's stock class
        returns None)."""
    retention, reducer = kwargs.pop(RETENTION, None), kwargs.pop(REDUCER, None)
    by_modality = model._parse_and_validate_multimodal_inputs(**kwargs)
    if not by_modality:
        return no_media
    out = ()
    for modality, inputs in by_modality.items():
        if modality == "image":
            out += tuple(embed_images(inputs))
        elif modality == "video":
            out += model._embed_videos(inputs, retention, reducer)
    return out


def video_reductions(retention, reducer, videos: int, make) -> list:
    """Per video, ``make(retention, reducer name)`` of the request's two option fields, or None
    for a video left unreduced (retention :data:`UNREDUCED`)."""
    retention = per_video(retention, videos, UNREDUCED)
    reducer = per_video(reducer, videos, 0)
    return [None if r == UNREDUCED else make(r, reducer_names()[int(i)])
            for r, i in zip(retention, reducer)]


def check_pixel_videos(video_input, data_parallel: bool) -> None:
    """Refuse what AOT cannot reduce in a Qwen family: videos given as embeddings, or a vision
    tower split data-parallel (the attention it reads would be spread over processes)."""
    if video_input["type"] != "pixel_values_videos" or data_parallel:
        raise ValueError("aot_integrations.vllm: videos must come as pixels (not video_embeds) "
                         "and the vision tower must not run data-parallel: AOT reads the "
                         "tower's attention")


def per_video(values, videos: int, default) -> list:
    """A batched per-video field as the model receives it (a tensor, a list of 0-d tensors, or
    None when no video of the batch had one) -> ``videos`` Python numbers."""
    if values is None:
        return [default] * videos
    if isinstance(values, torch.Tensor):
        return values.reshape(-1).tolist()
    return [float(v) for v in values]


def server_overrides(hf_config) -> dict:
    """The :class:`aot.AOTConfig` fields of the server's ``aot_config`` (``--hf-overrides``),
    checked: a dict of field names, none of :data:`FIXED_FIELDS` (a ValueError naming the key)."""
    from aot.config import AOTConfig

    overrides = getattr(hf_config, SERVER_KEY, None) or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"aot_integrations.vllm: {SERVER_KEY}={overrides!r}: expected a JSON "
                         "object of aot.AOTConfig fields, e.g. {\"anchors_per_frame\": 8}")
    fields = {item.name for item in dataclasses.fields(AOTConfig)}
    for key in overrides:
        if key not in fields or key in FIXED_FIELDS:
            raise ValueError(f"aot_integrations.vllm: {SERVER_KEY} key {key!r}: expected an "
                             f"aot.AOTConfig field other than {list(FIXED_FIELDS)} (the "
                             "retention is a request option, aot_retention)")
    return dict(overrides)


def check_count(result, expected: int, reducer: str, index: int) -> None:
    """The reducer kept exactly the count the placeholders were sized for (else a RuntimeError:
    the prompt and the embeddings would disagree)."""
    if result.num_tokens != expected:
        raise RuntimeError(f"aot_integrations.vllm: reducer {reducer!r} kept {result.num_tokens} "
                           f"tokens of video {index} but its placeholders were sized for "
                           f"{expected}")


def check_layers(reduction, depth: int) -> None:
    """The reduction's vision layers exist in a tower of ``depth`` blocks (a ValueError naming
    them: a server's ``aot_config`` may set ``shallow_layer`` / ``deep_layer``)."""
    if max(reduction.layers) >= depth:
        raise ValueError(f"aot_integrations.vllm: vision layers {list(reduction.layers)} but the "
                         f"tower has blocks 0..{depth - 1}; fix shallow_layer / deep_layer in "
                         "aot_config")
