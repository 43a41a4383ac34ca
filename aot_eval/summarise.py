"""Collect lmms-eval result folders into the paper's table (markdown and CSV).

    python -m aot_eval.summarise outputs/eval --out outputs/table
    python -m aot_eval.summarise --brief path/to/<date>_aot_retention.json

Each ``*_results.json`` under the given folders is one run; its ``<date>_aot_retention.json``
(written by ``python -m aot_eval``) gives the measured retention. Rows are (backbone, setting),
where the setting is ``full`` (unreduced), ``r=0.10`` (AOT at a retention), a preset name, or a
reducer / ablation variant (one row per reducer and its ``reducer.<option>`` knobs); each benchmark
cell shows our score, the reference (the AOT paper's for AOT rows, the published number of the
reducer's own source for the other reducers, :mod:`aot_eval.reported`), the difference and the
measured retention (mean and range). Runs with ``--limit`` are marked: not comparable.
Tasks that are none of the four benchmarks (a local task given with ``--task``) get a column of
their own with their first metric, as lmms-eval reports it. No lmms-eval import: this runs
anywhere.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from aot.backbones import eval_protocols, get_protocol

from .model_args import LLM_STAGE_PREFIX, OPTION_PREFIX
from .paper import BENCHMARKS, LABELS, paper_ablation, paper_table, paper_value, retention_key
from .reported import SOURCES, reported, reported_value


def backbone_order() -> list[str]:
    """The tables' order: eval protocol names (:func:`aot.backbones.eval_protocols`)."""
    return [protocol.name for protocol in eval_protocols()]

SCORE_KEYS = {"mvbench": "mvbench_accuracy", "egoschema": "submission",
              "longvideobench": "lvb_acc", "videomme": "videomme_perception_score"}


@dataclass
class Cell:
    """One benchmark result of one run."""

    score: Optional[float]
    retention: Optional[dict] = None
    limit: Optional[float] = None
    source: str = ""
    failed: int = 0
    metric: str = ""


@dataclass
class Row:
    """One table row. paper_row: the AOT paper's row key (AOT runs at a paper retention);
    reported: (reducer, retention key) of another reducer's published row, else None."""

    backbone: str
    setting: str
    paper_row: Optional[str]
    cells: dict = field(default_factory=dict)
    reported: Optional[tuple] = None

    def reference(self, benchmark: str) -> tuple[Optional[float], str]:
        """(the number printed beside ours, its word: ``"paper"`` or ``"reported"``) for a
        benchmark or ``"avg"``."""
        if self.paper_row is not None:
            return paper_value(self.backbone, self.paper_row, benchmark), "paper"
        if self.reported is not None:
            reducer, retention = self.reported
            return reported_value(reducer, self.backbone, retention, benchmark), "reported"
        return None, ""


def parse_model_args(text: str) -> dict:
    """``a=1,b=x`` -> ``{"a": "1", "b": "x"}`` (values kept as strings)."""
    out = {}
    for part in (text or "").split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def backbone_of(model: str) -> Optional[str]:
    """The eval protocol name of an lmms-eval model name: ours are ``<stock model>_aot``, and the
    stock models themselves count as their protocol's full row (``llava_onevision*`` -> ``ov``,
    ``llava_vid*`` -> ``video``); None for any other model."""
    for protocol in eval_protocols():
        if model.startswith(protocol.stock_model):
            return protocol.name
    return None


