"""Efficiency benchmark for AOT on LLaVA-OneVision / LLaVA-Video (``python -m aot_bench.efficiency``).

Modules: :mod:`.configs` (7B and reduced model shapes), :mod:`.flops` (analytic and counted
prefill FLOPs), :mod:`.models` (random-weight or checkpoint models), :mod:`.timing` (timers,
statistics, peak memory), :mod:`.pipeline` (one instrumented time-to-first-token pass),
:mod:`.report` (JSON, markdown, plots) and :mod:`.efficiency` (the command line).
"""
