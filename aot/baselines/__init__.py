"""Other reducers beside AOT, under AOT's call signature, at exactly matched token budgets.

Every reducer is called as::

    result = reducer(features, shallow_attention, deep_attention, config, budget=None,
                     frame_features=None)

with features (F, T, D) projected patch features on a square grid, attention (F, T) received at
AOT's shallow and deep layers, an :class:`aot.AOTConfig` (``pooling`` picks the backbone's pooled
grid, ``exact_retention`` the budget), and returns an :class:`aot.AOTResult` whose ``tokens`` are
what the LLM receives (post-pooling tokens, newlines excluded).

Budget: ``budget=<int>`` wins; else ``config.exact_retention`` gives
``aot.exact_budget(r, frames, pooled_per_frame)`` tokens, exactly the count of AOT's exact mode
for the same video. The baselines need one of the two; ``aot`` without either runs its released
thresholds.

Registry names: ``aot``, ``uniform``, ``visionzip``, ``dycoke``, ``random``, and ``aot:<ablation>``
for every key of :data:`aot.config.ABLATIONS` (e.g. ``aot:no-local``). See docs/reducers/.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..config import ABLATIONS, AOTConfig
from ..reduce import AOTResult, reduce_video
from .aot_variants import ablation_config, config_for_budget, reduce_aot, reduce_random
from .common import resolve_budget, retention_for_budget
from .dycoke import DyCokeConfig, reduce_dycoke
from .uniform import pooling_matrix, reduce_uniform
from .visionzip import VisionZipConfig, reduce_visionzip

Reducer = Callable[..., AOTResult]

REDUCERS: dict[str, Reducer] = {
    "aot": reduce_aot,
    "uniform": reduce_uniform,
    "visionzip": reduce_visionzip,
    "dycoke": reduce_dycoke,
    "random": reduce_random,
}

# Reducers with their own knobs: name -> options dataclass passed as ``options=``.
OPTIONS: dict[str, type] = {"visionzip": VisionZipConfig, "dycoke": DyCokeConfig}

ABLATION_PREFIX = "aot:"


def reducer_names() -> list[str]:
    """Every name :func:`get_reducer` accepts: the reducers, then ``aot:<ablation>``."""
    return list(REDUCERS) + [ABLATION_PREFIX + name for name in ABLATIONS]


def get_reducer(name: str, **options) -> Reducer:
    """The reducer called ``name``, with its own knobs bound.

    Args:
        name: a key of :data:`REDUCERS` or ``"aot:<ablation>"`` (a key of
            :data:`aot.config.ABLATIONS`).
        **options: knobs of reducers that have them (``visionzip``: :class:`VisionZipConfig`
            fields, ``dycoke``: :class:`DyCokeConfig` fields). AOT's knobs live in the
            :class:`aot.AOTConfig` passed at call time.
    Returns:
        a callable ``(features, shallow_attention, deep_attention, config=None, *, budget=None,
        frame_features=None) -> AOTResult``.
    """
    if not isinstance(name, str):
        raise TypeError(f"reducer name must be a string, got {type(name).__name__}")
    if name.startswith(ABLATION_PREFIX):
        ablation = name[len(ABLATION_PREFIX):]
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown AOT ablation {ablation!r} in reducer {name!r}; expected "
                             f"one of {[ABLATION_PREFIX + a for a in ABLATIONS]}")
        _no_options(name, options)
        return functools.partial(reduce_aot, ablation=ablation)
    if name not in REDUCERS:
        raise ValueError(f"unknown reducer {name!r}; expected one of {reducer_names()}")
    if name in OPTIONS:
        return functools.partial(REDUCERS[name], options=OPTIONS[name](**options))
    _no_options(name, options)
    return REDUCERS[name]


def _no_options(name: str, options: dict) -> None:
    if options:
        raise TypeError(f"reducer {name!r} takes no options (got {sorted(options)}); its knobs "
                        f"are fields of the AOTConfig passed at call time")


def matched_budget(features: torch.Tensor, shallow_attention: torch.Tensor,
                   deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                   frame_features: torch.Tensor | None = None) -> int:
    """AOT's token count for this video under ``config`` (exact or released thresholds), to pass
    as ``budget=`` to another reducer. Runs AOT once."""
    return reduce_video(features, shallow_attention, deep_attention, config,
                        frame_features=frame_features).num_tokens


__all__ = [
    "OPTIONS",
    "REDUCERS",
    "DyCokeConfig",
    "Reducer",
    "VisionZipConfig",
    "ablation_config",
    "config_for_budget",
    "get_reducer",
    "matched_budget",
    "pooling_matrix",
    "reduce_aot",
    "reduce_dycoke",
    "reduce_random",
    "reduce_uniform",
    "reduce_visionzip",
    "reducer_names",
    "resolve_budget",
    "retention_for_budget",
]
