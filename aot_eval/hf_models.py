"""lmms-eval models for transformers' Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision with AOT.

Registered as ``qwen2_5_vl_aot``, ``qwen3_vl_aot`` and ``llava_hf_aot`` (see
:mod:`aot_eval.manifests`). Each one *is* the stock lmms-eval 0.7.3 class (``qwen2_5_vl``,
``qwen3_vl``, ``llava_hf``) by inheritance: frame sampling, prompts, batching, generation
arguments and answer post-processing are the stock code, not a copy. What we add:

* the constructor takes the AOT keys out of ``--model_args`` (:mod:`aot_eval.model_args`:
  ``reducer``, ``retention``, ``exact``, ``preset``, ``ablation``, ``reducer.<option>``,
  AOTConfig fields) plus
  ``retention_log`` and ``prompt_as``, hands every other key to the stock constructor, and
  installs the reducer on the loaded model with :func:`aot_integrations.hf.apply` (nothing with
  ``reducer=none``: the stock model computes as loaded);
* :class:`VideoTokenCounter` observes ``model.generate`` on the instance (arguments and outputs
  pass through untouched) and counts per batch row the video placeholders the processor wrote and
  those that reach the stock ``generate`` after the reducer: the retention record of every video
  (:mod:`aot_eval.recording`).

Which doc a batch row belongs to: the stock classes fetch each doc (``self.task_dict[task]
[split][doc_id]``) in batch order before its ``generate`` call (``qwen3_vl`` fetches the next
batch while the current one generates), so the fetched ids form a queue from which each call
takes its batch size.

Stock behaviours kept on purpose: ``llava_hf`` answers ``""`` when ``generate`` raises; with a
reducer on, such a failure is recorded and :meth:`generate_until` raises after the run (a reduced
run must not score failed reductions as empty answers). Image docs under a reducer are refused
(the reducers reduce videos only; images would pass unreduced under a reduced run's name).
On a machine without torchvision the stock video path cannot run: transformers' video
processors and ``qwen_vl_utils`` need it (docs/reproduce.md).
"""

from __future__ import annotations

import functools
from collections import deque
from datetime import datetime
from typing import Optional

import torch
from loguru import logger as eval_logger

from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as Qwen2_5_VLChat
from lmms_eval.models.chat.qwen3_vl import Qwen3_VL as Qwen3_VLChat
from lmms_eval.models.simple.llava_hf import LlavaHf
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL
from lmms_eval.models.simple.qwen3_vl import Qwen3_VL

from . import prompts, recording
from .model_args import (NO_REDUCER, ReducerSpec, install_llm_stage, parse_reducer,
                         split_aot_kwargs, with_llm_stage)


def count_per_row(input_ids: torch.Tensor, attention_mask, token_id: Optional[int]) -> list[int]:
    """(B, L) ids -> per row the attended positions holding ``token_id`` (zeros when the model
    has no video token)."""
    if token_id is None:
        return [0] * input_ids.shape[0]
    hits = input_ids == token_id
    if torch.is_tensor(attention_mask):
        hits &= attention_mask.bool().to(hits.device)
    return hits.sum(dim=1).tolist()


def frames_per_row(inputs: dict, placeholders: list[int], backbone, merge: int) -> list[int]:
    """AOT frames of each row's videos: LLaVA-OneVision ``pixel_values_videos`` (V, F, 3, S, S)
    gives F per row with a video; Qwen's ``video_grid_thw`` (V, 3) rows are consumed in order,
    ``t * h * w / merge^2`` placeholders each, and a row gets the sum of their ``t`` (temporal
    patches: two video frames each)."""
    if backbone.positions != "mrope":
        pixels = inputs.get("pixel_values_videos")
        frames = 0 if pixels is None else int(pixels.shape[1])
        return [frames if count else 0 for count in placeholders]
    grids = inputs.get("video_grid_thw")
    grids = [] if grids is None else grids.tolist()
    out, index = [], 0
    for count in placeholders:
        frames = 0
        while count > 0 and index < len(grids):
            t, h, w = grids[index]
            count -= t * h * w // (merge * merge)
            frames += t
            index += 1
        out.append(frames)
    return out


class VideoTokenCounter:
    """Observer of one model's ``generate``: per call and batch row, the video placeholders given
    (``given``) and those the stock ``generate`` receives (``received``).

    :meth:`install_inner` wraps the stock ``generate`` (before :func:`aot_integrations.hf.apply`, which then
    calls through it with the reduced ids); :meth:`install_outer` wraps what the caller calls
    and reports each call to ``on_call(inputs, given, received, error)`` (``check(inputs)`` may
    refuse a call first).
    """

    def __init__(self, model) -> None:
        self.model = model
        self.video_token_id = getattr(model.config, "video_token_id", None)
        self._received: Optional[list[int]] = None

    def install_inner(self) -> None:
        stock = self.model.generate

        @functools.wraps(stock)
        def observed(*args, **kwargs):
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            self._received = count_per_row(ids, kwargs.get("attention_mask"),
                                           self.video_token_id)
            return stock(*args, **kwargs)

        self.model.generate = observed

    def install_outer(self, on_call, check=None) -> None:
        inner = self.model.generate

        @functools.wraps(inner)
        def observed(*args, **kwargs):
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            given = count_per_row(ids, kwargs.get("attention_mask"), self.video_token_id)
            self._received = None
            try:
                if check is not None:
                    check(kwargs)
                output = inner(*args, **kwargs)
            except Exception as error:
                on_call(kwargs, given, None, error)
                raise
            on_call(kwargs, given, self._received, None)
            return output

        self.model.generate = observed


