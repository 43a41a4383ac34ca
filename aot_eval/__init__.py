"""Evaluation of AOT with lmms-eval: model plugin, prompt identity, retention records, summary.

* ``python -m aot_eval --model llava_onevision_aot --model_args pretrained=...,retention=0.1 ...``
  runs lmms-eval (same flags) with the stock models' prompts and writes the measured retention
  beside lmms-eval's results (:mod:`aot_eval.cli`).
* ``python -m aot_eval.summarise RESULTS_DIR ...`` writes the paper's tables with our numbers.

Importing this package does not import lmms-eval; the plugin modules do.
"""

from .model_args import ReducerSpec, parse_reducer
from .prompts import prompt_ids

__all__ = ["prompt_ids", "ReducerSpec", "parse_reducer"]
