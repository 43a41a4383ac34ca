"""Knob values given as text (command lines, lmms-eval ``--model_args``) -> typed values.

One home for the rules every text front end shares (the eval plugin, the scripts' preflight, the
benchmarks), so ``"true"`` / ``"0.25"`` / ``"none"`` mean the same everywhere; each bad value is a
one-line ValueError naming the knob.
"""

from __future__ import annotations

import typing


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


def typed_value(kind, value, name: str):
    """``value`` (text or already typed) as the annotated type ``kind`` of a dataclass field:
    ``bool``, ``int``, ``float``, ``str``, or ``X | None`` (``none`` / ``null`` / empty text ->
    None)."""
    if type(None) in typing.get_args(kind):
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
