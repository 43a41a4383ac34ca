"""The paper's numbers (aot-method.md section 8): lmms-eval, greedy, batch 1.

Keys: backbone (``ov`` = LLaVA-OneVision-7B at 32 frames, ``video`` = LLaVA-Video-7B-Qwen2 at 64
frames) -> row (``"full"`` or the retention as a string with two decimals) -> benchmark -> score.
The paper evaluated no other backbone: for ``qwen2_5_vl``, ``qwen3_vl`` and ``llava_hf`` (the
same OneVision weights in transformers, run with the stock ``llava_hf`` protocol, which is not the
paper's) :func:`paper_value` is ``None`` and the tables leave the paper's column empty.
"""

BENCHMARKS = ("mvbench", "egoschema", "longvideobench", "videomme")
LABELS = {"mvbench": "MVBench", "egoschema": "EgoSchema", "longvideobench": "LongVideoBench",
          "videomme": "VideoMME"}


def _row(mvb, ego, lvb, vmme, avg):
    return {"mvbench": mvb, "egoschema": ego, "longvideobench": lvb, "videomme": vmme, "avg": avg}


PAPER = {
    "ov": {
        "full": _row(58.3, 60.4, 56.4, 58.6, 58.4),
        "0.25": _row(58.7, 61.3, 56.3, 57.5, 58.5),
        "0.20": _row(58.1, 61.3, 56.2, 57.2, 58.2),
        "0.15": _row(57.8, 61.3, 55.2, 56.6, 57.7),
        "0.10": _row(57.0, 60.6, 54.2, 56.1, 57.0),
    },
    "video": {
        "full": _row(60.4, 57.2, 58.9, 64.3, 60.2),
        "0.25": _row(58.8, 55.4, 56.2, 62.4, 58.2),
        "0.15": _row(57.8, 55.2, 55.0, 62.0, 57.5),
    },
}

# Table 3 of the paper: averages of the four benchmarks, LLaVA-OV at 10% retention.
PAPER_ABLATIONS_OV_10 = {
    "no-local": 56.6, "no-global": 55.4, "prune-only": 56.4, "no-intra-ot": 56.3,
    "no-inter": 56.4, "cosine-merge": 52.4, "random-anchors": 55.1,
}


def paper_value(backbone: str, row: str, benchmark: str):
    """The paper's score or ``None`` when the paper has no such cell."""
    return PAPER.get(backbone, {}).get(row, {}).get(benchmark)


def retention_key(value) -> str:
    """``0.1`` -> ``"0.10"`` (the paper rows' keys)."""
    return f"{float(value):.2f}"
