"""Arbitrary-scale SR: any of our bodies with the LTE upsampler (ESC paper, section 4.3).

``create_model(name, upsampler="lte")`` builds the registered body ``name`` without its own
upsampler and puts :class:`sr_layers.lte.LTE` behind it; ``esc-lte`` is ESC's body with LTE as U
and bilinear interpolation as the image skip S (ESC supplementary 6.2). A body qualifies when it
has ``body_features(x) -> (B, feature_dim, h, w)``, ``feature_dim`` and ``upsampler_modules``
(the names of its upsampler's submodules, dropped here); today: ESC (``esc``, ``esc-light``,
``esc-xl``), SST (``sst``, ``sst-plus``, ``sst-l``, ..., ``sst-light``), IET and SSCAN (their own
input normalisation and window padding stay inside their bodies). Not yet: ESC-FP/-Real/-RIB.

The model (:class:`LTESR`) takes RGB in [0, 1] and renders any size:

* ``model(x)``: at ``model.scale`` (the integer given to ``create_model``, 4 by default);
* ``model(x, scale=3.7)``: a float scale >= 1, output ``(round(3.7 h), round(3.7 w))``;
* ``model(x, size=(H, W))``: a target size;
* ``model.query(x, coord, cell)`` or ``model(x, coord=coord, cell=cell)`` -> (B, Q, 3): values at
  LTE's sampled coordinates (training).

Facts from the official code (dslisleedh/ESC ``esc_arb``, built on LIIF/LTE): the input is
normalised ``(x - 0.5) / 0.5`` before the body, and the output denormalised (``lte_norm_mean``,
``lte_norm_std``); the skip is the bilinear sample of the normalised input at the query (border
padding); LTE's hidden width 256 and MLP 256-256-256; the cell is clipped to that of the largest
training scale, 4 (``lte_max_scale``). The body pads to its window itself (the official arbitrary
scale evaluation does no outside padding), so ``pad_multiple`` is 1. Ours: ``lte_query_chunk``
(HR pixels evaluated at once; memory, not results).

State-dict keys: ``encoder.*`` (the body, the keys of the fixed-scale model minus its upsampler)
and ``upsampler.{coef, freq, phase, imnet.layers.*}`` (the official LTE keys are the same names
without ``upsampler.``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from sr_layers.lte import LTE, output_size

__all__ = ["LTESR", "LTE_NATIVE", "LTEHeadConfig", "build_lte_model", "from_official_lte_keys", "is_arbitrary_scale"]

UPSAMPLERS = ("lte",)
LTE_NATIVE: dict[str, str] = {}  # registered LTE model name -> body name (e.g. "esc-lte" -> "esc")


@dataclass(frozen=True)
class LTEHeadConfig:
    """The LTE head's settings; as model config fields they carry the prefix ``lte_``
    (``lte_hidden_dim``, ``lte_mlp_hidden``, ``lte_query_chunk``, ``lte_max_scale``,
    ``lte_norm_mean``, ``lte_norm_std``)."""

    hidden_dim: int = 256
    mlp_hidden: tuple[int, ...] = (256, 256, 256)
    query_chunk: int = 16384
    max_scale: float | None = 4.0
    norm_mean: float = 0.5
    norm_std: float = 0.5

    def __post_init__(self) -> None:
        if self.norm_std <= 0:
            raise ValueError(f"lte_norm_std must be positive, got {self.norm_std}")


def _split_lte_fields(overrides: dict[str, Any]) -> tuple[LTEHeadConfig, dict[str, Any]]:
    names = {f.name for f in fields(LTEHeadConfig)}
    head, rest = {}, {}
    for key, value in overrides.items():
        if key.startswith("lte_"):
            if key[4:] not in names:
                raise ValueError(f"unknown LTE config field {key!r}; known: {sorted('lte_' + n for n in names)}")
            head[key[4:]] = tuple(value) if isinstance(value, list) else value
        else:
            rest[key] = value
    return LTEHeadConfig(**head), rest


class LTESR(nn.Module):
    """A body (``encoder``) + the LTE upsampler with the bilinear skip; see the module docstring.

    forward(x (B, 3, h, w) float in [0, 1], scale: float | None = None, size: (H, W) | None = None)
    -> (B, 3, H, W) float (not clamped).
    """

    arbitrary_scale = True

    def __init__(self, encoder: nn.Module, head: LTEHeadConfig, scale: int) -> None:
        super().__init__()
        for name in getattr(encoder, "upsampler_modules", ()):
            if hasattr(encoder, name):
                delattr(encoder, name)
        self.encoder = encoder
        self.head_config = head
        self.upsampler = LTE(
            int(encoder.feature_dim), head.hidden_dim, head.mlp_hidden, 3,
            query_chunk=head.query_chunk, max_scale=head.max_scale,
        )
        self.upscaling_factor = scale
        self.pad_multiple = 1
        self.pad_mode = "reflect"
        self.min_input_size = 1

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input of shape (B, 3, H, W), got {tuple(x.shape)}")
        return (x - self.head_config.norm_mean) / self.head_config.norm_std

    def forward(self, x: torch.Tensor, scale: float | None = None, size: tuple[int, int] | None = None, *,
                coord: torch.Tensor | None = None, cell: torch.Tensor | None = None) -> torch.Tensor:
        """Render at ``scale`` or ``size`` (default: ``model.scale``) -> (B, 3, H, W); with ``coord``
        and ``cell`` given, :meth:`query` instead -> (B, Q, 3) (so that DDP wraps training too)."""
        if coord is not None or cell is not None:
            if coord is None or cell is None or scale is not None or size is not None:
                raise ValueError("give coord= and cell= together, without scale= or size=")
            return self.query(x, coord, cell)
        xn = self._normalise(x)
        if scale is None and size is None:
            scale = self.upscaling_factor
        hw = output_size((x.shape[-2], x.shape[-1]), scale, size)
        feat = self.encoder.body_features(xn)
        out = self.upsampler(feat, hw, image=xn)
        return out * self.head_config.norm_std + self.head_config.norm_mean

    def render_grid(self, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                    cell: tuple[float, float]) -> torch.Tensor:
        """The output pixels on the grid ``rows x cols`` (Hq,), (Wq,) of coordinates in ``x``'s frame,
        with ``cell`` in the same units: x (B, 3, h, w) in [0, 1] -> (B, 3, Hq, Wq) (not clamped).
        ``forward(x, size=(H, W))`` is this grid at every HR pixel centre; a tiled renderer passes a
        tile and the part of the grid that falls on it (:func:`sr_eval.arbitrary_scale.render_tiled`)."""
        xn = self._normalise(x)
        out = self.upsampler.render_grid(self.encoder.body_features(xn), rows, cols, cell, image=xn)
        return out * self.head_config.norm_std + self.head_config.norm_mean

    def query(self, x: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Values at given HR coordinates (LTE training): x (B, 3, h, w) in [0, 1], coord and cell
        (B, Q, 2) as in :mod:`sr_layers.lte` (row, column in [-1, 1]) -> (B, Q, 3) in [0, 1] units."""
        xn = self._normalise(x)
        enc = self.upsampler.encode(self.encoder.body_features(xn))
        out = self.upsampler.query(enc, coord, cell, image=xn)
        return out * self.head_config.norm_std + self.head_config.norm_mean