def setting_of(model: str, args: dict) -> tuple[str, Optional[str]]:
    """(row label, key of the paper row or None) for a run's model and model_args. A reducer's
    own knobs (``reducer.<option>``) follow its name: ``r=0.10 vidcom2(count=released)``."""
    reducer = args.get("reducer", "aot" if model.endswith("_aot") else "none")
    stage = llm_stage_label(args)
    if reducer == "none":
        return ("full", "full") if not stage else (f"full {stage}", None)
    options = [f"{k[len(OPTION_PREFIX):]}={args[k]}" for k in args if k.startswith(OPTION_PREFIX)]
    knobs = sorted(k for k in args if k not in KNOWN_MODEL_KEYS
                   and not k.startswith((OPTION_PREFIX, "llm_stage")))
    if "retention" in args:
        label = f"r={retention_key(args['retention'])}"
        paper_row = retention_key(args["retention"])
    else:
        label, paper_row = args.get("preset", "default preset"), None
    if reducer != "aot" or options:
        name = reducer + (f"({','.join(options)})" if options else "")
        label, paper_row = f"{label} {name}", None
    if args.get("exact", "false").lower() == "true":
        label += " exact"
    if args.get("ablation"):
        label, paper_row = f"{label} {args['ablation']}", None
    if knobs:
        label += " " + ",".join(f"{k}={args[k]}" for k in knobs)
        paper_row = None
    if stage:
        label, paper_row = f"{label} {stage}", None
    return label, paper_row


def reported_of(model: str, args: dict) -> Optional[tuple]:
    """(reducer, retention key) whose published row (:mod:`aot_eval.reported`) a run compares
    with: a registry reducer other than AOT at a retention, without AOT knobs or ablations
    changing it (its own ``reducer.<option>`` knobs and an LLM stage allowed), else None."""
    reducer = args.get("reducer", "aot" if model.endswith("_aot") else "none")
    if reducer in ("aot", "none") or reducer.startswith("aot:") or "retention" not in args:
        return None
    if args.get("ablation") or any(k not in KNOWN_MODEL_KEYS
                                   and not k.startswith((OPTION_PREFIX, "llm_stage"))
                                   for k in args):
        return None
    return reducer, retention_key(args["retention"])


def llm_stage_label(args: dict) -> str:
    """``+fastv(layer=3)`` for a run with ``llm_stage=fastv,llm_stage.layer=3``; "" without."""
    name = args.get("llm_stage", "none")
    if name.lower() in ("none", ""):
        return ""
    knobs = ",".join(f"{k[len(LLM_STAGE_PREFIX):]}={args[k]}" for k in sorted(args)
                     if k.startswith(LLM_STAGE_PREFIX))
    return f"+{name}" + (f"({knobs})" if knobs else "")


KNOWN_MODEL_KEYS = {
    "pretrained", "model_name", "conv_template", "attn_implementation", "torch_dtype", "device",
    "device_map", "batch_size", "max_frames_num", "mm_spatial_pool_stride",
    "mm_spatial_pool_mode", "use_cache", "prompt_as", "retention_log", "on_video_error",
    "video_fps", "force_sample", "add_time_instruction", "mm_newline_position",
    "mm_resampler_location", "reducer", "retention", "preset", "exact", "ablation",
    # the keys of the stock wrappers of transformers classes (lmms-eval 0.7.3)
    "max_num_frames", "min_pixels", "max_pixels", "total_pixels", "fps", "system_prompt",
    "interleave_visuals", "reasoning_prompt", "enable_thinking", "revision", "dtype",
    "trust_remote_code", "chat_template",
}


def metric(result: dict, name: str) -> Optional[float]:
    """``result["<name>,none"]`` (or ``<name>``) as a number, else None."""
    for key in (f"{name},none", name):
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def benchmark_scores(results: dict) -> dict:
    """{benchmark: score in percent} from a results.json document."""
    table = {**results.get("results", {}), **results.get("groups", {})}
    out = {}
    for bench in BENCHMARKS:
        name = SCORE_KEYS[bench]
        if bench == "mvbench":
            value = metric(table.get("mvbench", {}), name)
            if value is None:  # the group has no aggregate: mean of the 20 subtasks
                subs = [metric(v, name) for k, v in table.items() if k.startswith("mvbench_")]
                subs = [s for s in subs if s is not None]
                value = statistics.fmean(subs) if subs else None
            present = "mvbench" in table or any(k.startswith("mvbench_") for k in table)
        else:
            task = {"egoschema": "egoschema", "longvideobench": "longvideobench_val_v",
                    "videomme": "videomme"}[bench]
            present = task in table
            value = metric(table.get(task, {}), name)
        if bench == "longvideobench" and value is not None and value <= 1.0:
            value *= 100.0  # lvb_acc is a fraction
        if present:
            out[bench] = value
    return out


