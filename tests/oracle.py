"""A deliberately plain AOT, written from the released rules alone (docs/architecture.md, "The
method in one pass"; docs/knobs.md), as an independent test oracle.

One frame, one window, one clip, one token at a time; lists and dicts where the package uses
batched tensors. Nothing from aot/ is imported: the config is only read for its field values.
Slow by design: use small grids and dims.

Covered: every knob of ``AOTConfig`` that acts inside ``reduce_video`` except ``exact_retention``
(threshold mode only): anchors (counts, windows, local/global switches, random anchors),
intra merge (ot / cosine / prune, intra off), both Sinkhorn domains and both stopping rules,
pooling (bilinear / average / none), clips (fixed, ``clip_length``, ``num_clips``, dynamic),
temporal merge (ot / cosine / prune, inter off).
"""

from __future__ import annotations

import math

import torch


def received(attention_probs):
    """(heads, Q, K) -> (K,): sum over queries, mean over heads."""
    heads = attention_probs.shape[0]
    total = torch.zeros(attention_probs.shape[2], dtype=torch.float64)
    for h in range(heads):
        for q in range(attention_probs.shape[1]):
            total += attention_probs[h, q].double()
    return (total / heads).float()


def ranked(scores, candidates):
    """candidates sorted by descending score, ties by lower index."""
    return sorted(candidates, key=lambda i: (-float(scores[i]), i))


def random_anchor_lists(frames, tokens, cfg):
    """Random-anchor ablation: per frame the V tokens of highest uniform noise drawn from
    ``cfg.seed`` (one (frames, tokens) draw on the CPU generator), ties to the lower index."""
    noise = torch.rand(frames, tokens, generator=torch.Generator().manual_seed(cfg.seed))
    return [sorted(ranked(noise[f], range(tokens))[:cfg.anchors_per_frame]) for f in range(frames)]


def anchors_one_frame(shallow, deep, grid, cfg):
    """(local list, global list) of token indices for one frame."""
    v = cfg.anchors_per_frame
    windows_per_side = grid // cfg.window
    n_windows = windows_per_side ** 2
    if not cfg.local_anchors:
        per_window, n_global = 0, v
    elif not cfg.global_anchors:
        per_window, n_global = v // n_windows, 0
    else:
        local_share = int(v * (1 - cfg.global_share))
        per_window, n_global = local_share // n_windows, v - local_share
    local = []
    for wr in range(windows_per_side):
        for wc in range(windows_per_side):
            members = [(wr * cfg.window + r) * grid + (wc * cfg.window + c)
                       for r in range(cfg.window) for c in range(cfg.window)]
            # Ties inside a window: earlier in the window's row-major order = lower token index.
            local += ranked(shallow, members)[:per_window]
    rest = [i for i in range(grid * grid) if i not in set(local)]
    global_ = ranked(deep, rest)[:n_global]
    return sorted(local), sorted(global_)


def sinkhorn(costs, eps, cfg, joint):
    """Plans for a list of cost matrices with uniform marginals, as ``cfg`` asks: plain or log
    domain; ``joint`` = one stop test shared by all problems, else each problem on its own."""
    solve = sinkhorn_log if cfg.log_domain else sinkhorn_joint
    args = (cfg.sinkhorn_iterations, cfg.sinkhorn_tolerance)
    if joint:
        return solve(costs, eps, *args)
    return [solve([c], eps, *args)[0] for c in costs]


def sinkhorn_log(costs, eps, iters, tol):
    """Log-domain Sinkhorn over problems sharing one stop test: f = log r, g = log c,
    f = log u - logsumexp_n(-C/eps + g), g = log v - logsumexp_m(-C/eps + f); the stop test
    is the mean relative change |r - r_prev| / r = |1 - exp(f_prev - f)|."""
    log_ks = [-c / eps for c in costs]
    fs = [torch.zeros(k.shape[0], dtype=k.dtype) for k in log_ks]
    gs = [torch.zeros(k.shape[1], dtype=k.dtype) for k in log_ks]
    for _ in range(iters):
        total, count = 0.0, 0
        for i, log_k in enumerate(log_ks):
            m, n = log_k.shape
            f_prev = fs[i]
            fs[i] = math.log(1.0 / m) - torch.logsumexp(log_k + gs[i][None, :], dim=1)
            gs[i] = math.log(1.0 / n) - torch.logsumexp(log_k + fs[i][:, None], dim=0)
            total += float((1 - torch.exp(f_prev - fs[i])).abs().sum())
            count += m
        if total / count < tol:
            break
    return [torch.exp(f[:, None] + log_k + g[None, :]) for f, log_k, g in zip(fs, log_ks, gs)]


