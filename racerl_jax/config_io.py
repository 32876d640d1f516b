"""Dataclass configs from plain dicts (saved JSON, resumed runs): unknown keys are an error that
lists the known ones, never silently dropped."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], d: Mapping[str, Any]) -> T:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**d)


def name_value_overrides(option: str, items: tuple[str, ...], cls: type, exclude: tuple[str, ...] = ()) -> dict[str, float]:
    """``NAME=VALUE`` command-line items as {name: number}, NAME a field of the dataclass ``cls``
    (not in ``exclude``); a ValueError names the option, the item and the fix."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise ValueError(f"{option} {item!r}: expected name=value with a name from {', '.join(names)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"{option} {item!r}: {value.strip()!r} is not a number") from None
        if not math.isfinite(out[name]):
            raise ValueError(f"{option} {item!r}: give a finite number")
    return out
