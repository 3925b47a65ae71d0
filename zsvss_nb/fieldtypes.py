"""Typed values for config fields and options: check a value against a field's annotation, or
parse a command-line string by it (``--set NAME=VALUE``, comma-separated names), with one-line
:class:`ConfigError` messages; :class:`ConfigSection`, the base of every config section, checks
every field's type and range when a config is built."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import fields
from typing import Any, ClassVar, Literal

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


SEED_RANGE = (0, 2**63 - 1)  # what torch.Generator.manual_seed takes


class ConfigSection:
    """Base of the stage configs: every field type-checked, every number range-checked.

    ``_ranges`` gives each float field (and each seed) its valid range, inclusive: values the
    stage survives in the dtype it computes in (float32, or float16 under autocast), so a
    finite but extreme value fails here, naming the field, instead of giving all-zero labels.
    Every float field must have one (``fieldtypes.check_value`` checks finiteness only).
    """

    _stage: ClassVar[str] = ""
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {}

    def __post_init__(self) -> None:
        """Type-check every field against its annotation (see :func:`check_value`), then its
        range (``_ranges``)."""
        types = field_types(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            name = f"{self._stage}.{f.name}" if self._stage else f.name
            checked = check_value(types[f.name], value, name)
            if checked is not value:
                object.__setattr__(self, f.name, checked)
            self.check_range(f.name, checked)

    @classmethod
    def check_range(cls, name: str, value: Any) -> Any:
        """``value`` when it lies in field ``name``'s documented range (None passes), else a
        ConfigError; stages call it on the values they divide by or exponentiate."""
        bounds = cls._ranges.get(name)
        if bounds is None or value is None or isinstance(value, bool):
            return value
        lo, hi = bounds
        if not lo <= value <= hi:
            full = f"{cls._stage}.{name}" if cls._stage else name
            raise ConfigError(f"{full}={value!r} must lie in [{lo:g}, {hi:g}]")
        return value

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (fields are validated again)."""
        names = [f.name for f in fields(self)]  # type: ignore[arg-type]
        unknown = [k for k in changes if k not in names]
        if unknown:
            raise ConfigError(
                f"{self._stage or type(self).__name__} has no field {unknown[0]!r}; "
                f"its fields are {', '.join(names)}"
            )
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def parse_field(cls, name: str, text: str) -> Any:
        """The value of command-line ``text`` for field ``name``, by the field's declared
        type (``"true"`` for a bool, ``"6,7,8"`` for a tuple, ``"none"`` for an optional)."""
        types = field_types(cls)
        if name not in types or name.startswith("_"):
            names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
            raise ConfigError(
                f"{cls._stage or cls.__name__} has no field {name!r}; "
                f"its fields are {', '.join(names)}"
            )
        return parse_value(types[name], text, f"{cls._stage}.{name}" if cls._stage else name)


def batch_size(name: str, value: Any) -> int | str:
    """A batch-size field's value: "auto", or an integer >= 0 (also as text, from the CLI)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ConfigError(f"{name}={value!r}: use auto or an integer >= 0 (0 = all at once)")
