"""The one configuration object of AOT: every knob of the method, its presets and ablations.

Symbols in the comments refer to ``docs/knobs.md`` (paper symbol <-> field) and to the
released scripts of the authors. The defaults are the released LLaVA-OneVision MVBench setting.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

POOLING_MODES = ("bilinear", "average", "none")
MERGE_MODES = ("ot", "cosine", "prune")
SINKHORN_STOPPING = ("video", "problem")

#: Range of ``intra_scale`` / ``inter_scale``. The merges compute ``s * load`` and ``s * sum``
#: in float32 (also for float64 Python scales): above about 1e38 they overflow to inf, below
#: about 1e-38 the scale is 0, and either way the merge divides 0 or inf by itself (NaN). Past
#: 1e8 (or under 1e-8) the merged value already equals its limit to float32 precision, so the
#: bounds lose nothing (docs/knobs.md, "Ranges").
SCALE_RANGE = (1e-12, 1e12)
#: Range of ``sigma`` (frames): outside it ``2 * sigma ** 2`` under/overflows in Python floats;
#: below 0.1 frames the decay is already 1 for every frame offset, above 1e6 already 0.
SIGMA_RANGE = (1e-6, 1e6)
#: Most Sinkhorn iterations: ``sinkhorn_check_every=0`` (or tolerance 0) runs all of them.
MAX_SINKHORN_ITERATIONS = 1_000_000
#: The seeds ``torch.Generator.manual_seed`` takes.
SEED_RANGE = (-2 ** 63, 2 ** 64 - 1)


def check_seed(seed, owner: str) -> None:
    """Raise a ValueError naming ``<owner>.seed`` unless ``seed`` is an integer
    ``torch.Generator.manual_seed`` takes (:data:`SEED_RANGE`), so a bad seed fails when the
    config is built, not when the reducer first draws."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not (
            SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise ValueError(f"{owner}.seed={seed!r}: expected an integer in [-2**63, 2**64 - 1] (the "
                         "seeds torch.Generator.manual_seed takes)")