def sinkhorn_joint(costs, eps, iters, tol):
    """Released Sinkhorn over a list of problems sharing one stop test. Returns plans."""
    kernels = [torch.exp(-c / eps) for c in costs]
    rs = [torch.ones(k.shape[0], dtype=k.dtype) for k in kernels]
    cs = [torch.ones(k.shape[1], dtype=k.dtype) for k in kernels]
    us = [torch.full((k.shape[0],), 1.0 / k.shape[0], dtype=k.dtype) for k in kernels]
    vs = [torch.full((k.shape[1],), 1.0 / k.shape[1], dtype=k.dtype) for k in kernels]
    for _ in range(iters):
        total, count = 0.0, 0
        for i, k in enumerate(kernels):
            r_prev = rs[i]
            rs[i] = us[i] / (k @ cs[i])
            cs[i] = vs[i] / (k.T @ rs[i])
            total += float((rs[i] - r_prev).abs().sum())
            count += k.shape[0]
        if total / count < tol:
            break
    return [torch.diag(r) @ k @ torch.diag(c) for r, k, c in zip(rs, kernels, cs)]


def intra_one_video(features, anchor_lists, grid, cfg):
    """Features (F, T, D) with anchors replaced by the intra merge (OT merge blended with hard merge);
    ``intra_merge="cosine"``: hard merge alone; ``"prune"``: unchanged."""
    out = features.clone().double()
    frames = features.shape[0]
    if cfg.intra_merge == "prune":
        return out.to(features.dtype)
    costs, pieces = [], []
    for f in range(frames):
        anchors = anchor_lists[f]
        sources = [i for i in range(grid * grid) if i not in set(anchors)]
        a = features[f, anchors].double()
        u = features[f, sources].double()
        cos = torch.zeros(len(sources), len(anchors), dtype=torch.float64)
        cost = torch.zeros_like(cos)
        anchor_xy = torch.tensor([((an % grid) / (grid - 1), (an // grid) / (grid - 1))
                                  for an in anchors], dtype=torch.float64)
        for m, sm in enumerate(sources):  # one source at a time, against every anchor
            cos[m] = (a @ u[m]) / (a.norm(dim=1) * u[m].norm())
            pm = torch.tensor(((sm % grid) / (grid - 1), (sm // grid) / (grid - 1)),
                              dtype=torch.float64)
            cost[m] = (1 - cos[m]) + cfg.spatial_weight * ((anchor_xy - pm) ** 2).sum(1).sqrt()
        costs.append(cost)
        pieces.append((anchors, a, u, cos))
    if cfg.intra_merge == "ot":
        plans = sinkhorn(costs, cfg.intra_epsilon, cfg, joint=cfg.sinkhorn_stopping == "video")
    s = cfg.intra_scale
    for f, (anchors, a, u, cos) in enumerate(pieces):
        nearest = [int(torch.argmax(cos[m])) for m in range(u.shape[0])]
        for n, an in enumerate(anchors):
            members = [m for m in range(u.shape[0]) if nearest[m] == n]
            hard = (s * a[n] + sum((u[m] for m in members), torch.zeros_like(a[n]))) / (s + len(members))
            if cfg.intra_merge == "cosine":
                out[f, an] = hard
                continue
            agg = plans[f][:, n] @ u
            load = max(float(plans[f][:, n].sum()), 1e-9)
            ot = (a[n] + s * agg) / (1 + s * load)
            w = cfg.hard_merge_weight
            out[f, an] = (1 - w) * ot + w * hard
    return out.to(features.dtype)


def bilinear_pool(values, grid):
    """(T, D) on a grid -> (side*side, D): bilinear resize, align_corners=False, by hand."""
    side = math.ceil(grid / 2)
    scale = grid / side
    img = values.reshape(grid, grid, -1).double()
    out = torch.zeros(side, side, img.shape[-1], dtype=torch.float64)

    def src(i):
        x = max(scale * (i + 0.5) - 0.5, 0.0)
        lo = min(int(math.floor(x)), grid - 1)
        return lo, min(lo + 1, grid - 1), x - lo

    for i in range(side):
        y0, y1, wy = src(i)
        for j in range(side):
            x0, x1, wx = src(j)
            out[i, j] = ((1 - wy) * ((1 - wx) * img[y0, x0] + wx * img[y0, x1])
                         + wy * ((1 - wx) * img[y1, x0] + wx * img[y1, x1]))
    return out.reshape(side * side, -1)


def average_pool(values, grid):
    side = grid // 2
    img = values.reshape(grid, grid, -1).double()
    out = torch.zeros(side, side, img.shape[-1], dtype=torch.float64)
    for i in range(side):
        for j in range(side):
            out[i, j] = (img[2 * i, 2 * j] + img[2 * i + 1, 2 * j] + img[2 * i, 2 * j + 1]
                         + img[2 * i + 1, 2 * j + 1]) / 4
    return out.reshape(side * side, -1)


def temporal_one_clip(frames_tokens, cfg):
    """frames_tokens: list of (L) float64 tensors (n_k, D) of one clip's survivors.

    Returns the clip's output list of tensors in the released order. ``inter_merge="cosine"``:
    q_i = best cosine to the anchors, merged tokens averaged into that anchor
    ``(s * y + sum x) / (s + count)``; ``"prune"``: the plan decides, anchors never change.
    """
    key = frames_tokens[0]
    anchors = key.clone()
    output = [key[i] for i in range(key.shape[0])]
    s = cfg.inter_scale
    for k in range(1, len(frames_tokens)):
        x = frames_tokens[k]
        if x.shape[0] == 0:
            continue
        if anchors.shape[0] == 0:
            output += [x[i] for i in range(x.shape[0])]
            continue
        cos = torch.zeros(x.shape[0], anchors.shape[0], dtype=torch.float64)
        for i in range(x.shape[0]):
            for j in range(anchors.shape[0]):
                cos[i, j] = torch.dot(x[i], anchors[j]) / (x[i].norm() * anchors[j].norm())
        if cfg.inter_merge == "cosine":
            q = cos.max(1).values
            best = [int(torch.argmax(cos[i])) for i in range(x.shape[0])]
        else:
            c_sim = 1 - cos.clamp(-1 + 1e-6, 1 - 1e-6)
            c_sim = c_sim - c_sim.min()
            cost = c_sim * (1 - math.exp(-k ** 2 / (2 * cfg.sigma ** 2)))
            plan = sinkhorn([cost], cfg.temporal_epsilon, cfg, joint=False)[0]
            prob = plan / plan.sum(1, keepdim=True)
            q = prob.max(1).values
        tau = torch.quantile(q.double(), cfg.keep_ratio)
        kept = [i for i in range(x.shape[0]) if q[i] < tau]
        merged = [i for i in range(x.shape[0]) if not q[i] < tau]
        output += [x[i] for i in kept]
        if cfg.inter_merge == "prune":
            continue
        new = anchors.clone()
        for j in range(anchors.shape[0]):
            if cfg.inter_merge == "cosine":
                members = [i for i in merged if best[i] == j]
                new[j] = (s * anchors[j] + sum((x[i] for i in members), torch.zeros_like(anchors[j]))
                          ) / (s + len(members))
                continue
            agg = sum((prob[i, j] * x[i] for i in merged), torch.zeros_like(anchors[j]))
            load = sum(float(prob[i, j]) for i in merged)
            new[j] = (anchors[j] + s * agg) / (1 + s * load)
        anchors = new
    output += [anchors[j] for j in range(anchors.shape[0])]
    return output


def clips_of(frames, cfg, frame_features):
    """(start, stop) clips: fixed ``clip_length`` (default ceil(frames / num_clips)), or dynamic:
    cut after the num_clips - 1 lowest adjacent cosine similarities of ``frame_features`` (ties:
    earlier transition) and after every one below ``dynamic_threshold``."""
    if not cfg.dynamic_clips:
        length = cfg.clip_length or math.ceil(frames / cfg.num_clips)
        return [(s, min(s + length, frames)) for s in range(0, frames, length)]
    sims = []
    for f in range(frames - 1):
        a, b = frame_features[f].double(), frame_features[f + 1].double()
        sims.append(float(torch.dot(a, b) / (a.norm() * b.norm())))
    lowest = sorted(range(frames - 1), key=lambda i: (sims[i], i))[:cfg.num_clips - 1]
    cuts = sorted(set(lowest) | {i for i in range(frames - 1) if sims[i] < cfg.dynamic_threshold})
    bounds = [0] + [c + 1 for c in cuts] + [frames]
    return list(zip(bounds[:-1], bounds[1:]))


def pool_of(mode):
    return {"bilinear": bilinear_pool, "average": average_pool,
            "none": lambda values, grid: values.double()}[mode]


def reduce_video(features, shallow, deep, cfg, frame_features=None):
    """The whole pipeline for one video (threshold mode). Returns (T_out, D) float64.

    frame_features: (F, D') per-frame features for dynamic clips (default: each frame's mean
    token after the intra merge)."""
    frames, tokens, _ = features.shape
    grid = math.isqrt(tokens)
    if not cfg.intra:
        anchor_lists = [list(range(tokens)) for _ in range(frames)]  # every pooled token survives
        merged = features.double()
    else:
        if cfg.random_anchors:
            anchor_lists = random_anchor_lists(frames, tokens, cfg)
        else:
            anchor_lists = []
            for f in range(frames):
                local, global_ = anchors_one_frame(shallow[f], deep[f], grid, cfg)
                anchor_lists.append(sorted(local + global_))
        merged = intra_one_video(features.double(), anchor_lists, grid, cfg)
    pool = pool_of(cfg.pooling)
    survivors = []
    for f in range(frames):
        mask = torch.zeros(tokens, 1, dtype=torch.float64)
        mask[anchor_lists[f]] = 1.0
        keep = pool(mask, grid)[:, 0] >= 0.5
        pooled = pool(merged[f], grid)
        survivors.append(pooled[keep])
    if not cfg.inter or frames == 1:
        return torch.cat(survivors)
    if frame_features is None:
        frame_features = torch.stack([merged[f].mean(0) for f in range(frames)])
    out = []
    for start, stop in clips_of(frames, cfg, frame_features):
        clip = survivors[start:stop]
        if len(clip) == 1:
            out += [clip[0][i] for i in range(clip[0].shape[0])]
        else:
            out += temporal_one_clip(clip, cfg)
    return torch.stack(out) if out else torch.zeros(0, features.shape[-1], dtype=torch.float64)
