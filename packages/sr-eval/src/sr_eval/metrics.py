"""PSNR and SSIM exactly as BasicSR (and the papers built on it) compute them.

Protocol (conventions.md section 1), applied to every input kind:

1. quantise: float images in [0, 1] are clamped, multiplied by 255 and rounded (half to even) to
   integer levels, as ``tensor2img`` does; uint8 images are used as they are;
2. crop ``crop_border`` pixels from every side;
3. if ``y_channel``: MATLAB ``rgb2ycbcr`` luma, ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` with
   R, G, B in [0, 1], unrounded (BasicSR keeps it as float32, so do we);
4. PSNR: ``10 log10(255^2 / MSE)`` with the MSE over all pixels and channels in float64 (``inf`` when
   the images are equal); SSIM: 11x11 Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01*255)^2,
   C2 = (0.03*255)^2, mean of the SSIM map, channels averaged.

A dataset score is the mean of the per-image values (:func:`mean_score`).

Two implementations: a readable NumPy one (the reference, one image at a time) and a batched torch one
(float64, runs on whatever device the tensors are on). They agree to 1e-6 (tested).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

# MATLAB rgb2ycbcr luma row (R, G, B order), for RGB in [0, 1] -> Y in [16, 235].
_Y_COEFFS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2
_WINDOW_SIZE = 11
_WINDOW_SIGMA = 1.5

ImageLike = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------------
# NumPy reference (HWC)
# --------------------------------------------------------------------------------------------------


def _gaussian_1d() -> np.ndarray:
    """Normalised 1-D Gaussian of length 11, sigma 1.5 (what cv2.getGaussianKernel(11, 1.5) returns)."""
    x = np.arange(_WINDOW_SIZE, dtype=np.float64) - (_WINDOW_SIZE - 1) / 2
    g = np.exp(-(x**2) / (2 * _WINDOW_SIGMA**2))
    return g / g.sum()


def _quantize_np(img: np.ndarray, name: str) -> np.ndarray:
    """HWC uint8, or float in [0, 1] -> float64 integer levels in [0, 255], shape (H, W, C)."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"{name}: expected an HWC image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float64)
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"{name}: expected uint8 or float in [0, 1], got dtype {img.dtype}")
    # Same arithmetic as BasicSR's tensor2img: clamp, *255 in the input's precision, round.
    return (np.clip(img, 0, 1) * 255.0).round().astype(np.float64)


