"""The entry point: ``reduce_video(features, shallow_attention, deep_attention, config)``.

It is the composition of two stages, also callable one at a time (the benchmarks time them
apart):

* :func:`intra_stage`: anchors + intra-frame OT on the full patch grid;
* :func:`inter_stage`: pooling with the anchor mask, clips, temporal OT, and the output sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .anchors import anchors_per_frame, select_anchors
from .budget import ExactPlan, plan_exact_budget
from .clips import Clip, check_frame_features, split_clips
from .config import AOTConfig
from .graphs import graph_applies, intra_stage_graphed
from .intra import aggregate_into_anchors, write_anchors
from .ops import check_all_finite, check_finite, first_in_order, pack_left
from .pooling import check_grid_tokens, pool_at, pool_grid, pooled_shape
from .result import ReducedVideo
from .temporal import output_rows, temporal_merge_packed


@dataclass
class IntraOutput:
    """Result of :func:`intra_stage`: the input patches and the merged anchors, kept apart.

    patches: (F, T, D) the input features, untouched (no copy is made).
    anchor_idx: (F, N) long anchor token indices (ascending), N = 0 with the intra phase off.
    merged: (F, N, D) anchor features after the intra merge, in the input dtype; None when the
        merge changes nothing (``intra_merge="prune"``, phase off).
    local_anchors, global_anchors: (F, T) bool.
    deep_attention: (F, T) float32, kept to rank pooled tokens in exact-budget mode.
    grid: (rows, cols) of the patch grid (T = rows * cols).
    anchor_mask: (F, T) bool ``local_anchors | global_anchors`` when the stage made it (then
        :attr:`anchors` reads it instead of making it again), else None.

    ``features`` gives the (F, T, D) patches with the anchors replaced, as a new tensor (a copy
    of the input the pipeline itself never makes: :func:`inter_stage` pools from the two parts).
    """

    patches: torch.Tensor
    anchor_idx: torch.Tensor
    merged: torch.Tensor | None
    local_anchors: torch.Tensor
    global_anchors: torch.Tensor
    deep_attention: torch.Tensor
    grid: tuple[int, int]

    anchor_mask: torch.Tensor | None = None

    @property
    def anchors(self) -> torch.Tensor:
        """(F, T) bool, local or global anchor (the union the stage already made, if any)."""
        if self.anchor_mask is not None:
            return self.anchor_mask
        return self.local_anchors | self.global_anchors

    @property
    def features(self) -> torch.Tensor:
        """(F, T, D) all patch features, anchors replaced by their aggregates (a new copy)."""
        return write_anchors(self.patches, self.anchor_idx, self.merged)

    def frame_means(self) -> torch.Tensor:
        """(F, D) float32 mean of each frame's features (anchors replaced), without the copy."""
        total = self.patches.float().sum(1)
        if self.merged is not None:
            rows = torch.arange(self.patches.shape[0], device=self.patches.device)[:, None]
            total += (self.merged.float() - self.patches[rows, self.anchor_idx].float()).sum(1)
        return total / self.patches.shape[1]


@torch.no_grad()  # training-free: top-k, quantiles and OT plans carry no useful gradient
def reduce_video(features: torch.Tensor, shallow_attention: torch.Tensor,
                 deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                 frame_features: torch.Tensor | None = None, grid=None) -> ReducedVideo:
    """Reduce one video's visual tokens with AOT.

    Args:
        features: (F, T, D) projected patch features, T = rows * cols (27 * 27 for SigLIP-384).
        shallow_attention: (F, T) attention each token receives at the shallow layer.
        deep_attention: (F, T) attention each token receives at the deep layer.
        config: an :class:`AOTConfig` (default: the ``paper-ov-mvbench`` preset).
        frame_features: (F, D') per-frame global features for dynamic clips (default: the mean
            of each frame's features).
        grid: the patch grid, ``(rows, cols)`` (e.g. (12, 20) for a landscape Qwen2.5-VL frame)
            or a square's side; default: the square grid of T tokens.
    Returns:
        :class:`ReducedVideo`; ``result.tokens`` is what the LLM receives (newlines excluded).

    ``features`` is never modified nor copied whole: its large passes are one norm pass, the two
    batched products of the intra merge and the gather of the surviving pooled tokens
    (docs/efficiency.md, "Where the time goes").
    """
    config = config or AOTConfig()
    grid = check_inputs(features, shallow_attention, deep_attention, config, grid)
    if frame_features is not None:  # checked even when no clip would read it (inter off)
        check_frame_features(frame_features, features.shape[0])
    return inter_stage(_intra_stage(features, shallow_attention, deep_attention, config, grid),
                       config, frame_features=frame_features)