class HFReducerMixin:
    """What the three models add to their stock class (see the module docstring).

    Subclasses set ``PROTOCOL``, the name of their :class:`aot.backbones.EvalProtocol`; its
    record gives ``MODEL_ID`` (ours), ``STOCK_ID`` (whose prompts the tasks must use) and
    ``BACKBONE`` (the backbone whose facts it runs).
    """

    PROTOCOL = ""
    MODEL_ID = ""
    STOCK_ID = ""
    BACKBONE = ""

    def __init_subclass__(cls, **kwargs) -> None:
        from aot.backbones import backbone_of_protocol, get_protocol

        super().__init_subclass__(**kwargs)
        if cls.PROTOCOL:
            protocol = get_protocol(cls.PROTOCOL)
            cls.MODEL_ID, cls.STOCK_ID = protocol.model_id, protocol.stock_model
            cls.BACKBONE = backbone_of_protocol(cls.PROTOCOL).name

    def __init__(self, *args, retention_log: Optional[str] = None, prompt_as: str = "stock",
                 pooling_head: Optional[str] = None, **kwargs) -> None:
        from aot.backbones import get_backbone

        aot_kwargs, stock_kwargs = split_aot_kwargs(kwargs)
        self.spec: ReducerSpec = parse_reducer(aot_kwargs, self.BACKBONE)  # before the load
        if prompt_as not in ("stock", "own"):
            raise ValueError(f"prompt_as={prompt_as!r}: expected 'stock' or 'own'")
        self.prompt_as, self.retention_log = prompt_as, retention_log
        self.pretrained = stock_kwargs.get("pretrained", args[0] if args else None)
        super().__init__(*args, **stock_kwargs)
        self.backbone = get_backbone(self.BACKBONE)
        vision = getattr(self.model.config, "vision_config", None)
        self.merge = getattr(vision, "spatial_merge_size", 1)
        self.counter = VideoTokenCounter(self.model)
        self.counter.install_inner()
        if pooling_head is not None:  # a SigLIP head for reducers reading it (fastvid)
            from aot_integrations.pooling_head import attach_pooling_head

            attach_pooling_head(self.model, pooling_head)
        self.handle = install_reducer(self.model, self.spec)
        self.llm_stage = install_llm_stage(self.model, self.spec)
        self.counter.install_outer(self._on_generate, self._refuse_images)
        self._pending: deque = deque()  # (task, split, doc_id) fetched, not yet generated
        self._recording = False
        self._records: list = []
        self._failures: list = []
        self._stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        eval_logger.info(f"{self.MODEL_ID}: reducer={self.spec.name} ({self.spec.source}) on "
                         f"stock {self.STOCK_ID}")

    # ---------------------------------------------------------------- lmms API
    def generate_until(self, requests) -> list[str]:
        """The stock ``generate_until``, with every doc's retention recorded."""
        if self.prompt_as == "stock":
            prompts.require_stock_prompts(self.MODEL_ID)
        stock_docs = self.task_dict
        self.task_dict = _FetchLog(stock_docs, self._pending.append)
        self._recording = True
        try:
            answers = super().generate_until(requests)
        finally:
            self.task_dict = stock_docs
            self._pending.clear()
            self._recording = False
        self._finish()
        if self._failures and self.spec.name != NO_REDUCER:
            raise RuntimeError(f"{self.MODEL_ID}: generation failed for {len(self._failures)} "
                               f"docs with reducer={self.spec.name} (stock {self.STOCK_ID} "
                               f"answers them ''); first: {self._failures[0]}")
        return answers

    def generate_until_multi_round(self, requests):
        if self.spec.name != NO_REDUCER:
            raise NotImplementedError(f"{self.MODEL_ID}: multi-round generation with "
                                      f"reducer={self.spec.name} is not supported")
        return super().generate_until_multi_round(requests)

    # ---------------------------------------------------------------- records
    def _on_generate(self, inputs: dict, given: list, received, error) -> None:
        """One ``generate`` call: a record per batch row (its doc from the fetch queue)."""
        if not self._recording:  # a generate outside generate_until (multi-round): no doc ids
            return
        rows = len(given)
        docs = [self._pending.popleft() if self._pending else ("?", "?", -1)
                for _ in range(rows)]
        frames = frames_per_row(inputs, given, self.backbone, self.merge)
        for (task, split, doc_id), count, frame_count, index in zip(docs, given, frames,
                                                                     range(rows)):
            newlines = self.backbone.newlines(frame_count) if count else 0
            per_frame = (count - newlines) / frame_count if frame_count else 0
            counted = None
            if error is None and received is not None and count:
                counted = {"visual_tokens": received[index], "newline_tokens": newlines}
                counted = with_llm_stage([counted], self.llm_stage, index)[0]
            self._records.append(recording.sample_record(
                task, split, doc_id, frame_count, per_frame, counted,
                error=None if error is None else f"{type(error).__name__}: {error}"))
        if error is not None:
            self._failures.append(f"{docs[0]}: {type(error).__name__}: {error}")

    def _refuse_images(self, inputs: dict) -> None:
        if self.spec.name != NO_REDUCER and inputs.get("pixel_values") is not None:
            raise NotImplementedError(
                f"{self.MODEL_ID}: images with reducer={self.spec.name}; the reducers reduce "
                "video tokens only, images would pass unreduced under a reduced run's name. "
                "Evaluate image tasks with reducer=none")

    def metadata(self) -> dict:
        """Run description stored with the per-video records."""
        return {"model": self.MODEL_ID,
                "prompt_model": self.STOCK_ID if self.prompt_as == "stock" else self.MODEL_ID,
                "backbone": self.BACKBONE, "stock_model": self.STOCK_ID,
                "pretrained": str(self.pretrained), "frames_are": (
                    "temporal patches (two video frames each)"
                    if self.backbone.positions == "mrope" else "video frames"),
                "world_size": self.world_size, "batch_size": self.batch_size,
                **self.spec.describe()}

    def _finish(self) -> None:
        recording.publish(self._records, self.metadata(), world_size=self.world_size,
                          rank=self.rank, retention_log=self.retention_log,
                          name=f"{self.MODEL_ID}_{self._stamp}", log=eval_logger)


