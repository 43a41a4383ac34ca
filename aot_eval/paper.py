"""The paper's numbers (lmms-eval, greedy, batch 1), as the eval protocols of
:mod:`aot.backbones` declare them (:attr:`aot.backbones.EvalProtocol.paper`).

Keys: eval protocol name -> row (``"full"`` or the retention as a string with two decimals) ->
benchmark -> score. For a protocol the paper did not evaluate :func:`paper_value` is ``None`` and
the tables leave the paper's column empty.
"""

BENCHMARKS = ("mvbench", "egoschema", "longvideobench", "videomme")
LABELS = {"mvbench": "MVBench", "egoschema": "EgoSchema", "longvideobench": "LongVideoBench",
          "videomme": "VideoMME"}


def paper_table() -> dict:
    """eval protocol name -> its paper rows (:attr:`aot.backbones.EvalProtocol.paper`), for the
    protocols the paper evaluated."""
    from aot.backbones import eval_protocols

    return {p.name: p.paper for p in eval_protocols() if p.paper}


def paper_ablation(protocol: str, row: str, ablation: str):
    """The paper's ablation average of ``ablation`` at retention row ``row``, else ``None``."""
    from aot.backbones import get_protocol

    facts = get_protocol(protocol)
    return facts.paper_ablations.get(ablation) if row == facts.paper_ablation_row else None


def paper_value(backbone: str, row: str, benchmark: str):
    """The paper's score or ``None`` when the paper has no such cell."""
    return paper_table().get(backbone, {}).get(row, {}).get(benchmark)


def retention_key(value) -> str:
    """``0.1`` -> ``"0.10"`` (the paper rows' keys)."""
    return f"{float(value):.2f}"