def _merge_reads_features(config: AOTConfig, tokens: int) -> bool:
    """Whether the intra merge's norm pass reads every channel of every patch (its norms then
    double as the finite check)."""
    return (config.intra and config.intra_merge != "prune" and config.anchors_per_frame < tokens
            and config.similarity_channels is None)


@torch.no_grad()
def intra_stage(features: torch.Tensor, shallow_attention: torch.Tensor,
                deep_attention: torch.Tensor, config: AOTConfig, *,
                grid=None) -> IntraOutput:
    """Anchors and intra-frame aggregation on the full patch grid (shapes and ``grid`` as
    :func:`reduce_video`)."""
    grid = check_inputs(features, shallow_attention, deep_attention, config, grid)
    return _intra_stage(features, shallow_attention, deep_attention, config, grid)


def _intra_stage(features: torch.Tensor, shallow_attention: torch.Tensor,
                 deep_attention: torch.Tensor, config: AOTConfig,
                 grid: tuple[int, int]) -> IntraOutput:
    """:func:`intra_stage` on inputs :func:`check_inputs` already checked."""
    frames, tokens, _ = features.shape
    if not config.intra:
        none = torch.zeros(frames, tokens, dtype=torch.bool, device=features.device)
        no_index = torch.zeros(frames, 0, dtype=torch.long, device=features.device)
        return IntraOutput(features, no_index, None, none, none.clone(), deep_attention.float(),
                           grid)
    if graph_applies(features, config):
        graphed = intra_stage_graphed(features, shallow_attention, deep_attention, grid, config)
        if graphed is not None:
            return IntraOutput(features, graphed.anchor_idx, graphed.merged,
                               graphed.local_anchors, graphed.global_anchors,
                               deep_attention.float(), grid)
    local, global_ = select_anchors(shallow_attention, deep_attention, grid, config)
    anchors = local | global_
    merge = aggregate_into_anchors(features, anchors, grid, config,
                                   anchor_count=anchors_per_frame(grid, config))
    if not merge.checked and _merge_reads_features(config, tokens):
        check_finite("features", features)  # check_inputs left it to a merge that did not run
    return IntraOutput(features, merge.anchor_idx, merge.merged, local, global_,
                       deep_attention.float(), grid, anchors)


@torch.no_grad()
def inter_stage(intra: IntraOutput, config: AOTConfig, *,
                frame_features: torch.Tensor | None = None) -> ReducedVideo:
    """Pooling with the anchor mask, then the temporal phase (or plain concatenation).

    Only the surviving pooled tokens are computed (:func:`aot.pooling.pool_at`), straight from
    the input patches and the merged anchors.
    """
    features, grid = intra.patches, intra.grid
    frames = features.shape[0]
    pooled = pooled_shape(grid, config.pooling)
    pooled_count = pooled[0] * pooled[1]
    if config.intra:
        mask_value = pool_grid(intra.anchors.float(), grid, config.pooling)
    else:
        mask_value = torch.ones(frames, pooled_count, device=features.device)

    clips: list[Clip] = []
    if config.inter and frames >= 2:
        if frame_features is None and config.dynamic_clips:
            frame_features = intra.frame_means()[:, :config.similarity_channels]
        clips = split_clips(frames, config, frame_features)

    plan: ExactPlan | None = None
    if config.exact_retention is not None:
        plan = plan_exact_budget(config.exact_retention, frames, pooled_count,
                                 clips if config.inter else [], keep_ratio=config.keep_ratio)
        priority = pool_grid(intra.deep_attention, grid, config.pooling)
        survivors = _top_survivors(mask_value, priority, plan.survivors)
    else:
        survivors = mask_value >= 0.5

    counts = survivors.sum(1)
    host_counts = counts.tolist()  # the one sync of the pooling: the packed width and the counts
    width = max(host_counts, default=0)
    positions, valid = pack_left(survivors, width, counts=counts)
    # the survivors, then the final anchors of the clips of two or more frames, in one buffer
    rows, head = output_rows(clips, frames, width, features) if clips else (None, None)
    tokens = pool_at(features, positions, grid, config.pooling, anchor_idx=intra.anchor_idx,
                     merged=intra.merged, out=head)  # (F, S, D): the survivors, packed left
    if clips:
        out = temporal_merge_packed(tokens, positions, valid, pooled_count, clips, config,
                                    keep_counts=plan.keep.to(features.device) if plan is not None
                                    else None, counts=host_counts, survivors=survivors,
                                    token_rows=rows)
        tokens, token_frame, token_position, token_kind = (
            out.tokens, out.token_frame, out.token_position, out.token_kind)
        kept, merged = out.kept, out.merged
    else:
        token_frame, slot = torch.nonzero(valid, as_tuple=True)  # frame-major, ascending
        tokens = tokens[token_frame, slot]
        token_position = positions[token_frame, slot]
        token_kind = torch.zeros_like(token_frame, dtype=torch.int8)
        kept = torch.zeros_like(survivors)
        merged = torch.zeros_like(survivors)

    patch_maps = (frames, *grid)
    pooled_maps = (frames, *pooled)
    return ReducedVideo(
        tokens=tokens, token_frame=token_frame, token_position=token_position,
        token_kind=token_kind, local_anchors=intra.local_anchors.reshape(patch_maps),
        global_anchors=intra.global_anchors.reshape(patch_maps),
        survivors=survivors.reshape(pooled_maps), temporal_kept=kept.reshape(pooled_maps),
        temporal_merged=merged.reshape(pooled_maps), clips=clips, grid_shape=grid,
        pooled_shape=pooled)


