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
* ``reducer.<option>=<value>``: a knob of the reducer's own options dataclass
  (:attr:`aot.reducers.ReducerInfo.options`), e.g. ``reducer=vidcom2,reducer.count=released``.
  Checked once, here, against the dataclass's fields and types (:func:`parse_reducer_options`):
  an unknown or ill-typed knob is a one-line error naming it. Tuple knobs join their items with
  ``+`` (``reducer.alphas=0.5+1+2``; commas separate model_args). Unset knobs keep the
  dataclass's defaults, or those of its ``for_backbone(backbone, retention)`` classmethod when
  it has one (released defaults per backbone and retention). The run's record
  (:meth:`ReducerSpec.describe`) lists every option that ran, defaults included.
* ``llm_stage=fastv`` (``flashvid``, ``holitom``; :data:`aot.llm_stages.STAGES`): reduction inside
  the language model after the reducer (with any reducer, ``none`` included), with its knobs as
  ``llm_stage.<field>=value`` (``llm_stage.layer=3``, ``llm_stage.retention=0.25``,
  ``llm_stage.budget=157``; the fields of :class:`aot.llm_stages.LLMStageConfig`).

On the backbones reached only through transformers (``integration="transformers"`` in
their :class:`aot.backbones.Backbone` record) a ``retention`` is an exact budget
(``exact=false`` is refused for AOT): their processors decide the temporal patches per
video, and approximate settings hold only for the frame count they were solved for.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from aot.llm_stages import describe_stage
from aot.parsing import coerce_value, to_bool, to_float

#: The unreduced model's reducer name (not a registry entry: nothing runs).
NO_REDUCER = "none"
AOT_KEYS = ("reducer", "retention", "preset", "exact", "ablation")
#: model_args keys ``reducer.<option>`` set a knob of the reducer's options dataclass.
OPTION_PREFIX = "reducer."
#: The LLM stage's key and the prefix of its knobs' keys.
LLM_STAGE_KEY, LLM_STAGE_PREFIX = "llm_stage", "llm_stage."


@dataclass(frozen=True)
class ReducerSpec:
    """What the model is asked to do with its visual tokens.

    name: ``"none"`` or a name of :data:`aot.reducers.REDUCERS`.
    config: the AOT configuration (``None`` for ``reducer=none``).
    retention: the requested retention, or ``None`` when a preset / explicit knobs decide it.
    source: a short human description (``"retention=0.1"``, ``"preset=paper-video"``, ...).
    overrides: the AOTConfig fields given explicitly.
    options: every knob of the reducer's options dataclass as it runs (defaults included;
        empty for a reducer without one), the ``options`` of :class:`aot.video_path.Reduction`.
    given_options: the knobs given as ``reducer.<option>`` (coerced), for labels.
    llm_stage: the :class:`aot.llm_stages.LLMStageConfig` run inside the language model after
        the reducer, or None.
    """

    name: str
    config: Any = None
    retention: Optional[float] = None
    source: str = ""
    overrides: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    given_options: dict = field(default_factory=dict)
    llm_stage: Any = None

    def describe(self) -> dict:
        """JSON-friendly summary recorded beside every result."""
        import dataclasses

        return {
            "reducer": self.name,
            "requested_retention": self.retention,
            "source": self.source,
            "overrides": dict(self.overrides),
            "reducer_options": {key: list(value) if isinstance(value, tuple) else value
                                for key, value in self.options.items()},
            "aot_config": None if self.config is None else self.config.to_dict(),
            "llm_stage": (None if self.llm_stage is None
                          else dataclasses.asdict(self.llm_stage)),
        }


def is_llm_stage_key(key: str) -> bool:
    """``llm_stage`` or one of its ``llm_stage.<field>`` knobs."""
    return key == LLM_STAGE_KEY or key.startswith(LLM_STAGE_PREFIX)


def parse_llm_stage(kwargs: dict):
    """``llm_stage=NAME`` and ``llm_stage.<field>=value`` -> an
    :class:`aot.llm_stages.LLMStageConfig`, or None (no ``llm_stage`` or ``llm_stage=none``).

    Raises:
        ValueError: an unknown stage or knob, a bad value, knobs without a stage.
    """
    from aot.llm_stages import stage_from_text

    knobs = {key[len(LLM_STAGE_PREFIX):]: value for key, value in kwargs.items()
             if key.startswith(LLM_STAGE_PREFIX)}
    return stage_from_text(kwargs.get(LLM_STAGE_KEY), knobs, prefix=LLM_STAGE_PREFIX,
                           stage_key=LLM_STAGE_KEY)


def install_llm_stage(model, spec: ReducerSpec):
    """:func:`aot_integrations.llm_stage.install` of the run's LLM stage on the loaded model;
    None when the run has none."""
    if spec.llm_stage is None:
        return None
    from aot_integrations import llm_stage

    return llm_stage.install(model, spec.llm_stage)


def with_llm_stage(counted: list, handle, first: int = 0) -> list:
    """Per-row token counts (rows ``first..`` of the last generate batch) with
    ``llm_stage_kept`` added from the stage's last prefill (unchanged without a stage)."""
    record = None if handle is None else handle.last
    if record is None:
        return counted
    return [row if row is None else {**row, "llm_stage_kept": kept}
            for row, kept in zip(counted, record.kept[first:])]


def split_aot_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """Split ``kwargs`` into (AOT keys and AOTConfig fields, everything else)."""
    from aot.config import field_names

    names = set(AOT_KEYS) | set(field_names())
    aot_part = {k: v for k, v in kwargs.items()
                if k in names or is_llm_stage_key(k) or str(k).startswith(OPTION_PREFIX)}
    rest = {k: v for k, v in kwargs.items() if k not in aot_part}
    return aot_part, rest


