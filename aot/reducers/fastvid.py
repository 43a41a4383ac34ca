"""``fastvid``: FastVID's dynamic segmentation, salient selection and density token merging.

FastVID (Shen et al., NeurIPS 2025, arXiv 2503.11187; release LunarShen/FastVID at a40a109cb8df,
``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py`` L901-1074, the
"parallelised" LLaVA-OneVision version) runs on the backbone's pooled tokens of one video and
reads two inputs from SigLIP's attention-pooling head (which LLaVA drops; the release loads it
from google/siglip-so400m-patch14-384 and applies it after ``post_layernorm`` to the tower
output, see :mod:`aot.pooling_head`):

- ``head_attention`` (F, T): the head's probe attention over the patches, averaged over heads,
  pooled like the features (bilinear for LLaVA-OV, 2x2 average for LLaVA-Video);
- ``head_features`` (F, C): the head's pooled output, one global feature per frame.

(The Qwen ViTs have no such head: their adapters give the stand-ins of the release's Qwen2.5-VL
port under the same names, the last block's mean-query attention and the mean merged token.)

Per video, with P pooled tokens per frame and retention r:

1. DySeg: cut between frames f and f+1 at the ``dyseg_c - 1`` lowest cosine similarities of
   consecutive global features and at every similarity below ``dyseg_tau``;
2. counts: ``R = int(P * r)`` per frame, ``S = R - int(R * stprune_d)`` salient tokens per frame,
   ``c = R - S`` context tokens per frame; a segment of L frames has ``ceil(L / dtm_p)`` anchor
   frames (its last frame and every ``dtm_p``-th before it), each with ``(c * L) // ceil(L /
   dtm_p)`` anchors;
3. STPrune: each frame keeps its S tokens of highest head attention as they are;
4. DTM: on the other tokens of each frame, density peaks (kNN density ``exp(-mean d^2)`` over
   the ``knn`` nearest, d = Euclidean distance / sqrt(D), times the distance to the nearest denser
   token) give the anchors of an anchor frame; every non-salient token of the anchor frame's
   segment joins its most cosine-similar anchor of that frame, and an anchor with n members
   becomes ``w * anchor + (1 - w) * mean(members)``, ``w = max(1 / (n + 1), dtm_beta)``.

Output: salient tokens and merged anchors in video order (frame, then position).

Count modes (:class:`FastVIDConfig` ``count``): ``"released"`` keeps the release's count
(``F * S + sum of anchors``, at most ``F * int(P * r)``, not exact; it needs ``F >= dyseg_c``
frames as the release does); ``"exact"`` (default) runs the same algorithm on any frame count
and adds the missing tokens as extra density-peak anchors (:func:`exact_anchor_counts`). See
docs/reducers/fastvid.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import AOTConfig, check_bool_fields, check_seed, is_finite_number
from ..pooling import pool_grid
from ..result import KIND_ANCHOR, KIND_FRAME, ReducedVideo
from .common import (density_peaks, flatten_slots, make_result, resolve_budget, validate,
                     work_dtype)

COUNT_MODES = ("exact", "released")


@dataclass(frozen=True)
class FastVIDConfig:
    """Knobs of FastVID (defaults: ``fastvid_llavaonevision/scripts/eval.sh``; the LLaVA-Video
    script sets the same values, :data:`RELEASED_OPTIONS`).

    count: ``"exact"`` (default; exactly the budget, any frame count) or ``"released"`` (the
        release's count and its need for ``frames >= dyseg_c``).
    dyseg_c: DySeg's minimum number of segments: the ``dyseg_c - 1`` lowest transitions are
        always cut (release ``fastvid_DySeg_c=8``).
    dyseg_tau: every transition with cosine similarity below it is cut as well (0.9).
    stprune_d: the context share of each frame's retained tokens: ``int(R * d)`` of ``R``
        (``fastvid_STPrune_d=0.4``).
    dtm_p: the anchor-frame stride inside a segment (``fastvid_DTM_p=4``).
    dtm_beta: the least weight an anchor keeps of itself when it absorbs its members
        (``fastvid_DTM_beta=0.6``; every anchor absorbs at least itself, so 1/(n+1) <= 1/2 and
        the weight is always 0.6 at the released value).
    knn: neighbours of the local density, the token itself included (release constant 4).
    noise: scale of the uniform noise added to the densities to break ties (release 1e-6).
    seed: seed of that noise (the release draws it from the global RNG).
    """

    count: str = "exact"
    dyseg_c: int = 8
    dyseg_tau: float = 0.9
    stprune_d: float = 0.4
    dtm_p: int = 4
    dtm_beta: float = 0.6
    knn: int = 4
    noise: float = 1e-6
    seed: int = 0

    @classmethod
    def for_backbone(cls, backbone: str, retention: float | None = None) -> "FastVIDConfig":
        """The release script's settings for ``backbone`` (the eval path's defaults,
        :func:`aot_eval.model_args.parse_reducer_options`); another backbone: the defaults."""
        return released_options(backbone) if backbone in RELEASED_OPTIONS else cls()

    def __post_init__(self) -> None:
        check_bool_fields(self)  # none today: the one rule for any switch added later
        if self.count not in COUNT_MODES:
            raise ValueError(f"FastVIDConfig.count={self.count!r}: expected one of {COUNT_MODES}")
        for name in ("dyseg_c", "dtm_p", "knn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FastVIDConfig.{name}={value!r}: expected an integer >= 1")
        check_seed(self.seed, "FastVIDConfig.seed")
        ranges = {"dyseg_tau": (-1.0, 1.0), "stprune_d": (0.0, 1.0), "dtm_beta": (0.0, 1.0)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not is_finite_number(value) or not low <= value <= high:
                raise ValueError(f"FastVIDConfig.{name}={value!r}: expected a number in "
                                 f"[{low}, {high}]")
        if not is_finite_number(self.noise) or self.noise < 0:
            raise ValueError(f"FastVIDConfig.noise={self.noise!r}: expected a finite number >= 0")


#: Backbone -> the options its release script sets (``scripts/eval.sh`` of each port). The
#: Qwen2.5-VL port is another variant of the algorithm (docs/reducers/fastvid.md); of its knobs
#: only ``DySeg_tau`` has a counterpart here (its ``DySeg_ignore=0.95`` has none).
RELEASED_OPTIONS = {
    "ov": {"dyseg_c": 8, "dyseg_tau": 0.9, "stprune_d": 0.4, "dtm_p": 4, "dtm_beta": 0.6},
    "video": {"dyseg_c": 8, "dyseg_tau": 0.9, "stprune_d": 0.4, "dtm_p": 4, "dtm_beta": 0.6},
    "qwen2_5_vl": {"dyseg_c": 8, "dyseg_tau": 0.84, "stprune_d": 0.4, "dtm_p": 4,
                   "dtm_beta": 0.6},
}
#: Backbone -> the retention its release script runs (``config.exact_retention``); the
#: Qwen2.5-VL script's 0.27 is meant to keep about 0.24 of the tokens under its own count rule.
RELEASED_RETENTION = {"ov": 0.10, "video": 0.10, "qwen2_5_vl": 0.27}


def released_options(backbone: str, **changes) -> FastVIDConfig:
    """The :class:`FastVIDConfig` of ``backbone``'s release script (:data:`RELEASED_OPTIONS`),
    with ``changes`` (e.g. ``count="released"``); an unknown backbone raises a ValueError."""
    if backbone not in RELEASED_OPTIONS:
        raise ValueError(f"fastvid has no released options for backbone {backbone!r}; the "
                         f"release scripts cover {sorted(RELEASED_OPTIONS)}")
    return FastVIDConfig(**{**RELEASED_OPTIONS[backbone], **changes})


def frame_counts(per_frame: int, retention: float, context_share: float) -> tuple[int, int]:
    """The release's per-frame counts: ``R = int(P * r)`` (a floor), salient ``S = R - int(R *
    d)``, context ``c = R - S``. Returns (S, c)."""
    retained = int(per_frame * retention)
    salient = retained - int(retained * context_share)
    return salient, retained - salient


def segment_sizes(global_features: torch.Tensor, min_segments: int, threshold: float,
                  released: bool = True) -> list[int]:
    """DySeg: (F, C) per-frame global features -> the segment lengths, in frame order.

    The transition f -> f+1 is cut when its cosine similarity is among the ``min_segments - 1``
    lowest or below ``threshold``. ``released`` raises a ValueError when the video has fewer
    than ``min_segments`` frames (the release's ``topk`` fails there); otherwise every
    transition is then a candidate and all F - 1 lowest are cut.
    """
    frames = global_features.shape[0]
    lowest = min_segments - 1
    if lowest > frames - 1:
        if released:
            raise ValueError(f"fastvid count='released' needs at least dyseg_c={min_segments} "
                             f"frames (the release cuts the {lowest} lowest transitions), got "
                             f"{frames}; use count='exact' for shorter videos")
        lowest = frames - 1
    if frames == 1:
        return [1]
    unit = global_features / global_features.norm(dim=1, keepdim=True)
    similarity = (unit[:-1] * unit[1:]).sum(dim=1)                                   # (F-1,)
    cuts = torch.cat([torch.topk(similarity, lowest, largest=False).indices,
                      torch.nonzero(similarity < threshold).flatten()]).unique()  # sorted
    bounds = torch.cat([cuts.new_tensor([-1]), cuts, cuts.new_tensor([frames - 1])])
    return bounds.diff().tolist()


def released_anchor_counts(sizes: list[int], context: int, stride: int,
                           device=None) -> torch.Tensor:
    """(F,) long anchors per frame: a segment of L frames gives ``(context * L) // ceil(L /
    stride)`` to its last frame and every ``stride``-th frame before it, 0 to the others."""
    counts = []
    for length in sizes:
        anchor_frames = -(-length // stride)
        share = (context * length) // anchor_frames
        counts += [share if (length - 1 - j) % stride == 0 else 0 for j in range(length)]
    return torch.tensor(counts, dtype=torch.long, device=device)


def exact_anchor_counts(released: torch.Tensor, scores: torch.Tensor, missing: int
                        ) -> torch.Tensor:
    """(F,) anchors per frame that add ``missing`` anchors to the released ones.

    Candidates are the non-anchor, non-salient tokens, each frame's in its density-score order.
    The ``missing`` extra anchors go to the candidates of highest density score in the frames
    that already have anchors, then (if those run out) in the other frames, which become anchor
    frames. Ties: the earlier token in frame-major order. ``released`` is capped at n first.

    Args:
        released: (F,) long the release's anchor counts (at most n each).
        scores: (F, n) density scores.
        missing: tokens to add (>= 0, at most the candidates).
    """
    frames, n = scores.shape
    rank = torch.arange(n, device=scores.device)[None, :]
    ordered = torch.sort(scores, dim=1, descending=True, stable=True).values          # (F, n)
    candidate = rank >= released[:, None]
    # 0: a candidate of an anchor frame, 1: of another frame, 2: not a candidate
    group = torch.where(candidate, (released == 0).long()[:, None], 2).flatten()
    order = torch.sort(ordered.flatten(), descending=True, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    chosen = order[:missing]
    if missing and not bool(candidate.flatten()[chosen].all()):
        raise ValueError(f"fastvid: cannot add {missing} anchors, fewer candidates remain")
    return released + torch.bincount(torch.div(chosen, n, rounding_mode="floor"),
                                     minlength=frames)


def merge_segment(pool: torch.Tensor, pool_unit: torch.Tensor, anchors: torch.Tensor,
                  anchor_unit: torch.Tensor, valid: torch.Tensor, beta: float) -> torch.Tensor:
    """DTM of one segment: every pool token joins its most similar anchor of each anchor frame.

    Args:
        pool: (M, D) the segment's non-salient tokens; pool_unit: (M, Ds) their unit vectors.
        anchors: (A, K, D) each anchor frame's anchors (padded); anchor_unit: (A, K, Ds).
        valid: (A, K) bool, the real anchors.
        beta: the least weight an anchor keeps of itself.
    Returns:
        (A, K, D): ``w * anchor + (1 - w) * mean(members)``, ``w = max(1 / (n + 1), beta)``
        (ties in similarity: the anchor of higher density score).
    """
    similarity = torch.einsum("md,akd->amk", pool_unit, anchor_unit)
    similarity = similarity.masked_fill(~valid[:, None, :], -math.inf)
    members = F.one_hot(similarity.argmax(dim=-1), anchors.shape[1]).to(pool.dtype)  # (A,M,K)
    size = members.sum(dim=1)[..., None]                                               # (A,K,1)
    mean = members.transpose(1, 2) @ pool / size.clamp(min=1)
    weight = (1 / (size + 1)).clamp(min=beta)
    return weight * anchors + (1 - weight) * mean


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)


def reduce_fastvid(features: torch.Tensor, shallow_attention: torch.Tensor,
                   deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                   budget: int | None = None, frame_features: torch.Tensor | None = None,
                   grid=None, options: FastVIDConfig | None = None,
                   head_attention: torch.Tensor | None = None,
                   head_features: torch.Tensor | None = None) -> ReducedVideo:
    """FastVID on the backbone's pooled tokens of one video.

    Args:
        features: (F, T, D) projected patch features, T = rows * cols.
        shallow_attention, deep_attention: (F, T); checked for shape, not read.
        config: uses ``pooling``, ``exact_retention`` and ``similarity_channels`` (distances,
            densities and similarities read channels ``[0, c)``; every channel is merged).
        budget: exact token count; overrides ``config.exact_retention``. The retention r of the
            release's counts is ``config.exact_retention``, or ``budget / (F * P)`` when given.
        frame_features: ignored (accepted for AOT's signature).
        grid: the patch grid, ``(rows, cols)`` or a square's side.
        options: :class:`FastVIDConfig` (default: exact count, the release's knobs).
        head_attention: (F, T) the attention-pooling head's probe attention on the patch grid,
            averaged over heads (:func:`aot.pooling_head.apply_pooling_head`); pooled here
            like the features.
        head_features: (F, C) the head's pooled output per frame.
    Returns:
        :class:`ReducedVideo` in video order: salient tokens as they are (``KIND_FRAME``), merged
        anchors at their own position (``KIND_ANCHOR``); ``survivors`` marks both. Exactly the
        budget in ``"exact"`` mode, the release's count in ``"released"`` mode. Computed in
        float32 (float64 stays float64), returned in the features' dtype.
    """
    config = config or AOTConfig()
    options = options or FastVIDConfig()
    grid, pooled = validate(features, shallow_attention, deep_attention, config, grid)
    frames, tokens = features.shape[:2]
    per_frame = pooled[0] * pooled[1]
    total = resolve_budget(config, frames, per_frame, budget, reducer="fastvid")
    _check_head_inputs(head_attention, head_features, frames, tokens)
    retention = config.exact_retention if budget is None else total / (frames * per_frame)
    released = options.count == "released"

    dtype = work_dtype(features)
    values = pool_grid(features.to(dtype), grid, config.pooling)                       # (F, P, D)
    scored = values[..., :config.similarity_channels]
    attention = pool_grid(head_attention.to(values.device, dtype), grid, config.pooling)  # (F, P)
    salient, context = frame_counts(per_frame, retention, options.stprune_d)
    if released and salient + context == 0:
        raise ValueError(f"fastvid count='released': retention {retention!r} keeps int("
                         f"{per_frame} * r) = 0 tokens per frame; use count='exact'")
    sizes = segment_sizes(head_features.to(values.device, dtype), options.dyseg_c,
                          options.dyseg_tau, released)

    # STPrune: the S most attended tokens of each frame; the rest, in position order, go on
    keep_salient = torch.zeros(frames, per_frame, dtype=torch.bool, device=values.device)
    keep_salient.scatter_(1, torch.topk(attention, salient, dim=1).indices, True)
    others = torch.nonzero(~keep_salient)[:, 1].reshape(frames, per_frame - salient)  # (F, n)
    n = others.shape[1]
    rows = torch.arange(frames, device=values.device)[:, None]

    # the anchor counts live on the host: the segment loop below then never waits on the device
    counts = released_anchor_counts(sizes, context, options.dtm_p).tolist()
    knn = options.knn
    if released and (n < knn or max(counts) > n):
        raise ValueError(f"fastvid count='released': {n} non-salient tokens per frame cannot "
                         f"give {knn} neighbours and {max(counts)} anchors (the release fails "
                         f"there); use count='exact'")
    noise = torch.rand((frames, n), generator=torch.Generator().manual_seed(options.seed),
                       dtype=torch.float32).to(values.device, dtype) * options.noise
    scores = (density_peaks(scored[rows, others], min(knn, n), noise)[0] if n
              else values.new_zeros(frames, 0))
    if not released:
        counts = [min(count, n) for count in counts]
        counts = exact_anchor_counts(torch.tensor(counts, device=values.device), scores,
                                     total - frames * salient - sum(counts)).tolist()

    out = values.clone()
    keep_anchor = torch.zeros_like(keep_salient)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices              # (F, n)
    start = 0
    for length in sizes:
        seg = slice(start, start + length)
        start += length
        chosen = [f for f in range(seg.start, seg.stop) if counts[f] > 0]
        if not chosen:
            continue
        width = max(counts[f] for f in chosen)
        anchor_frames = torch.tensor(chosen, device=values.device)
        slots = others[anchor_frames[:, None], order[anchor_frames, :width]]              # (A, K)
        valid = (torch.arange(width, device=values.device)
                 < torch.tensor([counts[f] for f in chosen], device=values.device)[:, None])
        pool_positions = others[seg]                                                     # (L, n)
        pool_rows = rows[seg].expand(-1, n)
        merged = merge_segment(values[pool_rows, pool_positions].reshape(-1, values.shape[-1]),
                               _unit(scored[pool_rows, pool_positions]).reshape(
                                   -1, scored.shape[-1]),
                               values[anchor_frames[:, None], slots],
                               _unit(scored[anchor_frames[:, None], slots]), valid,
                               options.dtm_beta)
        # every slot is written, the padding ones with their own value (slots of one frame are
        # distinct positions), so no masked indexing waits on the device
        frame_ids = anchor_frames[:, None].expand_as(slots)
        out[frame_ids, slots] = torch.where(valid[..., None], merged, out[frame_ids, slots])
        keep_anchor[frame_ids, slots] = keep_anchor[frame_ids, slots] | valid

    keep = keep_salient | keep_anchor
    positions = torch.arange(per_frame, device=values.device).expand(frames, -1)
    kinds = torch.where(keep_anchor, KIND_ANCHOR, KIND_FRAME)
    tokens_out, token_frame, token_position, token_kind = flatten_slots(out, positions, kinds, keep)
    return make_result(tokens_out.to(features.dtype), token_frame, token_position, token_kind,
                       frames=frames, grid=grid, pooled=pooled, survivors=keep)


def _check_head_inputs(head_attention, head_features, frames: int, tokens: int) -> None:
    if head_attention is None or head_features is None:
        missing = [name for name, value in (("head_attention", head_attention),
                                            ("head_features", head_features)) if value is None]
        raise ValueError(f"fastvid reads the SigLIP attention-pooling head's outputs; missing "
                         f"{missing}: pass them (aot.pooling_head.apply_pooling_head) or run it "
                         f"through a model with a pooling head attached "
                         f"(aot_integrations.pooling_head.attach_pooling_head)")
    if not isinstance(head_attention, torch.Tensor) or head_attention.shape != (frames, tokens):
        raise ValueError(f"head_attention: expected a ({frames}, {tokens}) tensor (frames x "
                         f"patches), got {getattr(head_attention, 'shape', type(head_attention))}")
    if (not isinstance(head_features, torch.Tensor) or head_features.dim() != 2
            or head_features.shape[0] != frames):
        raise ValueError(f"head_features: expected a ({frames}, C) tensor (one global feature "
                         f"per frame), got {getattr(head_features, 'shape', type(head_features))}")
