"""Typed values for config fields and options: check a value against a field's annotation, or
parse a command-line string by it (``--set NAME=VALUE``, comma-separated names), with one-line
:class:`ConfigError` messages."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from typing import Any, Literal

from .errors import ConfigError


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def choices(options: tuple[Any, ...]) -> str:
    names = [repr(o) for o in options]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_value(tp: Any, value: Any, name: str) -> Any:
    """``value`` as field type ``tp`` wants it (an int for a float widened, a list made a
    tuple), or a one-line ConfigError: ints are ints, bools are bools, floats are finite."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_value(inner[0], value, name) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args or isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: use {choices(args)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{name}={value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string")
        return value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{name}={value!r} must be a list, e.g. 6,7,8")
        return tuple(check_value(args[0], v, name) for v in value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and not isinstance(value, tp):
        raise ConfigError(f"{name} must be a {tp.__name__}, got {type(value).__name__}")
    return value


def parse_value(tp: Any, text: str, name: str) -> Any:
    """The value of ``text`` (a command-line string) for field type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    word = text.strip()
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        if word.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(inner[0], text, name) if len(inner) == 1 else text
    if tp is bool:
        flags = {"true": True, "1": True, "yes": True, "on": True}
        flags |= {"false": False, "0": False, "no": False, "off": False}
        if word.lower() not in flags:
            raise ConfigError(f"{name}={text!r} must be true or false")
        return flags[word.lower()]
    if tp is int:
        if not re.fullmatch(r"[+-]?\d+", word):
            raise ConfigError(f"{name}={text!r} must be an integer")
        return int(word)
    if tp is float:
        try:
            return float(word)
        except ValueError:
            raise ConfigError(f"{name}={text!r} must be a number") from None
    if origin is tuple:
        items = [w for w in re.split(r"[,\s]+", word.strip("[]() ")) if w]
        return tuple(parse_value(args[0], w, name) for w in items)
    return text


def parse_names(text: str | None) -> list[str] | None:
    """A comma-separated option (``--methods a,b``) as its names; None when not given."""
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def batch_size(name: str, value: Any) -> int | str:
    """A batch-size field's value: "auto", or an integer >= 0 (also as text, from the CLI)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ConfigError(f"{name}={value!r}: use auto or an integer >= 0 (0 = all at once)")
