"""The other reducers' published numbers (aot_eval.reported): one row per reducer and its knobs
in the summary, the reported numbers beside ours, and docs/reducers/README.md's table agreeing
with the data."""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path

import pytest

from aot.backbones import eval_protocols
from aot_eval.paper import BENCHMARKS, paper_value
from aot_eval.reported import REPORTED, SOURCES, reported, reported_value
from aot_eval.summarise import main
from test_scripts_eval import write_run

REPO = Path(__file__).resolve().parents[1]
OV = "pretrained=lmms-lab/llava-onevision-qwen2-7b-ov,conv_template=qwen_1_5"


def test_reported_rows_are_well_formed():
    protocols = {p.name for p in eval_protocols()}
    keys = set()
    for row in REPORTED:
        assert row.protocol in protocols and row.source in SOURCES, row
        assert row.retention in ("0.10", "0.25") and set(row.scores) <= set(BENCHMARKS), row
        assert (row.reducer, row.protocol, row.retention) not in keys, row
        keys.add((row.reducer, row.protocol, row.retention))
        if len(row.scores) == 4:  # the source's average is the mean of its four cells
            assert row.avg == pytest.approx(statistics.fmean(row.scores.values()), abs=0.051)
        assert row.avg is not None or row.scores, row
    assert reported_value("holitom", "ov", "0.10", "avg") == 57.9
    assert reported_value("flashvid", "qwen2_5_vl", "0.10", "avg") == 58.9
    assert reported("aot", "ov", "0.10") is None  # AOT's own numbers are the paper rows


def test_summary_one_row_per_reducer_with_reported_numbers(tmp_path):
    write_run(tmp_path / "a", "llava_onevision_aot", OV + ",reducer=holitom,retention=0.10",
              {"mvbench": {"mvbench_accuracy,none": 57.0},
               "egoschema": {"submission,none": 61.0},
               "longvideobench_val_v": {"lvb_acc,none": 0.560},
               "videomme": {"videomme_perception_score,none": 57.0}},
              {"mvbench": [0.1], "videomme": [0.1]})
    write_run(tmp_path / "b", "llava_onevision_aot",
              OV + ",reducer=vidcom2,retention=0.25,reducer.count=released",
              {"mvbench": {"mvbench_accuracy,none": 57.5}})
    write_run(tmp_path / "c", "llava_onevision_aot", OV + ",reducer=vidcom2,retention=0.25",
              {"mvbench": {"mvbench_accuracy,none": 57.4}})
    write_run(tmp_path / "d", "llava_onevision_aot", OV + ",reducer=aot,retention=0.25",
              {"mvbench": {"mvbench_accuracy,none": 58.0}})
    write_run(tmp_path / "e", "llava_onevision_aot",
              OV + ",reducer=holitom,retention=0.10,sigma=2.0",  # an AOT knob: not comparable
              {"mvbench": {"mvbench_accuracy,none": 50.0}})
    out = tmp_path / "table"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    assert "| r=0.10 holitom | **57.0** (reported 57.3, -0.3)" in text
    assert "| 57.8 (reported 57.9, " in text  # the four-benchmark average
    assert "| r=0.25 vidcom2(count=released) | **57.5** (reported 57.2, +0.3)" in text
    assert "| r=0.25 vidcom2 | **57.4** (reported 57.2, +0.2)" in text
    assert "| r=0.25 | **58.0** (paper 58.7, -0.7)" in text
    assert "| r=0.10 holitom sigma=2.0 | **50.0**<br>" in text
    assert "[HT] " + SOURCES["HT"] in text and "[VC] " + SOURCES["VC"] in text
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    cell = next(r for r in rows if r["setting"] == "r=0.10 holitom" and r["benchmark"] == "avg")
    assert float(cell["paper"]) == 57.9 and cell["reference"].startswith("[HT]")
    aot = next(r for r in rows if r["setting"] == "r=0.25" and r["benchmark"] == "mvbench")
    assert float(aot["paper"]) == 58.7 and aot["reference"] == "AOT paper"


# ------------------------------------------------------------------ docs/reducers/README.md
COLUMNS = {"OV 10%": ("ov", "0.10"), "OV 25%": ("ov", "0.25"),
           "Video 10%": ("video", "0.10"), "Video 25%": ("video", "0.25"),
           "Qwen2.5-VL 10%": ("qwen2_5_vl", "0.10")}


def readme_table() -> tuple[list[str], dict]:
    lines = (REPO / "docs" / "reducers" / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| name | venue |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = dict(zip(header, cells))
    return header, rows


def test_readme_table_lists_every_reducer_with_its_reported_numbers():
    from aot.reducers import REDUCERS

    header, rows = readme_table()
    for column in ("venue", "needs", "knobs", "count rule", *COLUMNS):
        assert column in header
    for name in REDUCERS:
        if not name.startswith("aot:"):
            assert name in rows, f"{name} has no row in docs/reducers/README.md"
    for name in ("holitom", "flashvid", "fastvid"):  # their rows come before their code
        assert name in rows
    for name, row in rows.items():
        for column, (protocol, retention) in COLUMNS.items():
            if name == "aot":
                expected = paper_value(protocol, retention, "avg")
            elif name.startswith("aot:"):
                continue
            else:
                expected = reported_value(name, protocol, retention, "avg")
            shown = re.match(r"\d+\.\d", row[column])
            assert (float(shown.group()) if shown else None) == expected, (name, column)