def other_task_scores(results: dict) -> dict:
    """{task: (metric, value)} for the tasks of a results.json that belong to none of the four
    benchmarks (e.g. a local task run with ``--task``): the task's first numeric metric that is
    not a standard error, unscaled."""
    out = {}
    for task, values in results.get("results", {}).items():
        if bench_of_task(task) is not None or not isinstance(values, dict):
            continue
        for key, value in values.items():
            if "stderr" in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out[task] = (key.split(",")[0], float(value))
            break
    return out


def bench_of_task(task: str) -> Optional[str]:
    if task.startswith("mvbench"):
        return "mvbench"
    for bench in ("egoschema", "videomme"):
        if task.startswith(bench):
            return bench
    if task.startswith("longvideobench"):
        return "longvideobench"
    return None


def retention_by_benchmark(document: dict) -> dict:
    """{benchmark: {mean, min, max, measured, failed}} from a retention record."""
    groups: dict = {}
    for sample in document.get("samples", []):
        bench = bench_of_task(sample["task"]) or sample["task"]
        groups.setdefault(bench, []).append(sample)
    out = {}
    for bench, samples in groups.items():
        values = [s["retention"] for s in samples if s.get("retention") is not None]
        out[bench] = {"measured": len(values), "failed": sum(1 for s in samples if s.get("error")),
                      **({"mean": statistics.fmean(values), "min": min(values),
                          "max": max(values)} if values else {})}
    return out


def load_runs(folders: list) -> list[Row]:
    """Rows of the table from every results file under ``folders`` (latest run wins a cell)."""
    rows: dict = {}
    files = []
    for folder in folders:
        folder = Path(folder)
        files += [folder] if folder.is_file() else list(folder.rglob("*_results.json"))
    for path in sorted(files, key=lambda p: p.stat().st_mtime):
        results = json.loads(path.read_text())
        config = results.get("config", {})
        model = str(config.get("model", ""))
        backbone = backbone_of(model)
        if backbone is None:
            continue
        args = parse_model_args(config.get("model_args", ""))
        setting, paper_row = setting_of(model, args)
        row = rows.setdefault((backbone, setting), Row(backbone, setting, paper_row,
                                                       reported=reported_of(model, args)))
        ret_path = path.with_name(path.name[: -len("_results.json")] + "_aot_retention.json")
        retention = (retention_by_benchmark(json.loads(ret_path.read_text()))
                     if ret_path.exists() else {})
        for bench, score in benchmark_scores(results).items():
            info = retention.get(bench, {})
            row.cells[bench] = Cell(score, info or None, config.get("limit"), str(path),
                                    info.get("failed", 0), SCORE_KEYS[bench])
        for task, (name, score) in other_task_scores(results).items():
            info = retention.get(task, {})
            row.cells[task] = Cell(score, info or None, config.get("limit"), str(path),
                                   info.get("failed", 0), name)
    return sorted(rows.values(), key=row_order)


def row_order(row: Row):
    """Backbone, then full first, then decreasing retention, then the rest by name."""
    if row.setting == "full":
        rank = (0, 0.0)
    elif row.paper_row is not None:
        rank = (1, -float(row.paper_row))
    else:
        rank = (2, 0.0)
    return (backbone_order().index(row.backbone), rank, row.setting)


