"""What every transformers adapter shares: :class:`HFAdapter` and the paper's relative layers.

An adapter follows :class:`aot.video_path.VideoAdapter` for the per-video steps (``check``,
``pool``, ``pack_pooled``, ``pack_result``); encoding works on the processor's batch at once
(``encode_batch``), with the same tower call the stock ``get_video_features`` makes, so the
unreduced features are bit-identical to the stock model's. ``slots`` says, for every token of a
packed video, which placeholder of the unreduced run it stands in for (its M-RoPE position).
One module per model family holds the subclasses (:mod:`.llava_onevision`, :mod:`.qwen`).
"""

from __future__ import annotations

import torch

# relative_layers and the paper's layers live with the backbone facts (aot.backbones); they are
# re-exported here for the adapters and their callers.
from aot.backbones import (PAPER_DEPTH, PAPER_LAYERS, Backbone, get_backbone,  # noqa: F401
                           relative_layers)
from aot.result import ReducedVideo
from aot.serving import kept_slots
from aot.video_path import Encoded, Reduction, resolve_layers

from ..pooling_head import check_extra_inputs
from .sequence import check_placeholders


class HFAdapter:
    """Shared parts; subclasses set ``backbone_name`` and the model-specific methods.

    Attributes:
        model: the ``...ForConditionalGeneration`` instance.
        model_type: ``config.json``'s ``model_type`` of the checkpoints this class loads.
        video_keys: processor outputs the encoder consumes (dropped before the LLM runs).
    """

    backbone_name = ""
    model_type = ""
    video_keys: tuple[str, ...] = ()
    #: the input the expected placeholder counts are read from (for messages).
    video_source = "pixel_values_videos"
    #: True when the model groups placeholders by runs (M-RoPE: each run of
    #: ``mm_token_type_ids`` takes the next grid), so runs must be exactly the processor's.
    grouped_runs = False

    def __init__(self, model) -> None:
        self.model = model

    @property
    def backbone(self) -> Backbone:
        return get_backbone(self.backbone_name)

    @property
    def video_token_id(self) -> int:
        return self.model.config.video_token_id

    @property
    def vision_layers(self) -> int:
        raise NotImplementedError

    @property
    def feature_depth(self) -> int:
        """Blocks whose output the features come from (the last of them is
        :data:`aot.video_path.LAST_LAYER`): the whole tower unless the model reads an earlier
        layer."""
        return self.vision_layers

    def encode_batch(self, inputs: dict, layers: tuple[int, ...],
                     extra_inputs: tuple[str, ...] = ()) -> list[Encoded]:
        """The processor's batch -> one :class:`Encoded` per video, with received attention at
        ``layers`` (negative indices count from the last used block,
        :func:`aot.video_path.resolve_layers`), keyed as requested, and the
        :data:`aot.video_path.EXTRA_INPUTS` named in ``extra_inputs`` (adapters with a pooling
        head only)."""
        plan = resolve_layers(layers, self.feature_depth)
        actual = tuple(sorted(set(plan.values())))
        encoded = (self._encode_batch(inputs, actual, extra_inputs=tuple(extra_inputs))
                   if extra_inputs else self._encode_batch(inputs, actual))
        for video in encoded:
            video.attention = {layer: video.attention[actual] for layer, actual in plan.items()}
        return encoded

    def _encode_batch(self, inputs: dict, layers: tuple[int, ...]) -> list[Encoded]:
        """:meth:`encode_batch` at block indices ``layers`` (sorted, non-negative)."""
        raise NotImplementedError

    def default_layers(self) -> tuple[int, int]:
        """(shallow, deep) vision layers for AOT's local / global anchors on this model's tower:
        the paper's layers at the same relative depth (:func:`relative_layers` of
        :attr:`vision_layers`)."""
        return relative_layers(self.vision_layers)

    def model_fields(self) -> dict:
        """AOTConfig fields that are facts of this model, not choices (:func:`aot_integrations.hf.apply`
        and :func:`aot_integrations.hf.config_for` set them): the backbone's pooling."""
        return {"pooling": self.backbone.pooling}

    def check(self, reduction: Reduction) -> None:
        """The reduction's model facts (pooling, ...) must be this model's, its layers inside
        the tower."""
        config = reduction.config
        for name, value in self.model_fields().items():
            if getattr(config, name) != value:
                raise ValueError(f"AOTConfig.{name}={getattr(config, name)!r} but "
                                 f"{self.backbone.title} needs {value!r}; build the config with "
                                 f"aot_integrations.hf.config_for(model, retention)")
        for name in ("shallow_layer", "deep_layer"):
            if getattr(config, name) >= self.vision_layers:
                raise ValueError(f"AOTConfig.{name}={getattr(config, name)} but the vision tower "
                                 f"has blocks 0..{self.vision_layers - 1}")
        self.check_extra_inputs(reduction)

    def check_extra_inputs(self, reduction: Reduction) -> None:
        """Refuse a reduction reading :data:`aot.video_path.EXTRA_INPUTS` this model cannot give
        (a SigLIP pooling head's outputs without a head), saying how to attach one."""
        check_extra_inputs(reduction, self.pooling_head(), self.backbone.title)

    def pooling_head(self):
        """The SigLIP attention-pooling head this model gives its reducers
        (:func:`aot_integrations.pooling_head.pooling_head_of`), None without one."""
        return None

    def check_inputs(self, inputs: dict) -> None:
        """Refuse a batch whose video inputs, grids and placeholders disagree, with one line
        naming the value, before anything is encoded (``input_ids`` is a checked tensor)."""
        pieces = self.video_pieces(inputs)
        pixels = inputs["pixel_values_videos"]
        if pixels.is_floating_point() and not bool(torch.isfinite(pixels).all()):
            raise ValueError("aot_integrations.hf: pixel_values_videos holds NaN or inf values; "
                             "expected the processor's normalised pixels")
        check_placeholders(inputs["input_ids"], inputs.get("attention_mask"), self.video_token_id,
                           pieces, self.video_source, self.grouped_runs)

    def video_pieces(self, inputs: dict) -> list[list[int]]:
        """Per video of the batch, the lengths of the placeholder runs the processor wrote for
        it (checking the video inputs' types and shapes)."""
        raise NotImplementedError

    def token_grids(self, inputs: dict) -> list[tuple[int, int]]:
        """Per video, the (rows, cols) grid of tokens the reducer selects on (inputs checked by
        :meth:`check_inputs` first)."""
        raise NotImplementedError

    def positions(self, inputs: dict) -> torch.Tensor | None:
        """(3, B, L) unreduced M-RoPE positions, or None for 1-D positions."""
        return None

    def slots(self, encoded: Encoded, result: ReducedVideo | None) -> torch.Tensor:
        """(L_v,) index of each packed token's placeholder in the unreduced run."""
        per_frame = self._per_frame(encoded)
        frames = encoded.num_frames
        if result is None:
            visual = torch.arange(frames * per_frame)
        else:
            visual = kept_slots(result, per_frame)
        newlines = self.backbone.newlines(frames, encoded.grid)
        tail = torch.arange(frames * per_frame, frames * per_frame + newlines)
        return torch.cat([visual.long(), tail.long()])

    def _per_frame(self, encoded: Encoded) -> int:
        """Unreduced tokens per frame the LLM reads (newlines excluded)."""
        return self.backbone.pooled_per_frame(encoded.grid)

    def run_length(self, encoded: Encoded) -> int:
        """Placeholders the processor wrote for this video (unreduced, newlines included)."""
        frames = encoded.num_frames
        return frames * self._per_frame(encoded) + self.backbone.newlines(frames, encoded.grid)
