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


def coerce_value(kind, value, name: str):
    """Convert a model_args value (a string, or what lmms-eval made of it) to the annotated
    type ``kind``: bool, int, float, str, ``Literal[...]``, ``Optional[...]`` or a tuple
    (``+``-joined items, each a number when it reads as one)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if type(None) in args and (value is None or
                                   str(value).strip().lower() in ("none", "null", "")):
            return None
        kinds = [arg for arg in args if arg is not type(None)]
        if len(kinds) == 1:
            return coerce_value(kinds[0], value, name)
        return value
    if origin is typing.Literal:
        for choice in args:
            try:
                if coerce_value(type(choice), value, name) == choice:
                    return choice
            except ValueError:
                continue
        raise ValueError(f"{name}={value!r}: expected one of {list(args)}")
    if kind is tuple or origin is tuple:
        items = value if isinstance(value, (tuple, list)) else str(value).split("+")
        item_kind = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        return tuple(coerce_value(item_kind, item, name) if item_kind is not None
                     else _number_or_text(item) for item in items)
    if kind is bool:
        return to_bool(value, name)
    if kind is int:
        return to_int(value, name)
    if kind is float:
        return to_float(value, name)
    if kind is str:
        if isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: expected a word, not true/false")
        return str(value).strip()
    return value


def _number_or_text(item):
    text = str(item).strip()
    try:
        return float(text)
    except ValueError:
        return text
