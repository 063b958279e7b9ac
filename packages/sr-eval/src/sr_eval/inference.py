"""Inference helpers shared by sr-eval, sr-upscale and sr-train's validation.

* :func:`forward_padded` - one forward with the model's padding policy: pad the LR bottom/right up to
  ``model.pad_multiple`` (mode ``model.pad_mode``), run, crop the output to ``h*s x w*s``.
* :func:`forward_tiled` - overlapping tiles, each through :func:`forward_padded`, blended with a
  feathered weight (see its docstring for the exactness guarantee).
* :func:`ensemble_x8` - the x8 geometric ensemble (flips and transpose, averaged).
* precision ``fp32 | bf16 | fp16`` with a NaN/inf guard: a non-finite low-precision result is redone
  in fp32 for that tile (or image) and a :class:`PrecisionFallbackWarning` says so.
* :func:`upscale_tensor` - all of the above in one call; :func:`upscale_batches` groups same-size
  images into batches and backs off on out-of-memory.

Model attributes read (defaults when absent): ``scale`` (int, else inferred from one forward),
``pad_multiple`` (1), ``pad_mode`` ("reflect"), ``min_input_size`` (1).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_TILE_OVERLAP = 32
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionFallbackWarning(UserWarning):
    """A bf16/fp16 forward produced NaN or inf; that tile was recomputed in fp32."""


class InputTooSmallError(ValueError):
    """The LR image is smaller than the model's ``min_input_size``."""


@dataclass(frozen=True)
class PadPolicy:
    """How a model wants its input padded: to a ``multiple`` with ``mode``; smallest side ``min_size``."""

    multiple: int = 1
    mode: str = "reflect"
    min_size: int = 1


def pad_policy(model: nn.Module) -> PadPolicy:
    """The model's :class:`PadPolicy` from its optional attributes."""
    return PadPolicy(
        multiple=int(getattr(model, "pad_multiple", 1) or 1),
        mode=str(getattr(model, "pad_mode", "reflect") or "reflect"),
        min_size=int(getattr(model, "min_input_size", 1) or 1),
    )


def model_scale(model: nn.Module) -> int:
    """The model's integer upscaling factor (``model.scale``); a ValueError if it has none."""
    s = getattr(model, "scale", None)
    if s is None:
        raise ValueError("model has no 'scale' attribute; build it with sr_models.create_model")
    return int(s)


def _check_input(lr: torch.Tensor, min_size: int) -> None:
    if lr.ndim != 4:
        raise ValueError(f"lr must be a (B, 3, h, w) tensor, got shape {tuple(lr.shape)}")
    if lr.shape[1] != 3:
        raise ValueError(f"lr must have 3 (RGB) channels, got {lr.shape[1]}")
    if not lr.is_floating_point():
        raise TypeError(f"lr must be a float tensor in [0, 1], got dtype {lr.dtype}")
    h, w = lr.shape[-2:]
    if min(h, w) < min_size:
        raise InputTooSmallError(f"input {w}x{h} is smaller than the model's minimum side of {min_size} pixels")


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> torch.Tensor:
    """Pad (B, C, h, w) on the bottom and right up to multiples of ``multiple``.

    'reflect' padding larger than the image (which torch refuses) is done in several reflections.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    if mode != "reflect":
        return F.pad(x, (0, pw, 0, ph), mode=mode)
    while ph or pw:
        h, w = x.shape[-2:]
        sh = min(ph, h - 1) if h > 1 else 0
        sw = min(pw, w - 1) if w > 1 else 0
        if sh == 0 and sw == 0:  # 1-pixel image: reflection is undefined, repeat the pixel
            return F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        ph, pw = ph - sh, pw - sw
    return x


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def _run_model(model: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """One forward under the requested precision, fp32 again if the result is not finite."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    with _autocast(x.device, precision):
        y = model(x)
    y = y.float()
    if precision != "fp32" and not bool(torch.isfinite(y).all()):
        warnings.warn(
            f"{precision} forward gave NaN/inf for an input of size {tuple(x.shape[-2:])}; "
            "recomputed it in fp32",
            PrecisionFallbackWarning,
            stacklevel=3,
        )
        y = model(x).float()
    return y


