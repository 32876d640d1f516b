"""Dataclass configs from plain dicts (saved JSON, resumed runs): unknown keys are an error that
lists the known ones, never silently dropped."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], d: Mapping[str, Any]) -> T:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**d)
