"""Arbitrary-scale models registered under their own names (see :mod:`sr_models.arbitrary_scale`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from sr_models.arbitrary_scale import LTE_NATIVE, build_lte_model
from sr_models.registry import get_entry, register_model


def _register(name: str, body: str, description: str) -> None:
    def builder(scale: int, **overrides: Any) -> nn.Module:
        if "upsampler" in overrides:
            raise ValueError(f"model {name!r} already has the LTE upsampler; do not pass upsampler=")
        return build_lte_model(get_entry(body).builder, body, scale, overrides, record_upsampler=False)

    builder.__doc__ = description
    LTE_NATIVE[name] = body
    register_model(name, scales=(1, 2, 3, 4), description=description)(builder)


_register(
    "esc-lte",
    "esc",
    "ESC+LTE (ESC body, LTE upsampler, bilinear skip; any float scale, trained on x1-x4)",
)
