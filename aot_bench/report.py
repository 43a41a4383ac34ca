"""Writers for the benchmark report: ``efficiency.json``, ``efficiency.md`` and two PNG plots."""

from __future__ import annotations

import json
import math
import os

from aot.backbones import get_backbone

from .configs import PAPER_FRAMES, QWEN_VIT, bench_shapes_of
from .pipeline import STAGES, VIDEO_DELIMITER_TOKENS

STAGE_LABELS = {"vision": "vision encoder", "projector": "projector",
                "reduce": "reducer (AOT) / native pooling (full)", "splice": "splice",
                "prefill": "LLM prefill + 1st token"}
STAGE_COLOURS = {"vision": "#4C72B0", "projector": "#8172B2", "reduce": "#C44E52",
                 "splice": "#CCB974", "prefill": "#55A868"}


def write_reports(report: dict, out: str, plots: bool = True) -> list[str]:
    """Write every output file into ``out``; returns their paths."""
    paths = [os.path.join(out, "efficiency.json"), os.path.join(out, "efficiency.md")]
    with open(paths[0], "w") as handle:
        json.dump(report, handle, indent=1, default=_json_default)
    with open(paths[1], "w") as handle:
        handle.write(markdown(report))
    if plots:
        paths.append(plot_breakdown(report, os.path.join(out, "latency_breakdown.png")))
        paths.append(plot_ttft_vs_frames(report, os.path.join(out, "ttft_vs_frames.png")))
    return paths


def _json_default(value):
    return float(value) if hasattr(value, "__float__") else str(value)


def _label(retention) -> str:
    return "full" if retention is None else f"{retention:.2f}"


def _row_label(row: dict) -> str:
    """The row's retention, with ``+ stage(K=.., r=..)`` when an LLM stage was installed."""
    stage = row.get("llm_stage_label")
    return _label(row["retention"]) + (f" + {stage}" if stage else "")


def _ms(row: dict, key: str) -> float:
    return row["seconds"][key]["median"] * 1e3


def _t(flops) -> str:
    return "–" if flops is None else f"{flops / 1e12:.3g}"


def _ratio(row: dict, key: str, fmt: str = "{:.2f}x") -> str:
    value = (row.get("ratios") or {}).get(key)
    return "–" if value is None else fmt.format(value)


def markdown(report: dict) -> str:
    """The report as markdown: settings, then per backbone a latency table and a FLOPs table."""
    env = report["environment"]
    lines = ["# AOT efficiency benchmark", "",
             f"- device: **{env['device']}**, dtype {env['dtype']}, LLM attention {env['attn']}",
             f"- model: {env['model_source']} weights, preset `{env['preset']}`"]
    descriptions = env.get("shape_descriptions") or {b: env["shape_description"]
                                                     for b in env["backbones"]}
    for backbone, description in descriptions.items():
        lines.append(f"  - `{backbone}`: {description}")
    for backbone in _qwen_vit(env["backbones"]):
        lines.append(f"- `{backbone}`: transformers' Qwen2_5_VLForConditionalGeneration, "
                     f"{_frame_size(env)} px frames (two "
                     "frames per temporal patch, no newline tokens), reduced by aot_integrations.hf.apply at "
                     "the exact budget; its `reducer` column is aot_integrations.hf's reduction + packing + "
                     "positions (full: the stock placeholder scatter and get_rope_index)")
    if env.get("reduced_widths"):
        lines.append("- **reduced widths**: timings are of these small models, not of the 7B "
                     "models; token counts are exact; the `7B` FLOPs columns are for the real "
                     "7B shapes (LLaVA-OV/Video-7B, Qwen2.5-VL-7B) at the same sequence lengths")
    lines += [(f"- {env['warmup']} warm-up + {env['repeats']} timed passes per row (median; "
               "spread = (max - min) / median); prompt of "
               f"{env['text_tokens']} text tokens; {env['decode_tokens']} greedy decode tokens"),
              (f"- host load average (1/5/15 min) at start {env.get('load_average_at_start')}, "
               f"at end {env.get('load_average_1_5_15')}; the run took "
               f"{env.get('benchmark_seconds')} s"),
              f"- torch {env['torch']}, transformers {env['transformers']}, {env['date']}",
              f"- command: `{env['command']}`", ""]
    for backbone in env["backbones"]:
        rows = [r for r in report["rows"] if r["backbone"] == backbone]
        if rows:
            lines += _latency_table(backbone, rows) + [""] + _flops_table(backbone, rows) + [""]
    lines += [("Prefill FLOPs: matrix products only, a multiply-add = 2 FLOPs, full L x L "
               "attention (eager), last-position logits; *counted* = `torch.utils.flop_counter."
               "FlopCounterMode` on transformers' Qwen2 with eager attention (meta device). "
               "*paper conv.* = the paper's convention (FastV formula on visual tokens). "
               "Rows with `+ stage` have an LLM stage installed (aot_integrations.llm_stage): "
               "layers before K see the whole sequence, layers K.. the kept tokens; their "
               "analytic FLOPs are `aot_bench.flops.llm_stage_prefill_flops`, not counted "
               "(–), and their ratios are against the full row without a stage."), ""]
    return "\n".join(lines)