def _y_np(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 levels -> (H, W, 1) Y levels, with BasicSR's float32 round trips."""
    x = (img / 255.0).astype(np.float32)  # BasicSR: uint8 -> float32 / 255
    y = (x[..., 0] * np.float64(_Y_COEFFS[0]) + x[..., 1] * np.float64(_Y_COEFFS[1])
         + x[..., 2] * np.float64(_Y_COEFFS[2]) + _Y_OFFSET)
    y = (y / 255.0).astype(np.float32) * np.float32(255.0)
    return y.astype(np.float64)[..., None]


def _prepare_np(sr: np.ndarray, hr: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, ...]:
    a = _quantize_np(np.asarray(sr), "sr")
    b = _quantize_np(np.asarray(hr), "hr")
    if a.shape != b.shape:
        raise ValueError(f"sr and hr shapes differ: {a.shape} vs {b.shape}")
    _check_crop(crop_border, a.shape[0], a.shape[1])
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        if a.shape[2] != 3:
            raise ValueError(f"y_channel=True needs 3-channel RGB images, got {a.shape[2]} channels")
        a, b = _y_np(a), _y_np(b)
    return a, b


def psnr_numpy(sr: np.ndarray, hr: np.ndarray, *, crop_border: int, y_channel: bool = True) -> float:
    """PSNR in dB of two HWC images (uint8, or float in [0, 1]); BasicSR's ``calculate_psnr``."""
    a, b = _prepare_np(sr, hr, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _valid_filter_np(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """'valid' correlation of a 2-D array with the separable window outer(g, g)."""
    k = len(g)
    rows = np.lib.stride_tricks.sliding_window_view(x, k, axis=0) @ g  # (H-k+1, W)
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ g  # (H-k+1, W-k+1)


def _ssim_channel_np(a: np.ndarray, b: np.ndarray) -> float:
    g = _gaussian_1d()
    mu1, mu2 = _valid_filter_np(a, g), _valid_filter_np(b, g)
    mu1_sq, mu2_sq, mu12 = mu1**2, mu2**2, mu1 * mu2
    s1 = _valid_filter_np(a * a, g) - mu1_sq
    s2 = _valid_filter_np(b * b, g) - mu2_sq
    s12 = _valid_filter_np(a * b, g) - mu12
    ssim_map = ((2 * mu12 + _SSIM_C1) * (2 * s12 + _SSIM_C2)) / (
        (mu1_sq + mu2_sq + _SSIM_C1) * (s1 + s2 + _SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim_numpy(sr: np.ndarray, hr: np.ndarray, *, crop_border: int, y_channel: bool = True) -> float:
    """SSIM of two HWC images (uint8, or float in [0, 1]); BasicSR's ``calculate_ssim``."""
    a, b = _prepare_np(sr, hr, crop_border, y_channel)
    _check_ssim_size(a.shape[0], a.shape[1])
    return float(np.mean([_ssim_channel_np(a[..., c], b[..., c]) for c in range(a.shape[2])]))


# --------------------------------------------------------------------------------------------------
# Batched torch (BCHW)
# --------------------------------------------------------------------------------------------------


def _quantize_t(img: torch.Tensor, name: str) -> torch.Tensor:
    """(B, C, H, W) uint8, or float in [0, 1] -> float64 integer levels."""
    if img.dtype == torch.uint8:
        return img.to(torch.float64)
    if not img.is_floating_point():
        raise TypeError(f"{name}: expected uint8 or float in [0, 1], got dtype {img.dtype}")
    if img.dtype in (torch.float16, torch.bfloat16):
        img = img.float()
    return (img.clamp(0, 1) * 255.0).round().to(torch.float64)


def _y_t(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float64 levels -> (B, 1, H, W) Y levels, same casts as :func:`_y_np`."""
    x = (img / 255.0).to(torch.float32).to(torch.float64)
    y = x[:, 0] * _Y_COEFFS[0] + x[:, 1] * _Y_COEFFS[1] + x[:, 2] * _Y_COEFFS[2] + _Y_OFFSET
    y = (y / 255.0).to(torch.float32) * 255.0
    return y.to(torch.float64).unsqueeze(1)


def _as_batch(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.ndim == 3:
        return t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"{name}: expected a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(t.shape)}")
    return t


def _prepare_t(sr: torch.Tensor, hr: torch.Tensor, crop_border: int, y_channel: bool) -> tuple[torch.Tensor, ...]:
    a = _quantize_t(_as_batch(sr, "sr"), "sr")
    b = _quantize_t(_as_batch(hr, "hr"), "hr").to(a.device)
    if a.shape != b.shape:
        raise ValueError(f"sr and hr shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    _check_crop(crop_border, a.shape[2], a.shape[3])
    if crop_border:
        a = a[:, :, crop_border:-crop_border, crop_border:-crop_border]
        b = b[:, :, crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        if a.shape[1] != 3:
            raise ValueError(f"y_channel=True needs 3-channel RGB images, got {a.shape[1]} channels")
        a, b = _y_t(a), _y_t(b)
    return a, b


def psnr_torch(sr: torch.Tensor, hr: torch.Tensor, *, crop_border: int, y_channel: bool = True) -> torch.Tensor:
    """Per-image PSNR (dB) of (B, C, H, W) or (C, H, W) tensors -> float64 tensor of shape (B,).

    Float inputs are in [0, 1]; uint8 inputs are levels. ``inf`` where an image pair is identical.
    """
    a, b = _prepare_t(sr, hr, crop_border, y_channel)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0**2 / mse)  # mse == 0 -> +inf


def _ssim_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float64 levels -> (B,) SSIM, channels averaged."""
    bsz, c = a.shape[:2]
    g = torch.as_tensor(_gaussian_1d(), dtype=torch.float64, device=a.device)
    wy = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    wx = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, wy, groups=c), wx, groups=c)

    mu1, mu2 = filt(a), filt(b)
    mu1_sq, mu2_sq, mu12 = mu1**2, mu2**2, mu1 * mu2
    s1 = filt(a * a) - mu1_sq
    s2 = filt(b * b) - mu2_sq
    s12 = filt(a * b) - mu12
    ssim_map = ((2 * mu12 + _SSIM_C1) * (2 * s12 + _SSIM_C2)) / (
        (mu1_sq + mu2_sq + _SSIM_C1) * (s1 + s2 + _SSIM_C2)
    )
    return ssim_map.mean(dim=(2, 3)).mean(dim=1).reshape(bsz)


def ssim_torch(sr: torch.Tensor, hr: torch.Tensor, *, crop_border: int, y_channel: bool = True) -> torch.Tensor:
    """Per-image SSIM of (B, C, H, W) or (C, H, W) tensors -> float64 tensor of shape (B,)."""
    a, b = _prepare_t(sr, hr, crop_border, y_channel)
    _check_ssim_size(a.shape[2], a.shape[3])
    return _ssim_t(a, b)


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def _check_crop(crop_border: int, h: int, w: int) -> None:
    if not isinstance(crop_border, int) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")


def _check_ssim_size(h: int, w: int) -> None:
    if min(h, w) < _WINDOW_SIZE:
        raise ValueError(f"SSIM needs at least {_WINDOW_SIZE}x{_WINDOW_SIZE} pixels after cropping, got {h}x{w}")


def _dispatch(fn_np, fn_t, sr: ImageLike, hr: ImageLike, crop_border: int, y_channel: bool):
    if isinstance(sr, torch.Tensor) or isinstance(hr, torch.Tensor):
        if not (isinstance(sr, torch.Tensor) and isinstance(hr, torch.Tensor)):
            raise TypeError("sr and hr must both be numpy arrays or both be torch tensors")
        out = fn_t(sr, hr, crop_border=crop_border, y_channel=y_channel)
        return float(out[0]) if sr.ndim == 3 else out
    if isinstance(sr, np.ndarray) and isinstance(hr, np.ndarray):
        return fn_np(sr, hr, crop_border=crop_border, y_channel=y_channel)
    raise TypeError(f"sr and hr must be numpy arrays or torch tensors, got {type(sr).__name__}, {type(hr).__name__}")


def psnr(sr: ImageLike, hr: ImageLike, *, crop_border: int, y_channel: bool = True) -> float | torch.Tensor:
    """PSNR in dB, BasicSR/paper convention (see the module docstring).

    Inputs: numpy HWC (uint8, or float in [0, 1]) -> float; torch (C, H, W) -> float;
    torch (B, C, H, W) -> float64 tensor (B,) of per-image values on the inputs' device.
    Paper convention for classical SR: ``crop_border=scale, y_channel=True``.
    """
    return _dispatch(psnr_numpy, psnr_torch, sr, hr, crop_border, y_channel)


def ssim(sr: ImageLike, hr: ImageLike, *, crop_border: int, y_channel: bool = True) -> float | torch.Tensor:
    """SSIM, BasicSR/paper convention; same input kinds and return types as :func:`psnr`."""
    return _dispatch(ssim_numpy, ssim_torch, sr, hr, crop_border, y_channel)


def mean_score(values: Iterable[float]) -> float:
    """Dataset score: the mean of per-image values (not a PSNR of pooled MSE)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_score: no values")
    return float(np.mean(vals))
