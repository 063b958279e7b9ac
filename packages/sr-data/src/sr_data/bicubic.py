"""MATLAB-compatible bicubic ``imresize`` for numpy HWC arrays and torch (B)CHW tensors.

The algorithm is MATLAB's ``imresize(img, scale, 'bicubic')`` (and BasicSR's
``basicsr/utils/matlab_functions.py``), applied separably, height first then width:

* output length ``ceil(in_len * scale)`` (``scale = out/in`` per axis when ``size`` is given);
* Keys cubic kernel with ``a = -0.5``, support 4; when downscaling the kernel is stretched to
  ``4 / scale`` and scaled by ``scale`` (antialiasing);
* MATLAB's half-pixel index mapping ``u = x / scale + 0.5 * (1 - 1 / scale)`` for 1-based ``x``;
* ``ceil(width) + 2`` taps per output sample, weights normalised to sum to one;
* symmetric border handling (mirror with the edge sample repeated), done by folding the taps that
  fall outside the image back onto it (MATLAB's ``[1..n, n..1]`` modulo indexing).

Everything is computed in floating point with no intermediate rounding; round and clip once when
saving. The per-axis weights are computed in float64 and cached per ``(in_len, out_len, scale)``.
The resize itself is a banded sum over the taps (no dense matmul), so it is unaffected by TF32
matmul settings and costs ``O(out_len * taps)`` per row.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TypeVar, overload

import numpy as np
import torch

__all__ = ["imresize", "resize_weights"]

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5 (MATLAB's ``cubic``), float64 in and out."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


@functools.lru_cache(maxsize=256)
def resize_weights(
    in_len: int, out_len: int, scale: float, antialiasing: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis taps of MATLAB bicubic resizing.

    Returns ``(index, weight)``, both of shape ``(out_len, taps)``: ``index`` int64 in
    ``[0, in_len)`` (already folded by symmetric border handling), ``weight`` float64 with rows
    summing to one. Output sample ``i`` is ``sum_k weight[i, k] * input[index[i, k]]``.
    The arrays are cached and read-only.
    """
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        kernel_width = kernel_width / scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = math.ceil(kernel_width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    dist = u[:, None] - idx
    if scale < 1 and antialiasing:
        weight = scale * _cubic(dist * scale)
    else:
        weight = _cubic(dist)
    weight = weight / weight.sum(axis=1, keepdims=True)
    # Drop leading/trailing tap columns that are zero for every output sample (as MATLAB does;
    # this only trims work, the sums are unchanged).
    keep = np.any(weight != 0, axis=0)
    first, last = int(np.argmax(keep)), taps - int(np.argmax(keep[::-1]))
    idx, weight = idx[:, first:last], weight[:, first:last]
    # Symmetric padding: 0-based index j maps through the period-2n sequence [0..n-1, n-1..0].
    zero_based = idx.astype(np.int64) - 1
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    folded = mirror[np.mod(zero_based, 2 * in_len)]
    folded.setflags(write=False)
    weight.setflags(write=False)
    return folded, weight


def _output_len(in_len: int, scale: float) -> int:
    exact = in_len * scale
    nearest = round(exact)
    # ceil() with a tolerance so that e.g. 3 * (1/3) style float noise does not add a pixel.
    if abs(exact - nearest) < 1e-9 * max(1.0, abs(exact)):
        return int(nearest)
    return math.ceil(exact)


def _plan(
    in_hw: tuple[int, int], scale: float | Sequence[float] | None, size: Sequence[int] | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale= or size=")
    if size is not None:
        if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
            raise ValueError(f"imresize: size must be two positive integers (h, w), got {size!r}")
        out_hw = (int(size[0]), int(size[1]))
        return out_hw, (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])
    assert scale is not None
    scales = (float(scale), float(scale)) if np.isscalar(scale) else tuple(float(s) for s in scale)  # type: ignore[arg-type]
    if len(scales) != 2 or not all(math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"imresize: scale must be a positive number (or two), got {scale!r}")
    out_hw = (_output_len(in_hw[0], scales[0]), _output_len(in_hw[1], scales[1]))
    if min(out_hw) < 1:
        raise ValueError(f"imresize: scale {scale!r} gives an empty output from size {in_hw}")
    return out_hw, (scales[0], scales[1])


def _resize_axis_numpy(x: np.ndarray, axis: int, out_len: int, scale: float, aa: bool) -> np.ndarray:
    idx, w = resize_weights(x.shape[axis], out_len, scale, aa)
    x = np.moveaxis(x, axis, 0)
    out = np.zeros((out_len, *x.shape[1:]), dtype=np.float64)
    extra = (1,) * (x.ndim - 1)
    for k in range(idx.shape[1]):
        out += w[:, k].reshape(out_len, *extra) * x[idx[:, k]]
    return np.moveaxis(out, 0, axis)


def _resize_axis_torch(x: torch.Tensor, dim: int, out_len: int, scale: float, aa: bool) -> torch.Tensor:
    idx_np, w_np = resize_weights(x.shape[dim], out_len, scale, aa)
    idx = torch.from_numpy(np.array(idx_np)).to(x.device)
    w = torch.from_numpy(np.array(w_np)).to(device=x.device, dtype=x.dtype)
    shape = [1] * x.ndim
    shape[dim] = out_len
    out = None
    for k in range(idx.shape[1]):
        term = x.index_select(dim, idx[:, k]) * w[:, k].reshape(shape)
        out = term if out is None else out.add_(term)
    assert out is not None
    return out


@overload
def imresize(
    img: np.ndarray,
    scale: float | Sequence[float] | None = ...,
    size: Sequence[int] | None = ...,
    *,
    antialiasing: bool = ...,
) -> np.ndarray: ...
@overload
def imresize(
    img: torch.Tensor,
    scale: float | Sequence[float] | None = ...,
    size: Sequence[int] | None = ...,
    *,
    antialiasing: bool = ...,
) -> torch.Tensor: ...
def imresize(img, scale=None, size=None, *, antialiasing=True):
    """Resize like MATLAB ``imresize(img, scale, 'bicubic')``.

    Args:
        img: numpy float array ``(H, W, C)`` or ``(H, W)``; or torch float tensor ``(C, H, W)``,
            ``(B, C, H, W)`` (any leading dims; the last two are H, W), on any device.
            Integer inputs are refused (convert to float first, e.g. ``img / 255``).
        scale: the MATLAB factor: ``0.25`` makes an image four times smaller, ``4`` four times
            larger (a pair ``(sh, sw)`` is allowed). Output size is ``ceil(in * scale)``.
        size: output ``(h, w)`` instead of ``scale``; the per-axis scale is then ``out / in``.
        antialiasing: stretch the kernel when downscaling (MATLAB's default, True).

    Returns:
        The same kind of object (numpy array or tensor, same layout). numpy: float32 in gives
        float32 out, other floats give float64 (computed in float64). torch: same dtype as the
        input (float16/bfloat16 are computed in float32); float32 is computed in float32.
        Values are not clipped or rounded.
    """
    if isinstance(img, np.ndarray):
        if not np.issubdtype(img.dtype, np.floating):
            raise TypeError(
                f"imresize: img must be a float array, got dtype {img.dtype} (divide by 255 first)"
            )
        if img.ndim not in (2, 3):
            raise ValueError(f"imresize: numpy img must be (H, W) or (H, W, C), got shape {img.shape}")
        (oh, ow), (sh, sw) = _plan(img.shape[:2], scale, size)
        x = img.astype(np.float64, copy=False)
        x = _resize_axis_numpy(x, 0, oh, sh, antialiasing)
        x = _resize_axis_numpy(x, 1, ow, sw, antialiasing)
        return x.astype(np.float32) if img.dtype == np.float32 else x
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise TypeError(
                f"imresize: img must be a float tensor, got dtype {img.dtype} (divide by 255 first)"
            )
        if img.ndim < 2:
            raise ValueError(f"imresize: tensor img must be (..., H, W), got shape {tuple(img.shape)}")
        (oh, ow), (sh, sw) = _plan((img.shape[-2], img.shape[-1]), scale, size)
        work = img if img.dtype in (torch.float32, torch.float64) else img.float()
        work = _resize_axis_torch(work, work.ndim - 2, oh, sh, antialiasing)
        work = _resize_axis_torch(work, work.ndim - 1, ow, sw, antialiasing)
        return work.to(img.dtype)
    raise TypeError(f"imresize: img must be a numpy array or a torch tensor, got {type(img).__name__}")