def fmt(value, digits=1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_delta(ours, paper) -> str:
    return "—" if ours is None or paper is None else f"{ours - paper:+.1f}"


def fmt_retention(info: Optional[dict]) -> str:
    if not info or "mean" not in info:
        return "—"
    return f"{100 * info['mean']:.1f}% [{100 * info['min']:.1f}–{100 * info['max']:.1f}]"


def average(row: Row) -> tuple[Optional[float], Optional[float]]:
    """(our average, paper average) over the four benchmarks, when all four have scores."""
    ours = [row.cells[b].score if b in row.cells else None for b in BENCHMARKS]
    ours_avg = statistics.fmean(ours) if all(v is not None for v in ours) else None
    paper = row.reference("avg")[0]
    ablations = get_protocol(row.backbone).paper_ablations
    row_key = get_protocol(row.backbone).paper_ablation_row
    if ablations and row.paper_row is None and f"r={row_key}" in row.setting:
        ablation = row.setting.split()[-1]
        ablated = paper_ablation(row.backbone, row_key, ablation)
        paper = paper if ablated is None else ablated
    return ours_avg, paper


def other_tasks(rows: list[Row]) -> tuple:
    """Names of the non-benchmark task columns of ``rows``, sorted."""
    return tuple(sorted({name for row in rows for name in row.cells if name not in BENCHMARKS}))


def table_rows(rows: list[Row]) -> list[dict]:
    """Flat records, one per (row, benchmark or other task) plus the average (for CSV)."""
    out = []
    for row in rows:
        extra = tuple(name for name in other_tasks([row]))
        for bench in BENCHMARKS + extra + ("avg",):
            if bench == "avg":
                ours, paper = average(row)
                cell = None
            else:
                cell = row.cells.get(bench)
                ours = cell.score if cell else None
                paper = row.reference(bench)[0] if bench in BENCHMARKS else None
            info = cell.retention if cell else None
            out.append({
                "backbone": row.backbone, "setting": row.setting, "benchmark": bench,
                "metric": cell.metric if cell else "", "ours": ours, "paper": paper,
                "reference": reference_name(row) if paper is not None else "",
                "delta": None if ours is None or paper is None else ours - paper,
                "retention_mean": info.get("mean") if info else None,
                "retention_min": info.get("min") if info else None,
                "retention_max": info.get("max") if info else None,
                "videos": info.get("measured") if info else None,
                "failed_videos": cell.failed if cell else None,
                "limit": cell.limit if cell else None,
                "source": cell.source if cell else "",
            })
    return out


def markdown(rows: list[Row]) -> str:
    """The paper's table layout: per benchmark ours / paper / Δ / measured retention."""
    lines = []
    for backbone in backbone_order():
        mine = [r for r in rows if r.backbone == backbone]
        if not mine:
            continue
        extra = other_tasks(mine)
        lines += [f"### {get_protocol(backbone).title}", "",
                  "| setting | " + " | ".join([LABELS[b] for b in BENCHMARKS] +
                                             [f"{t} (other task)" for t in extra]) + " | Avg |",
                  "|---|" + "---|" * (len(BENCHMARKS) + len(extra) + 1)]
        for row in mine:
            cells = []
            for bench in BENCHMARKS:
                cell = row.cells.get(bench)
                paper, word = row.reference(bench)
                if cell is None:
                    cells.append("—" if paper is None else f"— ({word} {fmt(paper)})")
                    continue
                text = f"**{fmt(cell.score)}**" if cell.score is not None else "unscored"
                if paper is not None:
                    text += f" ({word} {fmt(paper)}, {fmt_delta(cell.score, paper)})"
                text += f"<br>ret. {fmt_retention(cell.retention)}"
                if cell.failed:
                    text += f"<br>{cell.failed} videos failed"
                if cell.limit:
                    text += f"<br>limit={cell.limit:g}: not comparable"
                cells.append(text)
            for task in extra:
                cell = row.cells.get(task)
                cells.append("—" if cell is None else other_cell(cell))
            ours, paper = average(row)
            avg = fmt(ours) if ours is not None else "—"
            if paper is not None:
                avg += f" ({row.reference('avg')[1] or 'paper'} {fmt(paper)}, " \
                       f"{fmt_delta(ours, paper)})"
            lines.append(f"| {row.setting} | " + " | ".join(cells) + f" | {avg} |")
        lines.append("")
    if not lines:
        return "No results found.\n"
    lines.append("Scores in %; (paper value, difference ours − paper); ret. = measured retention "
                 "of visual tokens, mean [min–max] over the videos. EgoSchema is scored by its "
                 "server: 'unscored' means the submission file still has to be sent.")
    entries = [reported(row.reported[0], row.backbone, row.reported[1])
               for row in rows if row.reported is not None]
    cited = sorted({entry.source for entry in entries if entry is not None})
    if cited:
        lines.append("Other reducers' rows: 'reported' is the number their source publishes at "
                     "that retention (not re-run; its own protocol and, for HoliTom and FlashVID, "
                     "its stage inside the LLM, which ours does not run): " +
                     "; ".join(f"[{tag}] {SOURCES[tag]}" for tag in cited) + ".")
    published = paper_table()
    unpublished = sorted({row.backbone for row in rows if row.backbone not in published},
                         key=backbone_order().index)
    if unpublished:
        lines.append(f"The paper has no numbers for {', '.join(unpublished)}: their paper "
                     "values are empty.")
    if any(other_tasks([row]) for row in rows):
        lines.append("Other tasks (not one of the four benchmarks, e.g. a local --task): the "
                     "task's first metric as lmms-eval reports it, unscaled; no paper value.")
    return "\n".join(lines) + "\n"


def reference_name(row: Row) -> str:
    """What a row's reference column holds: ``"AOT paper"`` or the cited source."""
    if row.paper_row is not None:
        return "AOT paper"
    if row.reported is None:
        return ""
    entry = reported(row.reported[0], row.backbone, row.reported[1])
    return "" if entry is None else f"[{entry.source}] {SOURCES[entry.source]}"


def other_cell(cell: Cell) -> str:
    """Markdown cell of a non-benchmark task: value and metric name, retention, caveats."""
    text = "unscored" if cell.score is None else f"**{cell.score:.3f}** {cell.metric}"
    text += f"<br>ret. {fmt_retention(cell.retention)}"
    if cell.failed:
        text += f"<br>{cell.failed} videos failed"
    if cell.limit:
        text += f"<br>limit={cell.limit:g}: not comparable"
    return text


def write_csv(records: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]) if records else ["backbone"])
        writer.writeheader()
        writer.writerows(records)