def parse_reducer(aot_kwargs: dict, backbone: str, frames: int | None = None) -> ReducerSpec:
    """Resolve the AOT part of ``--model_args`` (see module docstring) into a :class:`ReducerSpec`.

    backbone: a declared backbone name (:mod:`aot.backbones`).
    frames: frames per video the model samples (its ``max_frames_num``); default the
        backbone's protocol (:attr:`aot.backbones.Backbone.frames`). Unused on the
        transformers-only backbones (see the module docstring).

    Raises:
        ValueError: unknown reducer / preset / ablation, retention outside (0, 1], preset and
            retention given together, knobs given with ``reducer=none``, an unknown or
            ill-typed ``reducer.<option>`` (:func:`parse_reducer_options`).
    """
    from aot.backbones import get_backbone

    facts = get_backbone(backbone)
    stage_keys = {k: v for k, v in aot_kwargs.items() if is_llm_stage_key(k)}
    stage = parse_llm_stage(stage_keys)
    kwargs = {k: v for k, v in aot_kwargs.items() if k not in stage_keys}
    spec = _parse_reducer(facts, kwargs, backbone, frames)
    if stage is None:
        return spec
    import dataclasses

    return dataclasses.replace(spec, llm_stage=stage,
                               source=f"{spec.source} + llm_stage={describe_stage(stage)}")


def _parse_reducer(facts, kwargs: dict, backbone: str, frames) -> ReducerSpec:
    from aot.reducers import reducer_info, reducer_names
    from aot.config import ABLATIONS, PRESETS, AOTConfig, check_retention
    from aot.settings import settings_for

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
    raw_options = {key[len(OPTION_PREFIX):]: kwargs.pop(key) for key in list(kwargs)
                   if str(key).startswith(OPTION_PREFIX)}
    overrides = {key: coerce_field(key, value) for key, value in kwargs.items()}

    if name == "none":
        given = [k for k, v in (("retention", retention), ("preset", preset)) if v is not None]
        given += [OPTION_PREFIX + key for key in sorted(raw_options)]
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
    given_options, options = parse_reducer_options(name, raw_options, facts.name, retention)
    if given_options:
        source += " " + describe_options(given_options)
    return ReducerSpec(name, config, retention, source, overrides, options, given_options)


def parse_reducer_options(name: str, raw: dict, backbone: str | None = None,
                          retention: float | None = None) -> tuple[dict, dict]:
    """The ``reducer.<option>`` values of reducer ``name`` -> (the given knobs coerced to their
    fields' types, every knob as it runs).

    raw: option name (without the prefix) -> value as model_args give it (a string, or the
        bool / int / float lmms-eval already made of it).
    backbone, retention: passed to the options dataclass's ``for_backbone(backbone, retention)``
        classmethod, when it has one, for the defaults of the knobs not given.

    Raises:
        ValueError: options for a reducer that has none, an unknown knob (naming the reducer's
            knobs), a value of the wrong type or refused by the dataclass's own checks.
    """
    import dataclasses

    from aot.reducers import reducer_info

    info = reducer_info(name)
    if info.options is None:
        if raw:
            raise ValueError(f"reducer={name} has no options (got "
                             f"{[OPTION_PREFIX + key for key in sorted(raw)]}); its knobs are "
                             f"AOTConfig fields, given as key=value without the prefix")
        return {}, {}
    hints = typing.get_type_hints(info.options)
    fields = [item.name for item in dataclasses.fields(info.options) if item.init]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"reducer={name} has no option {OPTION_PREFIX}{unknown[0]}; its "
                         f"options: {', '.join(OPTION_PREFIX + f for f in fields)}")
    try:
        given = {key: coerce_value(hints[key], value, OPTION_PREFIX + key)
                 for key, value in raw.items()}
    except ValueError as error:
        raise ValueError(f"reducer={name} {error}") from None
    defaults = getattr(info.options, "for_backbone", None)
    try:
        base = (defaults(backbone, retention) if callable(defaults) and backbone is not None
                else info.options())
        resolved = dataclasses.replace(base, **given)
    except (TypeError, ValueError) as error:
        raise ValueError(f"reducer={name} {describe_options(given)}: "
                         f"{' '.join(str(error).split())}") from None
    return given, {key: getattr(resolved, key) for key in fields}


def describe_options(options: dict) -> str:
    """``{"count": "released", "alphas": (1.0, 2.0)}`` -> ``reducer.count=released
    reducer.alphas=1.0+2.0`` (the model_args spelling, space-separated)."""
    def text(value) -> str:
        if isinstance(value, (tuple, list)):
            return "+".join(str(item) for item in value)
        return str(value)

    return " ".join(f"{OPTION_PREFIX}{key}={text(value)}" for key, value in options.items())


def split_names(value) -> list[str]:
    """``"a+b"`` -> ``["a", "b"]``; ``None`` / ``""`` -> ``[]``."""
    if value is None or value == "":
        return []
    return [part.strip() for part in str(value).split("+") if part.strip()]


def coerce_field(name: str, value):
    """Convert a model_args value to the type of the :class:`AOTConfig` field ``name``."""
    from aot.config import AOTConfig

    hints = typing.get_type_hints(AOTConfig)
    if name not in hints:
        raise ValueError(f"unknown AOT knob {name!r}")
    return coerce_value(hints[name], value, name)


