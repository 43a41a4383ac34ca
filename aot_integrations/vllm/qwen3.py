"""AOT (or a registry reducer with a fixed per-frame split, exact mode) inside vLLM's Qwen3-VL.

vLLM's Qwen3-VL writes a video as per-frame pieces, ``<t seconds><vision_start>`` + that frame's
tokens + ``<vision_end>``, and fixes each piece's length when it tokenizes the prompt.
:class:`AOTQwen3VLProcessor` writes each frame's reduced count
(:func:`aot.serving.frame_token_counts`: a pure function of the grid and the settings), so the
prompt is the one ``aot_integrations.hf`` gives transformers. A reducer whose split over the
frames follows the content has no such layout and is refused (one line, HTTP 400 on a server).

:class:`AOTQwen3VLForConditionalGeneration` runs vLLM's own vision tower with the received
attention captured at the reducer's layers, reduces the main features and the DeepStack levels
together (concatenated along channels, as vLLM's tower returns them and as
``aot_integrations.hf`` reduces them; the similarities read the main channels only), puts each
kept token in its own frame's piece, and returns the whole placeholder (the prompt's
``<vision_start>`` and the pieces) in vLLM's video pruning layout: the text embeddings of the
timestamps and markers, the kept tokens, their DeepStack levels and five position channels
carrying every token's unreduced M-RoPE position. The text's positions are known when a request
is admitted (:meth:`~AOTQwen3VLForConditionalGeneration.get_mrope_input_positions`); the video
tokens are placed from the channels when the video is encoded
(:meth:`~AOTQwen3VLForConditionalGeneration.recompute_mrope_positions`).
"""

from __future__ import annotations

import collections
import dataclasses

import torch
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder, Qwen3VLForConditionalGeneration, Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails

from aot.backbones import get_backbone, relative_layers
from aot.reducers import REDUCERS
from aot.serving import frame_token_counts, kept_slots
from aot.settings import settings_for
from aot.video_path import Encoded, Reduction, reduce

from ..capture import capturing
from .common import (REDUCER, RETENTION, UNREDUCED, check_count, check_layers, check_pixel_videos,
                     embed_media, option_fields, server_overrides, video_reductions,
                     with_option_fields, without_options)
from .options import Options, parse_options, reducer_names
from .qwen import vision_received

BACKBONE = "qwen3_vl"
#: Prompts whose media placement the model remembers between admitting a request and encoding
#: its media (more than the requests a server holds at once).
PLACEHOLDER_MEMORY = 4096


def served_reducers() -> list[str]:
    """The plugin's reducers (:func:`.options.reducer_names`) whose split over the frames is
    fixed (their registry entry declares ``frame_counts``): the ones Qwen3-VL can serve."""
    return [name for name in reducer_names() if REDUCERS[name].frame_counts is not None]


def check_reducer(options: Options) -> None:
    """Refuse a reducer whose per-frame split follows the content (a ValueError, one line)."""
    if options.retention is not None and options.reducer not in served_reducers():
        raise ValueError(f"aot_reducer={options.reducer!r} splits its tokens over the frames by "
                         "the video's content, but Qwen3-VL writes each frame's placeholders "
                         "after its timestamp before the encoder runs; expected one of "
                         f"{served_reducers()}")


def reduction_for(hf_config, retention: float, reducer: str) -> Reduction:
    """The exact-mode :class:`Reduction` at ``retention`` for a Qwen3-VL checkpoint config (with
    the server's ``aot_config``): the settings ``aot_integrations.hf.config_for`` gives the same
    checkpoint (the paper's relative layers of the tower, no pooling, similarities on the main
    features, i.e. the LLM width's first channels)."""
    backbone = get_backbone(BACKBONE)
    config = settings_for(backbone, retention, exact=True,
                          layers=relative_layers(hf_config.vision_config.depth),
                          **{"pooling": backbone.pooling,
                             "similarity_channels": hf_config.text_config.hidden_size,
                             **server_overrides(hf_config)})
    return Reduction(config, reducer)


