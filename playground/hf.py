"""The demo on a transformers checkpoint (Qwen2.5-VL, Qwen3-VL, LlavaOnevision) through aot_integrations.hf.

The checkpoint is recognised by ``config.json``'s ``model_type``, loaded with
``AutoModelForImageTextToText`` and its processor; the processor builds the video inputs (prompt
placeholders, patches, M-RoPE grid, timestamps) from the demo's decoded frames, and
:func:`aot_integrations.hf.apply` reduces the video inside the stock ``generate``. Stage times come from hooks
on the model's own modules (vision tower / merger or projector, language model), the token
counts from the ids the language model actually receives.

Without torchvision (CPU installs of this project) transformers cannot build its *video*
processors; the stock processor class is then given :class:`PilVideoProcessor`, which lays the
frames out as the stock video processor does (same patch order, grid and metadata) from the
checkpoint's stock PIL image processor settings. Its resize is PIL's bicubic, not torchvision's:
pixels can differ slightly from a torchvision install, token counts and layout do not.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

import aot_integrations.hf
from aot import video_path
from aot_integrations.hf import MODEL_TYPES  # config.json model_type -> the transformers class aot_integrations.hf supports
from aot.video_path import StageClock

from .pipeline import DemoError

#: model_type of our own ``llava/`` checkpoints (lmms-lab layout).
LLAVA_TYPE = "llava_qwen"


def checkpoint_type(path: str) -> str:
    """``model_type`` of the checkpoint folder ``path`` (``llava_qwen`` or a key of
    :data:`aot_integrations.hf.MODEL_TYPES`); DemoError for a folder without a readable config.json or
    another type."""
    if not os.path.isdir(path):
        raise DemoError(f"--model {path!r} is not a checkpoint folder (expected a folder with "
                        "config.json and safetensors)")
    config = os.path.join(path, "config.json")
    try:
        with open(config) as handle:
            model_type = json.load(handle).get("model_type")
    except FileNotFoundError:
        raise DemoError(f"--model {path!r} has no config.json") from None
    except json.JSONDecodeError as error:
        raise DemoError(f"--model {path!r}: config.json is not valid JSON ({error.msg} at line "
                        f"{error.lineno}, column {error.colno})") from None
    except OSError as error:
        raise DemoError(f"--model {path!r}: config.json cannot be read ({error})") from None
    supported = [LLAVA_TYPE] + sorted(MODEL_TYPES)
    if model_type not in supported:
        raise DemoError(f"--model {path!r} has model_type {model_type!r}; the demo supports "
                        f"{supported}")
    return model_type


# ---------------------------------------------------------------------------------- processor
class PilVideoProcessor:
    """Stand-in for a stock transformers video processor where torchvision is missing.

    Called as the stock processor calls its video processor, ``(videos, video_metadata=...,
    return_metadata=..., return_tensors=...)``: each video (F, H, W, 3) uint8 is resized with PIL
    (Qwen: ``smart_resize`` to multiples of patch x merge within the image processor's pixel
    bounds; LLaVA-OneVision: its fixed size), rescaled, normalised and laid out exactly as the
    stock processors do: Qwen ``pixel_values_videos`` (sum t*h*w, 3*tp*p*p) with
    ``video_grid_thw`` (the last frame repeated up to a multiple of the temporal patch);
    LLaVA-OneVision (V, F, 3, S, S).
    """

    def __init__(self, image_processor, family: str):
        self.image_processor = image_processor
        self.family = family  # "qwen" or "onevision"
        self.patch_size = getattr(image_processor, "patch_size", 14)
        self.merge_size = getattr(image_processor, "merge_size", 2)
        self.temporal_patch_size = getattr(image_processor, "temporal_patch_size", 2)

    def _frame(self, frame: np.ndarray, height: int, width: int) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, height, width) float32 normalised."""
        from PIL import Image

        processor = self.image_processor
        image = np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC),
                           dtype=np.float32) * processor.rescale_factor
        mean = np.asarray(processor.image_mean, dtype=np.float32)
        std = np.asarray(processor.image_std, dtype=np.float32)
        return ((image - mean) / std).transpose(2, 0, 1)

    def _size(self, height: int, width: int) -> tuple[int, int]:
        size = self.image_processor.size
        if self.family == "onevision":
            return size["height"], size["width"]
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            smart_resize,
        )

        return smart_resize(height, width, factor=self.patch_size * self.merge_size,
                            min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])

    def _qwen_patches(self, frames: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """(F, 3, H, W) -> ((t*h*w, 3*tp*p*p), [t, h, w]) in the stock video processor's order."""
        tp, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if -len(frames) % tp:
            frames = np.concatenate([frames, np.repeat(frames[-1:], -len(frames) % tp, 0)])
        count, channels, height, width = frames.shape
        t, h, w = count // tp, height // p, width // p
        patches = frames.reshape(t, tp, channels, h // m, m, p, w // m, m, p)
        patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return patches.reshape(t * h * w, channels * tp * p * p), [t, h, w]

    def __call__(self, videos, video_metadata=None, return_metadata: bool = False,
                 return_tensors=None, **unused):
        from transformers import BatchFeature
        from transformers.video_utils import VideoMetadata

        videos = [np.asarray(v) for v in (videos if isinstance(videos, (list, tuple))
                                          else [videos])]
        processed = []
        for video in videos:
            height, width = self._size(*video.shape[1:3])
            processed.append(np.stack([self._frame(f, height, width) for f in video]))
        if self.family == "onevision":
            data = {"pixel_values_videos": torch.from_numpy(np.stack(processed))}
        else:
            pieces = [self._qwen_patches(frames) for frames in processed]
            data = {"pixel_values_videos": torch.from_numpy(np.concatenate([p for p, _ in
                                                                             pieces])),
                    "video_grid_thw": torch.tensor([grid for _, grid in pieces])}
        if return_metadata:
            data["video_metadata"] = list(video_metadata or [
                VideoMetadata(total_num_frames=len(v), fps=None) for v in videos])
        return BatchFeature(data=data)


def family_of(model_type: str) -> str:
    """How the demo feeds a checkpoint of ``model_type``: ``"qwen"`` (flattened patches with a
    (t, h, w) grid) when the backbone whose eval protocol loads it keeps M-RoPE positions,
    ``"onevision"`` (frame tensors) otherwise; the backbone record decides."""
    from aot.backbones import backbone_of_protocol, eval_protocols

    for protocol in eval_protocols():
        if protocol.checkpoint_type == model_type:
            positions = backbone_of_protocol(protocol.name).positions
            return "qwen" if positions == "mrope" else "onevision"
    raise DemoError(f"model_type {model_type!r} is no backbone's checkpoint type; known: "
                    f"{sorted({p.checkpoint_type for p in eval_protocols()})}")


def _standin_processor(path: str, model_type: str):
    """The stock processor class of ``model_type`` with :class:`PilVideoProcessor` as its video
    processor (its class check is the only step skipped)."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    name = MODEL_TYPES[model_type].replace("ForConditionalGeneration", "Processor")
    stock = getattr(transformers, name)

    def check_argument_for_proper_class(self, attribute, argument):
        if attribute == "video_processor":
            return None
        return stock.check_argument_for_proper_class(self, attribute, argument)

    Processor = type(name, (stock,), {"check_argument_for_proper_class":
                                      check_argument_for_proper_class})

    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    extra = {}
    config = os.path.join(path, "processor_config.json")
    if os.path.isfile(config):
        with open(config) as handle:
            keys = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio")
            extra = {k: v for k, v in json.load(handle).items() if k in keys}
    family = family_of(model_type)
    return Processor(image_processor=image_processor, tokenizer=tokenizer,
                     video_processor=PilVideoProcessor(image_processor, family),
                     chat_template=tokenizer.chat_template, **extra)


def load_processor(path: str, model_type: str):
    """(processor, note): the checkpoint's stock processor (``AutoProcessor``) where transformers
    can build video processors, else the stand-in (note says which)."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path), "stock processor"
    return (_standin_processor(path, model_type),
            "stock processor, PIL video stand-in (no torchvision)")


# ---------------------------------------------------------------------------------- model
@dataclass
class HFModel:
    """A transformers video LLM and its processor. ``label`` says what it is."""

    model: object
    processor: object
    model_type: str
    label: str
    processor_note: str

    @property
    def family(self) -> str:
        return family_of(self.model_type)


def load(path: str) -> HFModel:
    """Load the checkpoint folder ``path`` (a type of :data:`aot_integrations.hf.MODEL_TYPES`) and its
    processor."""
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging

    logging.disable_progress_bar()  # the demo prints its own progress lines
    model_type = checkpoint_type(path)
    if model_type == LLAVA_TYPE:
        raise DemoError(f"--model {path!r} is an lmms-lab llava_qwen checkpoint; load it with "
                        "playground.pipeline.load_model")
    device_map = "auto" if torch.cuda.is_available() else None
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto",
                                                            device_map=device_map)
    except (OSError, ValueError) as error:
        raise DemoError(f"--model {path!r}: {' '.join(str(error).split())}") from None
    if type(model).__name__ != MODEL_TYPES[model_type]:
        raise DemoError(f"--model {path!r} loads as {type(model).__name__}, expected "
                        f"{MODEL_TYPES[model_type]}")
    processor, note = load_processor(path, model_type)
    return HFModel(model.eval(), processor, model_type, f"checkpoint {path} ({model_type})", note)


def square_frames(frames: np.ndarray, size: int | None) -> np.ndarray:
    """(F, H, W, 3) uint8 resized to (F, size, size, 3) with PIL (None: unchanged)."""
    if size is None:
        return frames
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC))
                     for f in frames])


