"""The AOT options of one request, as vLLM's ``mm_processor_kwargs`` carry them (pure Python).

A server sets defaults with ``--mm-processor-kwargs '{"aot_retention": 0.25}'``; a request
overrides them with its own ``mm_processor_kwargs`` (the OpenAI API's extra body field of that
name). Keys:

* ``aot_retention``: share of the video's tokens kept, a number in (0, 1]; absent or None: the
  video is not reduced.
* ``aot_reducer``: a name of :data:`aot.reducers.REDUCERS` (default ``"aot"``) whose inputs the
  plugin captures (:data:`SERVED_INPUTS`); all honour the exact budget.
* ``aot_mode``: ``"exact"`` (default), the only mode a server can plan with: the token count
  must be known when the prompt is tokenized, before the vision encoder runs.

:func:`parse_options` checks them once, in the processor, so a bad request fails before any
model work with one line naming the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: The ``mm_processor_kwargs`` keys the plugin reads (they are never passed on to the HF processor).
OPTION_KEYS = ("aot_retention", "aot_reducer", "aot_mode")


@dataclass(frozen=True)
class Options:
    """One request's reduction: ``retention`` in (0, 1] or None (unreduced), ``reducer`` a
    registry name."""

    retention: float | None
    reducer: str = "aot"


#: What the plugin's models give a reducer besides the features: received attention at AOT's two
#: layers and at the tower's last one. A SigLIP pooling head's outputs (``head_attention``,
#: ``head_features``) are not captured, so reducers reading them are not served.
SERVED_INPUTS = ("shallow_attention", "deep_attention", "frame_features", "last_attention")


def reducer_names() -> tuple[str, ...]:
    """Every registry reducer the plugin serves, in a fixed order (the processor ships a
    reducer to the model as its index in this tuple, since vLLM's per-item fields are tensors)."""
    from aot.reducers import REDUCERS

    return tuple(sorted(name for name, info in REDUCERS.items()
                        if set(info.inputs) <= set(SERVED_INPUTS)))


def parse_options(kwargs: Mapping[str, object]) -> Options:
    """The validated :class:`Options` of ``kwargs`` (the merged ``mm_processor_kwargs``).

    Raises:
        ValueError: a retention outside (0, 1] or not a number, an unknown reducer, a mode
            other than ``"exact"``.
    """
    from aot.config import check_retention

    mode = kwargs.get("aot_mode", "exact")
    if mode != "exact":
        raise ValueError(f"aot_mode={mode!r}: a server can only run exact mode ('exact'): it sizes "
                         "the video's placeholder tokens before the vision encoder runs, and the "
                         "released thresholds make the count depend on the video")
    retention = kwargs.get("aot_retention")
    reducer = kwargs.get("aot_reducer", "aot")
    if reducer not in reducer_names():
        from aot.reducers import REDUCERS

        if isinstance(reducer, str) and reducer in REDUCERS:
            missing = sorted(set(REDUCERS[reducer].inputs) - set(SERVED_INPUTS))
            raise ValueError(f"aot_reducer={reducer!r} reads {missing}, which the vLLM plugin "
                             f"does not capture; expected one of {list(reducer_names())}")
        raise ValueError(f"aot_reducer={reducer!r}: expected one of {list(reducer_names())}")
    if retention is None:
        return Options(None, reducer)
    return Options(check_retention(retention, "aot_retention"), reducer)
