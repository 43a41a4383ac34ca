"""``holitom``: HoliTom's vision side: temporal windows of static tokens, attention top-k per frame.

HoliTom (Shao et al., NeurIPS 2025, arXiv 2505.21334; release cokeshao/HoliTom at e9b2972f6895,
``holitom/llava_arch.py``) works on the backbone's pooled tokens and on the attention each token
receives at the vision tower's last used layer (averaged over heads and queries, pooled like the
features):

1. ``sim[t, n]``: cosine between the tokens at position n of frames t and t+1;
2. a dynamic programme cuts the video into consecutive windows, maximising the sum over windows
   of ``(#positions with sim > tau on every consecutive pair of the window) * (W - 1)``: the
   tokens it saves by averaging those positions over the window (:func:`select_windows`);
3. ``r' = min(1, r * N / (N - reduced))``: the retention left for what is not static;
4. in a window of W > 1 frames the static positions are averaged over the window and clustered
   by DPC-kNN to ``round(n_s * r')`` tokens (Python ``round``); every frame keeps
   ``ceil(n_d * r')`` of its ``n_d`` dynamic tokens, the ones receiving the most attention
   (``contextual_ratio`` = the release's D moves a share of them to DPC-kNN clusters);
5. a cluster centre absorbs its members: ``beta * centre + (1 - beta) * mean(members)``.

Output order (the release's ``one_token`` layout): per window its static tokens, then each of
its frames' dynamic tokens (attention-kept ones in position order, then the contextual ones).

Count modes (:class:`HoliTomConfig` ``count``): ``"released"`` keeps the release's counts (not an
exact total); ``"exact"`` (default) moves the difference to the exact budget over the per-frame
and per-window quotas, the fewest tokens possible (:func:`exact_counts`). See
docs/reducers/holitom.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import AOTConfig, check_bool_fields, check_seed, is_finite_number
from ..pooling import pool_grid
from ..result import KIND_ANCHOR, KIND_FRAME, ReducedVideo
from .common import density_peaks, make_result, resolve_budget, validate, work_dtype

COUNT_MODES = ("exact", "released")
#: tau of the release's scripts per retention (scripts/eval_ov-7b_holitom.sh,
#: eval_vid-7b_holitom.sh); other retentions take the nearer scripted one (:func:`released_tau`).
RELEASED_TAU = {0.10: 0.65, 0.15: 0.80, 0.20: 0.80, 0.25: 0.80}


@dataclass(frozen=True)
class HoliTomConfig:
    """Knobs of HoliTom's vision side (defaults: the release's, as its scripts set them).

    count: ``"exact"`` (default; exactly the budget, :func:`exact_counts`) or ``"released"``
        (the release's counts: the same kept tokens and merged values as the release).
    tau: similarity threshold of a static position (release ``T``); None = the release's script
        value for the retention, :func:`released_tau` (0.65 at r = 0.10, 0.80 at 0.15-0.25).
    beta: weight of a cluster centre in its merged token (release ``BETA`` 0.6).
    contextual_ratio: share of a frame's dynamic tokens given to DPC-kNN clusters instead of
        the attention top-k (release ``D`` 0).
    knn: neighbours of the DPC-kNN density, ``min(knn, clusters)`` (release ``K`` 7).
    max_window: longest window of the dynamic programme, frames (release ``MAX_WINDOW_SIZE``).
    beta_merge: True (the release's run: ``NO_BETA`` unset reads "0") merges as
        ``beta * centre + (1 - beta) * mean(members)``; False is the release's ``NO_BETA=1``
        branch, the plain mean of the centre and its members.
    noise: scale of the uniform noise added to the DPC densities to break ties (release 1e-6).
    seed: seed of that noise (the release draws it from the global RNG).
    """

    count: str = "exact"
    tau: float | None = None
    beta: float = 0.6
    contextual_ratio: float = 0.0
    knn: int = 7
    max_window: int = 1024
    beta_merge: bool = True
    noise: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        check_bool_fields(self)
        name = type(self).__name__
        if self.count not in COUNT_MODES:
            raise ValueError(f"{name}.count={self.count!r}: expected one of {COUNT_MODES}")
        if self.tau is not None and not (is_finite_number(self.tau) and -1 <= self.tau <= 1):
            raise ValueError(f"{name}.tau={self.tau!r}: expected None or a cosine threshold "
                             f"in [-1, 1]")
        for field, low in (("beta", 0.0), ("contextual_ratio", 0.0)):
            value = getattr(self, field)
            if not (is_finite_number(value) and low <= value <= 1):
                raise ValueError(f"{name}.{field}={value!r}: expected a number in [0, 1]")
        if not is_finite_number(self.noise) or self.noise < 0:
            raise ValueError(f"{name}.noise={self.noise!r}: expected a finite number >= 0")
        for field in ("knn", "max_window"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}.{field}={value!r}: expected an integer >= 1")
        check_seed(self.seed, f"{name}.seed")


def released_tau(retention: float) -> float:
    """The release's tau for a retention: 0.65 at r = 0.10, 0.80 at 0.15 / 0.20 / 0.25; other
    retentions take the nearer scripted value (0.65 below 0.125, else 0.80)."""
    return 0.65 if retention < 0.125 else 0.80


# ------------------------------------------------------------------------------ windows
def frame_similarity(pooled: torch.Tensor) -> torch.Tensor:
    """(F, P, C) pooled tokens -> (F-1, P) cosine between the tokens at the same position of
    consecutive frames (the release normalises, then takes the cosine)."""
    unit = F.normalize(pooled, p=2, dim=-1)
    return F.cosine_similarity(unit[:-1], unit[1:], dim=-1)


def window_gains(static_pairs: torch.Tensor) -> torch.Tensor:
    """(F-1, P) bool, position n similar from frame t to t+1 -> (F, F) long gains.

    ``gain[s, e]`` (e > s) = #(positions similar on every pair s..e-1) * (e - s): the tokens saved
    by one averaged token per static position of the window [s, e]; 0 on and below the
    diagonal."""
    pairs, positions = static_pairs.shape
    frames = pairs + 1
    device = static_pairs.device
    index = torch.arange(pairs, device=device)[:, None].expand(pairs, positions)
    # run[i, n]: similar pairs in a row ending at pair i (i - the last dissimilar pair before it)
    last_break = torch.where(static_pairs, -1, index).cummax(dim=0).values
    run = index - last_break                                                     # (F-1, P)
    run_to = torch.cat([run.new_zeros(1, positions), run])                      # (F, P): to frame e
    frame = torch.arange(frames, device=device)
    length = (frame[None, :] - frame[:, None]).clamp(min=0)                      # (F, F) e - s
    static = (run_to[None, :, :] >= length[:, :, None]) & (length[:, :, None] > 0)
    return static.sum(-1) * length


def select_windows(gains: torch.Tensor, max_window: int = 1024
                   ) -> tuple[list[tuple[int, int]], int]:
    """The release's dynamic programme over consecutive windows.

    Args:
        gains: (F, F) from :func:`window_gains`.
        max_window: longest window in frames.
    Returns:
        (windows, reduced): inclusive (start, end) frame ranges covering the video in order, and
        the total gain. A window is taken only when strictly better than the best split found
        before it, shorter windows are tried first, so ties keep single frames / short windows.
    """
    table = gains.tolist()   # one transfer: the programme itself is scalar integer arithmetic
    frames = len(table)
    best, start = [0] * frames, [0] * frames
    for end in range(frames):
        value, first = (best[end - 1] if end > 0 else 0), end
        for size in range(2, min(end + 1, max_window) + 1):
            before = end - size
            candidate = (best[before] if before >= 0 else 0) + table[before + 1][end]
            if candidate > value:
                value, first = candidate, before + 1
        best[end], start[end] = value, first
    windows, end = [], frames - 1
    while end >= 0:
        windows.append((start[end], end))
        end = start[end] - 1
    return windows[::-1], (best[-1] if frames else 0)


def static_masks(static_pairs: torch.Tensor, windows: list[tuple[int, int]]) -> torch.Tensor:
    """(F-1, P) similar pairs, windows -> (len(windows), P) bool: the window's static positions
    (similar on every pair of a window of W > 1 frames; none for a single frame)."""
    positions = static_pairs.shape[1]
    rows = [static_pairs[s:e].all(dim=0) if e > s
            else torch.zeros(positions, dtype=torch.bool, device=static_pairs.device)
            for s, e in windows]
    return torch.stack(rows)


def remaining_retention(retention: float, total: int, reduced: int) -> float:
    """``min(r / ((N - reduced) / N), 1)``, the release's expression (floats, same order)."""
    return min(retention / ((total - float(reduced)) / total), 1)


# ------------------------------------------------------------------------------ counts
def released_counts(static_sizes: list[int], window_sizes: list[int], dynamic_sizes: list[int],
                    retention: float) -> tuple[list[int], list[int]]:
    """The release's counts: per window ``round(n_s * r')`` static clusters (Python round, half
    to even; 0 for a single frame), per frame ``ceil(n_d * r')`` dynamic tokens."""
    static = [round(n * retention) if w > 1 else 0 for n, w in zip(static_sizes, window_sizes)]
    dynamic = [math.ceil(n * retention) for n in dynamic_sizes]
    return static, dynamic


def exact_counts(counts: torch.Tensor, quotas: torch.Tensor, capacity: torch.Tensor,
                 floor: torch.Tensor, budget: int) -> torch.Tensor:
    """Released counts -> counts summing to ``budget``, moved one token at a time by quota.

    Args:
        counts: (U,) long released counts of the units (each window's static part, each frame's
            dynamic part); quotas: (U,) float64 ``n * r'``; capacity: (U,) long tokens a unit
            has; floor: (U,) long least count when removing.
    Returns:
        (U,) long. With ``d = budget - sum(counts)``: d > 0 adds to the unit furthest below its
        quota (the j-th extra token of unit u has priority ``q_u - k_u - j``); d < 0 removes
        from the unit furthest above it (``k_u - q_u - j``). Ties: the earlier unit.
    """
    missing = budget - int(counts.sum())
    if missing == 0:
        return counts
    steps = max(int(capacity.max()), 1)
    step = torch.arange(steps, dtype=torch.float64, device=counts.device)[None, :]
    if missing > 0:
        priority = (quotas - counts)[:, None] - step
        room = capacity - counts
    else:
        priority = (counts - quotas)[:, None] - step
        room = counts - floor
    if int(room.clamp(min=0).sum()) < abs(missing):
        raise ValueError(f"holitom: cannot move {missing} tokens within the units' room "
                         f"{room.tolist()}")
    priority = priority.masked_fill(step >= room[:, None], -math.inf)
    chosen = torch.sort(priority.flatten(), descending=True, stable=True).indices[:abs(missing)]
    moved = torch.bincount(torch.div(chosen, steps, rounding_mode="floor"),
                           minlength=counts.shape[0])
    return counts + moved if missing > 0 else counts - moved


# ------------------------------------------------------------------------------ DPC-kNN
def dpc_knn(points: torch.Tensor, clusters: int, knn: int, noise: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering centres (the release's ``cluster_dpc_knn``, one set of points).

    Args:
        points: (N, C) what the distances read; clusters: K <= N centres; knn: neighbours of
            the density (self included); noise: (N,) added to the densities.
    Returns:
        centres (K,) long ascending, distances (N, N) = ``cdist / sqrt(C)``.
    """
    score, distance = density_peaks(points, knn, noise)
    centres = score.topk(clusters).indices
    return centres.sort().values, distance


def merge_clusters(values: torch.Tensor, distance: torch.Tensor, centres: torch.Tensor,
                   beta: float, beta_merge: bool = True) -> torch.Tensor:
    """Every non-centre joins its nearest centre (first on ties); each centre absorbs its members.

    Args:
        values: (N, D) what is merged; distance: (N, N); centres: (K,) ascending.
    Returns:
        (K, D): ``beta * centre + (1 - beta) * mean(members)`` (``beta_merge``) or
        ``mean(centre, members)``; a centre without members as it is.
    """
    others = torch.ones(values.shape[0], dtype=torch.bool, device=values.device)
    others[centres] = False
    others = others.nonzero().squeeze(-1)
    assign = distance[others][:, centres].argmin(dim=-1)                        # (N-K,)
    sums = values.new_zeros(centres.shape[0], values.shape[-1]).index_add_(0, assign,
                                                                          values[others])
    members = torch.bincount(assign, minlength=centres.shape[0]).to(values.dtype)[:, None]
    centre = values[centres]
    if beta_merge:
        merged = beta * centre + (1 - beta) * sums / members.clamp(min=1)
    else:
        merged = (centre + sums) / (members + 1)
    return torch.where(members > 0, merged, centre)


def _clusters(values, scored, clusters, knn, noise, options):
    """(N, D) values, (N, C) scored -> (centres (K,), merged (K, D))."""
    centres, distance = dpc_knn(scored, clusters, min(knn, clusters), noise)
    return centres, merge_clusters(values, distance, centres, options.beta, options.beta_merge)


def _noise(generator: torch.Generator, shape, scale: float, like: torch.Tensor) -> torch.Tensor:
    # drawn in float32 on the CPU (the release's dtype), so the values do not depend on device
    return (torch.rand(shape, generator=generator) * scale).to(like.device, like.dtype)


# ------------------------------------------------------------------------------ the reducer
def reduce_holitom(features: torch.Tensor, shallow_attention: torch.Tensor,
                   deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                   budget: int | None = None, frame_features: torch.Tensor | None = None,
                   grid=None, options: HoliTomConfig | None = None,
                   last_attention: torch.Tensor | None = None) -> ReducedVideo:
    """HoliTom's vision side on the backbone's pooled tokens.

    Args:
        features: (F, T, D) projected patch features, T = rows * cols.
        shallow_attention, deep_attention: (F, T); checked for shape, not read.
        config: uses ``pooling``, ``exact_retention`` and ``similarity_channels`` (cosines and
            distances read channels ``[0, c)``; every channel is averaged and merged).
        budget: exact token count; overrides ``config.exact_retention``. The retention r of the
            method is ``config.exact_retention``, or ``budget / (F * P)`` when given.
        frame_features: ignored (accepted for AOT's signature).
        grid: the patch grid, ``(rows, cols)`` or a square's side.
        options: :class:`HoliTomConfig` (default: exact count, the release's knobs).
        last_attention: (F, T) attention received at the tower's last used layer, AOT's
            convention (summed over queries); divided by T here (the release averages).
    Returns:
        :class:`ReducedVideo` in the release's order. Static tokens (window means, clustered)
        count for their window's first frame, kind ``KIND_ANCHOR`` like the contextual clusters;
        attention-kept tokens are ``KIND_FRAME``. ``clips`` are the windows (start, stop),
        ``temporal_merged`` the static positions of every frame of a window. Computed in
        float32 (float64 stays float64), returned in the features' dtype.
    """
    config = config or AOTConfig()
    options = options or HoliTomConfig()
    if not isinstance(options, HoliTomConfig):
        raise TypeError(f"holitom options must be a HoliTomConfig, got {type(options).__name__}")
    grid, pooled_grid = validate(features, shallow_attention, deep_attention, config, grid)
    frames, tokens = features.shape[:2]
    per_frame = pooled_grid[0] * pooled_grid[1]
    total = resolve_budget(config, frames, per_frame, budget, reducer="holitom")
    if last_attention is None:
        raise ValueError("holitom reads last_attention=: the (F, T) attention received at the "
                         "vision tower's last used layer (declared in its ReducerInfo.inputs; "
                         "the backbone adapters capture it), got None")
    if tuple(last_attention.shape) != (frames, tokens):
        raise ValueError(f"holitom: last_attention has shape {tuple(last_attention.shape)}; "
                         f"expected (frames, tokens) = {(frames, tokens)} like the features")
    retention = config.exact_retention if budget is None else total / (frames * per_frame)
    tau = released_tau(retention) if options.tau is None else float(options.tau)
    device = features.device

    dtype = work_dtype(features)
    pooled = pool_grid(features.to(dtype), grid, config.pooling)                 # (F, P, D)
    scored = pooled[..., :config.similarity_channels]                            # (F, P, C)
    attention = pool_grid(last_attention.to(dtype) / tokens, grid, config.pooling)  # (F, P)

    similar = frame_similarity(scored) > tau                                     # (F-1, P)
    gains = window_gains(similar)
    windows, reduced = select_windows(gains, options.max_window)
    if options.count == "exact":
        # a window that saves more than the budget leaves room for cannot reach it: split the
        # windows saving least (later first) into single frames until the budget fits
        while frames * per_frame - reduced < total:
            index = min(range(len(windows)), key=lambda i: (
                gains[windows[i]].item() if windows[i][1] > windows[i][0] else math.inf, -i))
            start, end = windows[index]
            reduced -= int(gains[start, end])
            windows[index:index + 1] = [(f, f) for f in range(start, end + 1)]
    r_left = remaining_retention(retention, frames * per_frame, reduced)

    static = static_masks(similar, windows)                                      # (Wn, P)
    static_sizes = static.sum(-1).tolist()
    sizes = [e - s + 1 for s, e in windows]
    window_of = torch.repeat_interleave(torch.arange(len(windows), device=device),
                                        torch.tensor(sizes, device=device))      # (F,)
    frame_static = static[window_of]                                             # (F, P)
    dynamic_sizes = [per_frame - static_sizes[w] for w in window_of.tolist()]
    static_counts, dynamic_counts = released_counts(static_sizes, sizes, dynamic_sizes, r_left)
    if options.count == "exact":
        counts = exact_counts(
            torch.tensor(static_counts + dynamic_counts),
            torch.tensor(static_sizes + dynamic_sizes, dtype=torch.float64) * r_left,
            torch.tensor([n if w > 1 else 0 for n, w in zip(static_sizes, sizes)]
                         + dynamic_sizes),
            torch.tensor([0] * len(windows) + [min(c, 1) for c in dynamic_counts]
                         if total >= sum(min(c, 1) for c in dynamic_counts)
                         else [0] * (len(windows) + frames)),
            total).tolist()
        static_counts, dynamic_counts = counts[:len(windows)], counts[len(windows):]
    dominant_counts = [round(c * (1 - options.contextual_ratio)) for c in dynamic_counts]

    # attention top-k over each frame's dynamic positions (ties: the lower position)
    ranked = attention.masked_fill(frame_static, -math.inf)
    rank = torch.sort(ranked, dim=1, descending=True, stable=True).indices.argsort(dim=1)
    dominant = rank < torch.tensor(dominant_counts, device=device)[:, None]      # (F, P)
    survivors = dominant.clone()
    frame_ids, positions = dominant.nonzero(as_tuple=True)
    parts = [(pooled[frame_ids, positions], frame_ids, positions,
              torch.full_like(positions, KIND_FRAME), frame_ids * 3 + 1)]

    generator = torch.Generator().manual_seed(options.seed)
    for w, (start, end) in enumerate(windows):
        # the release's draw order: the window's contextual clusters (one (W, m) draw), then
        # its static clusters
        frames_here = range(start, end + 1)
        contextual = [dynamic_counts[f] - dominant_counts[f] for f in frames_here]
        if any(contextual):
            left = [(~frame_static[f] & ~dominant[f]).nonzero().squeeze(-1) for f in frames_here]
            width = max(len(p) for p in left)
            noise = _noise(generator, (len(left), width), options.noise, pooled)
            for f, kept, pos, row in zip(frames_here, contextual, left, noise):
                if kept == 0:
                    continue
                centres, merged = _clusters(pooled[f, pos], scored[f, pos], kept, options.knn,
                                            row[:len(pos)], options)
                at = pos[centres]
                survivors[f, at] = True
                frame = torch.full_like(at, f)
                parts.append((merged, frame, at, torch.full_like(at, KIND_ANCHOR), frame * 3 + 2))
        if end > start and static_counts[w] > 0:
            pos = static[w].nonzero().squeeze(-1)
            mean = pooled[start:end + 1, pos].mean(dim=0)                        # (n_s, D)
            noise = _noise(generator, (1, len(pos)), options.noise, pooled)[0]
            centres, merged = _clusters(mean, mean[:, :scored.shape[-1]], static_counts[w],
                                        options.knn, noise, options)
            at = pos[centres]
            survivors[start, at] = True
            frame = torch.full_like(at, start)
            parts.append((merged, frame, at, torch.full_like(at, KIND_ANCHOR), frame * 3))

    out, token_frame, token_position, token_kind, key = (torch.cat(x) for x in zip(*parts))
    order = torch.argsort(key, stable=True)
    merged_mask = frame_static & (torch.tensor(sizes, device=device)[window_of] > 1)[:, None]
    return make_result(out[order].to(features.dtype), token_frame[order], token_position[order],
                       token_kind[order].to(torch.int8), frames=frames, grid=grid,
                       pooled=pooled_grid, survivors=survivors, merged=merged_mask,
                       clips=[(s, e + 1) for s, e in windows])
