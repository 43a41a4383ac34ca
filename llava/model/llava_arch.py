"""Multimodal parts shared by the LLaVA models: tower + projector + newline, and the splicing of
visual tokens into the text embeddings.

A video becomes its visual sequence through the one path of :mod:`aot.video_path` with this model's
adapter (:class:`aot_integrations.llava.LlavaVideoAdapter`): tower (with attention capture when a
reducer runs), projector, any registered reducer (or the native pooling), newline packing. The
benchmark and the demo call the same path, so their sequences equal the model's.
With no reduction set the path is the plain LLaVA one (pool, pack) and nothing of AOT runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import aot
from aot import video_path
from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from . import anyres
from aot_integrations.llava import LlavaVideoAdapter
from .vision import SigLipVisionTower, build_vision_config

PROJECTOR_TYPES = ("mlp2x_gelu",)


def build_projector(config) -> nn.Sequential:
    """mlp2x_gelu: Linear(mm_hidden, hidden), GELU, Linear(hidden, hidden); raw names ``0``/``2``."""
    kind = getattr(config, "mm_projector_type", "mlp2x_gelu")
    if kind not in PROJECTOR_TYPES:
        raise ValueError(f"mm_projector_type={kind!r}: only {PROJECTOR_TYPES} is implemented")
    return nn.Sequential(nn.Linear(config.mm_hidden_size, config.hidden_size), nn.GELU(),
                         nn.Linear(config.hidden_size, config.hidden_size))


class LlavaMetaModel:
    """Mixin for the inner model: adds ``vision_tower``, ``mm_projector``, ``image_newline``."""

    def init_multimodal(self, config) -> None:
        vision_config = build_vision_config(config)
        if getattr(config, "mm_hidden_size", None) is None:
            config.mm_hidden_size = vision_config.hidden_size
        if config.mm_hidden_size != vision_config.hidden_size:
            raise ValueError(f"mm_hidden_size={config.mm_hidden_size} does not match the vision "
                             f"tower width {vision_config.hidden_size}")
        self.vision_tower = SigLipVisionTower(vision_config)
        self.mm_projector = build_projector(config)
        if "unpad" in str(getattr(config, "mm_patch_merge_type", "flat")):
            std = config.hidden_size ** -0.5
            self.image_newline = nn.Parameter(torch.randn(config.hidden_size) * std)
        else:
            self.image_newline = None

    def get_vision_tower(self) -> SigLipVisionTower:
        return self.vision_tower


@dataclass
class VisualItem:
    """One visual input: ``pixels`` (F, 3, S, S) and its modality (``"video"`` or ``"image"``).

    Images: ``image_size`` is the original (width, height) (needed for anyres crops);
    ``spatial`` is False for images that came as one 4-D batch tensor, which LLaVA-NeXT encodes
    without its spatial merge (patch tokens only, no newline).
    """

    pixels: torch.Tensor
    modality: str
    image_size: tuple | None = None
    spatial: bool = True


class LlavaMetaForCausalLM:
    """Mixin for the causal LM: visual encoding, AOT, splicing. Needs ``get_model()``."""

    #: The reduction of every video (an :class:`aot.video_path.Reduction`), or None for the unreduced
    #: model. Use set_aot().
    reduction: video_path.Reduction | None = None
    #: Frames encoded per tower call (bounds the capture memory: chunk x heads x T^2 floats).
    vision_chunk_size: int = 8
    #: ReducedVideo results of the videos of the last call, in input order (None for unreduced items).
    last_aot_results: list

    # ------------------------------------------------------------------ accessors
    def get_vision_tower(self) -> SigLipVisionTower:
        return self.get_model().vision_tower

    @property
    def aot_config(self) -> aot.AOTConfig | None:
        """The AOTConfig of the reduction (None for the unreduced model)."""
        return None if self.reduction is None else self.reduction.config

    @property
    def reducer(self) -> str | None:
        """The reducer's registry name (None for the unreduced model)."""
        return None if self.reduction is None else self.reduction.reducer

    def video_adapter(self) -> LlavaVideoAdapter:
        """This model as an adapter of the one video path (:mod:`aot.video_path`)."""
        return LlavaVideoAdapter(self)

    def set_aot(self, config: aot.AOTConfig | str | None, reducer: str = "aot",
                options: dict | None = None) -> None:
        """Turn reduction on with a config (or a preset name such as ``"paper-ov-mvbench"``),
        or off with None. The config's pooling must match ``mm_spatial_pool_mode``.

        ``reducer``: a name of :data:`aot.reducers.REDUCERS` (``"aot"``, ``"uniform"``,
        ``"visionzip"``, ``"dycoke"``, ``"random"``, ``"aot:<ablation>"``) run on the same
        inputs; the budgeted ones need ``config.exact_retention`` (their token budget).
        ``options``: the reducer's own knobs (:attr:`aot.reducers.ReducerInfo.options` fields).
        """
        if isinstance(config, str):
            config = aot.AOTConfig.preset(config)
        if config is not None and not isinstance(config, aot.AOTConfig):
            raise TypeError(f"aot must be an aot.AOTConfig, a preset name or None; got "
                            f"{type(config).__name__}")
        if config is None:
            aot.reducers.reducer_info(reducer)  # unknown names fail even when turning off
            self.reduction = None
            return
        reduction = video_path.Reduction(config, reducer, dict(options or {}))
        self.video_adapter().check(reduction)
        self.reduction = reduction

    # ------------------------------------------------------------------ encoding
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pixels -> (N, T, hidden) projected patch features (T = 729 at 384)."""
        tower = self.get_vision_tower()
        features = tower(images, chunk_size=self.vision_chunk_size).features
        return self.get_model().mm_projector(features)

    def video_sequence(self, frames: torch.Tensor,
                       on_stage: video_path.StageHook | None = None) -> video_path.VisualSequence:
        """One video (F, 3, S, S) -> its :class:`aot.video_path.VisualSequence` under this model's
        reduction (the one path; ``on_stage`` sees "vision", "projector", "reduce")."""
        return video_path.visual_sequence(self.video_adapter(), frames, self.reduction, on_stage)

    def video_tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, object]:
        """One video (F, 3, S, S) -> ((L, hidden) tokens with newlines, ReducedVideo or None)."""
        sequence = self.video_sequence(frames)
        return sequence.tokens, sequence.result

    def image_tokens(self, tiles: torch.Tensor, image_size=None,
                     spatial: bool = True) -> torch.Tensor:
        """One image's tiles (N, 3, S, S) -> (L, hidden) tokens; never reduced.

        LLaVA-NeXT's rules for ``mm_patch_merge_type``: one tile (base resolution) gives its
        T = g*g patch tokens plus one newline with ``spatial_unpad``; several tiles (``anyres``
        / ``anyres_max_N``: base view + crops, :mod:`llava.model.anyres`) give the base view's
        tokens then the unpadded crop map row by row with a newline per row, which needs the
        original ``image_size`` = (width, height). ``spatial=False`` (a 4-D batch of images):
        the patch tokens only.
        """
        features = self.encode_images(tiles)
        merge = str(getattr(self.config, "mm_patch_merge_type", "flat"))
        newline = self.get_model().image_newline
        if not spatial or merge == "flat":
            return features.reshape(-1, features.shape[-1])
        if merge != "spatial_unpad":
            raise NotImplementedError(f"mm_patch_merge_type={merge!r} is not implemented for "
                                      "images (flat and spatial_unpad are)")
        if tiles.shape[0] == 1:
            return torch.cat([features[0], newline[None].to(features.dtype)], dim=0)
        aspect = getattr(self.config, "image_aspect_ratio", None)
        video_hint = (f"; if these {tiles.shape[0]} tensors are the frames of a video, pass "
                      "modalities=['video']")
        if not anyres.is_anyres(aspect):
            raise ValueError(f"an image came with {tiles.shape[0]} tiles but image_aspect_ratio="
                             f"{aspect!r} makes one per image; preprocess with "
                             f"llava.mm_utils.process_images and this model's config{video_hint}")
        if image_size is None:
            raise ValueError(f"an anyres image ({tiles.shape[0]} tiles) needs its original size: "
                             "pass image_sizes=[image.size, ...] (width, height) with images"
                             f"{video_hint}")
        return anyres.pack_image(features, tuple(int(v) for v in image_size),
                                 self.config.image_grid_pinpoints,
                                 self.get_vision_tower().image_size, anyres.max_tiles_of(aspect),
                                 newline)

    # ------------------------------------------------------------------ inputs
    def visual_items(self, images, modalities, image_sizes=None) -> list[VisualItem]:
        """Normalise LLaVA-NeXT's ``images`` / ``modalities`` / ``image_sizes`` arguments and
        check pixel shapes.

        images: a list of (F, 3, S, S) videos / (3, S, S) or (N, 3, S, S) images (N tiles:
        base view + anyres crops), or a 5-D tensor (one entry per sample), or a 4-D tensor (a
        batch of single-tile images, or one video when the modality is ``"video"``).
        modalities: a string, or one string per item (a single entry is broadcast).
        image_sizes: one original (width, height) per item (LLaVA-NeXT indexes it by item).
        """
        if isinstance(modalities, str):
            modalities = [modalities]
        modalities = list(modalities) if modalities is not None else ["image"]
        image_batch = isinstance(images, torch.Tensor) and images.dim() == 4 and \
            modalities != ["video"]
        if isinstance(images, torch.Tensor):
            if images.dim() == 5:
                images = list(images)
            elif images.dim() == 4 and modalities == ["video"]:
                images = [images]
            elif images.dim() == 4:
                images = list(images)
            else:
                images = [images]
        if len(modalities) == 1 and len(images) > 1:
            modalities = modalities * len(images)
        if len(modalities) != len(images):
            raise ValueError(f"got {len(images)} visual inputs but {len(modalities)} modalities "
                             f"{modalities}; give one modality per input")
        size = self.get_vision_tower().image_size
        items = []
        for index, (pixels, modality) in enumerate(zip(images, modalities)):
            if modality not in ("video", "image"):
                raise ValueError(f"modality {modality!r} of input {index}: expected 'video' or "
                                 "'image'")
            if not isinstance(pixels, torch.Tensor):
                raise TypeError(f"visual input {index} is a {type(pixels).__name__}; expected a "
                                "torch.Tensor of preprocessed pixels")
            if modality == "image" and pixels.dim() == 3:
                pixels = pixels[None]
            expected = "(frames, 3, %d, %d)" % (size, size) if modality == "video" else \
                "(3, %d, %d) or (tiles, 3, %d, %d)" % (size, size, size, size)
            if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size) or \
                    pixels.shape[0] < 1:
                raise ValueError(f"{modality} input {index} has pixel shape "
                                 f"{tuple(pixels.shape)}; expected {expected} (preprocess with "
                                 "the image processor load_pretrained_model returns)")
            if modality == "image":
                image_size = None
                if image_sizes is not None and index < len(image_sizes):
                    image_size = tuple(image_sizes[index])
                items.append(VisualItem(pixels, modality, image_size, spatial=not image_batch))
                continue
            items.append(VisualItem(pixels, modality))
        return items

    def item_kinds(self, length: int, modality: str) -> torch.Tensor:
        """(length,) int8 kinds of one visual item's tokens for LLM stages
        (:func:`visual_kinds`): a video's single trailing newline is kind 2 under ``one_token``
        packing, every other token kind 1."""
        one_newline = getattr(self.config, "mm_newline_position", "one_token") == "one_token"
        return visual_kinds(length, modality == "video" and one_newline)

    def note_visual_map(self, kind_map: torch.Tensor, unreduced: list[int]) -> None:
        """Leave, for the next language-model call, where its visual tokens are ((B, L') kinds
        from :func:`splice_visual_tokens`) and each row's visual tokens before any reducer: an
        installed LLM stage (:mod:`aot_integrations.llm_stage`) reads both once. A caller that
        splices inputs_embeds itself (the efficiency benchmark) calls this like
        :meth:`prepare_inputs_labels_for_multimodal` does."""
        self.last_visual_kinds, self.last_visual_unreduced = kind_map, unreduced

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask,
                                             past_key_values, labels, images,
                                             modalities=("image",), image_sizes=None):
        """Replace every ``IMAGE_TOKEN_INDEX`` in ``input_ids`` (B, L) by the next visual input's
        tokens (videos under the model's reduction when one is set, see :meth:`set_aot`).

        Returns ``(None, position_ids, attention_mask, past_key_values, inputs_embeds (B, L', D),
        labels)`` like LLaVA-NeXT; padding side from ``config.tokenizer_padding_side``.
        """
        self.last_aot_results = []
        self.last_visual_kinds = self.last_visual_unreduced = None
        if images is None or input_ids is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        visual, kinds, unreduced = [], [], []
        for item in self.visual_items(images, modalities, image_sizes):
            if item.modality == "video":
                tokens, result = self.video_tokens(item.pixels)
                unreduced.append(item.pixels.shape[0] * self.video_adapter().pooled_per_frame)
            else:
                tokens = self.image_tokens(item.pixels, item.image_size, item.spatial)
                result = None
                unreduced.append(tokens.shape[0])
            visual.append(tokens)
            kinds.append(self.item_kinds(tokens.shape[0], item.modality))
            self.last_aot_results.append(result)
        embeds, mask, new_labels, positions, kind_map = splice_visual_tokens(
            input_ids, attention_mask, labels, visual, self.get_model().embed_tokens,
            max_length=getattr(self.config, "tokenizer_model_max_length", None),
            padding_side=getattr(self.config, "tokenizer_padding_side", "right"), kinds=kinds)
        self.note_visual_map(kind_map, _per_row(unreduced, input_ids, attention_mask))
        if position_ids is None:
            positions = None
        if attention_mask is None and bool(mask.all()):
            mask = None
        return None, positions, mask, past_key_values, embeds, (new_labels if labels is not None
                                                                 else None)


def _per_row(counts: list[int], input_ids: torch.Tensor,
             attention_mask: torch.Tensor | None) -> list[int]:
    """Per-item counts (items in placeholder order over the batch) summed per row."""
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None \
        else attention_mask.bool()
    per_row, start = [], 0
    for ids, keep in zip(input_ids, real):
        items = int((ids[keep] == IMAGE_TOKEN_INDEX).sum())
        per_row.append(sum(counts[start:start + items]))
        start += items
    return per_row


def visual_kinds(length: int, trailing_newline: bool) -> torch.Tensor:
    """(length,) int8 kinds of one visual item's tokens for LLM stages: 1 a visual token, 2 the
    video's single trailing newline (``one_token`` packing), which some stages keep as text."""
    kinds = torch.ones(length, dtype=torch.int8)
    if trailing_newline and length:
        kinds[-1] = 2
    return kinds


def splice_visual_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                         labels: torch.Tensor | None, visual: list[torch.Tensor], embed: nn.Module,
                         max_length: int | None = None, padding_side: str = "right",
                         kinds: list[torch.Tensor] | None = None):
    """Build the LLM inputs.

    Args:
        input_ids: (B, L) with IMAGE_TOKEN_INDEX placeholders; padding removed via
            ``attention_mask`` (B, L).
        labels: (B, L) or None (then all IGNORE_INDEX).
        visual: one (L_i, D) tensor per placeholder, in order over the batch.
        embed: the token embedding module.
        kinds: per visual item, (L_i,) int8 token kinds (:func:`visual_kinds`), or None.
    Returns:
        embeds (B, L', D), attention_mask (B, L') bool, labels (B, L'), position_ids (B, L');
        with ``kinds``, also (B, L') int8 kinds of every column (0 for text and padding).
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"tokenizer_padding_side={padding_side!r}: expected 'right' or 'left'")
    placeholders = int((input_ids == IMAGE_TOKEN_INDEX).sum())
    if placeholders != len(visual):
        hint = ("; a 4-D tensor without modalities=['video'] is a batch of images: pass "
                "modalities=['video'] for one video" if placeholders < len(visual) else "")
        raise ValueError(f"input_ids hold {placeholders} image placeholder(s) "
                         f"(IMAGE_TOKEN_INDEX={IMAGE_TOKEN_INDEX}) but {len(visual)} visual "
                         f"input(s) were given; put one '<image>' per image or video{hint}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    if labels is None:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
    weight = embed.weight
    sequences, sequence_labels, sequence_kinds = [], [], []
    next_visual = 0
    for ids, keep, lab in zip(input_ids, attention_mask.bool(), labels):
        row_kinds = []
        ids, lab = ids[keep], lab[keep]
        cuts = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist()
        bounds = [-1] + cuts + [ids.shape[0]]
        text = torch.cat([ids[bounds[i] + 1:bounds[i + 1]] for i in range(len(bounds) - 1)])
        text_embeds = embed(text.to(weight.device))
        parts, part_labels, start = [], [], 0
        for i in range(len(bounds) - 1):
            span = bounds[i + 1] - bounds[i] - 1
            parts.append(text_embeds[start:start + span])
            part_labels.append(lab[bounds[i] + 1:bounds[i + 1]].to(weight.device))
            row_kinds.append(torch.zeros(span, dtype=torch.int8))
            start += span
            if i < len(cuts):
                tokens = visual[next_visual].to(device=weight.device, dtype=weight.dtype)
                if kinds is not None:
                    row_kinds.append(kinds[next_visual])
                next_visual += 1
                parts.append(tokens)
                part_labels.append(torch.full((tokens.shape[0],), IGNORE_INDEX,
                                              dtype=lab.dtype, device=weight.device))
        sequence, sequence_label = torch.cat(parts), torch.cat(part_labels)
        if max_length is not None:
            sequence, sequence_label = sequence[:max_length], sequence_label[:max_length]
        sequences.append(sequence)
        sequence_labels.append(sequence_label)
        if kinds is not None:
            sequence_kinds.append(torch.cat(row_kinds)[:sequence.shape[0]])

    batch, longest, dim = len(sequences), max(s.shape[0] for s in sequences), weight.shape[1]
    embeds = weight.new_zeros(batch, longest, dim)
    mask = torch.zeros(batch, longest, dtype=torch.bool, device=weight.device)
    out_labels = torch.full((batch, longest), IGNORE_INDEX, dtype=labels.dtype,
                            device=weight.device)
    positions = torch.zeros(batch, longest, dtype=torch.long, device=weight.device)
    kind_map = torch.zeros(batch, longest, dtype=torch.int8, device=weight.device)
    for b, (sequence, sequence_label) in enumerate(zip(sequences, sequence_labels)):
        n = sequence.shape[0]
        where = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
        embeds[b, where] = sequence
        mask[b, where] = True
        out_labels[b, where] = sequence_label
        positions[b, where] = torch.arange(n, device=weight.device)
        if kinds is not None:
            kind_map[b, where] = sequence_kinds[b].to(weight.device)
    if kinds is not None:
        return embeds, mask, out_labels, positions, kind_map
    return embeds, mask, out_labels, positions