def brief(path: Path) -> str:
    """One line about a retention record."""
    document = json.loads(Path(path).read_text())
    overall = document.get("summary", {}).get("overall", {})
    if not overall.get("measured"):
        return f"[eval] measured retention: none measured ({overall.get('samples', 0)} samples)"
    return (f"[eval] measured retention: mean {100 * overall['mean']:.2f}% "
            f"(min {100 * overall['min']:.2f}%, max {100 * overall['max']:.2f}%) over "
            f"{overall['measured']} videos; reducer {document.get('reducer')} "
            f"({document.get('source')}); {overall.get('failed', 0)} failed")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", help="result folders (searched recursively)")
    parser.add_argument("--out", help="write OUT.md and OUT.csv")
    parser.add_argument("--brief", help="print one line about a *_aot_retention.json and exit")
    args = parser.parse_args(argv)
    if args.brief:
        print(brief(Path(args.brief)))
        return 0
    if not args.folders:
        parser.error("give at least one result folder")
    missing = [f for f in args.folders if not Path(f).exists()]
    if missing:
        parser.error(f"no such folder(s): {missing}")
    rows = load_runs(args.folders)
    text = markdown(rows)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        write_csv(table_rows(rows), out.with_suffix(".csv"))
        print(f"[summarise] wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")
    if not rows:
        print("[summarise] no results files found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