@torch.no_grad()
def forward_padded(model: nn.Module, lr: torch.Tensor, *, precision: str = "fp32") -> torch.Tensor:
    """Whole-image forward with the model's pad policy.

    lr: (B, 3, h, w) float in [0, 1]. Returns (B, 3, h*s, w*s) float32 (not clamped).
    """
    pol = pad_policy(model)
    _check_input(lr, pol.min_size)
    h, w = lr.shape[-2:]
    s = model_scale(model)
    y = _run_model(model, pad_to_multiple(lr, pol.multiple, pol.mode), precision)
    if y.shape[-2] < h * s or y.shape[-1] < w * s:
        raise ValueError(f"model output {tuple(y.shape[-2:])} is smaller than {h}x{w} times scale {s}")
    return y[..., : h * s, : w * s]


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets of tiles ``[start, min(start + tile, length))`` covering ``[0, length)``.

    Every start is a multiple of ``multiple`` (a window-attention model's window), so each tile's
    windows coincide with the whole image's windows; consecutive tiles overlap by ``overlap`` or more.
    The stride is ``tile - overlap`` rounded down to a multiple of ``multiple`` (at least one multiple);
    the last tile starts at the first multiple from which the rest of the image fits in one tile, so
    it may be shorter and is padded at the image border exactly as the whole image is.
    ``tile`` must be a multiple of ``multiple`` and at least ``overlap + multiple``. One tile at 0 when ``tile >= length``.
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile_overlap must be in [0, tile), got {overlap} for tile {tile}")
    if tile % multiple or tile - overlap < multiple:
        raise ValueError(f"tile={tile} must be a multiple of {multiple} and exceed the overlap by {multiple} or more")
    if tile >= length:
        return [0]
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    last = math.ceil((length - tile) / multiple) * multiple
    return [*range(0, last, stride), last]


def effective_tile(tile: int, overlap: int, multiple: int) -> int:
    """The tile side :func:`forward_tiled` really uses for a requested ``tile``.

    ``tile`` rounded up to a multiple of ``multiple`` (the model's ``pad_multiple``) and to at least
    ``overlap + multiple`` (so consecutive tiles advance by one multiple or more).
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if overlap < 0:
        raise ValueError(f"tile_overlap must be >= 0, got {overlap}")
    m = max(1, int(multiple))
    return max(math.ceil(tile / m) * m, math.ceil((overlap + m) / m) * m)


def _ramp(length: int, left_overlap: int, right_overlap: int, device: torch.device) -> torch.Tensor:
    """1-D blending weight of a tile of ``length`` output pixels.

    Within an overlap of width L with a neighbour, the weight is 0 over the L/4 pixels nearest the
    tile's edge, rises linearly over the next L/2 and is 1 beyond. Two neighbours' ramps over the same
    overlap sum to 1.
    """
    x = torch.arange(length, dtype=torch.float32, device=device) + 0.5
    w = torch.ones(length, dtype=torch.float32, device=device)
    if left_overlap > 0:
        w = torch.minimum(w, ((x - left_overlap / 4) / (left_overlap / 2)).clamp(0, 1))
    if right_overlap > 0:
        w = torch.minimum(w, (((length - x) - right_overlap / 4) / (right_overlap / 2)).clamp(0, 1))
    return w


@torch.no_grad()
def forward_tiled(
    model: nn.Module,
    lr: torch.Tensor,
    *,
    tile: int,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    precision: str = "fp32",
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Tiled forward: LR tiles of ``tile`` x ``tile`` pixels overlapping by ``tile_overlap`` or more.

    ``tile`` is rounded up to a multiple of ``model.pad_multiple`` (and to at least ``tile_overlap``
    plus one multiple; :func:`effective_tile`) and tiles start at multiples of it
    (:func:`tile_starts`), so a window-attention model sees the same windows as on the whole image and
    only the last tile of a row/column is padded, at the image border, as the whole image is.
    Each tile goes through the model with its pad policy (and, with ``precision`` != fp32, its own
    NaN/inf guard). Tile outputs are blended with feathered weights that are zero within a quarter
    of the overlap of a tile's inner edges, so the result equals the whole-image output exactly
    whenever the model's receptive-field radius is at most ``tile_overlap / 4`` LR pixels; beyond
    that, the seams are linear cross-fades. Image borders are treated as in the whole-image pass.

    lr: (B, 3, h, w) float in [0, 1]. Returns (B, 3, h*s, w*s) float32. ``forward`` replaces the
    per-tile forward (default :func:`forward_padded`). ``progress(done, total)`` is called after
    every tile.
    """
    pol = pad_policy(model)
    _check_input(lr, pol.min_size)
    b, c, h, w = lr.shape
    s = model_scale(model)
    m = pol.multiple  # inner tiles need no padding of their own, and the stride must be >= m:
    tile = effective_tile(tile, tile_overlap, m)
    if tile < pol.min_size:
        raise ValueError(f"tile={tile} is smaller than the model's minimum input side {pol.min_size}")
    run = forward or (lambda t: forward_padded(model, t, precision=precision))
    ys, xs = tile_starts(h, tile, tile_overlap, pol.multiple), tile_starts(w, tile, tile_overlap, pol.multiple)
    if len(ys) == 1 and len(xs) == 1:
        y = run(lr)
        if progress is not None:
            progress(1, 1)
        return y
    total, done = len(ys) * len(xs), 0
    out = torch.zeros(b, c, h * s, w * s, dtype=torch.float32, device=lr.device)
    norm = torch.zeros(1, 1, h * s, w * s, dtype=torch.float32, device=lr.device)
    y_end = [min(y0 + tile, h) for y0 in ys]
    x_end = [min(x0 + tile, w) for x0 in xs]
    for i, (y0, y1) in enumerate(zip(ys, y_end, strict=True)):
        top = y_end[i - 1] - y0 if i > 0 else 0
        bottom = y1 - ys[i + 1] if i + 1 < len(ys) else 0
        wy = _ramp((y1 - y0) * s, top * s, bottom * s, lr.device)
        for j, (x0, x1) in enumerate(zip(xs, x_end, strict=True)):
            left = x_end[j - 1] - x0 if j > 0 else 0
            right = x1 - xs[j + 1] if j + 1 < len(xs) else 0
            wx = _ramp((x1 - x0) * s, left * s, right * s, lr.device)
            weight = wy[:, None] * wx[None, :]
            y = run(lr[:, :, y0:y1, x0:x1])
            out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] += y * weight
            norm[:, :, y0 * s : y1 * s, x0 * s : x1 * s] += weight
            del y
            done += 1
            if progress is not None:
                progress(done, total)
    return out.div_(norm)


