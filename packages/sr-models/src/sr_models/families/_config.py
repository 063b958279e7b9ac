"""Helpers to resolve a family's frozen config dataclass from a named preset plus overrides."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def resolve_config(cls: type[T], preset: dict[str, Any], overrides: dict[str, Any], *, model: str) -> T:
    """Build ``cls(**preset)`` with ``overrides`` applied; lists become tuples.

    Raises ValueError naming an unknown field (and listing the known ones).
    """
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown config field(s) {unknown} for model {model!r}; known fields: {sorted(fields)}"
        )
    values = {**preset, **overrides}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def config_dict(config: object) -> dict[str, Any]:
    """A JSON-serialisable dict of a config dataclass (tuples become lists)."""
    out: dict[str, Any] = {}
    for k, v in dataclasses.asdict(config).items():  # type: ignore[call-overload]
        out[k] = list(v) if isinstance(v, tuple) else v
    return out