def _top_survivors(mask_value: torch.Tensor, priority: torch.Tensor,
                   counts: torch.Tensor) -> torch.Tensor:
    """(F, P) bool: per frame the counts[f] pooled tokens ranked first by anchor coverage, then
    by pooled deep attention, then by lower index (two stable sorts)."""
    by_priority = torch.sort(priority, dim=1, descending=True, stable=True).indices
    coverage = torch.gather(mask_value, 1, by_priority)
    order = torch.gather(by_priority, 1,
                         torch.sort(coverage, dim=1, descending=True, stable=True).indices)
    return first_in_order(order, counts)


def check_has_data(name: str, x: torch.Tensor) -> None:
    """A ValueError for a tensor without values (the ``meta`` device): which tokens survive
    depends on the values, so there is no shape-only answer."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (shape {tuple(x.shape)}, no values): "
                         f"the reducer's token selection reads the values; pass real tensors (the "
                         f"count at exact_retention r is aot.exact_budget(r, frames, pooled))")


def check_inputs(features, shallow_attention, deep_attention, config: AOTConfig,
                 grid=None) -> tuple[int, int]:
    """Validate reduce_video's inputs; returns the grid's (rows, cols) (``grid`` None: the
    square grid of the features' token count). Errors name the offending value."""
    if not isinstance(config, AOTConfig):
        raise TypeError(f"config must be an AOTConfig, got {type(config).__name__}")
    for name, x in (("features", features), ("shallow_attention", shallow_attention),
                    ("deep_attention", deep_attention)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
        check_has_data(name, x)
    if features.dim() != 3:
        raise ValueError(f"features must be (frames, tokens, dim); got shape {tuple(features.shape)}")
    frames, tokens, dim = features.shape
    if frames < 1 or dim < 1:
        raise ValueError(f"features {tuple(features.shape)}: need at least one frame and one channel")
    if grid is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"features hold {tokens} tokens per frame, not a square grid "
                             f"(27*27 = 729 for SigLIP-384): pass grid=(rows, cols) for a "
                             f"non-square frame, or strip [CLS]/newline tokens first")
        grid = side
    rows, cols = check_grid_tokens(grid, tokens)
    for name, x in (("shallow_attention", shallow_attention), ("deep_attention", deep_attention)):
        if tuple(x.shape) != (frames, tokens):
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (frames, tokens) = "
                             f"({frames}, {tokens}) to match features {tuple(features.shape)}")
        if x.device != features.device:
            raise ValueError(f"{name} is on {x.device} but features are on {features.device}")
    if config.similarity_channels is not None and config.similarity_channels > dim:
        raise ValueError(f"similarity_channels={config.similarity_channels} exceeds the {dim} "
                         f"feature channels of features {tuple(features.shape)}")
    if config.intra and config.anchors_per_frame > tokens:
        raise ValueError(f"anchors_per_frame={config.anchors_per_frame} exceeds the {tokens} "
                         f"tokens of a {rows}x{cols} frame")
    # the features only when the merge's norm pass does not check them (intra_stage)
    check_all_finite(("shallow_attention", shallow_attention),
                     ("deep_attention", deep_attention),
                     *([] if _merge_reads_features(config, tokens) else [("features", features)]))
    return rows, cols
