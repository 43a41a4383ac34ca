"""The one video path: pixels -> encoder (with attention capture) -> any reducer -> packed sequence.

The model (``llava``), the efficiency benchmark (``aot_bench``) and the demo (``playground``) all
produce the LLM's visual sequence with :func:`visual_sequence` (or its three steps
:func:`encode`, :func:`reduce`, :func:`pack` when they reuse an encoding), so their token counts
and embeddings cannot disagree. What differs between backbones lives in an *adapter*
(:class:`VideoAdapter`); timing and inspection go through the ``on_stage`` callback and the
returned :class:`VisualSequence`, never through a copy of the path.

Stages reported to ``on_stage`` (in this order): ``"vision"`` (the tower, with attention capture
when a reducer runs), ``"projector"``, ``"reduce"`` (reducer + pooling + newline packing; for the
unreduced model: native pooling + newline packing).

Pure torch: no model library is imported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .backbones import Backbone
from .config import AOTConfig
from .result import ReducedVideo

#: Called with a stage name when that stage has finished (``"vision"``, ``"projector"``,
#: ``"reduce"``); e.g. a clock's ``lap``.
StageHook = Callable[[str], object]

def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Wall-clock stage timer: ``clock.lap("vision")`` records the seconds since the last lap
    (after synchronising the device), so the stages add up to the total."""

    def __init__(self, device: torch.device):
        self.device = device
        synchronize(device)
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str) -> float:
        """Close stage ``name`` (accumulating if it repeats); returns its seconds."""
        synchronize(self.device)
        now = time.perf_counter()
        elapsed = now - self.last
        self.stages[name] = self.stages.get(name, 0.0) + elapsed
        self.last = now
        return elapsed

    @property
    def total(self) -> float:
        return self.last - self.start


#: ``Reduction.budget`` value that gives a budgeted reducer AOT's own count for the same video.
MATCH_AOT = "aot"

#: Vision layer index meaning "the tower's last used layer", the one whose output is the features
#: (25 of LLaVA's 26 SigLIP layers): where a reducer's ``last_attention`` input is captured.
#: Adapters resolve it (and any negative index) against their own depth, :func:`resolve_layers`.
LAST_LAYER = -1


#: The probe attention (F, T) and pooled output (F, C) of a SigLIP attention-pooling head
#: (:mod:`aot.pooling_head`): a LLaVA model with a head attached gives them, the Qwen adapters
#: give FastVID's stand-ins.
HEAD_INPUTS = ("head_attention", "head_features")

#: Reducer inputs an adapter computes beside the received attention, when the reduction declares
#: them (``Reduction.extra_inputs``): :data:`HEAD_INPUTS` and ``last_keys``, the key states of the
#: tower's last used layer (:data:`LAST_LAYER`) averaged over heads, (F, T, head_dim) in the
#: model's dtype, one row per token the reducer sees (VisionZip's contextual merge compares them).
EXTRA_INPUTS = HEAD_INPUTS + ("last_keys",)


def resolve_layers(layers: tuple[int, ...], depth: int) -> dict[int, int]:
    """Requested vision layer -> the block index it names in a tower of ``depth`` used blocks
    (negative indices count from the end, as in Python: -1 is the last used block).

    A layer outside the tower raises a ValueError naming it and the tower's range."""
    plan = {}
    for layer in layers:
        actual = layer + depth if layer < 0 else layer
        if not 0 <= actual < depth:
            raise ValueError(f"vision layer {layer}: the tower uses layers 0..{depth - 1} "
                             f"(negative indices count from its last layer)")
        plan[layer] = actual
    return plan