def install_reducer(model, spec: ReducerSpec):
    """:func:`aot_integrations.hf.apply` with the run's reducer (None and no change for ``reducer=none``).
    Budgeted baselines given ``retention`` without ``exact`` run at that exact retention."""
    if spec.name == NO_REDUCER:
        return None
    import aot_integrations.hf
    from aot.reducers import reducer_info
    from aot.video_path import Reduction

    config = spec.config
    if reducer_info(spec.name).needs_budget and config.exact_retention is None:
        config = config.replace(exact_retention=spec.retention)
    return aot_integrations.hf.apply(model, Reduction(config, spec.name, dict(spec.options)))


class _FetchLog:
    """``task_dict`` stand-in: ``[task][split][doc_id]`` returns the stock doc and reports
    ``(task, split, doc_id)``."""

    def __init__(self, docs, report, path=()) -> None:
        self._docs, self._report, self._path = docs, report, path

    def __getitem__(self, key):
        value = self._docs[key]
        if len(self._path) == 2:
            self._report((*self._path, int(key)))
            return value
        return _FetchLog(value, self._report, (*self._path, key))

    def __contains__(self, key) -> bool:
        return key in self._docs

    def __len__(self) -> int:
        return len(self._docs)


class Qwen2_5_VLAOT(HFReducerMixin, Qwen2_5_VL):
    """Stock lmms-eval ``qwen2_5_vl`` (``Qwen2_5_VLForConditionalGeneration``) with a reducer."""

    PROTOCOL = "qwen2_5_vl"


class Qwen3_VLAOT(HFReducerMixin, Qwen3_VL):
    """Stock lmms-eval ``qwen3_vl`` (``Qwen3VLForConditionalGeneration``) with a reducer."""

    PROTOCOL = "qwen3_vl"


class LlavaHfAOT(HFReducerMixin, LlavaHf):
    """Stock lmms-eval ``llava_hf`` on transformers' ``LlavaOnevisionForConditionalGeneration``
    with a reducer (the ``"ov"`` backbone: SigLIP 27x27, bilinear pooling, one newline)."""

    PROTOCOL = "llava_hf"


# The chat-protocol classes (what ``--model qwen2_5_vl_aot`` / ``qwen3_vl_aot`` run unless
# ``--force_simple``, as for the stock ids): the task's messages (``doc_to_messages``) instead of
# a context string, and their own frame counts and defaults, all stock. No chat llava_hf: see
# aot_eval.manifests.chat_models.
class Qwen2_5_VLChatAOT(HFReducerMixin, Qwen2_5_VLChat):
    """Stock lmms-eval chat ``qwen2_5_vl`` with a reducer."""

    PROTOCOL = "qwen2_5_vl"


class Qwen3_VLChatAOT(HFReducerMixin, Qwen3_VLChat):
    """Stock lmms-eval chat ``qwen3_vl`` with a reducer."""

    PROTOCOL = "qwen3_vl"
