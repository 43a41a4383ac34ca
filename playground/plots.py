"""Pictures of what a reducer keeps (matplotlib, Agg backend, PNG files).

* :func:`plot_anchors`: sampled frames with AOT's local and global anchors on the patch grid.
* :func:`plot_tokens`: per frame, the pooled tokens that survive pooling and the temporal phase.
* :func:`plot_tokens_per_frame`: bar chart of the tokens each frame gives the LLM.
* :func:`plot_sweep`: tokens and reducer time against the retention target.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from PIL import Image

import aot

LOCAL = (0.0, 0.85, 1.0)        # cyan
GLOBAL = (1.0, 0.15, 0.75)      # magenta
KEYFRAME = (1.0, 0.85, 0.0)     # yellow
KEPT = (0.15, 0.9, 0.2)         # green
MERGED = (1.0, 0.3, 0.1)        # red-orange
ANCHOR_BAR = (0.65, 0.45, 0.0)  # dark yellow
DIM = 0.55                      # alpha of the dark veil over what is dropped
PANEL_WIDTH = 3.0               # inches per frame panel
COLUMNS = 8
DPI = 100
#: Panels are drawn at most this much taller than wide (or wider than tall): a 16x4096 video
#: would otherwise give a figure hundreds of inches tall (minutes and gigabytes to draw).
MAX_ASPECT = 4.0
THUMBNAIL = 320                 # pixels of the longer side of a drawn frame


def thumbnails(frames: np.ndarray, longest: int = THUMBNAIL) -> list[np.ndarray]:
    """Downscale (F, H, W, 3) uint8 frames so that their longer side is ``longest`` pixels
    (aspect kept) for drawing; the panels stretch them to the patch grid anyway."""
    height, width = frames.shape[1:3]
    scale = longest / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return [np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames]


def panel_aspect(height: int, width: int) -> float:
    """Height / width of a frame panel, clamped to [1 / MAX_ASPECT, MAX_ASPECT]."""
    return min(max(height / width, 1 / MAX_ASPECT), MAX_ASPECT)


def panel_grid(count: int, aspect: float, extra_height: float = 0.8):
    """A figure with ``count`` image panels in rows of :data:`COLUMNS`; returns (fig, axes)."""
    columns = min(COLUMNS, count)
    rows = math.ceil(count / columns)
    panel_height = PANEL_WIDTH * panel_aspect(aspect, 1.0) + 0.4
    fig, axes = plt.subplots(rows, columns, squeeze=False,
                             figsize=(columns * PANEL_WIDTH, rows * panel_height + extra_height))
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes.flat


def clip_of(result: aot.ReducedVideo) -> dict[int, int]:
    """Frame index -> clip index (empty without a temporal phase)."""
    return {f: i for i, (start, stop) in enumerate(result.clips) for f in range(start, stop)}


def keyframes(result: aot.ReducedVideo) -> set[int]:
    """Frames that anchor a clip of two or more frames."""
    return {start for start, stop in result.clips if stop - start >= 2}


def overlay(cells: dict[tuple, np.ndarray], rows: int, cols: int,
            veil: float = DIM) -> np.ndarray:
    """(rows, cols, 4) RGBA: black veil everywhere, each colour where its (rows, cols) mask is
    true (later entries win)."""
    rgba = np.zeros((rows, cols, 4))
    rgba[..., 3] = veil
    for colour, mask in cells.items():
        rgba[mask] = (*colour, 0.6)
    return rgba


def _frame_title(index: int, timestamps, clip: dict[int, int]) -> str:
    title = f"frame {index}"
    if timestamps is not None:
        title += f"  t={timestamps[index]:.1f}s"
    if index in clip:
        title += f"  clip {clip[index]}"
    return title


def plot_anchors(frames: np.ndarray, result: aot.ReducedVideo, path: str, *, title: str,
                 timestamps=None, window: int | None = 9) -> str:
    """Frames in a grid; local anchors (cyan) and global anchors (magenta) on the patch grid
    (any rows x cols), the rest veiled; thin lines mark AOT's ``window`` x ``window`` local-anchor
    windows (None: no lines). Returns ``path``."""
    images = thumbnails(frames)
    h, w = images[0].shape[:2]
    local = result.local_anchors.cpu().numpy()
    global_ = result.global_anchors.cpu().numpy()
    rows, cols = local.shape[1:]
    clip = clip_of(result)
    fig, axes = panel_grid(len(images), h / w)
    extent = (0, cols, rows, 0)
    for index, ax in zip(range(len(images)), axes):
        ax.imshow(images[index], extent=extent, aspect="auto")
        ax.imshow(overlay({LOCAL: local[index], GLOBAL: global_[index]}, rows, cols),
                  extent=extent, aspect="auto", interpolation="nearest")
        if window and window < max(rows, cols):
            for k in range(window, rows, window):
                ax.axhline(k, color="white", lw=0.6, alpha=0.7)
            for k in range(window, cols, window):
                ax.axvline(k, color="white", lw=0.6, alpha=0.7)
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        ax.set_title(f"{_frame_title(index, timestamps, clip)}\n"
                     f"{int(local[index].sum())} local + {int(global_[index].sum())} global",
                     fontsize=8)
    span = f"{window}x{window} window" if window else "window"
    handles = [Patch(color=LOCAL, label=f"local anchor (top attention per {span}, shallow "
                                         "layer)"),
               Patch(color=GLOBAL, label="global anchor (top attention, deep layer)"),
               Patch(color=(0.25, 0.25, 0.25), label="other patch (merged into anchors by OT)")]
    if not (local.any() or global_.any()):
        title += "  (this reducer picks no AOT anchors)"
    return _finish(fig, path, title, handles)


def plot_tokens(frames: np.ndarray, result: aot.ReducedVideo, path: str, *, title: str,
                timestamps=None) -> str:
    """Per frame, the pooled grid: tokens that survive pooling and what the temporal phase did
    (keyframe token, kept as dynamics, merged into the keyframe's anchors). Returns ``path``."""
    images = thumbnails(frames)
    h, w = images[0].shape[:2]
    survivors = result.survivors.cpu().numpy()
    rows, cols = survivors.shape[1:]
    extent = (0, cols, rows, 0)
    kept = result.temporal_kept.cpu().numpy()
    merged = result.temporal_merged.cpu().numpy()
    clip, keys = clip_of(result), keyframes(result)
    fig, axes = panel_grid(len(images), h / w)
    for index, ax in zip(range(len(images)), axes):
        is_key = index in keys or not clip
        cells = ({KEYFRAME: survivors[index]} if is_key
                 else {KEPT: kept[index], MERGED: merged[index]})
        ax.imshow(images[index], extent=extent, aspect="auto")
        ax.imshow(overlay(cells, rows, cols), extent=extent, aspect="auto",
                  interpolation="nearest")
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        if index in keys:
            counts = f"keyframe: {int(survivors[index].sum())} tokens"
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color(KEYFRAME)
                spine.set_linewidth(3)
        elif clip:
            counts = f"{int(kept[index].sum())} kept, {int(merged[index].sum())} merged"
        else:
            counts = f"{int(survivors[index].sum())} tokens"
        ax.set_title(f"{_frame_title(index, timestamps, clip)}\n{counts}", fontsize=8)
    if clip:
        handles = [Patch(color=KEYFRAME, label="keyframe token (sent as is; also a temporal "
                                               "anchor)"),
                   Patch(color=KEPT, label="kept: not explained by the keyframe (dynamics)"),
                   Patch(color=MERGED, label="merged into the keyframe's anchors by OT"),
                   Patch(color=(0.25, 0.25, 0.25), label="dropped at pooling")]
    else:
        handles = [Patch(color=KEYFRAME, label="token sent to the LLM"),
                   Patch(color=(0.25, 0.25, 0.25), label="dropped")]
    return _finish(fig, path, title, handles)


def plot_tokens_per_frame(result: aot.ReducedVideo, path: str, *, title: str) -> str:
    """Stacked bars per frame: keyframe / kept / merged-anchor tokens sent to the LLM, with the
    survivors of the intra phase (after pooling) as markers and clips shaded. Returns ``path``."""
    frames = result.num_frames
    kind = result.token_kind.cpu().numpy()
    frame = result.token_frame.cpu().numpy()
    counts = {k: np.bincount(frame[kind == k], minlength=frames) for k in (0, 1, 2)}
    survivors = result.survivors.flatten(1).sum(1).cpu().numpy()
    x = np.arange(frames)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.32 * frames + 3), 4.8))
    for index, (start, stop) in enumerate(result.clips):
        if index % 2 == 0:
            ax.axvspan(start - 0.5, stop - 0.5, color="0.92", zorder=0)
    bottom = np.zeros(frames)
    temporal = bool(result.clips)
    labels = {0: "keyframe token (as is)" if temporal else "token sent to the LLM",
              1: "kept by the temporal phase", 2: "merged temporal anchor"}
    for k, colour in ((0, KEYFRAME), (1, KEPT), (2, ANCHOR_BAR)):
        if counts[k].any() or k == 0:
            ax.bar(x, counts[k], bottom=bottom, color=colour, edgecolor="0.3", lw=0.4,
                   label=labels[k], zorder=2)
            bottom += counts[k]
    ax.plot(x, survivors, "k_", ms=12, mew=2, label="survivors after intra + pooling", zorder=3)
    mean = result.num_tokens / frames
    ax.axhline(mean, color="0.3", ls="--", lw=1, label=f"mean {mean:.1f} tokens / frame", zorder=1)
    ax.set_xlabel("frame" + ("  (shaded bands: clips of the temporal phase)" if temporal else ""))
    ax.set_ylabel("visual tokens sent to the LLM")
    ax.set_xticks(x if frames <= 40 else x[:: math.ceil(frames / 40)])
    ax.set_xlim(-0.6, frames - 0.4)
    ax.set_ylim(0, max(bottom.max(), survivors.max()) * 1.25 + 1)
    ax.legend(loc="upper right", fontsize=8, ncol=2, framealpha=0.9)
    per_frame = result.survivors.shape[1] * result.survivors.shape[2]
    denominator = frames * per_frame
    ax.set_title(f"{title}\n{result.num_tokens} visual tokens of {denominator} "
                 f"({per_frame} per frame unreduced): retention "
                 f"{result.num_tokens / denominator:.3f}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(rows: list[dict], path: str, *, title: str) -> str:
    """Two panels against the retention target, one line per reducer: achieved retention (with
    the y = x line) and reducer time in ms. ``rows``: dicts with reducer, target, retention,
    tokens, ms. Returns ``path``."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    reducers = list(dict.fromkeys(r["reducer"] for r in rows))
    targets = sorted({r["target"] for r in rows})
    left.plot(targets, targets, color="0.6", ls="--", lw=1, label="target (y = x)")
    for name in reducers:
        mine = [r for r in rows if r["reducer"] == name]
        label = name + (" (budget = AOT's count)" if mine[0].get("budget") else "")
        left.plot([r["target"] for r in mine], [r["retention"] for r in mine], "o-", label=label)
        right.plot([r["target"] for r in mine], [r["ms"] for r in mine], "o-", label=name)
    denominator = rows[0]["tokens"] / rows[0]["retention"] if rows[0]["retention"] else 0
    left.set_xlabel("retention target")
    left.set_ylabel("achieved retention (tokens / unreduced)")
    if denominator:
        twin = left.secondary_yaxis("right", functions=(lambda r: r * denominator,
                                                        lambda t: t / denominator))
        twin.set_ylabel("visual tokens")
    right.set_xlabel("retention target")
    right.set_ylabel("reducer time per video (ms, median)")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _finish(fig, path: str, title: str, handles: list) -> str:
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=10,
               bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()), frameon=False)
    fig.suptitle(title, fontsize=12, y=1 - 0.05 / fig.get_figheight(), va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()), h_pad=0.6, w_pad=0.4)
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