@dataclass(frozen=True)
class Reduction:
    """Which reducer runs on a video, with which settings (validated once, here).

    config: the :class:`AOTConfig` (AOT's knobs, the backbone's pooling, ``exact_retention``).
    reducer: a name of :data:`aot.reducers.REDUCERS` (``"aot"``, ``"uniform"``, ...).
    options: the reducer's own knobs (``visionzip`` / ``dycoke`` option fields) as a dict.
    budget: None (``config.exact_retention`` or, for AOT, its released thresholds decide the
        count), an int (exactly that many tokens), or ``"aot"`` (AOT's count under ``config``
        for the same video: compare reducers at AOT's budget without exact mode).
    """

    config: AOTConfig
    reducer: str = "aot"
    options: dict = field(default_factory=dict)
    budget: int | str | None = None

    def __post_init__(self) -> None:
        from .reducers import check_budget, reducer_info

        if not isinstance(self.config, AOTConfig):
            raise TypeError(f"Reduction.config must be an aot.AOTConfig, got "
                            f"{type(self.config).__name__}")
        info = reducer_info(self.reducer)
        if self.options and info.options is None:
            raise TypeError(f"reducer {self.reducer!r} takes no options (got "
                            f"{sorted(self.options)}); its knobs are AOTConfig fields")
        if self.budget == MATCH_AOT:
            return
        if self.budget is not None and (isinstance(self.budget, bool)
                                        or not isinstance(self.budget, int) or self.budget < 1):
            raise ValueError(f"Reduction.budget={self.budget!r}: expected None, a positive "
                             f"token count or {MATCH_AOT!r}")
        check_budget(self.reducer, self.config, self.budget)

    @property
    def layers(self) -> tuple[int, ...]:
        """Vision layers whose received attention the reducer reads (sorted, unique; AOT's
        shallow and deep layers, plus :data:`LAST_LAYER` for a reducer reading
        ``last_attention``)."""
        from .reducers import reducer_info

        layers = {self.config.shallow_layer, self.config.deep_layer}
        if "last_attention" in reducer_info(self.reducer).inputs:
            layers.add(LAST_LAYER)
        return tuple(sorted(layers))

    @property
    def extra_inputs(self) -> tuple[str, ...]:
        """The :data:`EXTRA_INPUTS` the reducer reads (captured by ``adapter.encode(...,
        extra_inputs=...)``, passed to the reducer as keywords)."""
        from .reducers import reducer_info

        return tuple(name for name in reducer_info(self.reducer).inputs if name in EXTRA_INPUTS)


@dataclass
class Encoded:
    """One video after the vision tower and the projector.

    features: (F, T, D) projected patch features in the model's dtype, T = rows * cols.
    grid: the patch grid of a frame (the tokens the reducer sees): ``(rows, cols)``, or the side
        of a square one (LLaVA's 27). A native-resolution backbone gives each video its own.
    attention: vision layer -> (F, T) float32 attention each patch receives at that layer, for
        the layers the reduction reads (empty for the unreduced model), keyed as requested
        (:data:`LAST_LAYER` stays -1).
    extra: name of :data:`EXTRA_INPUTS` -> its tensor, for the ones the reduction reads.
    """

    features: torch.Tensor
    grid: int | tuple[int, int]
    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]


@dataclass
class VisualSequence:
    """What the LLM reads for one video, and how it was made.

    tokens: (L, D) the visual sequence in the model's dtype, newlines included.
    newline_tokens: how many of the L are newline tokens.
    result: the reducer's :class:`ReducedVideo` (None for the unreduced model).
    encoded: the encoder output the sequence was made from.
    """

    tokens: torch.Tensor
    newline_tokens: int
    result: ReducedVideo | None
    encoded: Encoded

    @property
    def visual_tokens(self) -> int:
        """Visual tokens without newlines (the retention numerator)."""
        return self.tokens.shape[0] - self.newline_tokens


class VideoAdapter(Protocol):
    """What a backbone implements to join the path (see docs/architecture.md).

    backbone: the declared :class:`aot.backbones.Backbone` facts.
    check(reduction): raise a ValueError when the reduction cannot run on this model (pooling
        or layers that do not match), before any work.
    encode(pixels, layers, on_stage): (F, 3, S, S) pixels -> :class:`Encoded`; capture received
        attention at ``layers`` (empty: capture nothing); report ``"vision"`` then
        ``"projector"`` to ``on_stage``. An adapter that can give :data:`EXTRA_INPUTS` also takes
        the keyword ``extra_inputs=`` (names) and fills ``Encoded.extra``; it is only passed
        when the reduction reads some, and ``check`` refuses a reduction it cannot serve.
    pool(encoded): the unreduced model's native pooling, (F, P, D) in the model's dtype.
    pack_pooled(pooled): unreduced (F, P, D) -> (L, D) sequence with the backbone's newlines.
    pack_result(result, dtype): a reducer's :class:`ReducedVideo` -> (L, D) sequence in ``dtype``
        with the backbone's newlines.
    """

    backbone: Backbone

    def check(self, reduction: Reduction) -> None: ...

    def encode(self, pixels: torch.Tensor, layers: tuple[int, ...],
               on_stage: StageHook) -> Encoded: ...

    def pool(self, encoded: Encoded) -> torch.Tensor: ...

    def pack_pooled(self, pooled: torch.Tensor) -> torch.Tensor: ...

    def pack_result(self, result: ReducedVideo, dtype: torch.dtype) -> torch.Tensor: ...


def _no_hook(stage: str) -> None:
    return None


def encode(adapter: VideoAdapter, pixels: torch.Tensor, reduction: Reduction | None,
           on_stage: StageHook | None = None) -> Encoded:
    """Step 1: the tower and projector, capturing what ``reduction`` reads (nothing if None)."""
    if reduction is not None:
        adapter.check(reduction)
    layers = () if reduction is None else reduction.layers
    extra = () if reduction is None else reduction.extra_inputs
    if extra:
        return adapter.encode(pixels, layers, on_stage or _no_hook, extra_inputs=extra)
    return adapter.encode(pixels, layers, on_stage or _no_hook)


