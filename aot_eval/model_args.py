"""Turn lmms-eval ``--model_args`` into a reducer choice and an :class:`aot.AOTConfig`.

No lmms-eval or llava import, so scripts and tests can check arguments anywhere
(``python -m aot_eval.preflight args --backbone ov reducer=aot retention=0.1`` runs
:func:`parse_reducer` for the eval scripts before anything loads).

Accepted AOT keys (beside the model keys of :mod:`aot_eval.lmms_models`):

* ``reducer``: ``aot`` (default), ``none`` (unreduced model), or any name of the reducer
  registry (:data:`aot.reducers.REDUCERS`: ``uniform``, ``visionzip``, ``dycoke``, ``random``,
  ``aot:<ablation>``).
* ``retention=0.10``: target share of the backbone's pooled visual tokens
  (:func:`aot.settings_for` at the model's frame count); ``exact=true`` asks for the exact-count
  mode.
* ``preset=paper-ov-mvbench``: a named preset (:data:`aot.config.PRESETS`).
* ``ablation=no-local`` (several joined with ``+``): the paper's ablations (:data:`aot.config.ABLATIONS`).
* any :class:`AOTConfig` field, e.g. ``anchors_per_frame=108,keep_ratio=0.1``: overrides applied last.

On the backbones reached only through transformers (``integration="transformers"`` in
their :class:`aot.backbones.Backbone` record) a ``retention`` is an exact budget
(``exact=false`` is refused for AOT): their processors decide the temporal patches per
video, and approximate settings hold only for the frame count they were solved for.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Optional

#: The unreduced model's reducer name (not a registry entry: nothing runs).
NO_REDUCER = "none"
AOT_KEYS = ("reducer", "retention", "preset", "exact", "ablation")


@dataclass(frozen=True)
class ReducerSpec:
    """What the model is asked to do with its visual tokens.

    name: ``"none"`` or a name of :data:`aot.reducers.REDUCERS`.
    config: the AOT configuration (``None`` for ``reducer=none``).
    retention: the requested retention, or ``None`` when a preset / explicit knobs decide it.
    source: a short human description (``"retention=0.1"``, ``"preset=paper-video"``, ...).
    """

    name: str
    config: Any = None
    retention: Optional[float] = None
    source: str = ""
    overrides: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-friendly summary recorded beside every result."""
        return {
            "reducer": self.name,
            "requested_retention": self.retention,
            "source": self.source,
            "overrides": dict(self.overrides),
            "aot_config": None if self.config is None else self.config.to_dict(),
        }


def split_aot_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """Split ``kwargs`` into (AOT keys and AOTConfig fields, everything else)."""
    from aot.config import field_names

    names = set(AOT_KEYS) | set(field_names())
    aot_part = {k: v for k, v in kwargs.items() if k in names}
    rest = {k: v for k, v in kwargs.items() if k not in names}
    return aot_part, rest


