"""Per-image 2-D filtering and unsharp masking on ``(B, C, H, W)`` batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from sr_data.degradations.kernels import gaussian_kernel_1d


def pad_reflect(img: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` by ``pad`` on every side: reflect (BasicSR's ``filter2D``), or replicate where
    the image is too small to reflect (side <= pad, which a strong first downscale can produce on a
    small patch; Real-ESRGAN's 256-pixel patches never get there)."""
    if pad == 0:
        return img
    mode = "reflect" if min(img.shape[-2:]) > pad else "replicate"
    return F.pad(img, (pad, pad, pad, pad), mode=mode)


def filter2d(img: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter each image with its own kernel (correlation, as BasicSR's ``filter2D``).

    img: ``(B, C, H, W)`` float; kernels: ``(B, K, K)`` or ``(K, K)`` float with K odd. Returns
    ``(B, C, H, W)`` in img's dtype; borders are reflected (see :func:`pad_reflect`).
    """
    if kernels.dim() == 2:
        kernels = kernels.unsqueeze(0).expand(img.shape[0], -1, -1)
    b, c, _, _ = img.shape
    k = kernels.shape[-1]
    if kernels.shape[0] != b or kernels.shape[-2] != k or k % 2 == 0:
        raise ValueError(f"filter2d: kernels must be (B={b}, K, K) with K odd, got {tuple(kernels.shape)}")
    x = rearrange(pad_reflect(img, k // 2), "b c h w -> 1 (b c) h w")
    weight = rearrange(kernels.to(img.dtype), "b kh kw -> b 1 kh kw").repeat_interleave(c, dim=0)
    return rearrange(F.conv2d(x, weight, groups=b * c), "1 (b c) h w -> b c h w", b=b)


def separable_blur(img: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Blur ``(B, C, H, W)`` with the same separable kernel ``taps (K,)`` along rows then columns
    (reflected borders); equal to :func:`filter2d` with ``outer(taps, taps)``, in O(K) per pixel."""
    b = img.shape[0]
    k = taps.numel()
    x = rearrange(pad_reflect(img, k // 2), "b c h w -> (b c) 1 h w")
    t = taps.to(img.dtype)
    x = F.conv2d(x, t.view(1, 1, 1, k))
    x = F.conv2d(x, t.view(1, 1, k, 1))
    return rearrange(x, "(b c) 1 h w -> b c h w", b=b)


def usm_sharpen(img: torch.Tensor, *, radius: int = 50, sigma: float = 0.0, weight: float = 0.5,
                threshold: float = 10.0) -> torch.Tensor:
    """Unsharp masking of ``(B, C, H, W)`` images in [0, 1] (Real-ESRGAN sharpens the ground truth with it).

    BasicSR's ``USMSharp`` rule: blur with a Gaussian of side ``2 * radius + 1`` (sigma 0: OpenCV's
    rule, 8.0 for radius 50), residual = img - blur, hard mask ``|residual| * 255 > threshold``,
    softened by the same blur; output ``mask * clip(img + weight * residual, 0, 1) + (1 - mask) * img``.
    """
    taps = gaussian_kernel_1d(2 * radius + 1, sigma, img.device)
    residual = img - separable_blur(img, taps)
    mask = (residual.abs() * 255 > threshold).to(img.dtype)
    soft = separable_blur(mask, taps)
    sharp = (img + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * img