def video_inputs(loaded: HFModel, clip, frames: np.ndarray, question: str) -> dict:
    """The processor's batch for one video and ``question`` (the checkpoint's chat template):
    input_ids with the unreduced placeholder run, the video tensors, M-RoPE extras."""
    from transformers.video_utils import VideoMetadata

    messages = [{"role": "user", "content": [{"type": "video"},
                                             {"type": "text", "text": question}]}]
    prompt = loaded.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
    metadata = VideoMetadata(total_num_frames=int(clip.total_frames), fps=float(clip.average_fps),
                             frames_indices=[int(i) for i in clip.indices])
    kwargs = {"video_metadata": [metadata]}
    if loaded.family == "qwen":
        kwargs["do_sample_frames"] = False
    inputs = loaded.processor(text=[prompt], videos=[frames], return_tensors="pt", **kwargs)
    device = loaded.model.device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def video_grid(loaded: HFModel, inputs: dict) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """(the grid :func:`aot_integrations.hf.reduced_token_count` reads, (rows, cols) of a frame's tokens):
    Qwen ``video_grid_thw`` in patches and the 2x2-merged grid; LLaVA-OneVision (frames, g, g)
    of the SigLIP patch grid."""
    if loaded.family == "qwen":
        t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
        merge = loaded.model.config.vision_config.spatial_merge_size
        return (t, h, w), (h // merge, w // merge)
    frames, _, height, width = inputs["pixel_values_videos"].shape[1:]
    patch = loaded.model.config.vision_config.patch_size
    return (frames, height // patch, width // patch), (height // patch, width // patch)


def reduction_for(loaded: HFModel, grid: tuple[int, int], retention: float, reducer: str,
                  shallow: int | None, deep: int | None, seed: int) -> video_path.Reduction:
    """The exact-budget settings of :func:`aot_integrations.hf.config_for` for this frame grid, with the
    vision layers given (default: the loaded tower's), as a :class:`aot.video_path.Reduction`."""
    overrides = {"seed": seed}
    if shallow is not None:
        overrides["shallow_layer"] = shallow
    if deep is not None:
        overrides["deep_layer"] = deep
    try:
        config = aot_integrations.hf.config_for(loaded.model, retention, exact=True, grid=grid, **overrides)
        reduction = video_path.Reduction(config, reducer)
        aot_integrations.hf.adapter_for(loaded.model).check(reduction)
    except ValueError as error:
        raise DemoError(f"{' '.join(str(error).split())} (set --shallow-layer / --deep-layer "
                        "inside the tower)") from None
    return reduction


@dataclass
class HFRun:
    """One reduced ``generate``: the answer, the reducer's sequence and what the LLM received.

    sequence: aot_integrations.hf's :class:`aot.video_path.VisualSequence` of the video (``.result``).
    llm_video_tokens: video placeholder ids in the ``input_ids`` the language model's prefill
        received (counted by a hook, newline included for LLaVA-OneVision).
    unreduced_video_tokens: placeholders the processor wrote.
    prompt_tokens: prompt length the LLM prefilled.
    times: stage -> seconds (``vision encoder``, ``reducer + packing (aot_integrations.hf)``,
        ``LLM (prefill + generate)``).
    """

    text: str
    sequence: video_path.VisualSequence
    llm_video_tokens: int
    unreduced_video_tokens: int
    prompt_tokens: int
    times: dict = field(default_factory=dict)


def _vision_modules(loaded: HFModel):
    """(first, last) modules of the video encoder: the tower and the module whose output is the
    LLM's token (Qwen: the ViT ends with its merger; LLaVA-OneVision: the projector)."""
    inner = loaded.model.model
    if loaded.family == "qwen":
        return inner.visual, inner.visual
    return inner.vision_tower, inner.multi_modal_projector


@torch.no_grad()
def generate(loaded: HFModel, inputs: dict, reduction: video_path.Reduction,
             max_new_tokens: int) -> HFRun:
    """Greedy ``generate`` with ``reduction`` installed by :func:`aot_integrations.hf.apply` (removed after),
    timed per stage by hooks on the model's modules."""
    model = loaded.model
    video_token = model.config.video_token_id
    seen: list[torch.Tensor] = []
    _, last = _vision_modules(loaded)
    language = model.model.language_model

    def vision_done(module, args, output):
        if "vision encoder" not in clock.stages:
            clock.lap("vision encoder")

    def llm_start(module, args, kwargs):
        if "reducer + packing (aot_integrations.hf)" not in clock.stages:
            clock.lap("reducer + packing (aot_integrations.hf)")

    def record_ids(module, args, kwargs):
        if not seen and kwargs.get("input_ids") is not None:
            seen.append(kwargs["input_ids"])

    hooks = [last.register_forward_hook(vision_done),
             language.register_forward_pre_hook(llm_start, with_kwargs=True),
             model.model.register_forward_pre_hook(record_ids, with_kwargs=True)]
    handle = aot_integrations.hf.apply(model, reduction)
    try:
        clock = StageClock(model.device)
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        clock.lap("LLM (prefill + generate)")
    finally:
        handle.remove()
        for hook in hooks:
            hook.remove()
    tokenizer = loaded.processor.tokenizer
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return HFRun(text.strip(), handle.last[0], int((seen[0] == video_token).sum()),
                 int((inputs["input_ids"] == video_token).sum()), int(seen[0].shape[1]),
                 dict(clock.stages))


def frames_drawn(loaded: HFModel, clip, frames: np.ndarray):
    """(frames, timestamps) to draw, one per reducer frame: Qwen's temporal patches hold two
    video frames, drawn as the first of each pair."""
    if loaded.family == "qwen":
        step = loaded.model.config.vision_config.temporal_patch_size
        return frames[::step], clip.timestamps[::step]
    return frames, clip.timestamps
