"""The model registry: one name per published configuration, built by ``create_model``.

A model family registers a builder per name with :func:`register_model`. A builder takes the
upscaling factor and keyword overrides of its config fields and returns an ``nn.Module`` that
carries three attributes used across the project:

* ``model_name`` (str): the registry name it was built from;
* ``scale`` (int): the upscaling factor;
* ``config`` (dict): the fully resolved, JSON-serialisable configuration (stored with checkpoints).

A family whose defaults change may also register ``upgrade_checkpoint(config, state_dict,
from_metadata) -> (config, warning or None)``, which :func:`sr_models.load_checkpoint` calls before
building the model with the checkpoint's config (the saved one merged with the caller's overrides;
``from_metadata`` says whether a saved config exists): it turns a config saved by an older version
into one that rebuilds the same network, or raises a ValueError saying in one line why the file
cannot be loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

Builder = Callable[..., nn.Module]
CheckpointUpgrader = Callable[[dict[str, Any], Mapping[str, Any], bool], tuple[dict[str, Any], str | None]]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, builder, allowed scales, a one-line description and an optional
    checkpoint-config upgrader (see the module docstring)."""

    name: str
    builder: Builder
    scales: tuple[int, ...]
    description: str
    upgrade_checkpoint: CheckpointUpgrader | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    scales: Sequence[int] = (2, 3, 4),
    description: str = "",
    upgrade_checkpoint: CheckpointUpgrader | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(scale, **overrides) -> nn.Module`` under ``name``."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(
            name, builder, tuple(scales), description or (builder.__doc__ or "").strip(), upgrade_checkpoint
        )
        return builder

    return wrap


def _ensure_families_loaded() -> None:
    # Importing the families runs their @register_model decorators.
    from sr_models import families  # noqa: F401


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    _ensure_families_loaded()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; a ValueError listing the known names if there is none."""
    _ensure_families_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, scale: int = 4, **overrides: object) -> nn.Module:
    """Build the registered model ``name`` for upscaling factor ``scale``.

    ``overrides`` replace fields of the model's config (an unknown field is a ValueError naming it).
    The returned module has ``model_name``, ``scale`` and ``config`` attributes.

    ``upsampler="lte"`` replaces the model's upsampler with LTE (arbitrary scale; ``lte_*`` fields
    configure it; ``scale`` becomes the default render scale): see :mod:`sr_models.arbitrary_scale`.
    """
    entry = get_entry(name)
    if scale not in entry.scales:
        raise ValueError(
            f"model {name!r} does not support scale={scale}; supported scales: {list(entry.scales)}"
        )
    # (a family may have its own "upsampler" field, e.g. SST's kinds: only "lte" is taken here)
    if overrides.get("upsampler") == "lte":
        from sr_models.arbitrary_scale import LTE_NATIVE, build_lte_model

        overrides.pop("upsampler")
        if name in LTE_NATIVE:
            raise ValueError(f"model {name!r} already has the LTE upsampler; do not pass upsampler=")
        model = build_lte_model(entry.builder, name, scale, overrides, record_upsampler=True)
    else:
        model = entry.builder(scale, **overrides)
    model.model_name = name
    model.scale = scale
    return model