def video_frame_counts(hf_config, grid_thw, retention: float, reducer: str) -> list[int]:
    """Placeholders of each frame (temporal patch) of one video with grid (t, h, w) in patches:
    :func:`aot.serving.frame_token_counts` of its reduction, or h*w/4 each when ``retention`` is
    :data:`UNREDUCED`."""
    t, h, w = (int(v) for v in (grid_thw.tolist() if hasattr(grid_thw, "tolist") else grid_thw))
    if retention == UNREDUCED:
        merge = get_backbone(BACKBONE).patch_merge
        return [(h // merge) * (w // merge)] * t
    reduction = reduction_for(hf_config, retention, reducer)
    return frame_token_counts(BACKBONE, (t, h, w), reduction.config, reducer)


def with_frame_counts(ids: list[int], video_token: int, counts: list[int]) -> list[int]:
    """``ids`` with its k-th run of ``video_token`` (the frames of every video, in prompt order)
    resized to ``counts[k]`` tokens; a ValueError when the runs and the counts disagree."""
    out, runs = [], 0
    for position, token in enumerate(ids):
        if token != video_token:
            out.append(token)
        elif position == 0 or ids[position - 1] != video_token:    # a run starts
            out.extend([video_token] * (counts[runs] if runs < len(counts) else 0))
            runs += 1
    if runs != len(counts):
        raise ValueError(f"aot_integrations.vllm: the prompt holds {runs} runs of video "
                         f"placeholders but its videos have {len(counts)} frames")
    return out


def frame_order(result, per_frame: int, counts: list[int], reducer: str,
                index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A reduced video's tokens (L, C) and their slots (L,) in piece order: frame by frame, each
    frame's tokens in the reducer's order (where ``aot_integrations.hf`` emits them). A
    RuntimeError when a frame kept another count than its placeholders were sized for."""
    frames = result.token_frame.long().cpu()
    kept = torch.bincount(frames, minlength=len(counts)).tolist()
    if kept != list(counts):
        raise RuntimeError(f"aot_integrations.vllm: reducer {reducer!r} kept {kept} tokens per "
                           f"frame of video {index} but its placeholders were sized for {counts}")
    order = torch.sort(frames, stable=True).indices
    return result.tokens[order.to(result.tokens.device)], kept_slots(result, per_frame)[order]


def expand_frames(ids: list[int], spans: list[tuple[int, int]], frame_tokens: list[int],
                  video_token: int, vision_start: int, vision_end: int):
    """The unreduced prompt of a reduced one: inside each video's placeholder span (offset,
    length), every frame's run of ``video_token`` (possibly empty: a frame's
    ``<|vision_start|>`` followed by a video token or by ``<|vision_end|>``) back to that
    video's ``frame_tokens``. Returns (ids, moved): ``moved(i)`` is where index ``i`` of the
    reduced prompt (or the end, ``len(ids)``) lands in the unreduced one."""
    frame_of = {}                  # index inside a video's span -> that video's frame tokens
    for (offset, length), tokens in zip(spans, frame_tokens):
        frame_of.update({i: tokens for i in range(offset, offset + length)})
    out, starts, index = [], {}, 0
    while index < len(ids):
        starts[index] = len(out)
        token = ids[index]
        out.append(token)
        index += 1
        if (token == vision_start and index - 1 in frame_of and index < len(ids)
                and ids[index] in (video_token, vision_end)):
            out.extend([video_token] * frame_of[index - 1])
            while index < len(ids) and ids[index] == video_token:
                starts[index] = len(out)
                index += 1
    starts[len(ids)] = len(out)
    return out, starts.__getitem__


def reduced_positions(unreduced: torch.Tensor, full_ids: list[int], ids: list[int],
                      video_token: int) -> torch.Tensor:
    """(3, L) positions of the reduced prompt ``ids`` from the (3, L_full) ``unreduced`` ones of
    ``full_ids`` (:func:`expand_frames`): the text in order at its own positions, each video
    token at its frame's origin (one past its ``<|vision_start|>``), a stand-in until
    ``recompute_mrope_positions`` places it."""
    reduced = torch.tensor(ids)
    is_video = reduced == video_token
    out = torch.empty(3, len(ids), dtype=unreduced.dtype)
    out[:, ~is_video] = unreduced[:, torch.tensor(full_ids) != video_token]
    columns = torch.arange(len(ids))
    last_text = torch.where(is_video, -1, columns).cummax(0).values
    out[:, is_video] = out[:, last_text[is_video]] + 1
    return out


class AOTQwen3VLProcessor(Qwen3VLMultiModalProcessor):
    """The stock processor, plus the request's reduction per video and each frame's reduced
    placeholder count after its timestamp."""

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        options = parse_options(self.info.ctx.get_merged_mm_kwargs(hf_kwargs))
        check_reducer(options)
        out = super()._apply_hf_processor_main(mm_items, without_options(hf_kwargs))
        if "video_grid_thw" not in out:
            return out
        grids = out["video_grid_thw"]
        out.update(option_fields(options, grids.shape[0]))
        retention = UNREDUCED if options.retention is None else options.retention
        counts = [count for grid in grids for count in video_frame_counts(
            self.info.get_hf_config(), grid, retention, options.reducer)]
        ids = out["input_ids"]
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        video_token = self.info.get_hf_config().video_token_id
        rewritten = [with_frame_counts(list(row), video_token, counts) for row in rows]
        out["input_ids"] = torch.tensor(rewritten) if isinstance(ids, torch.Tensor) else rewritten
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        return with_option_fields(
            super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs), MultiModalFieldConfig)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, without_options(hf_processor_mm_kwargs),
                                              out_mm_kwargs)
        stock = next(update for update in updates if update.modality == "video")
        hf_config = self.info.get_hf_config()
        if list(stock.target) != [hf_config.video_token_id]:
            raise ValueError("aot_integrations.vllm: Qwen3-VL needs a transformers processor "
                             "that expands the bare <|video_pad|> inside the prompt's "
                             "<|vision_start|> ... <|vision_end|> (transformers >= 5.10)")
        tokenizer = self.info.get_tokenizer()

        def replacement(item_idx: int) -> PromptUpdateDetails:
            item = out_mm_kwargs["video"][item_idx]
            counts = video_frame_counts(hf_config, item["video_grid_thw"].data,
                                        float(item[RETENTION].data),
                                        reducer_names()[int(item[REDUCER].data)])
            return PromptUpdateDetails.from_seq(video_pieces(
                hf_config, tokenizer, counts, item["timestamps"].data))

        # The prompt's own <|vision_start|> before the video joins the placeholder, which the
        # model fills with the whole sequence (text embeddings included; vLLM's pruning
        # layout): vLLM's recompute_mrope_positions then places it from that token on.
        return [update for update in updates if update.modality != "video"] + [
            PromptReplacement(modality="video",
                              target=[hf_config.vision_start_token_id, hf_config.video_token_id],
                              replacement=replacement)]


def video_pieces(hf_config, tokenizer, counts: list[int], timestamps) -> list[int]:
    """The ids of one video's placeholder: the prompt's ``<|vision_start|>``, then per frame its
    timestamp text, ``<|vision_start|>``, ``counts[f]`` video tokens, ``<|vision_end|>`` (vLLM's
    ``get_video_repl``; the prompt's own ``<|vision_end|>`` follows as text)."""
    pieces = Qwen3VLMultiModalProcessor.get_video_repl(
        tokens_per_frame=counts, timestamps=timestamps, tokenizer=tokenizer,
        vision_start_token_id=hf_config.vision_start_token_id,
        vision_end_token_id=hf_config.vision_end_token_id,
        video_token_id=hf_config.video_token_id)
    return [hf_config.vision_start_token_id] + list(pieces.full)


def piece_positions(ids: list[int], video_token: int, rows: int, cols: int) -> torch.Tensor:
    """(3, L) long M-RoPE positions (t, h, w), counted from 0, of an unreduced Qwen3-VL video
    sequence ``ids`` whose every run of ``video_token`` is one frame of rows x cols tokens:
    a text token takes the next free position on all three channels; a frame's token at
    (r, c) takes (s, s + r, s + c), s the next free position; the text after a frame resumes
    past its largest position (transformers' and vLLM's ``get_rope_index`` rule)."""
    grid = torch.stack(torch.meshgrid(torch.zeros(1, dtype=torch.long), torch.arange(rows),
                                      torch.arange(cols), indexing="ij")).reshape(3, -1)
    parts, free, index = [], 0, 0
    while index < len(ids):
        if ids[index] == video_token:
            parts.append(grid + free)
            free += max(rows, cols)
            index += rows * cols
        else:
            parts.append(torch.full((3, 1), free, dtype=torch.long))
            free += 1
            index += 1
    return torch.cat(parts, dim=1)


def position_channels(full_ids: list[int], ids: list[int], slots: torch.Tensor, video_token: int,
                      vision_start: int, rows: int, cols: int) -> torch.Tensor:
    """(L, 5) long for the reduced sequence ``ids`` (L tokens): every token's unreduced position
    (:func:`piece_positions` of ``full_ids``; the text keeps its own, a kept token its slot's,
    ``slots`` (kept,) in the order of ``ids``' video tokens), then a flag on each
    ``<|vision_start|>`` and one on each video token: the channels vLLM's
    ``recompute_mrope_positions`` reads for Qwen3-VL."""
    unreduced = piece_positions(full_ids, video_token, rows, cols)
    full = torch.tensor(full_ids)
    reduced = torch.tensor(ids)
    is_video = reduced == video_token
    out = torch.zeros(5, len(ids), dtype=torch.long)
    out[:3, ~is_video] = unreduced[:, full != video_token]
    out[:3, is_video] = unreduced[:, full == video_token][:, slots]
    out[3] = reduced == vision_start
    out[4] = is_video
    return out.T


@MULTIMODAL_REGISTRY.register_processor(AOTQwen3VLProcessor, info=Qwen3VLProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class AOTQwen3VLForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL with each video reduced as its request asks (:mod:`.options`), in a
    fixed per-frame layout.

    Every video comes back in vLLM's pruning layout (embeddings of the whole piece sequence plus
    five position channels), reduced or not, so the model runner always recomputes M-RoPE
    positions (:func:`aot_integrations.vllm.patch_model_runners`) and the decoder's position
    cache is sized for unreduced positions
    (:func:`aot_integrations.vllm.patch_qwen3_position_cache`).
    """

    def __init__(self, *, vllm_config, prefix: str = "model"):
        if vllm_config.model_config.multimodal_config.is_multimodal_pruning_enabled():
            raise ValueError("aot_integrations.vllm: --video-pruning-rate turns on vLLM's video "
                             "pruning, which would prune the videos a second time; leave it "
                             "unset (AOT's retention is the aot_retention key of "
                             "--mm-processor-kwargs)")
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.is_multimodal_pruning_enabled = True
        #: prompt ids -> its media items' (offset, length, modality), for
        #: :meth:`recompute_mrope_positions`, which vLLM gives the prompt but not the items
        self._placeholders: collections.OrderedDict = collections.OrderedDict()
        # refuse bad server settings at start, not per request
        reduction = reduction_for(self.config, 1.0, "aot")
        check_layers(reduction, len(self.visual.blocks))
        merge = self.visual.spatial_merge_size
        frame_token_counts(BACKBONE, (2, 2 * merge, 2 * merge), reduction.config)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """Positions of the reduced prompt before any video is encoded: its text at the
        unreduced prompt's positions (vLLM's rule on :func:`expand_frames`; they do not depend
        on which tokens are kept), each video token at its frame's origin. vLLM's
        ``recompute_mrope_positions`` then gives the video tokens their slots' positions when
        the video is encoded; a prompt whose video is served from the prefix cache is not
        recomputed, so its text must already be right here."""
        config = self.config
        spans, frame_tokens = [], []
        for feature in mm_features:
            if feature.modality == "video":
                _, h, w = feature.data["video_grid_thw"].data.tolist()
                merge = config.vision_config.spatial_merge_size
                spans.append((feature.mm_position.offset, feature.mm_position.length))
                frame_tokens.append((h // merge) * (w // merge))
        if not spans:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        full, moved = expand_frames(list(input_tokens), spans, frame_tokens,
                                    config.video_token_id, config.vision_start_token_id,
                                    config.vision_end_token_id)
        features = [dataclasses.replace(feature, mm_position=dataclasses.replace(
            feature.mm_position, offset=moved(feature.mm_position.offset),
            length=(moved(feature.mm_position.offset + feature.mm_position.length)
                    - moved(feature.mm_position.offset))))
            for feature in mm_features]
        unreduced, _ = super().get_mrope_input_positions(full, features)
        positions = reduced_positions(unreduced, full, list(input_tokens), config.video_token_id)
        self._placeholders[tuple(input_tokens)] = sorted(
            (f.mm_position.offset, f.mm_position.length, f.modality) for f in mm_features)
        while len(self._placeholders) > PLACEHOLDER_MEMORY:
            self._placeholders.popitem(last=False)
        return positions, int(positions.max()) + 1 - len(input_tokens)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions,
                                  num_computed_tokens):
        """This step's media chunks (in prompt order; the first may start inside its item, at
        ``num_computed_tokens``, when a prefix cache hit or a chunked prefill ends there) with
        their position channels stripped, and their tokens placed: each channel row counted
        from its item's start (a video's from its placeholder's first token, whose own
        position is right already; an image's from one past its ``<|vision_start|>``). The
        text is placed already (:meth:`get_mrope_input_positions`), so nothing else moves
        (vLLM's own rule locates chunks by counting media tokens, which a video placeholder
        holding timestamp text breaks)."""
        spans = self._placeholders.get(tuple(int(i) for i in input_ids))
        if spans is None:
            return super().recompute_mrope_positions(input_ids, multimodal_embeddings,
                                                     mrope_positions, num_computed_tokens)
        positions = mrope_positions.clone()
        pending = [span for span in spans if span[0] + span[1] > num_computed_tokens]
        out = []
        for chunk, (offset, _, modality) in zip(multimodal_embeddings, pending):
            start = max(offset, num_computed_tokens)
            origin = positions[:, offset] if modality == "video" else positions[:, offset - 1] + 1
            rows = chunk[:, -5:-2].long().T.to(positions.device)          # (3, chunk)
            positions[:, start:start + chunk.shape[0]] = rows + origin[:, None]
            out.append(chunk[:, :-5])
        return out, positions, int(positions.max()) + 1 - len(input_ids)

    def embed_multimodal(self, **kwargs):
        """Image embeddings as stock (with their position channels); each video reduced
        (:meth:`_embed_videos`)."""
        return embed_media(self, kwargs, lambda inputs: self._postprocess_image_embeds_evs(
            self._process_image_input(inputs), inputs), no_media=None)

    def _embed_videos(self, video_input, retention, reducer) -> tuple[torch.Tensor, ...]:
        """The tower on every video at once (received attention captured at the layers the
        reductions read), then per video: the kept tokens (all t*h*w/4 when unreduced) in piece
        order, in the video's placeholder sequence (:meth:`_piece_embeddings`)."""
        check_pixel_videos(video_input, self.use_data_parallel)
        visual = self.visual
        grid = video_input["video_grid_thw"].tolist()
        reductions = video_reductions(retention, reducer, len(grid),
                                      lambda r, name: reduction_for(self.config, r, name))
        layers = sorted({layer for reduction in reductions if reduction is not None
                         for layer in reduction.layers})
        with torch.no_grad(), capturing({layer: visual.blocks[layer].attn for layer in layers},
                                        vision_received) as sinks:
            # (patches / 4, D * (1 + levels)): the main features, then each DeepStack level
            merged = visual(video_input["pixel_values_videos"], grid_thw=grid)
        unit = visual.spatial_merge_unit
        received = {layer: sinks[layer][0].view(-1, unit).mean(1) for layer in layers}
        merge = visual.spatial_merge_size
        out, start = [], 0
        for index, ((t, h, w), reduction) in enumerate(zip(grid, reductions)):
            rows, cols = h // merge, w // merge
            stop = start + t * rows * cols
            tokens = merged[start:stop]
            if reduction is None:
                counts = [rows * cols] * t
                slots = torch.arange(t * rows * cols)
            else:
                encoded = Encoded(tokens.view(t, rows * cols, -1), (rows, cols),
                                  {layer: att[start:stop].view(t, rows * cols)
                                   for layer, att in received.items()})
                result = reduce(encoded, reduction)
                counts = frame_token_counts(BACKBONE, (t, h, w), reduction.config,
                                            reduction.reducer)
                check_count(result, sum(counts), reduction.reducer, index)
                tokens, slots = frame_order(result, rows * cols, counts, reduction.reducer,
                                            index)
                tokens = tokens.to(merged.dtype)
            out.append(self._piece_embeddings(tokens, counts, slots.cpu(),
                                              video_input["timestamps"][index], rows, cols))
            start = stop
        return tuple(out)

    def _piece_embeddings(self, tokens: torch.Tensor, counts: list[int], slots: torch.Tensor,
                          timestamps, rows: int, cols: int) -> torch.Tensor:
        """(L, D * (1 + levels) + 5): one video's placeholder (:func:`video_pieces`) as the
        model runner takes it: text embeddings (no DeepStack levels) on its text tokens, the
        kept ``tokens`` (kept, D * (1 + levels)) on its video tokens, then the position
        channels (:func:`position_channels`)."""
        config, tokenizer = self.config, self._tokenizer
        ids = video_pieces(config, tokenizer, counts, timestamps)
        full_ids = video_pieces(config, tokenizer, [rows * cols] * len(counts), timestamps)
        index = torch.tensor(ids, device=tokens.device)
        is_video = index == config.video_token_id
        text = self.get_language_model().embed_input_ids(index)
        embeds = tokens.new_zeros(len(ids), tokens.shape[1])
        embeds[:, :text.shape[1]] = text.to(tokens.dtype)
        embeds[is_video] = tokens
        positions = position_channels(full_ids, ids, slots, config.video_token_id,
                                      config.vision_start_token_id, rows, cols)
        return torch.cat([embeds, positions.to(tokens.device, tokens.dtype)], dim=1)
