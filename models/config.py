"""The JSON round trip shared by the frozen config dataclasses."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="JSONConfig")


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
