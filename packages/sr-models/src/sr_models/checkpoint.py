"""Loading official (BasicSR) and our own checkpoints; saving safetensors with model metadata.

Accepted files:

* BasicSR ``torch.save({'params': sd, 'params_ema': sd_ema})`` (``params_ema`` preferred), with or
  without DataParallel ``module.`` prefixes (``_orig_mod.`` from ``torch.compile`` is stripped too);
* a plain ``state_dict`` saved with ``torch.save`` (also ``{'state_dict': ...}`` / ``{'model': ...}``);
* our safetensors files written by :func:`save_safetensors`, whose metadata store the registry name,
  scale and resolved config;
* LIIF/LTE training files ``{"model": {"name", "args", "sd"}, ...}`` (the ESC authors' ``esc_arb``
  code), whose LTE keys ``coef``/``freq``/``phase``/``imnet`` become ``upsampler.*``.

Files are read with ``torch.load(weights_only=True)``: no arbitrary pickled code is executed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sr_models.registry import create_model, get_entry

METADATA_FORMAT = "sr-toolkit"
_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint cannot be read, recognised or loaded; the message names the file and the keys."""


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n < 100_000_000 and head[8:9] == b"{"


def _read_file(path: Path) -> tuple[Any, dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {exc}") from exc
        return tensors, meta
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a safetensors file and torch.load(weights_only=True) "
            f"failed ({first})"
        ) from exc
    return obj, {}


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def extract_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state_dict inside a loaded checkpoint object.

    Prefers ``params_ema`` over ``params`` (BasicSR), then ``state_dict`` / ``model``, else the object
    itself; strips ``module.`` / ``_orig_mod.`` prefixes. Raises CheckpointError naming ``source`` if no
    mapping of string keys to tensors is found.
    """
    if isinstance(obj, Mapping):
        for key in ("params_ema", "params", "state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                obj = inner
                break
        if isinstance(obj.get("sd"), Mapping):  # LIIF/LTE: {"model": {"name", "args", "sd"}, "epoch", ...}
            obj = obj["sd"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state_dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{source} is not a state_dict: entries {bad[:_MAX_LISTED]!r} are not tensors "
            f"(top-level keys: {list(obj)[:_MAX_LISTED]})"
        )
    return _strip_prefixes(obj)


# ----------------------------------------------------------------------------------------------
# inference of name and scale
# ----------------------------------------------------------------------------------------------


def _subpixel(sd: Mapping[str, torch.Tensor], key: str, group: int | None) -> int:
    w = sd[key]
    out_ch = w.shape[0]
    g = group if group is not None else w.shape[1]
    s = round((out_ch / g) ** 0.5)
    if s < 1 or g * s * s != out_ch:
        raise CheckpointError(f"{key} has shape {tuple(w.shape)}, which is not a sub-pixel conv of any scale")
    return s


_SST_BY_DIM = {180: "sst", 192: "sst-l", 224: "sst-xl-plus", 48: "sst-light"}


def infer_name_and_scale(
    sd: Mapping[str, torch.Tensor], *, hint: str = "", warn: bool = True
) -> tuple[str | None, int | None]:
    """Best guess of (registry name, scale) from a state_dict's keys and shapes; None when unknown.

    SST and SST+ (and -L, -light) share every shape: the base name is returned unless ``hint`` (e.g.
    the file name) contains "plus" or "+", and a warning notes the ambiguity.
    """
    keys = set(sd)
    if ("upsampler.coef.weight" in keys or "coef.weight" in keys) and "encoder.plk_filter" in keys:
        return "esc-lte", 4  # arbitrary scale (also the official esc_arb layout): 4 is the default render scale
    if "lk_channel" in keys and "to_img.weight" in keys:
        return "esc-fp", _subpixel(sd, "to_img.weight", 3)
    if "plk_filter" in keys and "skip.0.weight" in keys:
        return "esc-real", 4
    if "plk_filter" in keys and "upsampler.up_conv.weight" in keys:
        return "esc-rib", _subpixel(sd, "upsampler.up_conv.weight", 3)
    if "plk_filter" in keys and "to_img.weight" in keys:
        scale = _subpixel(sd, "to_img.weight", 3)
        if "blocks.0.lns.0.weight" in keys or sd["proj.weight"].shape[0] == 192:
            return "esc-xl", scale
        n_blocks = len({k.split(".")[1] for k in keys if k.startswith("blocks.")})
        return ("esc-light" if n_blocks == 3 else "esc"), scale
    if "body.0.0.attn.to_hidden" in keys and "proj.weight" in keys:
        base = _SST_BY_DIM.get(int(sd["proj.weight"].shape[0]))
        if base is None or "upsampler.up_conv.weight" not in keys:
            return None, None
        direct = "upsampler.feature_conv.weight" not in keys
        scale = _subpixel(sd, "upsampler.up_conv.weight", 3 if direct else None)
        if base == "sst-xl-plus":
            return base, scale
        lowered = hint.lower()
        if "plus" in lowered or "+" in lowered:
            return f"{base}-plus", scale
        if warn:
            warnings.warn(
                f"the checkpoint matches both {base!r} and {base + '-plus'!r} (same shapes, different "
                f"window sizes); using {base!r}. Pass name= to choose.",
                stacklevel=3,
            )
        return base, scale
    return None, None


# ----------------------------------------------------------------------------------------------
# comparison and loading
# ----------------------------------------------------------------------------------------------


def describe_mismatch(model_sd: Mapping[str, torch.Tensor], ckpt_sd: Mapping[str, torch.Tensor]) -> str:
    """A readable list of the first missing, unexpected and shape-mismatched keys ('' when none)."""
    missing = [k for k in model_sd if k not in ckpt_sd]
    unexpected = [k for k in ckpt_sd if k not in model_sd]
    shapes = [k for k in model_sd if k in ckpt_sd and tuple(model_sd[k].shape) != tuple(ckpt_sd[k].shape)]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(
            f"{k}: checkpoint {tuple(ckpt_sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
            for k in shapes[:_MAX_LISTED]))
    if missing:
        parts.append(f"{len(missing)} key(s) missing from the checkpoint: " + "; ".join(
            f"{k} {tuple(model_sd[k].shape)}" for k in missing[:_MAX_LISTED]))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) in the checkpoint: " + "; ".join(
            f"{k} {tuple(ckpt_sd[k].shape)}" for k in unexpected[:_MAX_LISTED]))
    return "\n  ".join(parts)


def _upsampler_key_and_group(model: nn.Module) -> tuple[str, int] | None:
    if hasattr(model, "upsampler") and hasattr(model.upsampler, "group_channels"):
        return "upsampler.up_conv", int(model.upsampler.group_channels)
    to_img = getattr(model, "to_img", None)
    if isinstance(to_img, nn.Conv2d):
        return "to_img", 3
    return None


def transfer_upsampler_scale(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resample the sub-pixel upsampler conv of ``sd`` to ``model``'s scale (official x2 -> x3/x4 start).

    Only the final sub-pixel conv changes (``to_img`` for ESC/ESC-FP, ``upsampler.up_conv`` for SST and
    ESC-RIB); see :func:`sr_layers.upsamplers.interpolate_subpixel_conv`.
    """
    from sr_layers.upsamplers import interpolate_subpixel_conv

    found = _upsampler_key_and_group(model)
    if found is None:
        raise CheckpointError(f"model {type(model).__name__} has no sub-pixel upsampler to resample")
    prefix, group = found
    out = dict(sd)
    w, b = interpolate_subpixel_conv(sd[f"{prefix}.weight"], sd.get(f"{prefix}.bias"), group, model.scale)
    out[f"{prefix}.weight"] = w
    if b is not None:
        out[f"{prefix}.bias"] = b
    return out