# The 8 dihedral transforms as (hflip, vflip, transpose); each is its own inverse up to order.
_D4 = [(hf, vf, tr) for tr in (False, True) for vf in (False, True) for hf in (False, True)]


def _transform(x: torch.Tensor, hf: bool, vf: bool, tr: bool) -> torch.Tensor:
    if hf:
        x = x.flip(-1)
    if vf:
        x = x.flip(-2)
    if tr:
        x = x.transpose(-1, -2)
    return x


def _inverse(x: torch.Tensor, hf: bool, vf: bool, tr: bool) -> torch.Tensor:
    if tr:
        x = x.transpose(-1, -2)
    if vf:
        x = x.flip(-2)
    if hf:
        x = x.flip(-1)
    return x


@torch.no_grad()
def ensemble_x8(forward: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor) -> torch.Tensor:
    """x8 self-ensemble: mean over the 8 flips/transposes of ``inverse(forward(transform(lr)))``.

    lr: (B, C, h, w); ``forward`` maps it to (B, C, h*s, w*s).
    """
    acc = None
    for t in _D4:
        y = _inverse(forward(_transform(lr, *t).contiguous()), *t)
        acc = y if acc is None else acc.add_(y)
        del y
    return acc.div_(len(_D4))


@torch.no_grad()
def upscale_tensor(
    model: nn.Module,
    lr: torch.Tensor,
    *,
    tile: int | None = None,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    precision: str = "fp32",
    self_ensemble: bool = False,
    clamp: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Upscale a batch with the model's pad policy, optional tiling, x8 ensemble and precision.

    lr: (B, 3, h, w) or (3, h, w) float in [0, 1], on the model's device. Returns (B, 3, h*s, w*s)
    (or (3, h*s, w*s)) float32, clamped to [0, 1] unless ``clamp=False``. The caller puts the model
    in eval mode. ``tile=None`` runs the whole image at once. ``progress(done, total)`` is called
    after every tile (with the ensemble, ``total`` counts the tiles of all 8 passes). Memory-bounded
    tiling chosen from the free memory is :class:`sr_eval.runner.Upscaler`'s job.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    squeeze = lr.ndim == 3
    if squeeze:
        lr = lr.unsqueeze(0)
    if lr.ndim != 4:
        raise ValueError(f"lr must be (B, 3, h, w) or (3, h, w), got shape {tuple(lr.shape)}")
    passes = len(_D4) if self_ensemble else 1
    state = {"pass": 0}

    def tick(done: int, total: int) -> None:
        if progress is not None:
            progress(state["pass"] * total + done, passes * total)
        if done == total:
            state["pass"] += 1

    if tile is None:
        def fwd(t: torch.Tensor) -> torch.Tensor:
            y = forward_padded(model, t, precision=precision)
            tick(1, 1)
            return y
    else:
        def fwd(t: torch.Tensor) -> torch.Tensor:
            return forward_tiled(model, t, tile=tile, tile_overlap=tile_overlap, precision=precision, progress=tick)
    y = ensemble_x8(fwd, lr) if self_ensemble else fwd(lr)
    if clamp:
        y = y.clamp_(0, 1)
    return y[0] if squeeze else y



def is_oom(err: BaseException) -> bool:
    """True for CUDA/CPU out-of-memory errors (torch's, an allocator refusal, Python's MemoryError)."""
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def batches_by_size(sizes: Sequence[tuple[int, int]], max_batch: int) -> Iterator[list[int]]:
    """Group indices of images with equal (h, w) into batches of at most ``max_batch``, in first-seen order."""
    if max_batch < 1:
        raise ValueError(f"batch size must be >= 1, got {max_batch}")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, hw in enumerate(sizes):
        groups.setdefault(tuple(hw), []).append(i)
    for idx in groups.values():
        for k in range(0, len(idx), max_batch):
            yield idx[k : k + max_batch]


@torch.no_grad()
def upscale_batches(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    *,
    max_batch: int = 8,
    fallback_tile: int = 256,
    on_done: Callable[[int, torch.Tensor], None] | None = None,
    **kwargs,
) -> list[torch.Tensor | None]:
    """Upscale (3, h, w) images, batching same-size ones; halve the batch, then tile, on out-of-memory.

    Returns the (3, h*s, w*s) outputs in input order (or hands each to ``on_done(index, out)`` and
    stores None, to keep memory flat). ``kwargs`` go to :func:`upscale_tensor`.
    """
    outs: list[torch.Tensor | None] = [None] * len(images)
    device = next(iter(model.parameters()), torch.empty(0)).device
    pending = list(batches_by_size([tuple(im.shape[-2:]) for im in images], max_batch))
    while pending:
        idx = pending.pop(0)
        x = torch.stack([images[i] for i in idx]).to(device)
        try:
            y = upscale_tensor(model, x, **kwargs)
        except Exception as err:
            if not is_oom(err):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if len(idx) > 1:
                half = math.ceil(len(idx) / 2)
                pending[:0] = [idx[:half], idx[half:]]
                continue
            tile = kwargs.get("tile")
            new_tile = fallback_tile if tile is None else tile // 2
            if new_tile < max(pad_policy(model).min_size, 2 * kwargs.get("tile_overlap", DEFAULT_TILE_OVERLAP)):
                raise
            warnings.warn(f"out of memory; retrying with tile={new_tile}", RuntimeWarning, stacklevel=2)
            kwargs = {**kwargs, "tile": new_tile}
            pending.insert(0, idx)
            continue
        for k, i in enumerate(idx):
            if on_done is not None:
                on_done(i, y[k])
            else:
                outs[i] = y[k]
    return outs
