"""Published accuracies of the registry's reducers other than AOT (AOT's own are the eval
protocols' ``paper`` rows, :mod:`aot_eval.paper`): the numbers the summary table prints beside
ours and docs/reducers/README.md lists.

Every entry is as its source reports it (lmms-eval, greedy, batch 1; MVBench, EgoSchema full,
LongVideoBench val_v, VideoMME without subtitles), not re-run; each names its source. Reported
numbers come from each source's own protocol (its lmms-eval version, its vanilla run), so a
difference of a few tenths to ours is within the spread between papers. HoliTom's and FlashVID's
numbers include their stages inside the LLM (HoliTom merges at layer 18, FlashVID prunes at
layer 20), which our vision-side reducers do not run.

Keys: reducer name (:data:`aot.reducers.REDUCERS`), eval protocol name
(:func:`aot.backbones.eval_protocols`), retention row (``"0.10"``, as :func:`paper.retention_key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .paper import BENCHMARKS

#: The sources the entries cite, by tag.
SOURCES = {
    "HT": "HoliTom (Shao et al., NeurIPS 2025, arXiv 2505.21334), Table 1",
    "FV": "FlashVID (ICLR 2026, arXiv 2602.08024), main tables (its own re-runs and vanilla)",
    "ET": "EarlyTom (CVPR 2026, arXiv 2605.30010), LLaVA-OV table",
    "SC": "SimpleCluster (arXiv 2026, xiaozhang79/SimpleCluster), its re-runs",
    "AOT": "AOT (arXiv 2603.01400), Tables 1-2 (baseline rows)",
    "VC": "VidCom2 README (xuyang-liu16/VidCom2); per-benchmark values only for MVBench and "
          "VideoMME",
}


@dataclass(frozen=True)
class Reported:
    """One published row: a reducer on a backbone at a retention.

    scores: benchmark (:data:`aot_eval.paper.BENCHMARKS`) -> score in %, only the cells the
        source gives.
    avg: the source's mean of the four benchmarks (None when it gives fewer than four).
    source: a key of :data:`SOURCES`.
    note: what the row is not (another implementation, another protocol), "" when none.
    """

    reducer: str
    protocol: str
    retention: str
    scores: dict
    avg: Optional[float]
    source: str
    note: str = ""


def _row(reducer, protocol, retention, values, avg, source, note=""):
    scores = {bench: value for bench, value in zip(BENCHMARKS, values) if value is not None}
    return Reported(reducer, protocol, retention, scores, avg, source, note)


_INNER = "with its stage inside the LLM"
#: Every published row the project keeps, at 10% and 25% (the table rows it compares at).
REPORTED = (
    _row("holitom", "ov", "0.10", (57.3, 61.2, 56.3, 56.8), 57.9, "HT", _INNER + " (10%/5%)"),
    _row("holitom", "ov", "0.25", (58.4, 61.2, 56.7, 58.9), 58.8, "HT", _INNER + " (25%/12.5%)"),
    _row("flashvid", "ov", "0.10", (57.4, 60.0, 56.5, 57.8), 57.9, "FV", _INNER),
    _row("flashvid", "ov", "0.25", (58.0, 60.4, 56.8, 59.2), 58.6, "FV", _INNER),
    _row("flashvid", "video", "0.10", (59.3, 54.9, 57.7, 60.9), 58.2, "FV", _INNER),
    _row("flashvid", "qwen2_5_vl", "0.10", (None,) * 4, 58.9, "FV",
         _INNER + "; per-benchmark values not kept"),
    _row("fastvid", "ov", "0.10", (55.9, 56.5, 56.3, 57.3), 56.5, "ET",
         "FlashVID's re-run: 57.0 / 58.7 / 55.7 / 57.2"),
    _row("fastvid", "ov", "0.25", (56.5, 58.2, 56.3, 58.0), 57.3, "ET"),
    _row("fastvid", "video", "0.10", (59.3, 52.4, 56.9, 59.8), 57.1, "FV", "FlashVID's re-run"),
    _row("fastvid", "qwen2_5_vl", "0.10", (None,) * 4, 57.4, "FV",
         "FlashVID's re-run; per-benchmark values not kept"),
    _row("vidcom2", "ov", "0.25", (57.2, None, None, 58.6), None, "VC"),
    _row("visionzip-release", "ov", "0.10", (53.5, 58.0, 49.3, 53.4), 53.5, "HT",
         "HoliTom's LLaVA-OV port of VisionZip"),
    _row("visionzip-release", "ov", "0.25", (57.9, 60.3, 56.5, 58.2), 58.2, "HT",
         "HoliTom's LLaVA-OV port of VisionZip"),
    _row("visionzip-release", "video", "0.10", (57.9, 53.1, 53.9, 59.1), 56.0, "SC",
         "SimpleCluster's re-run"),
    _row("visionzip-release", "qwen2_5_vl", "0.10", (None,) * 4, 57.7, "FV",
         "FlashVID's re-run; per-benchmark values not kept"),
    _row("dycoke-ttm", "ov", "0.25", (53.1, 59.5, 49.5, 54.3), 54.1, "HT",
         "HoliTom's re-implementation of DyCoke"),
    _row("dycoke-ttm", "video", "0.25", (50.8, None, 53.0, 56.9), None, "AOT",
         "AOT's run of DyCoke"),
)

_INDEX = {(row.reducer, row.protocol, row.retention): row for row in REPORTED}


def reported(reducer: str, protocol: str, retention: str) -> Optional[Reported]:
    """The published row of ``reducer`` on eval protocol ``protocol`` at retention row
    ``retention`` (``"0.10"``), else None."""
    return _INDEX.get((reducer, protocol, retention))


def reported_value(reducer: str, protocol: str, retention: str, benchmark: str):
    """One published score (``benchmark`` of :data:`BENCHMARKS` or ``"avg"``), else None."""
    row = reported(reducer, protocol, retention)
    if row is None:
        return None
    return row.avg if benchmark == "avg" else row.scores.get(benchmark)


def cite(row: Reported) -> str:
    """``"[HT] HoliTom (...), Table 1; with its stage inside the LLM"``."""
    return f"[{row.source}] {SOURCES[row.source]}" + (f"; {row.note}" if row.note else "")
