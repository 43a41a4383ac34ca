"""The registry of every reducer, AOT included, all under AOT's call signature, at exactly
matched token budgets.

Every reducer is called as::

    result = reducer(features, shallow_attention, deep_attention, config, budget=None,
                     frame_features=None, grid=None)

with features (F, T, D) projected patch features on a ``grid`` of (rows, cols) (None: the square
grid of T tokens; native-resolution backbones pass e.g. (12, 20)), attention (F, T) received at
AOT's shallow and deep layers, an :class:`aot.AOTConfig` (``pooling`` picks the backbone's pooled
grid, ``exact_retention`` the budget), and returns an :class:`aot.ReducedVideo` whose ``tokens`` are
what the LLM receives (post-pooling tokens, newlines excluded).

Budget: ``budget=<int>`` wins; else ``config.exact_retention`` gives
``aot.exact_budget(r, frames, pooled_per_frame)`` tokens, exactly the count of AOT's exact mode
for the same video. The baselines need one of the two; ``aot`` without either runs its released
thresholds.

Registry names: ``aot``, ``uniform``, ``visionzip``, ``visionzip-release``, ``dycoke``, ``random``, ``vidcom2``,
``dycoke-ttm``, ``holitom``, ``flashvid``, and ``aot:<ablation>`` for every key of
:data:`aot.config.ABLATIONS` (e.g. ``aot:no-local``). See docs/reducers/.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import ABLATIONS, AOTConfig
from ..reduce import reduce_video
from ..result import ReducedVideo
from .aot_variants import (ablation_config, aot_frame_counts, config_for_budget, reduce_aot,
                           reduce_random)
from .common import resolve_budget, retention_for_budget, spread_frame_counts
from .dycoke import DyCokeConfig, dycoke_frame_counts, reduce_dycoke
from .dycoke_ttm import DyCokeTTMConfig, frame_quotas, reduce_dycoke_ttm
from .flashvid import FlashVIDConfig, reduce_flashvid
from .holitom import HoliTomConfig, reduce_holitom
from .fastvid import FastVIDConfig, reduce_fastvid
from .uniform import pooling_matrix, reduce_uniform
from .vidcom2 import VidCom2Config, reduce_vidcom2
from .visionzip import VisionZipConfig, reduce_visionzip
from .visionzip_release import VisionZipReleaseConfig, reduce_visionzip_release

Reducer = Callable[..., ReducedVideo]


@dataclass(frozen=True)
class ReducerInfo:
    """One reducer, as the rest of the project needs to know it (its one registry entry).

    name: the registry name (``--reducer``, ``reducer=`` of the eval plugin, ``Reduction``).
    function: the reducer, ``(features, shallow, deep, config, *, budget=None,
        frame_features=None, grid=None[, options=...]) -> ReducedVideo``.
    needs_budget: True when the reducer has no count of its own: it must be given
        ``config.exact_retention`` or ``budget=`` (AOT and its ablations run their released
        thresholds without one).
    options: the dataclass of the reducer's own knobs (``get_reducer(name, **fields)``), or None
        when all its knobs are :class:`AOTConfig` fields.
    inputs: what it reads besides the features: ``"shallow_attention"``, ``"deep_attention"``
        (received attention at ``config.shallow_layer`` / ``deep_layer``), ``"frame_features"``,
        ``"last_attention"`` (received attention at the tower's last used layer, the one whose
        output is the features; passed as the keyword ``last_attention=``, and captured by every
        adapter when declared), ``"head_attention"`` / ``"head_features"`` (the probe attention
        (F, T) and pooled output (F, C) of a SigLIP attention-pooling head,
        :mod:`aot.pooling_head`; keywords, captured by adapters with a head attached),
        ``"last_keys"`` (F, T, head_dim) (the key states of the tower's last used layer averaged
        over heads, in the model's dtype; keyword ``last_keys=``, captured by every adapter when
        declared), with the reducer's default options (``visionzip`` with ``attention="shallow"`` reads the
        shallow one instead; ``random`` reads the deep one to rank tokens in exact mode).
    summary: one line for ``--help`` texts and error messages.
    paper: the method's reference (title, venue, arXiv id), "" for the simple baselines.
    ablation: for ``aot:<ablation>`` names, the key of :data:`aot.config.ABLATIONS`.
    frame_counts: the tokens each frame emits in exact mode, when that is a pure function
        ``(config, frames, pooled_per_frame) -> list of F ints`` of the settings and the
        video's shape (with the reducer's default options; a token counts for the frame whose
        slot it keeps); an engine that lays out each frame's placeholders before the encoder
        runs (Qwen3-VL in vLLM, :func:`aot.serving.frame_token_counts`) can serve only these.
        None: the total is fixed but its split over the frames follows the content.
    """

    name: str
    function: Reducer
    needs_budget: bool
    options: type | None = None
    inputs: tuple[str, ...] = ()
    summary: str = ""
    paper: str = ""
    ablation: str | None = None
    frame_counts: Callable[[AOTConfig, int, int], list[int]] | None = None


ABLATION_PREFIX = "aot:"
#: What a reducer may read besides the features (``ReducerInfo.inputs``).
INPUTS = ("shallow_attention", "deep_attention", "frame_features", "last_attention",
          "head_attention", "head_features", "last_keys")
_ATTENTION = INPUTS[:2]
_AOT_PAPER = ("Li, Jiang, Zhang, Sebe: Token Reduction via Local and Global Contexts "
              "Optimization for Efficient Video Large Language Models, CVPR 2026, arXiv 2603.01400")

_BASE = (
    ReducerInfo("aot", reduce_aot, False, inputs=_ATTENTION + ("frame_features",),
                summary="AOT (anchors + intra/inter-frame OT)", paper=_AOT_PAPER,
                frame_counts=aot_frame_counts),
    ReducerInfo("uniform", reduce_uniform, True,
                summary="uniform pooling of each frame to the budget",
                frame_counts=spread_frame_counts),
    ReducerInfo("visionzip", reduce_visionzip, True, VisionZipConfig, inputs=("deep_attention",),
                summary="VisionZip-style dominant + contextual tokens per frame (ours)",
                paper="Yang et al.: VisionZip, CVPR 2025, arXiv 2412.04467",
                frame_counts=spread_frame_counts),
    ReducerInfo("dycoke", reduce_dycoke, True, DyCokeConfig,
                summary="DyCoke-style temporal merge of redundant tokens (ours; the release: "
                        "dycoke-ttm)",
                paper="Tao et al.: DyCoke, CVPR 2025, arXiv 2411.15024",
                frame_counts=dycoke_frame_counts),
    ReducerInfo("random", reduce_random, False, inputs=("deep_attention", "frame_features"),
                summary="AOT with random anchors (ablation)", paper=_AOT_PAPER,
                frame_counts=functools.partial(aot_frame_counts, ablation="random-anchors")),
    ReducerInfo("vidcom2", reduce_vidcom2, True, VidCom2Config,
                summary="VidCom2: per frame, the tokens least like the video and frame means, "
                        "frame-adaptive counts",
                paper="Liu et al.: Video Compression Commander (VidCom2), EMNLP 2025, "
                      "arXiv 2505.14454"),
    ReducerInfo("dycoke-ttm", reduce_dycoke_ttm, True, DyCokeTTMConfig,
                summary="DyCoke's released token temporal merging: pairs of frames, the odd "
                        "one keeps the tokens least like the even one",
                paper="Tao et al.: DyCoke, CVPR 2025, arXiv 2411.15024",
                frame_counts=frame_quotas),
    ReducerInfo("holitom", reduce_holitom, True, HoliTomConfig, inputs=("last_attention",),
                summary="HoliTom: static tokens of temporal windows averaged and clustered, "
                        "attention top-k of the rest per frame",
                paper="Shao et al.: HoliTom: Holistic Token Merging for Fast Video Large "
                      "Language Models, NeurIPS 2025, arXiv 2505.21334"),
    ReducerInfo("flashvid", reduce_flashvid, True, FlashVIDConfig, inputs=("last_attention",),
                summary="FlashVID vision side: segments, attention-diversity picks, tree merging "
                        "of the rest, DPC-kNN clusters",
                paper="Fan et al.: FlashVID, ICLR 2026, arXiv 2602.08024"),
    ReducerInfo("fastvid", reduce_fastvid, True, FastVIDConfig,
                inputs=("head_attention", "head_features"),
                summary="FastVID: dynamic segments, salient tokens by the SigLIP pooling head's "
                        "attention, density-peak merging",
                paper="Shen et al.: FastVID, NeurIPS 2025, arXiv 2503.11187"),
    ReducerInfo("visionzip-release", reduce_visionzip_release, True, VisionZipReleaseConfig,
                inputs=("last_attention", "last_keys"),
                summary="VisionZip as papers run it on LLaVA-OV (HoliTom's port): last-layer "
                        "attention top-k + key-similarity contextual tokens per frame",
                paper="Yang et al.: VisionZip, CVPR 2025, arXiv 2412.04467",
                frame_counts=spread_frame_counts),
)

#: name -> ReducerInfo of every reducer :func:`get_reducer` accepts, AOT and ``aot:<ablation>``
#: included. Adding a reducer: one module beside this file and one entry in ``_BASE``.
REDUCERS: dict[str, ReducerInfo] = {info.name: info for info in _BASE}
REDUCERS.update({
    ABLATION_PREFIX + ablation: ReducerInfo(
        ABLATION_PREFIX + ablation, functools.partial(reduce_aot, ablation=ablation), False,
        inputs=_ATTENTION + ("frame_features",), summary=f"AOT ablation {ablation}",
        paper=_AOT_PAPER, ablation=ablation,
        frame_counts=functools.partial(aot_frame_counts, ablation=ablation))
    for ablation in ABLATIONS})


def register_reducer(info: ReducerInfo) -> ReducerInfo:
    """Add ``info`` to :data:`REDUCERS` (a reducer written outside this package); returns it.

    After this the reducer is a name like any other: :func:`get_reducer`, ``Reduction(config,
    name)`` on every model adapter, ``reducer=<name>`` of the eval plugin. A name already taken
    raises a ValueError (unregister with ``REDUCERS.pop(name)``)."""
    if not isinstance(info, ReducerInfo):
        raise TypeError(f"register_reducer takes a ReducerInfo, got {type(info).__name__}")
    if not info.name or not isinstance(info.name, str) or info.name.startswith(ABLATION_PREFIX):
        raise ValueError(f"reducer name {info.name!r}: expected a non-empty string not starting "
                         f"with {ABLATION_PREFIX!r}")
    if info.name in REDUCERS:
        raise ValueError(f"reducer {info.name!r} is already registered "
                         f"({REDUCERS[info.name].summary or REDUCERS[info.name].function})")
    if not isinstance(info.needs_budget, bool):
        raise TypeError(f"reducer {info.name!r}: needs_budget={info.needs_budget!r}; expected "
                        f"True or False")
    if not callable(info.function):
        raise TypeError(f"reducer {info.name!r}: function={info.function!r} is not callable")
    unknown = sorted(set(info.inputs) - set(INPUTS))
    if unknown:
        raise ValueError(f"reducer {info.name!r}: inputs {unknown} unknown; expected names of "
                         f"{INPUTS}")
    REDUCERS[info.name] = info
    return info


def reducer_names() -> list[str]:
    """Every name :func:`get_reducer` accepts: the reducers, then ``aot:<ablation>``."""
    return list(REDUCERS)


def reducer_info(name: str) -> ReducerInfo:
    """The :class:`ReducerInfo` of ``name``; an unknown name raises a ValueError listing the
    known ones."""
    if not isinstance(name, str):
        raise TypeError(f"reducer name must be a string, got {type(name).__name__}")
    if name not in REDUCERS:
        if name.startswith(ABLATION_PREFIX):
            raise ValueError(f"unknown AOT ablation {name[len(ABLATION_PREFIX):]!r} in reducer "
                             f"{name!r}; expected one of "
                             f"{[n for n in REDUCERS if n.startswith(ABLATION_PREFIX)]}")
        raise ValueError(f"unknown reducer {name!r}; expected one of {reducer_names()}")
    return REDUCERS[name]


def check_budget(name: str, config: AOTConfig | None, budget=None) -> None:
    """Raise a ValueError when reducer ``name`` needs a token budget and neither
    ``config.exact_retention`` nor ``budget`` gives one."""
    info = reducer_info(name)
    if info.needs_budget and budget is None and (config is None or
                                                 config.exact_retention is None):
        raise ValueError(f"reducer={name!r} needs a token budget: give an AOTConfig with "
                         "exact_retention set (e.g. aot.settings_for(backbone, r)) or a "
                         "budget")


def get_reducer(name: str, **options) -> Reducer:
    """The reducer called ``name``, with its own knobs bound.

    Args:
        name: a name of :data:`REDUCERS` (``aot``, ``uniform``, ``visionzip``, ``dycoke``,
            ``random`` or ``aot:<ablation>``, a key of :data:`aot.config.ABLATIONS`).
        **options: knobs of reducers that have them (``visionzip``: :class:`VisionZipConfig`
            fields, ``dycoke``: :class:`DyCokeConfig` fields). AOT's knobs live in the
            :class:`aot.AOTConfig` passed at call time.
    Returns:
        a callable ``(features, shallow_attention, deep_attention, config=None, *, budget=None,
        frame_features=None, grid=None) -> ReducedVideo``.
    """
    info = reducer_info(name)
    if info.options is not None:
        return functools.partial(info.function, options=make_options(info, options))
    _no_options(name, options)
    return info.function


def make_options(info: ReducerInfo, options: dict):
    """``info.options(**options)``; an unknown field raises a TypeError naming the reducer's
    fields (not the dataclass's ``__init__``)."""
    fields = [item.name for item in dataclasses.fields(info.options)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise TypeError(f"reducer {info.name!r} has no option(s) {unknown}; its options: "
                        f"{fields}")
    return info.options(**options)


def _no_options(name: str, options: dict) -> None:
    if options:
        raise TypeError(f"reducer {name!r} takes no options (got {sorted(options)}); its knobs "
                        f"are fields of the AOTConfig passed at call time")


def matched_budget(features: torch.Tensor, shallow_attention: torch.Tensor,
                   deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                   frame_features: torch.Tensor | None = None, grid=None) -> int:
    """AOT's token count for this video under ``config`` (exact or released thresholds), to pass
    as ``budget=`` to another reducer. Runs AOT once."""
    return reduce_video(features, shallow_attention, deep_attention, config,
                        frame_features=frame_features, grid=grid).num_tokens


__all__ = [
    "INPUTS",
    "REDUCERS",
    "ReducerInfo",
    "check_budget",
    "reducer_info",
    "DyCokeConfig",
    "DyCokeTTMConfig",
    "FlashVIDConfig",
    "HoliTomConfig",
    "FastVIDConfig",
    "Reducer",
    "VidCom2Config",
    "VisionZipConfig",
    "VisionZipReleaseConfig",
    "ablation_config",
    "config_for_budget",
    "get_reducer",
    "matched_budget",
    "pooling_matrix",
    "reduce_aot",
    "reduce_dycoke",
    "reduce_dycoke_ttm",
    "reduce_flashvid",
    "reduce_holitom",
    "reduce_fastvid",
    "reduce_random",
    "reduce_uniform",
    "reduce_vidcom2",
    "reduce_visionzip",
    "reduce_visionzip_release",
    "reducer_names",
    "register_reducer",
    "resolve_budget",
    "retention_for_budget",
]