def parse_reducer(aot_kwargs: dict, backbone: str, frames: int | None = None) -> ReducerSpec:
    """Resolve the AOT part of ``--model_args`` (see module docstring) into a :class:`ReducerSpec`.

    backbone: a declared backbone name (:mod:`aot.backbones`).
    frames: frames per video the model samples (its ``max_frames_num``); default the
        backbone's protocol (:attr:`aot.backbones.Backbone.frames`). Unused on the
        transformers-only backbones (see the module docstring).

    Raises:
        ValueError: unknown reducer / preset / ablation, retention outside (0, 1], preset and
            retention given together, knobs given with ``reducer=none``.
    """
    from aot.backbones import get_backbone
    from aot.reducers import reducer_info, reducer_names
    from aot.config import ABLATIONS, PRESETS, AOTConfig, check_retention
    from aot.settings import settings_for

    facts = get_backbone(backbone)
    kwargs = dict(aot_kwargs)
    name = str(kwargs.pop("reducer", "aot")).strip().lower()
    if name != NO_REDUCER and name not in reducer_names():
        raise ValueError(f"unknown reducer={name!r}: expected {NO_REDUCER!r} or one of "
                         f"{reducer_names()}")
    retention = kwargs.pop("retention", None)
    preset = kwargs.pop("preset", None)
    # Backbones reached only through transformers (Qwen): the processor decides the temporal
    # patches per video, so there is no frame count to solve approximate settings for; a
    # retention there is an exact budget with the released share of anchors.
    hf_only = facts.integration == "transformers"
    frames = None if hf_only else (facts.frames if frames is None else frames)
    exact = to_bool(kwargs.pop("exact", hf_only and retention is not None), "exact")
    ablations = split_names(kwargs.pop("ablation", None))
    overrides = {key: coerce_field(key, value) for key, value in kwargs.items()}

    if name == "none":
        given = [k for k, v in (("retention", retention), ("preset", preset)) if v is not None]
        if given or ablations or overrides or exact:
            raise ValueError(
                "reducer=none runs the unreduced model and takes no AOT settings; "
                f"remove {given + ablations + sorted(overrides) + (['exact'] if exact else [])}")
        return ReducerSpec("none", None, None, "unreduced")
    if retention is not None and preset is not None:
        raise ValueError(f"give retention= or preset=, not both (got retention={retention!r}, "
                         f"preset={preset!r})")
    if retention is not None:
        retention = check_retention(to_float(retention, "retention"), "retention")
    if reducer_info(name).needs_budget and retention is None:
        raise ValueError(f"reducer={name} needs retention= (a fraction such as 0.10): it has no "
                         "token count of its own")

    if hf_only and retention is not None and not exact and not reducer_info(name).needs_budget:
        raise ValueError(f"retention={retention:g} exact=false on backbone {backbone!r}: its "
                         "processor decides the frame count per video and approximate settings "
                         "hold only for the count they were solved for; leave exact out (a "
                         "retention is an exact budget there)")
    if preset is not None:
        if str(preset) not in PRESETS:
            raise ValueError(f"unknown preset={preset!r}: expected one of {sorted(PRESETS)}")
        config, source = AOTConfig.preset(str(preset)), f"preset={preset}"
    elif retention is not None:
        config = settings_for(facts, retention, exact=exact, frames=frames)
        source = f"retention={retention:g}" + (" exact" if exact else "")
    else:
        config = settings_for(facts)
        source = (f"preset={facts.preset} on the {backbone} grid (default)" if hf_only
                  else f"preset={facts.preset} (default)")
    for ablation in ablations:
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation={ablation!r}: expected one of "
                             f"{sorted(ABLATIONS)}")
        config = config.replace(**ABLATIONS[ablation])
    if overrides:
        config = config.replace(**overrides)
    if exact and retention is None:
        raise ValueError("exact=true needs retention= (exact mode counts tokens from the ratio)")
    if ablations:
        source += " ablation=" + "+".join(ablations)
    return ReducerSpec(name, config, retention, source, overrides)


def split_names(value) -> list[str]:
    """``"a+b"`` -> ``["a", "b"]``; ``None`` / ``""`` -> ``[]``."""
    if value is None or value == "":
        return []
    return [part.strip() for part in str(value).split("+") if part.strip()]


def to_bool(value, name: str) -> bool:
    """``True/False``, ``1/0`` or the strings true/false/yes/no/1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"{name}={value!r}: expected true or false")


def to_float(value, name: str) -> float:
    """A number from an int, float or numeric string."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a number") from None


def to_int(value, name: str) -> int:
    """An integer from an int or an integral string / float."""
    number = to_float(value, name)
    if number != int(number):
        raise ValueError(f"{name}={value!r}: expected an integer")
    return int(number)


def coerce_field(name: str, value):
    """Convert a model_args value to the type of the :class:`AOTConfig` field ``name``."""
    from aot.config import AOTConfig

    hints = typing.get_type_hints(AOTConfig)
    if name not in hints:
        raise ValueError(f"unknown AOT knob {name!r}")
    kind = hints[name]
    optional = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
    if optional:
        if value is None or str(value).strip().lower() in ("none", "null", ""):
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if kind is bool:
        return to_bool(value, name)
    if kind is int:
        return to_int(value, name)
    if kind is float:
        return to_float(value, name)
    return str(value)