def _qwen_vit(backbones) -> list[str]:
    """The ``backbones`` benchmarked on transformers' Qwen2.5-VL class (``bench_shapes``
    ``qwen_vit``)."""
    return [name for name in backbones if bench_shapes_of(name) == QWEN_VIT]


def _frame_pair(env: dict) -> tuple[int, int]:
    """(height, width) of the Qwen frames (older reports stored one side)."""
    size = env.get("qwen_frame_size") or 448
    return (size, size) if isinstance(size, int) else tuple(size)


def _frame_size(env: dict) -> str:
    return "x".join(str(side) for side in _frame_pair(env))


def _latency_table(backbone: str, rows: list[dict]) -> list[str]:
    """Markdown latency table of one backbone."""
    lines = [f"## {backbone}: latency (ms, median)", "",
             ("| frames | retention | visual tokens | vision | reducer | prefill | TTFT "
              "[min–max] | TTFT speed-up | prefill speed-up | reducer % TTFT | capture "
              "overhead | decode tok/s | peak MiB |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        head = f"| {row['frames']} | {_row_label(row)} | {_tokens(row)} |"
        if row["status"] != "ok":
            lines.append(head + f" {row['status']} |" + " |" * 9)
            continue
        lines.append(_latency_cells(head, row, row["seconds"]["ttft"],
                                    row.get("decode_tokens_per_s")))
    return lines


def _tokens(row: dict) -> str:
    """Visual tokens into the LLM, and ``-> n from layer K`` with an LLM stage."""
    if not row.get("llm_stage"):
        return str(row["visual_tokens"])
    return (f"{row['visual_tokens']} → {row['llm_stage_kept_expected']} kept of "
            f"{row['llm_stage_candidates']} from layer {row['llm_stage']['layer']}")


def _latency_cells(head: str, row: dict, ttft: dict, decode) -> str:
    """One latency table row."""
    decode_text = f"{decode['median']:.1f}" if decode else "–"
    return (head + f" {_ms(row, 'vision'):.1f} | {_ms(row, 'reduce'):.2f} | "
            f"{_ms(row, 'prefill'):.1f} | {ttft['median'] * 1e3:.1f} "
            f"[{ttft['min'] * 1e3:.0f}–{ttft['max'] * 1e3:.0f}] | "
            f"{_ratio(row, 'ttft_speedup')} | {_ratio(row, 'prefill_speedup')} | "
            f"{_ratio(row, 'reducer_share_of_ttft', '{:.2%}')} | "
            f"{_ratio(row, 'vision_capture_overhead')} | {decode_text} | "
            f"{row['peak_memory_bytes'] / 2 ** 20:.0f} |")


def _flops_table(backbone: str, rows: list[dict]) -> list[str]:
    """Markdown FLOPs table of one backbone (benchmarked shapes, and 7B when reduced)."""
    seven = "prefill_flops_7b_analytic" in rows[0]
    vision = "ViT+merger" if _qwen_vit([backbone]) else "vision+projector"
    lines = [f"## {backbone}: prefill FLOPs (T = 1e12)", ""]
    header = "| frames | retention | sequence | analytic | counted | FLOPs ratio |"
    # a stage row's sequence: what layers < K see -> what layers K.. see
    rule = "|---|---|---|---|---|---|"
    if seven:
        header += f" 7B analytic | 7B counted | 7B paper conv. | 7B {vision} |"
        rule += "---|---|---|---|"
    else:
        header += f" paper conv. | {vision} |"
        rule += "---|---|"
    lines += [header, rule]
    for row in rows:
        sequence = (f"{row['seq_len']} → {row['seq_len_after_stage']}"
                    if row.get("llm_stage") else str(row["seq_len"]))
        cells = (f"| {row['frames']} | {_row_label(row)} | {sequence} | "
                 f"{_t(row['prefill_flops_analytic'])} | {_t(row.get('prefill_flops_counted'))}"
                 f" | {_ratio(row, 'prefill_flops', '{:.3f}')} |")
        if seven:
            cells += (f" {_t(row['prefill_flops_7b_analytic'])} | "
                      f"{_t(row.get('prefill_flops_7b_counted'))} | "
                      f"{_t(row.get('prefill_flops_7b_paper_convention'))} | "
                      f"{_t(row['vision_flops_7b_analytic'])} |")
        else:
            cells += (f" {_t(row.get('prefill_flops_paper_convention'))} | "
                      f"{_t(row['vision_flops_analytic'])} |")
        lines.append(cells)
    return lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _reference_frames(rows: list[dict], backbone: str):
    """The paper's frame count for the backbone if measured, else the largest measured."""
    measured = sorted({r["frames"] for r in rows if r["status"] == "ok"})
    if not measured:
        return None
    paper = PAPER_FRAMES.get(backbone)
    return paper if paper in measured else measured[-1]


def plot_breakdown(report: dict, path: str) -> str:
    """Stacked bars of the stage medians per retention (one panel per backbone)."""
    plt = _pyplot()
    backbones = report["environment"]["backbones"]
    fig, axes = plt.subplots(1, len(backbones), figsize=(5.2 * len(backbones), 4), squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        rows = [r for r in report["rows"] if r["backbone"] == backbone]
        frames = _reference_frames(rows, backbone)
        rows = [r for r in rows if r["frames"] == frames and r["status"] == "ok"]
        labels = [_row_label(r) for r in rows]
        bottom = [0.0] * len(rows)
        for stage in STAGES:
            heights = [_ms(r, stage) for r in rows]
            ax.bar(labels, heights, bottom=bottom, color=STAGE_COLOURS[stage],
                   label=STAGE_LABELS[stage])
            bottom = [b + h for b, h in zip(bottom, heights)]
        for x, (row, top) in enumerate(zip(rows, bottom)):
            if row.get("ratios"):
                ax.text(x, top, f"{row['ratios']['ttft_speedup']:.2f}x", ha="center",
                        va="bottom", fontsize=8)
        ax.set_ylim(0, max(bottom, default=1.0) * 1.12 or 1.0)  # room for the speed-up labels
        ax.set_title(f"{backbone}, {frames} frames")
        ax.set_xlabel("retention")
        ax.set_ylabel("time to first token (ms, median)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(_device_title(report), fontsize=9)
    fig.tight_layout()
    # Below the panels, as many columns as fit; bbox_inches="tight" keeps it in the image.
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(labels), 2 * len(backbones)) or 1, fontsize=8, frameon=False)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _device_title(report: dict) -> str:
    env = report["environment"]
    note = " (reduced widths)" if env.get("reduced_widths") else ""
    return f"{env['device']}, {env['dtype']}, preset {env['preset']}{note}"


def context_limit_frames(report: dict, backbone: str):
    """Frames beyond which the full model's sequence exceeds the LLM context (float): tokens per
    frame and fixed tokens from the backbone's record (pooled grid, newline rule) or, on the
    Qwen2.5-VL shapes, from the shape's patching (merged patches of ``temporal_patch_size``
    frames) and the delimiters around the video."""
    env = report["environment"]
    shape = (env.get("shapes") or {}).get(backbone, env["shape"])
    max_context = shape["max_context"]
    if _qwen_vit([backbone]):
        height, width = _frame_pair(env)
        side = shape.get("patch_size", 14) * shape.get("merge_size", 2)
        per_frame = (height // side) * (width // side) / shape.get("temporal_patch_size", 2)
        return (max_context - env["text_tokens"] - VIDEO_DELIMITER_TOKENS) / per_frame
    facts = get_backbone(backbone)
    per_frame_newlines = facts.newlines(2) - facts.newlines(1)
    per_frame = facts.pooled_per_frame() + per_frame_newlines
    fixed = env["text_tokens"] + facts.newlines(1) - per_frame_newlines
    return (max_context - fixed) / per_frame


def plot_ttft_vs_frames(report: dict, path: str) -> str:
    """TTFT vs frames per retention; the full model's OOM / over-context points are marked and
    the frame count where it leaves the context is drawn."""
    plt = _pyplot()
    env = report["environment"]
    backbones = env["backbones"]
    fig, axes = plt.subplots(1, len(backbones), figsize=(5.2 * len(backbones), 4), squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        rows = [r for r in report["rows"] if r["backbone"] == backbone]
        top = max([r["seconds"]["ttft"]["median"] * 1e3 for r in rows if r["status"] == "ok"]
                  or [1.0])
        for retention in env["retentions"]:
            value = None if retention == "full" else retention
            for staged in (False, True):    # one line per retention, and with the LLM stage
                series = [r for r in rows if r["retention"] == value
                          and bool(r.get("llm_stage")) == staged]
                if not series:
                    continue
                ok = [r for r in series if r["status"] == "ok"]
                ax.plot([r["frames"] for r in ok], [_ms(r, "ttft") for r in ok],
                        marker="s" if staged else "o", label=_row_label(series[0]),
                        linestyle=":" if staged else "--" if value is None else "-")
                for r in series:
                    if r["status"] != "ok":
                        ax.scatter([r["frames"]], [top * 1.3], marker="x", color="black",
                                   zorder=5)
                        ax.annotate(f"{_row_label(r)}: {r['status']}", (r["frames"], top * 1.3),
                                    fontsize=7, xytext=(3, 3), textcoords="offset points")
        limit = context_limit_frames(report, backbone)
        frames = [r["frames"] for r in rows]
        if frames and limit <= 4 * max(frames):
            ax.axvline(limit, color="grey", linestyle=":")
            context = (env.get("shapes") or {}).get(backbone, env["shape"])["max_context"]
            ax.annotate(f"full model > context\n({context}) beyond "
                        f"{math.floor(limit)} frames", (limit, 0.03), xycoords=("data", "axes fraction"),
                        xytext=(-3, 0), textcoords="offset points", fontsize=7, ha="right",
                        va="bottom")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("frames")
        ax.set_ylabel("time to first token (ms, median)")
        ax.set_title(backbone)
        ax.legend(title="retention", fontsize=7, loc="best")
    fig.suptitle(_device_title(report), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    """``python -m aot_bench.report DIR``: rewrite the markdown and plots from DIR's JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m aot_bench.report", description=main.__doc__)
    parser.add_argument("folder", help="a benchmark output folder holding efficiency.json")
    args = parser.parse_args(argv)
    path = os.path.join(args.folder, "efficiency.json")
    if not os.path.isfile(path):
        parser.error(f"{path} does not exist; run python -m aot_bench.efficiency first")
    with open(path) as handle:
        report = json.load(handle)
    for written in write_reports(report, args.folder):
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