def is_arbitrary_scale(name: str, config: dict[str, Any]) -> bool:
    """Whether ``create_model(name, **config)`` builds an arbitrary-scale model."""
    from sr_models.registry import _ensure_families_loaded

    _ensure_families_loaded()  # LTE_NATIVE is filled when the families register
    return name in LTE_NATIVE or config.get("upsampler") in UPSAMPLERS


def build_lte_model(builder: Any, body_name: str, scale: int, overrides: dict[str, Any],
                    *, record_upsampler: bool) -> LTESR:
    """Build ``builder(scale, **body overrides)`` and wrap it with LTE (fields ``lte_*``).

    ``record_upsampler``: store ``upsampler="lte"`` in the config (the generic option) so that a
    saved checkpoint rebuilds the same model. Raises ValueError naming the body when it does not
    expose ``body_features``/``feature_dim``.
    """
    head, rest = _split_lte_fields(dict(overrides))
    body = builder(scale, **rest)
    if not (hasattr(body, "body_features") and hasattr(body, "feature_dim")):
        raise ValueError(
            f"model {body_name!r} cannot take upsampler='lte': its class {type(body).__name__} has no "
            "body_features/feature_dim (supported: esc, esc-light, esc-xl, the SST, IET and SSCAN families)"
        )
    model = LTESR(body, head, scale)
    config = dict(getattr(body, "config", {}))
    if record_upsampler:
        config["upsampler"] = "lte"
    for f in fields(LTEHeadConfig):
        value = getattr(head, f.name)
        config[f"lte_{f.name}"] = list(value) if isinstance(value, tuple) else value
    model.config = config
    return model


_LTE_HEAD_KEYS = ("coef", "freq", "phase", "imnet")


def from_official_lte_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official LTE/``esc_arb`` key layout (head at the top level: ``coef.*``, ``freq.*``,
    ``phase.*``, ``imnet.*``; body under ``encoder.``) turned into ours (head under ``upsampler.``);
    a state_dict already in our layout is returned unchanged."""
    return {(f"upsampler.{k}" if k.split(".", 1)[0] in _LTE_HEAD_KEYS else k): v for k, v in sd.items()}