def _arbitrary_scale(name: str, config: dict[str, Any]) -> bool:
    from sr_models.arbitrary_scale import is_arbitrary_scale

    return is_arbitrary_scale(name, config)


def load_checkpoint(
    path: str | Path,
    name: str | None = None,
    scale: int | None = None,
    *,
    allow_scale_transfer: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build the model a checkpoint belongs to and load its weights with ``strict=True``.

    ``name``/``scale`` default to the file's metadata (our safetensors) or are inferred from the
    state_dict's keys and shapes. A scale different from the checkpoint's is an error unless
    ``allow_scale_transfer=True``, which bilinearly resamples the sub-pixel upsampler (the official way
    x3/x4 training starts from x2). ``overrides`` go to :func:`sr_models.create_model` (e.g.
    ``attn_backend``). Returns the model in eval mode on CPU.

    Raises CheckpointError (a ValueError) naming the file and, on a mismatch, the first differing keys
    and shapes.
    """
    path = Path(path)
    obj, meta = _read_file(path)
    sd = extract_state_dict(obj, source=f"checkpoint {path}")
    config: dict[str, Any] = {}
    if meta.get("format") == METADATA_FORMAT:
        meta_name = meta.get("model_name")
        meta_scale = int(meta["scale"]) if "scale" in meta else None
        config = json.loads(meta.get("config", "{}"))
        config.pop("scale", None)
        if name is not None and meta_name is not None and name != meta_name:
            raise CheckpointError(f"{path} holds model {meta_name!r}, but name={name!r} was requested")
        name = name or meta_name
        ckpt_scale = meta_scale
    else:
        inferred_name, ckpt_scale = infer_name_and_scale(sd, hint=path.name, warn=name is None)
        if name is None:
            name = inferred_name
    if name is None:
        raise CheckpointError(
            f"cannot infer the model of {path} from its keys (first keys: {list(sd)[:5]}); pass name="
        )
    try:
        entry = get_entry(name)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    build_config = {**config, **overrides}
    if entry.upgrade_checkpoint is not None:
        try:
            build_config, note = entry.upgrade_checkpoint(build_config, sd, meta.get("format") == METADATA_FORMAT)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        if note:
            warnings.warn(f"{path}: {note}", stacklevel=2)
    if ckpt_scale is None and name is not None:
        _, ckpt_scale = infer_name_and_scale(sd, hint=path.name, warn=False)
    if scale is None:
        scale = ckpt_scale
    if scale is None:
        raise CheckpointError(f"cannot infer the scale of {path}; pass scale=")
    need_transfer = ckpt_scale is not None and ckpt_scale != scale
    if need_transfer and _arbitrary_scale(name, build_config):
        need_transfer = False  # one set of weights for every scale; ``scale`` is the default render scale
    if need_transfer and not allow_scale_transfer:
        raise CheckpointError(
            f"{path} is a x{ckpt_scale} checkpoint but scale={scale} was requested; pass "
            "allow_scale_transfer=True to resample its upsampler (fine-tuning start)"
        )
    try:
        model = create_model(name, scale=scale, **build_config)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build model {name!r} at scale {scale}: {exc}") from exc
    if need_transfer:
        sd = transfer_upsampler_scale(sd, model)
    if getattr(model, "arbitrary_scale", False):
        from sr_models.arbitrary_scale import from_official_lte_keys

        sd = from_official_lte_keys(sd)
    problems = describe_mismatch(model.state_dict(), sd)
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match model {name!r} (scale {scale}):\n  {problems}"
        )
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------------------------


def save_safetensors(model: nn.Module, path: str | Path, *, extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` to a safetensors file with metadata ``format``, ``model_name``,
    ``scale`` and ``config`` (JSON), which :func:`load_checkpoint` reads back. Returns the path.

    The model must come from :func:`sr_models.create_model` (it needs ``model_name`` and ``scale``).
    """
    from safetensors.torch import save_file

    name = getattr(model, "model_name", None)
    scale = getattr(model, "scale", None)
    if not isinstance(name, str) or not isinstance(scale, int):
        raise ValueError("model must have model_name and scale attributes (build it with sr_models.create_model)")
    config = getattr(model, "config", {})
    meta = {"format": METADATA_FORMAT, "model_name": name, "scale": str(scale), "config": json.dumps(config)}
    if extra_metadata:
        clash = set(extra_metadata) & set(meta)
        if clash:
            raise ValueError(f"extra_metadata must not override reserved keys {sorted(clash)}")
        meta.update({str(k): str(v) for k, v in extra_metadata.items()})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