def keyword_inputs(encoded: Encoded, reducer: str) -> dict[str, torch.Tensor]:
    """The inputs reducer ``reducer`` reads as keyword arguments (``last_attention``: (F, T)
    float32 attention received at the tower's last used layer; :data:`EXTRA_INPUTS`, e.g.
    ``last_keys``)."""
    from .reducers import reducer_info

    declared = reducer_info(reducer).inputs
    extra = {}
    for name in declared:
        if name in EXTRA_INPUTS:
            if name not in encoded.extra:
                hint = ("on a model that gives it (a SigLIP pooling head attached, "
                        "aot_integrations.pooling_head.attach_pooling_head)"
                        if name in HEAD_INPUTS else
                        "(aot.video_path.encode(adapter, pixels, reduction) captures it)")
                raise ValueError(f"reducer {reducer!r} reads {name!r}, which this encoding lacks "
                                 f"(it has {sorted(encoded.extra)}): encode with this reduction "
                                 f"{hint}")
            extra[name] = encoded.extra[name]
    if "last_attention" not in declared:
        return extra
    if LAST_LAYER not in encoded.attention:
        raise ValueError(f"reducer {reducer!r} reads the attention received at the tower's last "
                         f"layer, which this encoding lacks (it has layers "
                         f"{sorted(encoded.attention)}): encode with this reduction, "
                         "aot.video_path.encode(adapter, pixels, reduction)")
    return {"last_attention": encoded.attention[LAST_LAYER], **extra}


def reducer_inputs(encoded: Encoded, config: AOTConfig):
    """What every reducer reads from an encoding under ``config``: (F, T, D) features in float32
    (the OT is not stable in half precision; float64 stays float64) and the (F, T) attention
    received at the config's shallow and deep layers."""
    missing = sorted({config.shallow_layer, config.deep_layer} - set(encoded.attention))
    if missing:
        raise ValueError(f"the encoding holds no received attention at vision layer(s) {missing} "
                         f"(it has {sorted(encoded.attention)}): encode with this reduction, "
                         "aot.video_path.encode(adapter, pixels, reduction)")
    features = encoded.features
    if features.dtype not in (torch.float32, torch.float64):
        features = features.float()
    return features, encoded.attention[config.shallow_layer], encoded.attention[config.deep_layer]


@torch.no_grad()
def aot_count(encoded: Encoded, config: AOTConfig) -> int:
    """AOT's token count under ``config`` for this encoding: the budget ``"aot"`` gives a
    budgeted reducer (runs AOT once)."""
    from .reducers import matched_budget

    return matched_budget(*reducer_inputs(encoded, config), config, grid=encoded.grid)


@torch.no_grad()  # reducers are training-free (top-k, quantiles, OT plans): no gradient
def reduce(encoded: Encoded, reduction: Reduction) -> ReducedVideo:
    """Step 2: the registered reducer on the encoded video (inputs: :func:`reducer_inputs`)."""
    from .reducers import get_reducer

    config, budget = reduction.config, reduction.budget
    if budget == MATCH_AOT:
        budget = aot_count(encoded, config)
    return get_reducer(reduction.reducer, **reduction.options)(
        *reducer_inputs(encoded, config), config, budget=budget, grid=encoded.grid,
        **keyword_inputs(encoded, reduction.reducer))


def pack(adapter: VideoAdapter, encoded: Encoded, result: ReducedVideo | None) -> VisualSequence:
    """Step 3: the sequence the LLM reads: the reducer's tokens (or, with ``result`` None, the
    natively pooled features) with the backbone's newline tokens, in the model's dtype."""
    dtype = encoded.features.dtype
    if result is None:
        pooled = adapter.pool(encoded)
        tokens = adapter.pack_pooled(pooled)
        visual = pooled.shape[0] * pooled.shape[1]
    else:
        tokens = adapter.pack_result(result, dtype)
        visual = result.num_tokens
    return VisualSequence(tokens, tokens.shape[0] - visual, result, encoded)


def visual_sequence(adapter: VideoAdapter, pixels: torch.Tensor, reduction: Reduction | None,
                    on_stage: StageHook | None = None) -> VisualSequence:
    """The whole path for one video: (F, 3, S, S) pixels -> :class:`VisualSequence`.

    ``reduction`` None runs the unreduced model (native pooling), bit-identical to it.
    """
    on_stage = on_stage or _no_hook
    encoded = encode(adapter, pixels, reduction, on_stage)
    result = None if reduction is None else reduce(encoded, reduction)
    sequence = pack(adapter, encoded, result)
    on_stage("reduce")
    return sequence