@dataclass(frozen=True)
class AOTConfig:
    """Every knob of AOT. Frozen: derive variants with :meth:`replace`.

    Anchors (released ``select_anchors``; docs/knobs.md has each field's paper symbol)
        anchors_per_frame: V, anchors per frame at the patch level (729 for SigLIP-384 = no intra
            reduction).
        global_share: g, share of V given to global anchors; local anchors get
            ``floor(int(V * (1 - g)) / windows)`` per window, global anchors the rest.
        window: side of the square windows for local anchors (9 on a 27x27 grid = 3x3 windows).
        shallow_layer / deep_layer: vision layers whose received attention picks local / global
            anchors (0-based over the layers the LLaVA tower uses). Read by the model code, not by
            :func:`aot.reduce_video`, which receives the two attention vectors directly.
        local_anchors / global_anchors: ablation switches; with one off, the other gets all V.
        random_anchors: ablation; V anchors drawn uniformly per frame from ``seed``.

    Intra-frame aggregation
        intra: ablation switch; off = no anchors, no merge, every pooled token survives.
        intra_merge: ``"ot"`` (released), ``"cosine"`` (ablation: each token averaged into its
            most similar anchor, no transport plan), ``"prune"`` (ablation: anchors kept as they
            are, the other tokens dropped).
        intra_epsilon: entropic regularisation of the intra Sinkhorn.
        spatial_weight: weight of the grid distance in the intra cost (code-only term).
        intra_scale: s in ``(a + s * agg) / (1 + s * load)``.
        hard_merge_weight: blend of the hard (nearest-anchor) merge into the OT merge.

    Pooling
        pooling: ``"bilinear"`` (LLaVA-OneVision: resize to ceil(h/2)), ``"average"``
            (LLaVA-Video: 2x2 average pool, stride 2, floor(h/2)), or ``"none"`` (a backbone
            that feeds every patch to the LLM: the anchors themselves survive).

    Inter-frame aggregation
        inter: switch of the temporal phase (released: on for OV, off for LLaVA-Video).
        keep_ratio: quantile of the max transport probability below which a token of a later
            frame is kept as temporal dynamics (released 0.3 / 0.1).
        clip_length: frames per clip; ``None`` = ``ceil(frames / num_clips)`` which gives the
            released clips of 4 at 32 frames and 8 at 64 frames.
        num_clips: number of clips the ``None`` rule aims for.
        dynamic_clips: FastVID-style clips cut at the ``num_clips - 1`` lowest adjacent-frame
            similarities plus every transition below ``dynamic_threshold``.
        inter_merge: ``"ot"`` (released), ``"cosine"`` (ablation: a later frame's token is judged
            by its best cosine to the anchors and averaged into that anchor), ``"prune"``
            (ablation: the transport plan decides what is kept, the rest is dropped, anchors stay).
        temporal_epsilon / sigma / inter_scale: epsilon, temporal-decay sigma (in frames) and s of
            the inter-frame transport.

    Sinkhorn
        sinkhorn_iterations / sinkhorn_tolerance: at most this many iterations, stop when the
            mean absolute change of the row scaling is below the tolerance.
        sinkhorn_stopping: ``"video"`` (released: the intra problems of all frames of a video
            share one stop test) or ``"problem"`` (each frame stops on its own).
        log_domain: solve in the log domain (for half precision / small epsilon); changes numbers.
        sinkhorn_check_every: Sinkhorn iterations between host syncs for the early stop of the
            intra and temporal solves. ``None`` = 3 on CPU, 10 on other devices; ``0`` = never
            sync: always ``sinkhorn_iterations`` iterations (fixed shapes, CUDA-graph and
            ``torch.compile`` friendly; skips the plain-kernel underflow check, so pair it with
            ``log_domain=True`` for small epsilon). Converged problems are frozen, so the result
            does not depend on it.
        cuda_graphs: on a CUDA device, run the intra stage (all its shapes are known from the
            input's) as a CUDA graph captured once per shape and replayed (aot/graphs.py); False
            = the eager path. The same tokens either way; ignored on other devices.

    Budget
        exact_retention: ``None`` = released thresholds (retention varies per video); a value r in
            (0, 1] = exact mode, the video gets exactly ``floor(r * frames * pooled + 0.5)`` tokens
            (rule in ``aot/budget.py`` and ``docs/budget.md``).
        seed: seed of the random-anchor ablation.

    Input layout
        similarity_channels: ``None`` = every feature channel is a feature; an integer c = only
            channels ``[0, c)`` are read by the similarities (anchor costs, temporal costs, clip
            cuts, the baselines' cosines), the other channels ride along through the same
            selection and merge. Qwen3-VL: the main features, then its DeepStack levels
            (``aot_integrations.hf`` sets it to the LLM width).
    """

    anchors_per_frame: int = 126
    global_share: float = 0.5
    window: int = 9
    shallow_layer: int = 5
    deep_layer: int = 24
    local_anchors: bool = True
    global_anchors: bool = True
    random_anchors: bool = False

    intra: bool = True
    intra_merge: str = "ot"
    intra_epsilon: float = 0.1
    spatial_weight: float = 0.5
    intra_scale: float = 1.0
    hard_merge_weight: float = 0.1

    pooling: str = "bilinear"

    inter: bool = True
    keep_ratio: float = 0.3
    clip_length: Optional[int] = None
    num_clips: int = 8
    dynamic_clips: bool = False
    dynamic_threshold: float = 0.8
    temporal_epsilon: float = 0.1
    sigma: float = 1.5
    inter_scale: float = 1.0
    inter_merge: str = "ot"

    sinkhorn_iterations: int = 100
    sinkhorn_tolerance: float = 1e-2
    sinkhorn_stopping: str = "video"
    log_domain: bool = False
    sinkhorn_check_every: Optional[int] = None
    cuda_graphs: bool = True

    exact_retention: Optional[float] = None
    seed: int = 0

    similarity_channels: Optional[int] = None

    def __post_init__(self) -> None:
        check_bool_fields(self)
        _check_int(self, "anchors_per_frame", low=1)
        _check_range(self, "global_share", 0.0, 1.0)
        _check_int(self, "window", low=1)
        _check_int(self, "shallow_layer", low=0)
        _check_int(self, "deep_layer", low=0)
        _check_choice(self, "intra_merge", MERGE_MODES)
        _check_choice(self, "inter_merge", MERGE_MODES)
        _check_choice(self, "pooling", POOLING_MODES)
        _check_choice(self, "sinkhorn_stopping", SINKHORN_STOPPING)
        for name in ("intra_epsilon", "temporal_epsilon"):
            _check_positive(self, name)
        if not _in_range(self.sigma, *SIGMA_RANGE):
            raise ValueError(f"AOTConfig.sigma={self.sigma!r}: expected a finite number in "
                             f"[{SIGMA_RANGE[0]:g}, {SIGMA_RANGE[1]:g}] (frames)")
        for name in ("spatial_weight", "sinkhorn_tolerance"):
            _check_range(self, name, 0.0, math.inf)
        for name, phase in (("intra_scale", "intra"), ("inter_scale", "inter")):
            if not _in_range(getattr(self, name), *SCALE_RANGE):
                raise ValueError(f"AOTConfig.{name}={getattr(self, name)!r}: expected a finite "
                                 f"number in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}] (no merge: "
                                 f"{phase}_merge='prune')")
        _check_range(self, "hard_merge_weight", 0.0, 1.0)
        _check_range(self, "keep_ratio", 0.0, 1.0)
        _check_range(self, "dynamic_threshold", -1.0, 1.0)
        if self.similarity_channels is not None:
            _check_int(self, "similarity_channels", low=1)
        if self.clip_length is not None:
            _check_int(self, "clip_length", low=1)
        _check_int(self, "num_clips", low=1)
        _check_int(self, "sinkhorn_iterations", low=1)
        if self.sinkhorn_iterations > MAX_SINKHORN_ITERATIONS:
            raise ValueError(f"AOTConfig.sinkhorn_iterations={self.sinkhorn_iterations!r}: "
                             f"expected an integer in [1, {MAX_SINKHORN_ITERATIONS}]")
        if self.sinkhorn_check_every is not None:
            _check_int(self, "sinkhorn_check_every", low=0)
        if self.exact_retention is not None:
            check_retention(self.exact_retention, "exact_retention")
        check_seed(self.seed, "AOTConfig")
        if self.intra and not (self.local_anchors or self.global_anchors or self.random_anchors):
            raise ValueError(
                "AOTConfig: local_anchors=False and global_anchors=False leave no way to pick "
                "anchors; set one of them, random_anchors=True, or intra=False"
            )

    # ----------------------------------------------------------------------------------------
    def replace(self, **changes) -> "AOTConfig":
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"AOTConfig has no field(s) {unknown}; fields: {field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> "AOTConfig":
        """A named preset (see :data:`PRESETS`), optionally with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown AOT preset {name!r}; expected one of {sorted(PRESETS)}")
        return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(AOTConfig)]


def check_retention(value, name: str = "retention") -> float:
    """``value`` as a float in (0, 1], or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1):
        raise ValueError(f"{name}={value!r} is outside (0, 1]; give a fraction such as 0.10")
    return float(value)


