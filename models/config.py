"""What the frozen config dataclasses share: the JSON round trip, and fields that describe themselves.

A config field made with `setting(default, help, ...)` carries a `FieldSpec` in its metadata: its help
text and the values it allows (min/max or choices). The trainer's CLI builds its options from it, the
app's Train form its widgets, and the config's own validation its checks and messages: the numbers live
in one place.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="JSONConfig")
SPEC_KEY = "spec"  # the field-metadata key that holds a FieldSpec


def is_int(v: Any) -> bool:
    """An int that is not a bool (JSON and argparse values alike)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool (a huge int is finite, though math.isfinite cannot convert it)."""
    return is_int(v) or (isinstance(v, float) and math.isfinite(v))


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """What a config field means and which values it allows; read by the CLI, the app's form and validation."""

    help: str
    choices: tuple[Any, ...] | None = None
    min: int | float | None = None
    max: int | float | None = None
    min_open: bool = False  # the minimum itself is not allowed: (min, max]
    wording: str | None = None  # how the allowed values are described, when the generated phrase would mislead

    def in_range(self, value: Any, integer: bool) -> bool:
        """Whether `value` is an integer (or a finite number) within min/max."""
        if not (is_int(value) if integer else is_number(value)):
            return False
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        return self.max is None or value <= self.max

    def allows(self, value: Any, integer: bool) -> bool:
        """Whether `value` is one of the choices, or else within range (`integer`: the field is an int)."""
        if self.choices is not None:
            return not isinstance(value, bool) and value in self.choices
        return self.in_range(value, integer)

    def range_text(self) -> str:
        """`from 1 to 512`, `in (0, 10]`, `of at least 1` (empty when unbounded)."""
        if self.min is not None and self.max is not None:
            return f"in ({self.min}, {self.max}]" if self.min_open else f"from {self.min} to {self.max}"
        if self.min is not None:
            return f"above {self.min}" if self.min_open else f"of at least {self.min}"
        return "" if self.max is None else f"of at most {self.max}"

    def describe(self, integer: bool) -> str:
        """The allowed values in words: `an integer from 1 to 512`, `1 or 3`, `one of 28, 32, 64, 128`."""
        if self.wording is not None:
            return self.wording
        if self.choices is not None:
            names = [str(c) for c in self.choices]
            return " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)
        return " ".join(filter(None, ("an integer" if integer else "a number", self.range_text())))


def setting(default: Any, help: str, **allowed: Any) -> Any:
    """A dataclass field with its FieldSpec (help text; choices, min, max, min_open, wording) in its metadata."""
    return dataclasses.field(default=default, metadata={SPEC_KEY: FieldSpec(help, **allowed)})


def field_spec(cls: type, name: str) -> FieldSpec:
    """The FieldSpec of config class `cls`'s field `name` (KeyError if it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata[SPEC_KEY]
    raise KeyError(f"{cls.__name__} has no field {name!r}")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field of config class `cls` (int, float, str, tuple[int, ...])."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class JSONConfig:
    """Mixin for frozen dataclasses: `to_dict` (tuples as lists, for JSON) and a strict `from_dict`."""

    config_name: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        if not isinstance(d, dict):
            raise ValueError(f"{cls.config_name} must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.config_name} keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def check_fields(self, *names: str) -> None:
        """Raise ValueError `<name> must be <allowed values>, got <value>` for the first named field its FieldSpec refuses."""
        types = field_types(type(self))
        for name in names:
            value, spec = getattr(self, name), field_spec(type(self), name)
            integer = types[name] is int
            if not spec.allows(value, integer):
                raise ValueError(f"{name} must be {spec.describe(integer)}, got {value!r}")
