"""``flashvid``: the vision side of FlashVID (segments, ADTS selection, tree merging, DPC-kNN).

FlashVID (Fan et al., ICLR 2026, arXiv 2602.08024; release Fanziyang-v/FlashVID at 1d37422c5afc,
``flashvid/utils.py::flashvid_compression`` and its helpers, ``flashvid/token_selection.py``)
works on the backbone's pooled tokens and the attention each pooled token receives at the vision
tower's last layer:

1. **DySeg**: cut the video where the cosine between consecutive frame means is below
   ``segment_threshold``; add the lowest remaining transitions until there are
   ``min_segment_num`` segments (:func:`segment_lengths`).
2. **ADTS**: in every frame keep ``A`` tokens by a greedy max-min choice on a cosine distance
   scaled by the attention (and, for ``attn_div_v2``, by the token's dot product with the
   segment's frame means) (:func:`adts_select`).
3. **TSTM**: inside a segment, every other token whose best cosine to a previous-frame token is
   above ``temporal_threshold`` is merged into that token, from the last frame back, so merges
   chain into trees (:func:`tree_merge`).
4. **DPC-kNN**: each frame's surviving tokens are clustered to its share of the segment's ``S``
   contextual tokens per frame and each cluster is averaged (:func:`dpc_knn`).

Output: the tokens sorted by their representative's (frame, position).

Count modes (:class:`FlashVIDConfig` ``count``): ``"released"`` is the release's rule (per frame
``B = ceil(P * r * expansion)``, ``A = ceil(alpha * B)``, clusters ``ceil(n_f * S * L / sum n)``:
about ``F * B`` tokens, not exact); ``"exact"`` (default) gives exactly ``floor(r * expansion *
F * P + 0.5)`` tokens (the exact budget at the default expansion 1.0): the total is spread over
the frames, and each segment's clusters are apportioned by largest remainder. See
docs/reducers/flashvid.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..budget import exact_budget, spread
from ..config import AOTConfig, check_bool_fields, check_seed, is_finite_number
from ..pooling import pool_grid
from ..result import KIND_ANCHOR, KIND_FRAME, ReducedVideo
from .common import density_peaks, make_result, resolve_budget, validate, work_dtype

COUNT_MODES = ("exact", "released")
#: ADTS variants of the release: v2 (attention and event relevance), v1 (attention), attention
#: top-k, diversity only.
SELECTIONS = ("attn_div_v2", "attn_div", "attn", "div")
#: the release's factor on the attention before it scales distances (a positive constant: it
#: changes no choice, only the magnitude of the distances)
ATTENTION_SCALE = 1e6
#: the amplitude of the release's uniform noise on DPC densities (breaks density ties)
DENSITY_NOISE = 1e-6
#: expansion per count mode when ``FlashVIDConfig.expansion`` is None
DEFAULT_EXPANSION = {"released": 1.25, "exact": 1.0}


@dataclass(frozen=True)
class FlashVIDConfig:
    """Knobs of FlashVID's vision side (defaults: the release's LLaVA-OV script; field names are
    the release's). :func:`released_options` gives each backbone's scripted values.

    count: ``"exact"`` (default; exactly ``floor(r * expansion * F * P + 0.5)`` tokens) or
        ``"released"`` (the release's count, about ``F * ceil(P * r * expansion)``).
    expansion: the vision side's share of tokens over the retention: the release keeps
        ``1.25 r`` before its LLM stage prunes later. None: 1.25 in ``released`` mode, 1.0 in
        ``exact`` mode (the vision side alone then hits r).
    alpha: share of each frame's budget chosen by ADTS (release 0.7; 0 skips ADTS).
    token_selection_method: ``"attn_div_v2"`` (LLaVA scripts), ``"attn_div"`` (Qwen scripts),
        ``"attn"`` or ``"div"`` (:func:`adts_select`).
    temporal_threshold: cosine above which TSTM merges a token into the previous frame (0.8).
    do_segment: run DySeg; False makes the whole video one segment.
    segment_threshold: transitions below this cosine are cut (0.9).
    min_segment_num: DySeg adds cuts up to this many segments (8 on LLaVA, 4 on Qwen).
    complementary_segment: whether DySeg adds those cuts.
    dpc_neighbours: the k of DPC-kNN's density, ``min(clusters, k)`` (release constant 7).
    seed: of the generator of the density noise (the release draws it from the global RNG).
    """

    count: str = "exact"
    expansion: float | None = None
    alpha: float = 0.7
    token_selection_method: str = "attn_div_v2"
    temporal_threshold: float = 0.8
    do_segment: bool = True
    segment_threshold: float = 0.9
    min_segment_num: int = 8
    complementary_segment: bool = True
    dpc_neighbours: int = 7
    seed: int = 0

    @classmethod
    def for_backbone(cls, backbone: str, retention: float | None = None) -> "FlashVIDConfig":
        """The release's scripted settings for ``backbone`` (the eval path's defaults,
        :func:`aot_eval.model_args.parse_reducer_options`); the retention-dependent ones
        (``expansion`` None) resolve at call time. Another backbone: the dataclass defaults."""
        return released_options(backbone) if backbone in RELEASED_BY_BACKBONE else cls()

    def __post_init__(self) -> None:
        check_bool_fields(self)
        name = "FlashVIDConfig"
        if self.count not in COUNT_MODES:
            raise ValueError(f"{name}.count={self.count!r}: expected one of {COUNT_MODES}")
        if self.token_selection_method not in SELECTIONS:
            raise ValueError(f"{name}.token_selection_method={self.token_selection_method!r}: "
                             f"expected one of {SELECTIONS}")
        if self.expansion is not None and (not is_finite_number(self.expansion)
                                           or self.expansion <= 0):
            raise ValueError(f"{name}.expansion={self.expansion!r}: expected None or a finite "
                             f"number > 0")
        if not is_finite_number(self.alpha) or not 0 <= self.alpha <= 1:
            raise ValueError(f"{name}.alpha={self.alpha!r}: expected a number in [0, 1]")
        # at 1 or above nothing can merge and the release divides by zero tokens
        if not is_finite_number(self.temporal_threshold) or not -1 <= self.temporal_threshold < 1:
            raise ValueError(f"{name}.temporal_threshold={self.temporal_threshold!r}: expected a "
                             f"cosine in [-1, 1)")
        if not is_finite_number(self.segment_threshold) or not -1 <= self.segment_threshold <= 1:
            raise ValueError(f"{name}.segment_threshold={self.segment_threshold!r}: expected a "
                             f"cosine in [-1, 1]")
        for field in ("min_segment_num", "dpc_neighbours"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}.{field}={value!r}: expected an integer >= 1")
        check_seed(self.seed, f"{name}.seed")

    @property
    def used_expansion(self) -> float:
        """The expansion this config runs with (its count mode's default when None)."""
        return DEFAULT_EXPANSION[self.count] if self.expansion is None else float(self.expansion)


#: the knobs each backbone's release script sets, beyond the dataclass defaults (the release's
#: scripts/{llava_ov,llava_vid,qwen2_5_vl,qwen3_vl}.sh; the same at r = 0.10 .. 0.25)
RELEASED_BY_BACKBONE = {
    "ov": {},
    "video": {},
    "qwen2_5_vl": {"min_segment_num": 4, "token_selection_method": "attn_div"},
    "qwen3_vl": {"min_segment_num": 4, "token_selection_method": "attn_div"},
}


def released_options(backbone: str, **overrides) -> FlashVIDConfig:
    """The release's script settings for ``backbone`` (``ov``, ``video``, ``qwen2_5_vl``,
    ``qwen3_vl``), with ``overrides`` (e.g. ``count="released"``) on top."""
    if backbone not in RELEASED_BY_BACKBONE:
        raise ValueError(f"backbone={backbone!r}: FlashVID's release scripts cover "
                         f"{sorted(RELEASED_BY_BACKBONE)}")
    return replace(FlashVIDConfig(), **{**RELEASED_BY_BACKBONE[backbone], **overrides})


# ------------------------------------------------------------------------------ DySeg
def segment_lengths(frame_means: torch.Tensor, threshold: float, min_segments: int,
                    complementary: bool = True) -> list[int]:
    """DySeg: lengths of the consecutive segments of a video (they sum to F; some may be 0).

    Args:
        frame_means: (F, D) the mean token of each frame.
        threshold: a transition (cosine of consecutive frame means) below it is cut.
        min_segments: with ``complementary``, the lowest transitions not yet cut are cut too until
            there are this many segments: ``min(missing, F - 1)`` more. They are picked among all
            F - 1 transitions with the cut ones set to 1.0, so with few frames a transition can
            be cut twice, which makes an empty segment (the release's rule).
    Returns:
        segment lengths, in frame order (ties among equal transitions: the earlier one).
    """
    frames = frame_means.shape[0]
    unit = F.normalize(frame_means, dim=-1)
    transitions = (unit[:-1] * unit[1:]).sum(-1)                                     # (F-1,)
    cuts = torch.nonzero(transitions < threshold).flatten()
    missing = min_segments - (cuts.numel() + 1)
    if complementary and missing > 0:
        filled = transitions.masked_fill(transitions < threshold, 1.0)
        extra = torch.sort(filled, stable=True).indices[:min(missing, frames - 1)]
        cuts = torch.sort(torch.cat([cuts, extra])).values
    bounds = [-1] + cuts.tolist() + [frames - 1]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


# ------------------------------------------------------------------------------ ADTS
def adts_select(tokens: torch.Tensor, attention: torch.Tensor, counts: list[int],
                method: str = "attn_div_v2") -> list[torch.Tensor]:
    """Attention and diversity based token selection, per frame of one segment.

    Distances: ``d[i, j] = (1 - cos(x_i, x_j)) * w_j`` with the candidate's weight ``w_j``:
    ``attention_j * 1e6 * <x_j, mean of the segment's frame means>`` (``attn_div_v2``; may be
    negative), ``attention_j * 1e6`` (``attn_div``), 1 (``div``). The first pick is the
    column with the largest second-smallest entry; then each pick is the column whose minimum
    over the picked rows is largest (ties: the first index). ``attn_div_v2`` does not mask
    tokens already picked (a token can be picked again); ``attn_div`` and ``div`` set them to
    -1 first. ``attn`` is the top-``count`` attention (ties: the lower position).

    Args:
        tokens: (L, P, D) one segment's tokens (scoring channels).
        attention: (L, P) attention each token receives.
        counts: per frame, how many to pick (the greedy order is shared, so a smaller count
            is a prefix of a larger one's picks).
    Returns:
        per frame, (counts[f],) long positions, ascending (repeats kept).
    """
    frames, per_frame, _ = tokens.shape
    most = max(counts, default=0)
    if most == 0:
        return [tokens.new_zeros(0, dtype=torch.long) for _ in range(frames)]
    if method == "attn":
        order = torch.sort(attention, dim=1, descending=True, stable=True).indices
        return [order[f, :counts[f]].sort().values for f in range(frames)]
    unit = F.normalize(tokens, dim=-1)
    distance = 1.0 - unit @ unit.transpose(1, 2)                                      # (L, P, P)
    if method != "div":
        weight = attention * ATTENTION_SCALE
        if method == "attn_div_v2":
            frame_means = tokens.mean(1)                                               # (L, D)
            weight = weight * (tokens @ frame_means.T).mean(-1)                        # (L, P)
        distance = distance * weight[:, None, :]
    rows = torch.arange(frames, device=tokens.device)
    # the column's second smallest (its smallest is itself); a one-token frame has only itself
    second = torch.sort(distance, dim=1).values[:, min(1, per_frame - 1), :]           # (L, P)
    picks = [second.argmax(-1)]
    nearest = distance[rows, picks[0]]                                                 # (L, P)
    chosen = torch.zeros(frames, per_frame, dtype=torch.bool, device=tokens.device)
    mask = method != "attn_div_v2"
    for _ in range(1, most):
        chosen[rows, picks[-1]] = True
        score = nearest.masked_fill(chosen, -1.0) if mask else nearest
        picks.append(score.argmax(-1))
        nearest = torch.minimum(nearest, distance[rows, picks[-1]])
    order = torch.stack(picks, 1)                                                      # (L, most)
    return [order[f, :counts[f]].sort().values for f in range(frames)]


# ------------------------------------------------------------------------------ TSTM
def tree_merge(values: torch.Tensor, scored: torch.Tensor, selected: torch.Tensor,
               threshold: float, lower_bound: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tree-based spatiotemporal merging of one segment (the release's in-place rule).

    Every token of frame t >= 1 links to its most cosine-similar token of frame t - 1 (ADTS
    picks neither link nor are linked: their cosines are -1; ties: the lower position). A link
    above ``threshold`` merges. If fewer than ``lower_bound`` tokens would survive, the
    threshold becomes the k-th largest best cosine (k = L*P - lower_bound, at least
    -1 + 1e-6); when k <= 0 nothing merges. Then, from the last frame back: a surviving
    token is divided by its count (1 + the number of tokens merged into it directly) and a
    merged token's value (its own plus everything merged into it, undivided) is added to its
    parent, whose count grows by one. So a chain's sum is divided by the direct children only.

    Args:
        values: (L, P, D) token values (not modified); scored: (L, P, C) scoring channels.
        selected: (L, P) bool, the ADTS picks.
    Returns:
        merged values (L, P, D), survivors (L, P) bool (surviving and not an ADTS pick), the
        number of pooled tokens each token's tree holds (L, P) long, merged-away (L, P) bool.
    """
    frames, per_frame, _ = values.shape
    values = values.clone()
    unit = F.normalize(scored, dim=-1)
    cosine = unit[1:] @ unit[:-1].transpose(1, 2)                                    # (L-1, P, P)
    cosine = cosine.masked_fill(selected[1:, :, None] | selected[:-1, None, :], -1.0)
    best, parent = cosine.max(-1)                                                    # (L-1, P)
    best = F.pad(best, (0, 0, 1, 0), value=-1.0)                                     # (L, P)
    parent = F.pad(parent, (0, 0, 1, 0), value=0)
    merged = best > threshold
    if int((~merged).sum()) < lower_bound:
        k = frames * per_frame - lower_bound
        if k > 0:
            soft = max(float(torch.topk(best.flatten(), k).values[-1]), -1.0 + 1e-6)
            merged = best > soft
        else:
            merged = torch.zeros_like(merged)
    counts = torch.ones(frames, per_frame, dtype=values.dtype, device=values.device)
    size = torch.ones(frames, per_frame, dtype=torch.long, device=values.device)
    for t in range(frames - 1, -1, -1):
        stay = ~merged[t]
        values[t, stay] = values[t, stay] / counts[t, stay, None]
        if t > 0 and bool(merged[t].any()):
            into = parent[t, merged[t]]
            values[t - 1].index_add_(0, into, values[t, merged[t]])
            counts[t - 1].index_add_(0, into, torch.ones_like(into, dtype=values.dtype))
            size[t - 1].index_add_(0, into, size[t, merged[t]])
    return values, ~merged & ~selected, size, merged


# ------------------------------------------------------------------------------ DPC-kNN
def dpc_knn(tokens: torch.Tensor, clusters: int, neighbours: int, noise: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with kNN densities (the release's ``dpc_knn``, one frame).

    Args:
        tokens: (n, C) scoring channels; clusters: c in [1, n]; neighbours: k in [1, n].
        noise: (n,) added to the densities (the release: ``rand * 1e-6``).
    Returns:
        assignment (n,) long cluster ids in [0, c), centres (c,) long token indices, highest
        score first; cluster i is centre i's (a centre is in its own cluster).
    """
    score, distance = density_peaks(tokens, neighbours, noise)
    centres = torch.sort(score, descending=True, stable=True).indices[:clusters]
    assignment = distance[:, centres].argmin(-1)
    assignment[centres] = torch.arange(clusters, device=tokens.device)
    return assignment, centres


# ------------------------------------------------------------------------------ counts
def released_budget(per_frame: int, retention: float, expansion: float, alpha: float
                    ) -> tuple[int, int]:
    """(B, A): the release's per-frame budget ``ceil(P * r * expansion)`` and ADTS share
    ``ceil(B * alpha)``, in the release's float order (e.g. 10 * 0.7 rounds up to 8)."""
    budget = math.ceil(per_frame * retention * expansion)
    return budget, math.ceil(budget * alpha)


def cluster_counts(sizes: list[int], target: int, exact: bool) -> list[int]:
    """Clusters per frame of a segment whose frames hold ``sizes`` tokens after TSTM.

    released: ``ceil(n_f * target / sum(n))`` (all n_f when the ratio is at least 1; sums to
    ``target`` or up to one more per frame). exact: the largest-remainder split of ``target``
    (``floor`` shares, the remainders' extra tokens to the largest remainders, ties to the
    earlier frame), so the sum is ``target`` when it is at most ``sum(n)``.
    """
    total = sum(sizes)
    if total == 0 or target <= 0:
        return [0] * len(sizes)
    if not exact:
        ratio = target / total
        return [n if ratio >= 1.0 else math.ceil(n * ratio) for n in sizes]
    if target >= total:
        return list(sizes)
    shares = [n * target // total for n in sizes]
    order = sorted(range(len(sizes)), key=lambda f: (-(sizes[f] * target % total), f))
    for f in order[:target - sum(shares)]:
        shares[f] += 1
    return shares


def frame_budgets(options: FlashVIDConfig, retention: float, total: int, frames: int,
                  per_frame: int) -> tuple[list[int], list[int]]:
    """Per frame (budget b_f, ADTS picks a_f) of one video.

    released: the release's ``B = ceil(P * r * expansion)`` and ``ceil(B * alpha)`` for every
    frame (refused when B > P: the release fails there). exact: ``floor(r * expansion * F * P +
    0.5)`` (``total`` at expansion 1) spread over the frames, earlier frames first, and
    ``a_f = ceil(b_f * alpha)``.
    """
    expansion = options.used_expansion
    if options.count == "exact":
        target = total if expansion == 1.0 else exact_budget(min(1.0, retention * expansion),
                                                             frames, per_frame)
        budgets = spread(target, frames)
        return budgets, [min(b, math.ceil(b * options.alpha)) for b in budgets]
    budget, adts = released_budget(per_frame, retention, expansion, options.alpha)
    if budget > per_frame:
        raise ValueError(f"flashvid count='released': the per-frame budget ceil({per_frame} * "
                         f"{retention} * {expansion}) = {budget} exceeds the {per_frame} tokens "
                         f"of a frame; use count='exact'")
    return [budget] * frames, [adts] * frames


def cluster_frame(tokens: torch.Tensor, held: torch.Tensor, positions: torch.Tensor,
                  clusters: int, channels, neighbours: int, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame's tokens -> ``clusters`` averages (all of them as they are when there are
    no more tokens than clusters).

    Args:
        tokens: (n, D) values; held: (n,) pooled tokens each one holds; positions: (n,) long.
        channels: the scoring channels' end (``config.similarity_channels``).
        generator: draws the density noise, n values, only when DPC runs.
    Returns:
        averages (c, D), pooled tokens each holds (c,), the centres' positions (c,), in DPC's
        centre order.
    """
    if clusters >= len(positions):
        return tokens, held, positions
    noise = torch.rand(len(positions), generator=generator, dtype=torch.float64) * DENSITY_NOISE
    assignment, centres = dpc_knn(tokens[:, :channels], clusters, min(clusters, neighbours),
                                  noise)
    one_hot = F.one_hot(assignment, clusters).to(tokens.dtype)                       # (n, c)
    averages = (one_hot.T @ tokens) / one_hot.sum(0)[:, None]
    held = torch.zeros(clusters, dtype=held.dtype, device=held.device).index_add_(
        0, assignment, held)
    return averages, held, positions[centres]


def compress_segment(values: torch.Tensor, scored: torch.Tensor, attention: torch.Tensor,
                     budgets: list[int], adts: list[int], options: FlashVIDConfig,
                     channels, generator: torch.Generator):
    """One segment of L frames: ADTS picks, then TSTM (L >= 2) and DPC on the rest.

    Args:
        values: (L, P, D); scored: (L, P, C); attention: (L, P); budgets, adts: per frame.
    Returns:
        tokens (n, D), segment-local indices ``frame * P + position`` (n,), kinds (n,) long,
        merged-away (L, P) bool; picks first, then each frame's clusters.
    """
    length, per_frame, _ = values.shape
    device = values.device
    picks = adts_select(scored, attention, adts, options.token_selection_method)
    selected = torch.zeros(length, per_frame, dtype=torch.bool, device=device)
    tokens, index, kinds = [], [], []
    for f, positions in enumerate(picks):
        selected[f, positions] = True
        tokens.append(values[f, positions])
        index.append(f * per_frame + positions)
        kinds.append(torch.full_like(positions, KIND_FRAME))
    gone = torch.zeros(length, per_frame, dtype=torch.bool, device=device)
    contextual = sum(budgets) - sum(adts)
    if contextual > 0:
        if length > 1:
            merged, alive, size, gone = tree_merge(values, scored, selected,
                                                   options.temporal_threshold, sum(budgets))
            pools = [torch.nonzero(alive[f]).flatten() for f in range(length)]
        else:  # one frame: no merging, and DPC takes every token, the ADTS picks too
            merged = values
            size = torch.ones(1, per_frame, dtype=torch.long, device=device)
            pools = [torch.arange(per_frame, device=device)]
        shares = cluster_counts([len(p) for p in pools], contextual,
                                exact=options.count == "exact")
        for f, (members, clusters) in enumerate(zip(pools, shares)):
            if len(members) == 0 or clusters == 0:
                continue
            averages, held, positions = cluster_frame(
                merged[f, members], size[f, members], members, clusters, channels,
                options.dpc_neighbours, generator)
            tokens.append(averages)
            index.append(f * per_frame + positions)
            kinds.append(torch.where(held > 1, KIND_ANCHOR, KIND_FRAME))
    return torch.cat(tokens), torch.cat(index), torch.cat(kinds), gone


# ------------------------------------------------------------------------------ the reducer
def reduce_flashvid(features: torch.Tensor, shallow_attention: torch.Tensor,
                    deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                    budget: int | None = None, frame_features: torch.Tensor | None = None,
                    grid=None, options: FlashVIDConfig | None = None,
                    last_attention: torch.Tensor | None = None) -> ReducedVideo:
    """FlashVID's vision side on the backbone's pooled tokens.

    Args:
        features: (F, T, D) projected patch features, T = rows * cols.
        shallow_attention, deep_attention: (F, T); checked for shape, not read.
        config: uses ``pooling``, ``exact_retention`` and ``similarity_channels`` (every
            similarity reads channels ``[0, c)``; merges average every channel).
        budget: exact token count; overrides ``config.exact_retention``; the retention r is
            then ``budget / (F * P)``.
        frame_features: ignored (accepted for AOT's signature).
        grid: the patch grid, ``(rows, cols)`` or a square's side.
        options: :class:`FlashVIDConfig` (default: exact count, the release's LLaVA knobs).
        last_attention: (F, T) attention received at the tower's last layer, AOT's convention
            (summed over queries); divided by T (LLaVA: the release's mean over queries), then
            pooled like the features.
    Returns:
        :class:`ReducedVideo` sorted by (frame, position) of each token's representative:
        ADTS picks as they are (``KIND_FRAME``), cluster averages (``KIND_ANCHOR`` when they
        hold more than one pooled token). ``temporal_merged`` marks tokens TSTM merged away,
        ``clips`` the non-empty segments. Computed in float32 (float64 stays float64).
    """
    config = config or AOTConfig()
    options = options or FlashVIDConfig()
    grid, pooled = validate(features, shallow_attention, deep_attention, config, grid)
    frames, tokens_in = features.shape[:2]
    per_frame = pooled[0] * pooled[1]
    total = resolve_budget(config, frames, per_frame, budget, reducer="flashvid")
    if last_attention is None:
        raise ValueError("flashvid reads last_attention= (F, T), the attention received at the "
                         "vision tower's last used layer; got None")
    if tuple(last_attention.shape) != (frames, tokens_in):
        raise ValueError(f"flashvid: last_attention has shape {tuple(last_attention.shape)}; "
                         f"expected {(frames, tokens_in)} like the features")
    retention = config.exact_retention if budget is None else total / (frames * per_frame)
    budgets, adts = frame_budgets(options, retention, total, frames, per_frame)

    dtype = work_dtype(features)
    values = pool_grid(features.to(dtype), grid, config.pooling)                      # (F, P, D)
    scored = values[..., :config.similarity_channels]
    attention = pool_grid(last_attention.to(dtype) / tokens_in, grid, config.pooling)  # (F, P)
    lengths = (segment_lengths(scored.mean(1), options.segment_threshold,
                               options.min_segment_num, options.complementary_segment)
               if options.do_segment else [frames])

    generator = torch.Generator().manual_seed(options.seed)
    parts, merged_away, clips, start = [], [], [], 0
    for length in lengths:
        if length == 0:  # DySeg cut one transition twice: an empty segment adds nothing
            continue
        stop = start + length
        tokens, index, kinds, gone = compress_segment(
            values[start:stop], scored[start:stop], attention[start:stop], budgets[start:stop],
            adts[start:stop], options, config.similarity_channels, generator)
        parts.append((tokens, index + start * per_frame, kinds))
        merged_away.append(gone)
        clips.append((start, stop))
        start = stop

    tokens, index, kinds = (torch.cat(column) for column in zip(*parts))
    order = torch.sort(index, stable=True).indices
    index = index[order]
    survivors = torch.zeros(frames * per_frame, dtype=torch.bool, device=values.device)
    survivors[index] = True
    return make_result(tokens[order].to(features.dtype),
                       torch.div(index, per_frame, rounding_mode="floor"), index % per_frame,
                       kinds[order].to(torch.int8), frames=frames, grid=grid, pooled=pooled,
                       survivors=survivors, merged=torch.cat(merged_away), clips=clips)