def check_bool_fields(options) -> None:
    """The one rule for the switches of every options dataclass (AOTConfig, the reducers'
    options): a field annotated ``bool`` takes only True or False. A string such as ``"false"``
    is truthy and would silently mean True; 0/1 are refused too (convert text with
    ``aot.parsing.to_bool``)."""
    for item in dataclasses.fields(options):
        if item.type not in ("bool", bool):
            continue
        value = getattr(options, item.name)
        if not isinstance(value, bool):
            raise ValueError(f"{type(options).__name__}.{item.name}={value!r}: expected True or "
                             f"False (a bool, got {type(value).__name__})")


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _float(value) -> float | None:
    """``value`` as a float when it is a number (ints too large for a float: inf), else None."""
    if not _is_number(value):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return math.inf if value > 0 else -math.inf


def _check_int(cfg, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"AOTConfig.{name}={value!r}: expected an integer >= {low}")


def is_finite_number(value) -> bool:
    """Whether ``value`` is a finite int or float, not a bool (an int beyond float range is not):
    the one number test of every options dataclass."""
    number = _float(value)
    return number is not None and math.isfinite(number)


def _in_range(value, low: float, high: float) -> bool:
    """Whether ``value`` is a finite number (not a bool) in [low, high]."""
    return is_finite_number(value) and low <= float(value) <= high


def _check_range(cfg, name: str, low: float, high: float) -> None:
    """A finite number in [low, high] (high may be inf: no upper bound, but still finite)."""
    value = getattr(cfg, name)
    if not _in_range(value, low, high):
        expected = f"in [{low}, {high}]" if math.isfinite(high) else f">= {low}"
        raise ValueError(f"AOTConfig.{name}={value!r}: expected a finite number {expected}")


def _check_positive(cfg, name: str) -> None:
    value = getattr(cfg, name)
    if not (is_finite_number(value) and value > 0):
        raise ValueError(f"AOTConfig.{name}={value!r}: expected a finite number > 0")


def _check_choice(cfg, name: str, choices: tuple) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise ValueError(f"AOTConfig.{name}={value!r}: expected one of {choices}")


# The released scripts (docs/knobs.md, "Presets"). MVBench and EgoSchema share one setting.
PRESETS: dict[str, AOTConfig] = {
    "paper-ov-mvbench": AOTConfig(anchors_per_frame=126, keep_ratio=0.3, inter=True,
                                  pooling="bilinear"),
    "paper-ov-videomme": AOTConfig(anchors_per_frame=108, keep_ratio=0.1, inter=True,
                                   pooling="bilinear"),
    "paper-video": AOTConfig(anchors_per_frame=180, inter=False, pooling="average"),
}
PRESETS["paper-ov-egoschema"] = PRESETS["paper-ov-mvbench"]
PRESETS["paper-ov-longvideobench"] = PRESETS["paper-ov-videomme"]

# The paper's ablations (Table 3, at OV 10%) as field changes on top of any config.
ABLATIONS: dict[str, dict] = {
    "no-local": {"local_anchors": False},  # "w/o local anchors"
    "no-global": {"global_anchors": False},  # "w/o global anchors"
    "prune-only": {"intra_merge": "prune", "inter_merge": "prune"},  # "w/o OT"
    "no-intra-ot": {"intra_merge": "prune"},  # "OT w/o intra"
    "no-inter": {"inter": False},  # "OT w/o inter"
    "cosine-merge": {"intra_merge": "cosine", "inter_merge": "cosine"},
    "random-anchors": {"random_anchors": True},
}
