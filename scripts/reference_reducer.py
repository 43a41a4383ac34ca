"""A plain AOT reducer in the structure of the authors' released code, for speed comparisons.

The released code is not in this repository (nor available offline), so this is our own
rewrite from the method's description (docs/architecture.md, "The method in one pass", and
docs/knobs.md), keeping the released code's structure, whose costs it exists to show: Python
loops over frames, windows, anchors, clips and tokens; a host sync (``.item()``) per selected
index and per Sinkhorn iteration; the intra Sinkhorn batched over the frames of a video with one
shared stop test (``sinkhorn_stopping="video"``, docs/knobs.md); the anchors written into a copy
of the features.
It computes the same tokens as ``aot.reduce_video`` in the threshold mode of the presets
(``scripts/bench_reducer.py`` checks that on every run) and is meant only as the "before"
column of that benchmark. Float32, CPU or CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _select_anchors(shallow, deep, grid, cfg):
    """One frame: sorted list of anchor token indices (one .item() per selected index)."""
    v = cfg.anchors_per_frame
    per_side = grid // cfg.window
    local_share = int(v * (1 - cfg.global_share))
    per_window, n_global = local_share // per_side ** 2, v - local_share
    scores = shallow.reshape(grid, grid)
    local = []
    for wr in range(per_side):
        for wc in range(per_side):
            window = scores[wr * cfg.window:(wr + 1) * cfg.window,
                            wc * cfg.window:(wc + 1) * cfg.window].reshape(-1)
            top = torch.sort(window, descending=True, stable=True).indices[:per_window]
            for i in top:
                i = i.item()
                local.append((wr * cfg.window + i // cfg.window) * grid
                             + wc * cfg.window + i % cfg.window)
    deep = deep.clone()
    deep[local] = 0
    global_ = [i.item() for i in torch.sort(deep, descending=True, stable=True).indices[:n_global]]
    return sorted(local + global_)


def _sinkhorn(kernel, iters, tol):
    """Released loop on a (B, M, N) kernel: one .item() per iteration for the stop test."""
    batch, m, n = kernel.shape
    u = torch.full((batch, m), 1.0 / m, device=kernel.device)
    v = torch.full((batch, n), 1.0 / n, device=kernel.device)
    r = torch.ones_like(u)
    c = torch.ones_like(v)
    for _ in range(iters):
        r_prev = r
        r = u / (kernel * c[:, None, :]).sum(2)
        c = v / (kernel * r[:, :, None]).sum(1)
        if (r - r_prev).abs().mean().item() < tol:
            break
    return r[:, :, None] * kernel * c[:, None, :]


def _intra(features, anchor_lists, grid, cfg):
    """Anchors replaced by 0.9 OT merge + 0.1 hard merge, in a copy of the features."""
    out = features.clone()
    frames = features.shape[0]
    steps = torch.arange(grid, dtype=torch.float32, device=features.device) / (grid - 1)
    coords = torch.stack(torch.meshgrid(steps, steps, indexing="ij")[::-1], -1).reshape(-1, 2)
    kernels, parts = [], []
    for f in range(frames):
        anchors = anchor_lists[f]
        anchor_set = set(anchors)
        sources = [i for i in range(grid * grid) if i not in anchor_set]
        a, u = features[f, anchors], features[f, sources]
        cos = F.normalize(u, dim=-1) @ F.normalize(a, dim=-1).T
        dist = torch.cdist(coords[sources], coords[anchors])
        kernels.append(torch.exp(-((1 - cos) + cfg.spatial_weight * dist) / cfg.intra_epsilon))
        parts.append((anchors, a, u, cos))
    plans = _sinkhorn(torch.stack(kernels), cfg.sinkhorn_iterations, cfg.sinkhorn_tolerance)
    s, w = cfg.intra_scale, cfg.hard_merge_weight
    for f, (anchors, a, u, cos) in enumerate(parts):
        plan = plans[f]
        ot = (a + s * plan.T @ u) / (1 + s * plan.sum(0).clamp(min=1e-9))[:, None]
        hard_sum = s * a.clone()
        count = torch.full((len(anchors),), s, device=features.device)
        for m in range(u.shape[0]):  # every source to its most similar anchor
            n = cos[m].argmax().item()
            hard_sum[n] += u[m]
            count[n] += 1
        out[f, anchors] = (1 - w) * ot + w * hard_sum / count[:, None]
    return out


def _pool(values, grid, mode):
    """One frame (T, D) -> (P, D) with the backbone's pooling."""
    x = values.T.reshape(1, -1, grid, grid)
    if mode == "bilinear":
        side = math.ceil(grid / 2)
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    else:
        x = F.avg_pool2d(x, 2, 2)
    return x.reshape(values.shape[1], -1).T


def _temporal_clip(frames_tokens, cfg):
    """One clip (list of (n_k, D) survivors) -> its released output list."""
    anchors = frames_tokens[0].clone()
    out = [frames_tokens[0]]
    for k in range(1, len(frames_tokens)):
        x = frames_tokens[k]
        cos = (F.normalize(x, dim=-1) @ F.normalize(anchors, dim=-1).T).clamp(-1 + 1e-6, 1 - 1e-6)
        cost = (1 - cos) - (1 - cos).min()
        cost = cost * (1 - math.exp(-k ** 2 / (2 * cfg.sigma ** 2)))
        plan = _sinkhorn(torch.exp(-cost / cfg.temporal_epsilon)[None], cfg.sinkhorn_iterations,
                         cfg.sinkhorn_tolerance)[0]
        prob = plan / plan.sum(1, keepdim=True)
        q = prob.max(1).values
        tau = torch.quantile(q.double(), cfg.keep_ratio).item()
        kept, merged = [], []
        for i in range(x.shape[0]):  # one sync per token
            (kept if q[i].item() < tau else merged).append(i)
        out.append(x[kept])
        weights = prob[merged]
        anchors = (anchors + cfg.inter_scale * weights.T @ x[merged]) / (
            1 + cfg.inter_scale * weights.sum(0))[:, None]
    out.append(anchors)
    return out


def reference_reduce_video(features, shallow, deep, cfg):
    """(F, T, D) features -> (T_out, D) tokens, released order (threshold mode, OT merges)."""
    frames, tokens, _ = features.shape
    grid = math.isqrt(tokens)
    anchor_lists = [_select_anchors(shallow[f], deep[f], grid, cfg) for f in range(frames)]
    merged = _intra(features, anchor_lists, grid, cfg)
    survivors = []
    for f in range(frames):
        mask = torch.zeros(tokens, 1, device=features.device)
        mask[anchor_lists[f]] = 1.0
        keep = _pool(mask, grid, cfg.pooling)[:, 0] >= 0.5
        survivors.append(_pool(merged[f], grid, cfg.pooling)[keep])
    if not cfg.inter:
        return torch.cat(survivors)
    length = math.ceil(frames / cfg.num_clips)
    out = []
    for start in range(0, frames, length):
        clip = survivors[start:start + length]
        out += clip if len(clip) == 1 else _temporal_clip(clip, cfg)
    return torch.cat(out)
