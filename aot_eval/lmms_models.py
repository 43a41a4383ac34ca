"""lmms-eval model classes: LLaVA-OneVision and LLaVA-Video with AOT (or another reducer).

Registered as ``llava_onevision_aot`` and ``llava_vid_aot`` (see :mod:`aot_eval.manifests`).
They rebuild the requests exactly as the stock ``llava_onevision`` / ``llava_vid`` wrappers do
(frame sampling, ``<image>`` placement, ``qwen_1_5`` conversation, stopping criterion, generation
arguments) and call ``model.generate(input_ids, images=[video], modalities=["video"], ...)`` of the
project's :mod:`llava` package, loaded with the AOT configuration from ``--model_args``.
Unreadable visuals and frame folders are handled as the stock wrappers handle them
(:mod:`aot_eval.video`); ``batch_size`` > 1 gives the answers of batch size 1.

Every run records the retention each video actually got (:mod:`aot_eval.recording`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Optional

import torch
from loguru import logger as eval_logger

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from . import prompts, recording
from aot.parsing import to_bool, to_int
from aot.reducers import reducer_info

from .model_args import (NO_REDUCER, ReducerSpec, install_llm_stage, parse_reducer,
                         split_aot_kwargs, with_llm_stage)
from .video import VisualLoadError, check_frame_folders, llava_vid_frames, ov_frames

VIDEO_ERROR_MODES = ("answer", "raise")


def build_question(context: str, backbone: str, n_videos: int = 1,
                   time_instruction: Optional[str] = None) -> str:
    """The user turn the stock wrapper builds from the task's context.

    OV (``llava_onevision``): ``"<image>\\n" + context`` unless the context already holds
    ``<image>``. Video (``llava_vid``): optional time instruction line, then
    ``"<image>" * n_videos + "\\n" + context``.
    """
    from llava.constants import DEFAULT_IMAGE_TOKEN

    if backbone == "ov":
        return context if DEFAULT_IMAGE_TOKEN in context else DEFAULT_IMAGE_TOKEN + "\n" + context
    question = context if time_instruction is None else f"{time_instruction}\n{context}"
    return DEFAULT_IMAGE_TOKEN * n_videos + "\n" + question


def build_prompt(question: str, conv_template: str):
    """(prompt text, conversation) with the question as user turn and an open assistant turn."""
    import copy

    from llava.conversation import conv_templates

    if conv_template not in conv_templates:
        raise ValueError(f"conv_template={conv_template!r}: expected one of {sorted(conv_templates)}")
    conv = (copy.deepcopy(conv_templates[conv_template]) if "llama_3" in conv_template
            else conv_templates[conv_template].copy())
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt(), conv


def time_instruction(frames) -> str:
    """The optional LLaVA-Video time instruction (stock wording, ``add_time_instruction=true``)."""
    return (f"The video lasts for {frames.duration:.2f} seconds, and {len(frames.frames)} frames "
            f"are uniformly sampled from it. These frames are located at {frames.time_string()}."
            f"Please answer the following questions related to this video.")


def generation_kwargs(gen_kwargs: dict, backbone: str) -> dict:
    """Generation arguments as the stock wrapper passes them to ``generate``."""
    gk = dict(gen_kwargs)
    gk.pop("until", None)
    gk.pop("image_aspect_ratio", None)
    if backbone == "video":  # stock llava_vid passes these five, defaults filled in
        temperature = gk.get("temperature", 0)
        return {"do_sample": temperature > 0, "temperature": temperature,
                "top_p": gk.get("top_p"), "num_beams": gk.get("num_beams", 1),
                "max_new_tokens": gk.get("max_new_tokens", 1024)}
    gk.setdefault("max_new_tokens", 1024)
    if not gk.get("do_sample", False):
        for key in ("temperature", "top_p", "top_k"):
            gk.pop(key, None)
    return gk


class LlavaAOTBase(lmms):
    """Shared implementation; subclasses fix the backbone and the ids."""

    BACKBONE = "ov"
    MODEL_ID = "llava_onevision_aot"
    DEFAULTS: dict = {}

    def __init__(self, pretrained: str, model_name: Optional[str] = None,
                 conv_template: str = "qwen_1_5", attn_implementation: str = "sdpa",
                 torch_dtype: str = "float16", device: Optional[str] = None,
                 device_map: Optional[str] = None, batch_size=1, max_frames_num=None,
                 mm_spatial_pool_stride=2, mm_spatial_pool_mode: Optional[str] = None,
                 use_cache=True, prompt_as: str = "stock", retention_log: Optional[str] = None,
                 on_video_error: str = "answer", frame_folders: str = "stock",
                 pooling_head: Optional[str] = None, **kwargs) -> None:
        super().__init__()
        aot_kwargs, rest = split_aot_kwargs(kwargs)
        self.extra = self._take_backbone_args(rest)
        frames = to_int(max_frames_num or self.DEFAULTS["max_frames_num"], "max_frames_num")
        # the retention settings hold for the frame count they are solved for: the sampled one
        self.spec: ReducerSpec = parse_reducer(aot_kwargs, self.BACKBONE, frames=frames)
        self.batch_size_per_device = to_int(batch_size, "batch_size")
        if self.batch_size_per_device < 1:
            raise ValueError(f"{self.MODEL_ID}: batch_size={batch_size}; expected a positive "
                             "integer (1 is the paper's protocol; larger batches give the same "
                             "answers, see docs/reproduce.md)")
        self.frame_folders = check_frame_folders(frame_folders)
        if prompt_as not in ("stock", "own"):
            raise ValueError(f"prompt_as={prompt_as!r}: expected 'stock' or 'own'")
        if on_video_error not in VIDEO_ERROR_MODES:
            raise ValueError(f"on_video_error={on_video_error!r}: expected {VIDEO_ERROR_MODES}")
        from llava.model.builder import DTYPES

        if str(torch_dtype) not in DTYPES:
            raise ValueError(f"torch_dtype={torch_dtype!r}: expected one of {sorted(DTYPES)}")
        self.prompt_as, self.on_video_error = prompt_as, on_video_error
        self.conv_template, self.torch_dtype = conv_template, str(torch_dtype)
        self.max_frames_num = frames
        self.pool_stride = to_int(mm_spatial_pool_stride, "mm_spatial_pool_stride")
        self.pool_mode = mm_spatial_pool_mode or self.DEFAULTS["mm_spatial_pool_mode"]
        self.use_cache = to_bool(use_cache, "use_cache")
        self.retention_log = retention_log
        self.pooling_head = pooling_head
        self.pretrained = pretrained
        self._setup_devices(device, device_map)
        self._load(pretrained, model_name, attn_implementation)
        self._records: list = []
        # microseconds: two runs started in the same second must not overwrite each other's record
        self._stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        eval_logger.info(f"{self.MODEL_ID}: reducer={self.spec.name} ({self.spec.source}), "
                         f"{self.max_frames_num} frames, {self.per_frame} tokens/frame unreduced")

    # ---------------------------------------------------------------- construction
    def _take_backbone_args(self, rest: dict) -> dict:
        """Backbone-specific keys (see ``DEFAULTS``); anything else is an error."""
        allowed = set(self.DEFAULTS) - {"max_frames_num", "mm_spatial_pool_mode"}
        unknown = sorted(set(rest) - allowed)
        if unknown:
            raise ValueError(
                f"{self.MODEL_ID}: unknown model_args {unknown}. Model keys: pretrained, "
                f"model_name, conv_template, attn_implementation, torch_dtype, device_map, "
                f"max_frames_num, mm_spatial_pool_stride, mm_spatial_pool_mode, use_cache, "
                f"prompt_as, retention_log, on_video_error, frame_folders, batch_size, "
                f"pooling_head"
                f"{', ' if allowed else ''}"
                f"{', '.join(sorted(allowed))}; AOT keys: reducer, retention, preset, exact, "
                f"ablation, reducer.<option>, any AOTConfig field, llm_stage and "
                f"llm_stage.<field>")
        return {k: rest.get(k, self.DEFAULTS[k]) for k in allowed}

    def _setup_devices(self, device: Optional[str], device_map: Optional[str]) -> None:
        from accelerate import Accelerator, InitProcessGroupKwargs

        self.accelerator = Accelerator(
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))])
        cuda = torch.cuda.is_available()
        if self.accelerator.num_processes > 1:
            device = f"cuda:{self.accelerator.local_process_index}" if cuda else "cpu"
        elif device is None or (str(device).startswith("cuda") and not cuda):
            if device is not None:
                eval_logger.warning(f"{self.MODEL_ID}: device={device} but CUDA is unavailable; "
                                    "using cpu")
            device = "cuda:0" if cuda else "cpu"
        self._device = torch.device(device)
        self.device_map = device_map or str(self._device)
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes

    def overwrite_config(self) -> dict:
        """The ``overwrite_config`` the stock wrapper passes to ``load_pretrained_model``."""
        return {"mm_spatial_pool_stride": self.pool_stride, "mm_spatial_pool_mode": self.pool_mode}

    def _load(self, pretrained: str, model_name: Optional[str], attn_implementation: str) -> None:
        from llava.constants import IMAGE_TOKEN_INDEX
        from llava.mm_utils import get_model_name_from_path
        from llava.model.builder import load_pretrained_model

        kwargs = dict(device_map=self.device_map, attn_implementation=attn_implementation,
                      torch_dtype=self.torch_dtype, overwrite_config=self.overwrite_config(),
                      aot_config=self.spec.config, pooling_head=self.pooling_head)
        if self.spec.name != NO_REDUCER:
            kwargs["reducer"] = self.spec.name
            if reducer_info(self.spec.name).needs_budget:
                kwargs["retention"] = self.spec.retention
            if self.spec.options:
                kwargs["reducer_options"] = self.spec.options
        name = model_name or get_model_name_from_path(pretrained)
        tokenizer, model, image_processor, max_length = load_pretrained_model(
            pretrained, None, name, **kwargs)
        model.eval()
        self._tokenizer, self._model, self._image_processor = tokenizer, model, image_processor
        self._max_length = max_length
        self._config = model.config
        self.per_frame = model.video_adapter().pooled_per_frame
        self.counter = recording.TokenCounter(model, IMAGE_TOKEN_INDEX, image_newline(model))
        self.llm_stage = install_llm_stage(model, self.spec)

    # ---------------------------------------------------------------- lmms API
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self):
        return self.batch_size_per_device

    @property
    def dtype(self) -> torch.dtype:
        from llava.model.builder import DTYPES

        return DTYPES[self.torch_dtype]

    def loglikelihood(self, requests: list[Instance]):
        raise NotImplementedError(f"{self.MODEL_ID} implements generate_until only (the video "
                                  "benchmarks of the paper are generation tasks)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{self.MODEL_ID}: multi-round generation is not supported")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answer every request and record retention.

        Requests are grouped as stock ``llava_onevision`` groups them (same generation
        arguments, longest context first) into batches of ``batch_size``; batched generation
        gives the answers of one-at-a-time generation (the model left-aligns its inputs).
        """
        from lmms_eval import utils
        from tqdm import tqdm

        if self.prompt_as == "stock":
            prompts.require_stock_prompts(self.MODEL_ID)

        def longest_first(args):
            return -len(self.tokenizer.encode(args[0], add_special_tokens=False)), args[0]

        ordered = utils.Collator([r.args for r in requests], longest_first, grouping=True)
        answers = []
        with tqdm(total=len(requests), disable=self.rank != 0, desc=self.MODEL_ID) as bar:
            for chunk in ordered.get_batched(n=self.batch_size, batch_fn=None):
                answers.extend(self._answer_batch(chunk))
                bar.update(len(chunk))
        self._finish()
        return ordered.get_original(answers)

    # ---------------------------------------------------------------- one batch
    def frames(self, visual, task: str):
        """Frames of one visual as the stock wrapper reads them."""
        return ov_frames(visual, self.max_frames_num, self.frame_folders)

    def _answer_batch(self, chunk) -> list[str]:
        """Answers of requests ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)`` that
        share their generation arguments."""
        answers: list = [None] * len(chunk)
        todo = []  # (index, prompt, conv, video or None, record fields)
        for index, (context, _, doc_to_visual, doc_id, task, split) in enumerate(chunk):
            visual = doc_to_visual(self.task_dict[task][split][doc_id])
            if is_image_visual(visual):  # images or text only: stock llava_onevision's path
                answers[index] = self._answer_images(context, chunk[0][1], visual, doc_id, task,
                                                     split)
                continue
            try:
                frames = self.frames(visual, task)
            except VisualLoadError as error:
                if self.on_video_error == "raise":
                    raise
                eval_logger.error(f"{self.MODEL_ID}: {task} doc {doc_id}: cannot load {visual}: "
                                  f"{error}")
                self._records.append(recording.sample_record(task, split, doc_id, 0,
                                                             self.per_frame, None,
                                                             error=str(error)))
                answer = self.unloadable(context, error)
                if isinstance(answer, str):
                    answers[index] = answer
                else:  # asked without the video, as stock llava_onevision does
                    todo.append((index, *build_prompt(answer[0], self.conv_template), None,
                                 None))
                continue
            pixels = self._image_processor.preprocess(list(frames.frames), return_tensors="pt")
            video = pixels["pixel_values"].to(self.device, self.dtype)
            prompt, conv = build_prompt(self.question(context, frames), self.conv_template)
            todo.append((index, prompt, conv, video, (task, split, doc_id)))
        if todo:
            texts, counted = self._generate([t[1] for t in todo], todo[0][2],
                                            [t[3] for t in todo], chunk[0][1])
            for (index, _, _, video, where), text, count in zip(todo, texts, counted):
                answers[index] = text
                if where is not None:
                    self._records.append(recording.sample_record(
                        *where, video.shape[0], self.per_frame, count))
        return answers

    def unloadable(self, context: str, error: VisualLoadError):
        """What stock does when a visual cannot be read: ``llava_onevision`` asks the question
        without the video (returned as ``(question,)``); ``llava_vid`` answers that the video
        cannot be loaded, listing the files (a folder already globbed)."""
        return (context,)

    def question(self, context: str, frames) -> str:
        return build_question(context, self.BACKBONE)

    def _generate(self, prompts_: list, conv, videos: list, gen_kwargs: dict):
        """Generate for a batch of prompts (videos: a tensor, or None for a text-only prompt).

        Returns the answers and, per prompt, the visual tokens the LLM received (or None).
        """
        from llava.constants import IMAGE_TOKEN_INDEX
        from llava.conversation import SeparatorStyle
        from llava.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows = [tokenizer_image_token(p, tok, IMAGE_TOKEN_INDEX, return_tensors="pt")
                for p in prompts_]
        input_ids = pad_sequence(rows, pad, tok.padding_side).to(self.device)
        stop = conv.sep if conv.sep_style != SeparatorStyle.TWO else conv.sep2
        stopping = KeywordsStoppingCriteria([stop], tok, input_ids)
        images = [v for v in videos if v is not None]
        # As stock: llava_onevision passes the pad id, llava_vid leaves it to generation_config
        pad_arg = {"pad_token_id": pad} if self.BACKBONE == "ov" else {}
        self.counter.reset()
        with torch.inference_mode():
            output = self.model.generate(
                input_ids, attention_mask=input_ids.ne(pad), images=images or None,
                modalities=["video"] * max(len(images), 1), use_cache=self.use_cache,
                stopping_criteria=[stopping], **pad_arg,
                **generation_kwargs(gen_kwargs, self.BACKBONE))
        texts = [t.strip() for t in tok.batch_decode(output, skip_special_tokens=True)]
        counted = self.counter.rows or [None] * len(prompts_)
        return texts, with_llm_stage(counted, self.llm_stage)

    # ---------------------------------------------------------------- image docs
    def _answer_images(self, context, gen_kwargs, images, doc_id, task, split) -> str:
        """An image doc (PIL images; none = text only) as stock ``llava_onevision`` answers it:
        one image through ``process_images`` with the checkpoint's ``image_aspect_ratio``
        (anyres_max_9: base view + crops), several images padded to squares (its multi-image
        rule), ``image_sizes`` passed, one ``<image>`` per image, no stopping criterion."""
        from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
        from llava.mm_utils import process_images, tokenizer_image_token

        if self.BACKBONE != "ov":
            raise NotImplementedError(
                f"{self.MODEL_ID}: {task} doc {doc_id} has {'images' if images else 'no video'}"
                "; stock llava_vid has no image path to reproduce (it answers videos only). "
                "Evaluate image tasks with llava_onevision_aot")
        if images and self.spec.config is not None:
            raise NotImplementedError(
                f"{self.MODEL_ID}: {task} doc {doc_id} has images, but AOT and the other "
                f"reducers (reducer={self.spec.name}) reduce video tokens only; images would "
                "pass unreduced under a reduced run's name. Evaluate image tasks with "
                "reducer=none")
        tensor, sizes = None, None
        question = context
        if images:
            tensor = process_images(images, self._image_processor, image_config(
                self._config, len(images)))
            tensor = ([t.to(self.device, self.dtype) for t in tensor] if isinstance(tensor, list)
                      else tensor.to(self.device, self.dtype))
            sizes = [image.size for image in images]
            if DEFAULT_IMAGE_TOKEN not in context:
                question = " ".join([DEFAULT_IMAGE_TOKEN] * len(images)) + "\n" + context
        prompt, _ = build_prompt(question, self.conv_template)
        tok = self.tokenizer
        input_ids = tokenizer_image_token(prompt, tok, IMAGE_TOKEN_INDEX, return_tensors="pt")
        input_ids = input_ids.unsqueeze(0).to(self.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        extra = {} if sizes is None else {"image_sizes": sizes}
        self.counter.reset()
        with torch.inference_mode():
            output = self.model.generate(input_ids, attention_mask=input_ids.ne(pad),
                                         pad_token_id=pad, images=tensor,
                                         use_cache=self.use_cache, **extra,
                                         **generation_kwargs(gen_kwargs, self.BACKBONE))
        # no video, no retention to measure: the record says so (frames 0, retention None)
        self._records.append(recording.sample_record(task, split, doc_id, 0, self.per_frame,
                                                     None))
        return tok.batch_decode(output, skip_special_tokens=True)[0].strip()

    # ---------------------------------------------------------------- retention record
    def metadata(self) -> dict:
        """Run description stored with the per-sample retention."""
        return {"model": self.MODEL_ID, "prompt_model": prompts.prompt_ids()[self.MODEL_ID]
                if self.prompt_as == "stock" else self.MODEL_ID, "backbone": self.BACKBONE,
                "pretrained": str(self.pretrained), "max_frames_num": self.max_frames_num,
                "pool_mode": self.pool_mode, "tokens_per_frame_unreduced": self.per_frame,
                "torch_dtype": self.torch_dtype, "world_size": self.world_size,
                "batch_size": self.batch_size, "frame_folders": self.frame_folders,
                **self.spec.describe()}

    def _finish(self) -> None:
        recording.publish(self._records, self.metadata(), world_size=self.world_size,
                          rank=self.rank, retention_log=self.retention_log,
                          name=f"{self.MODEL_ID}_{self._stamp}", log=eval_logger)


class LlavaOneVisionAOT(LlavaAOTBase):
    """LLaVA-OneVision-7B with AOT; same requests as lmms-eval's stock ``llava_onevision``."""

    BACKBONE = "ov"
    MODEL_ID = "llava_onevision_aot"
    DEFAULTS = {"max_frames_num": 32, "mm_spatial_pool_mode": "bilinear"}


class LlavaVidAOT(LlavaAOTBase):
    """LLaVA-Video-7B-Qwen2 with AOT; same requests as lmms-eval's stock ``llava_vid``.

    Stock ``llava_vid`` defaults differ from the paper's protocol in two places, which the
    scripts set explicitly: ``conv_template=qwen_1_5`` (stock: vicuna_v1) and
    ``max_frames_num=64`` (stock: 20). 1 fps sampling as stock.
    """

    BACKBONE = "video"
    MODEL_ID = "llava_vid_aot"
    DEFAULTS = {"max_frames_num": 64, "mm_spatial_pool_mode": "average", "video_fps": 1,
                "force_sample": False, "add_time_instruction": False,
                "mm_newline_position": "grid", "mm_resampler_location": "before"}

    def overwrite_config(self) -> dict:
        return {**super().overwrite_config(),
                "mm_newline_position": self.extra["mm_newline_position"],
                "mm_resampler_location": self.extra["mm_resampler_location"]}

    def frames(self, visual, task: str):
        return llava_vid_frames(visual, self.max_frames_num, task,
                                video_fps=to_int(self.extra["video_fps"], "video_fps"),
                                force_sample=to_bool(self.extra["force_sample"], "force_sample"),
                                frame_folders=self.frame_folders)

    def unloadable(self, context: str, error: VisualLoadError):
        paths = "\n".join(error.paths)
        return f"Video {paths} can not load, check the source"

    def question(self, context: str, frames) -> str:
        extra = (time_instruction(frames)
                 if to_bool(self.extra["add_time_instruction"], "add_time_instruction") else None)
        return build_question(context, "video", 1, extra)


def is_image_visual(visual) -> bool:
    """Whether ``doc_to_visual`` gave images (a list of PIL images) or nothing (text only)."""
    from PIL import Image

    if visual is None or (isinstance(visual, (list, tuple)) and len(visual) == 0):
        return True
    return isinstance(visual, (list, tuple)) and all(isinstance(v, Image.Image) for v in visual)


def image_config(config, n_images: int):
    """The config ``process_images`` sees, as stock ``llava_onevision`` sets it per doc: the
    checkpoint's ``image_aspect_ratio`` for one image, ``"pad"`` for several (or when the
    checkpoint states none)."""
    import types

    aspect = getattr(config, "image_aspect_ratio", None)
    if n_images > 1 or "image_aspect_ratio" not in vars(config):
        aspect = "pad"
    return types.SimpleNamespace(image_aspect_ratio=aspect, image_grid_pinpoints=getattr(
        config, "image_grid_pinpoints", None))


def pad_sequence(rows: list, value: int, side: str) -> torch.Tensor:
    """(B, L) ids padded on ``side`` as the stock wrappers pad them (the tokenizer's side)."""
    if side == "left":
        rows = [torch.flip(row, [0]) for row in rows]
    out = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)
    return torch.flip(out, [1]) if side == "left" else out


def image_newline(model) -> Optional[torch.Tensor]:
    """The learned newline embedding (``model.image_newline``), if the model has one."""
    for owner in (model, getattr(model, "model", None),
                  model.get_model() if hasattr(model, "get_model") else None):
        value = getattr(owner, "image_newline", None) if owner is not None else None
        if torch.is_tensor(value):
            return value
    return None

