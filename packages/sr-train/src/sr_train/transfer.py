"""Start a model from earlier weights (``model.init_from``): stage 2 from stage 1, x3/x4 from x2.

Weights whose shapes match are copied. A sub-pixel (pixel-shuffle) convolution trained for scale
``s_in`` is moved to scale ``s_out`` as ESC and SST do (``esc-sst.md`` section 1.5): the weight
``(c*s_in*s_in, cin, kh, kw)`` is viewed as ``(cin*kh*kw, c, s_in, s_in)``, bilinearly resized to
``(s_out, s_out)`` (``align_corners=False``) and viewed back; biases likewise
(``sr_layers.upsamplers.interpolate_subpixel_conv``; the scale of the file comes from its metadata). Anything else that
does not fit is left at its initial value and listed (an error with ``model.init_strict: true``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sr_layers.upsamplers import interpolate_subpixel_conv
from sr_train.errors import ConfigError


def _resample_subpixel(t: torch.Tensor, s_in: int, s_out: int) -> torch.Tensor:
    """A pixel-shuffle conv weight ``(g*s_in^2, cin, kh, kw)`` or bias ``(g*s_in^2,)`` resampled to ``s_out``."""
    groups = t.shape[0] // (s_in * s_in)
    if t.ndim == 1:
        dummy = torch.zeros(t.shape[0], 1, 1, 1, dtype=t.dtype)
        return interpolate_subpixel_conv(dummy, t, groups, s_out)[1]
    if t.ndim != 4:
        raise ValueError(f"cannot resample a {t.ndim}-D tensor as a sub-pixel conv")
    return interpolate_subpixel_conv(t, None, groups, s_out)[0]


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """(state_dict, source scale or None) from a .safetensors export, an sr-train checkpoint (its EMA
    weights) or a BasicSR ``.pth`` (``params_ema`` else ``params``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config key 'model.init_from': {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
        scale = meta.get("scale")
        if scale is None and "config" in meta:
            scale = json.loads(meta["config"]).get("scale")
        return sd, int(scale) if scale is not None else None
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"config key 'model.init_from': cannot read {str(p)!r} ({exc})") from None
    if isinstance(obj, dict) and obj.get("format") == "sr-train":
        return dict(obj.get("ema") or obj["model"]), obj.get("scale")
    if isinstance(obj, dict):
        for key in ("params_ema", "params", "state_dict"):
            if isinstance(obj.get(key), dict):
                return dict(obj[key]), None
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), None
    raise ConfigError(f"config key 'model.init_from': {str(p)!r} holds no state_dict")


def load_init_weights(model: nn.Module, path: str | Path, *, scale: int, strict: bool = False) -> dict[str, list[str]]:
    """Copy the weights at ``path`` into ``model`` (see module docstring); returns what was done.

    The result has lists ``copied``, ``interpolated``, ``skipped`` (shape mismatch), ``missing`` (in the
    model, not in the file) and ``unexpected``. With ``strict`` anything skipped, missing or unexpected
    is a ConfigError.
    """
    sd, s_in = read_weights(path)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    own = model.state_dict()
    report: dict[str, list[str]] = {"copied": [], "interpolated": [], "skipped": [], "missing": [], "unexpected": []}
    new_sd = {}
    for k, target in own.items():
        if k not in sd:
            report["missing"].append(k)
            continue
        src = sd[k]
        if src.shape == target.shape:
            new_sd[k] = src
            report["copied"].append(k)
        elif (s_in and s_in != scale and src.ndim in (1, 4) and src.shape[1:] == target.shape[1:]
              and src.shape[0] % (s_in * s_in) == 0 and target.shape[0] == src.shape[0] // (s_in * s_in) * scale * scale):
            new_sd[k] = _resample_subpixel(src, s_in, scale)
            report["interpolated"].append(k)
        else:
            report["skipped"].append(f"{k} {tuple(src.shape)}->{tuple(target.shape)}")
    report["unexpected"] = [k for k in sd if k not in own]
    if strict and (report["skipped"] or report["missing"] or report["unexpected"]):
        bad = (report["skipped"] + report["missing"] + report["unexpected"])[:5]
        raise ConfigError(f"config key 'model.init_from': {str(path)!r} does not fit the model strictly: {bad}")
    model.load_state_dict(new_sd, strict=False)
    return report
