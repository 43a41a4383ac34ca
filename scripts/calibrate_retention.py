"""Measure how AOT's settings land on retention, on synthetic videos (feeds docs/budget.md).

1. The survivor share factor c of aot.settings.SURVIVOR_SHARE: pooled survivors share divided by
   the anchor share V / 729, per pooling mode.
2. The achieved retention of the paper presets and of aot.settings_for (approximate and
   exact) at 10/15/20/25%.

    python scripts/calibrate_retention.py [--seeds 4]
"""

from __future__ import annotations

import argparse
import statistics

import aot
from aot.anchors import select_anchors
from aot.pooling import pool_grid, pooled_side
from aot.synthetic import synthetic_video


def survivor_share(pooling: str, seeds: int) -> float:
    ratios = []
    for anchors in (54, 108, 180, 270, 405, 486):
        for seed in range(seeds):
            _, shallow, deep = synthetic_video(16, dim=4, seed=seed)
            cfg = aot.AOTConfig(anchors_per_frame=anchors, pooling=pooling)
            local, global_ = select_anchors(shallow, deep, 27, cfg)
            pooled = pool_grid((local | global_).float(), 27, pooling) >= 0.5
            share = pooled.float().mean().item()
            ratios.append(share / (anchors / 729))
    return statistics.mean(ratios)


def achieved(cfg: aot.AOTConfig, frames: int, seeds: int) -> list[float]:
    out = []
    for seed in range(seeds):
        feats, shallow, deep = synthetic_video(frames, dim=32, seed=seed)
        out.append(aot.reduce_video(feats, shallow, deep, cfg).retention)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4, help="synthetic videos per cell")
    args = parser.parse_args()
    for pooling in ("bilinear", "average"):
        print(f"survivor share factor c ({pooling}, {pooled_side(27, pooling)}^2 pooled): "
              f"{survivor_share(pooling, args.seeds):.3f}")
    print("\n| setting | frames | V | keep | retention mean | min | max |")
    print("|---|---|---|---|---|---|---|")
    rows = [(name, aot.AOTConfig.preset(name), 64 if name == "paper-video" else 32)
            for name in ("paper-ov-mvbench", "paper-ov-videomme", "paper-video")]
    for backbone, frames in (("ov", 32), ("ov", 64), ("video", 64)):
        for r in (0.10, 0.15, 0.20, 0.25):
            for exact in (False, True):
                cfg = aot.settings_for(backbone, r, exact=exact, frames=frames)
                rows.append((f"settings_for({backbone!r}, {r:.2f}, exact={exact})", cfg, frames))
    for label, cfg, frames in rows:
        values = achieved(cfg, frames, args.seeds)
        keep = f"{cfg.keep_ratio:.3f}" if cfg.inter else "off"
        print(f"| {label} | {frames} | {cfg.anchors_per_frame} | {keep} | "
              f"{statistics.mean(values):.4f} | {min(values):.4f} | {max(values):.4f} |", flush=True)


if __name__ == "__main__":
    main()
