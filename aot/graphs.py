"""The intra stage as a replayed CUDA graph (``AOTConfig.cuda_graphs``, the default on CUDA).

On a GPU the intra stage is launch-bound: a few hundred small kernels (anchor sorts, Sinkhorn
iterations on (F, M, N) tensors) that the device finishes faster than the host issues them.
All of its shapes are known from the input's shape and the config (every frame has the same
anchor count, :func:`aot.anchors.anchors_per_frame`), so it is captured once per (shape, dtype,
grid, config) and replayed: one launch for the whole stage.

What changes in the captured form, and why the tokens stay those of the eager path:

* the Sinkhorn loop runs all ``sinkhorn_iterations`` into a history and the released stop test
  is evaluated on the device afterwards, each problem taking its state at its own stop
  (:func:`aot.sinkhorn.sinkhorn_unrolled`): the eager plan, with four kernels an iteration and
  no sync; a scaling that turned inf or NaN before the stop (where eager would switch to the
  guarded loop) is reported and the call runs eagerly;
* eager Sinkhorn switches to the log domain when the plain kernel underflows; the graph is only
  used when the intra cost's bound (:func:`aot.intra.intra_cost_bound`) rules that out;
* the overflow guard of the similarity (norms below :data:`aot.intra.SAFE_NORM`) is read after
  the replay, with the Sinkhorn's flag, in one host sync; a video that fails either runs
  eagerly.

The inter stage (pooling with the anchor mask, the temporal phase) has data-dependent sizes
(the surviving tokens) and stays eager.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .anchors import anchors_per_frame, select_anchors
from .config import AOTConfig
from .intra import (
    SAFE_NORM,
    anchor_similarity,
    intra_cost,
    intra_cost_bound,
    merge_operator,
    merge_product,
    merge_weights,
    nearest_anchors,
    split_by_mask,
    uniform_rows,
)
from .sinkhorn import NO_UNDERFLOW, sinkhorn_unrolled, working_dtype

#: Captured graphs kept (one per input shape, dtype, grid and config); the oldest is dropped.
MAX_GRAPHS = 8


def graph_applies(features: torch.Tensor, config: AOTConfig) -> bool:
    """Whether :func:`intra_stage_graphed` runs this call: CUDA, ``cuda_graphs`` on, the OT merge
    of the anchors (other modes are a handful of ops), deterministic anchors, and a kernel that
    cannot underflow (so the eager path would not switch to the log domain)."""
    return (features.device.type == "cuda" and config.cuda_graphs and config.intra
            and config.intra_merge == "ot" and not config.random_anchors
            and not config.log_domain
            and intra_cost_bound(config.spatial_weight)
            < config.intra_epsilon * NO_UNDERFLOW[working_dtype(features.dtype)])


@dataclass
class GraphedIntra:
    """Outputs of one replay: anchor_idx (F, N), merged (F, N, D) in the input dtype, local and
    global masks (F, T); fresh tensors (the graph's own buffers are copied out), or None when the
    overflow guard failed and the caller must run the stage eagerly."""

    anchor_idx: torch.Tensor
    merged: torch.Tensor
    local_anchors: torch.Tensor
    global_anchors: torch.Tensor


class _IntraGraph:
    """One captured intra stage: static input buffers, the graph, its output buffers."""

    def __init__(self, features, shallow, deep, grid, config: AOTConfig):
        self.inputs = [features.clone(), shallow.clone(), deep.clone()]
        self.grid, self.config = grid, config
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (caches, allocator)
            self._body(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._body(*self.inputs)

    def _body(self, features, shallow, deep):
        """The stage without a host sync: (anchor_idx, merged, local, global, ok), ``ok`` a
        0-dim bool that says whether the eager path would give the same (read after replay)."""
        config = self.config
        local, global_ = select_anchors(shallow, deep, self.grid, config)
        anchor_idx, source_idx = split_by_mask(local | global_, anchors_per_frame(self.grid,
                                                                                  config))
        similar = features[..., :config.similarity_channels]
        found = anchor_similarity(similar, anchor_idx, source_idx)
        merged, solved = _merge(features, anchor_idx, source_idx, found.similarity, self.grid,
                                config)
        ok = (found.norms.amax() < SAFE_NORM) & solved  # NaN fails the first test
        return anchor_idx, merged.to(features.dtype), local, global_, ok

    def __call__(self, features, shallow, deep) -> GraphedIntra | None:
        for static, given in zip(self.inputs, (features, shallow, deep)):
            static.copy_(given)
        self.graph.replay()
        anchor_idx, merged, local, global_, ok = self.outputs
        if not bool(ok):  # the one host sync
            return None
        return GraphedIntra(anchor_idx.clone(), merged.clone(), local.clone(), global_.clone())


def _merge(features, anchor_idx, source_idx, similarity, grid, config: AOTConfig):
    """:func:`aot.intra.merged_anchor_features` (OT mode) with the Sinkhorn stop test on the
    device (:func:`aot.sinkhorn.sinkhorn_unrolled`: four kernels an iteration, no sync):
    (merged (F, N, D) float32, ok)."""
    nearest = nearest_anchors(similarity)  # read before the similarity's memory is reused
    frames, num_sources, num_anchors = similarity.shape
    cost = intra_cost(similarity, source_idx, anchor_idx, grid, config.spatial_weight,
                      overwrite_similarity=True)
    kernel = cost.div_(-config.intra_epsilon).exp_()  # as the eager plain-domain solve
    solved, ok = sinkhorn_unrolled(
        uniform_rows(frames, num_sources, kernel.dtype, kernel.device),
        uniform_rows(frames, num_anchors, kernel.dtype, kernel.device), kernel,
        max_iter=config.sinkhorn_iterations, stop_threshold=config.sinkhorn_tolerance,
        stopping="batch" if config.sinkhorn_stopping == "video" else "problem")
    weights, self_weight = merge_weights(solved.plan, nearest, config, out=solved.plan)
    operator = merge_operator(anchor_idx, source_idx, weights, self_weight, features.shape[1])
    return merge_product(features, operator), ok


_GRAPHS: dict[tuple, _IntraGraph | None] = {}  # None: the capture failed, run eagerly


def intra_stage_graphed(features: torch.Tensor, shallow: torch.Tensor, deep: torch.Tensor,
                        grid: tuple[int, int], config: AOTConfig) -> GraphedIntra | None:
    """The intra stage of :func:`aot.reduce.intra_stage` replayed from a CUDA graph (captured on
    the first call with this shape, dtype, grid and config); None when the eager path must run
    (see the module doc). Inputs as :func:`aot.reduce_video`, already checked."""
    key = (tuple(features.shape), features.dtype, features.device, shallow.dtype, grid, config)
    if key not in _GRAPHS:
        if len(_GRAPHS) >= MAX_GRAPHS:
            _GRAPHS.pop(next(iter(_GRAPHS)))
        try:
            _GRAPHS[key] = _IntraGraph(features, shallow, deep, grid, config)
        except RuntimeError as error:  # a capture this torch/driver refuses: stay eager
            warnings.warn(f"aot: capturing the intra stage as a CUDA graph failed ({error}); "
                          f"running it eagerly for this shape (AOTConfig(cuda_graphs=False) "
                          f"silences this)", RuntimeWarning, stacklevel=3)
            _GRAPHS[key] = None
    graph = _GRAPHS[key]
    return None if graph is None else graph(features, shallow, deep)
