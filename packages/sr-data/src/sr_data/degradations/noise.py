"""Additive Gaussian and Poisson noise, colour or gray, with per-image strengths (Real-ESRGAN section 3.1).

Images are ``(B, 3, H, W)`` float in [0, 1]; strengths and gray flags are ``(B,)`` tensors. "Gray"
noise is one noise plane added to all three channels (luminance noise); colour noise is drawn per
channel. Every draw comes from the ``generator`` argument.
"""

from __future__ import annotations

import torch

# ITU-R BT.601 luma weights (torchvision's rgb_to_grayscale, which Real-ESRGAN uses)
_LUMA = (0.2989, 0.587, 0.114)


def rgb_to_gray(img: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, 1, H, W)`` BT.601 luma."""
    w = torch.tensor(_LUMA, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True)


def gaussian_noise(shape: torch.Size, sigma: torch.Tensor, gray: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise ``(B, C, H, W)`` with standard deviation ``sigma[b] / 255`` per image; images with
    ``gray[b]`` get one plane repeated over the channels. Both colour and gray planes are drawn for
    every image (a fixed number of draws per call)."""
    b, c, h, w = shape
    dev = generator.device
    colour = torch.randn((b, c, h, w), generator=generator, device=dev)
    mono = torch.randn((b, 1, h, w), generator=generator, device=dev).expand(b, c, h, w)
    g = gray.view(-1, 1, 1, 1).to(colour.dtype)
    return (g * mono + (1 - g) * colour) * (sigma.view(-1, 1, 1, 1).to(colour.dtype) / 255.0)


def _levels(img: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the number of distinct 8-bit values in each image, rounded up to a power of two
    (BasicSR's ``vals``: the image is treated as having that many photon levels)."""
    q = (img.clamp(0, 1) * 255).round().long().flatten(1)
    present = torch.zeros(q.shape[0], 256, device=img.device).scatter_(1, q, 1.0)
    n = present.sum(dim=1).clamp_min(1)
    return torch.exp2(torch.ceil(torch.log2(n)))


def poisson_noise(img: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Signal-dependent noise ``(B, C, H, W)``: ``scale[b] * (Poisson(x * L) / L - x)`` with ``x`` the image
    rounded to 8 bits and ``L`` its level count (:func:`_levels`); gray images use the luma plane."""
    x = (img.clamp(0, 1) * 255).round() / 255
    levels = _levels(x).view(-1, 1, 1, 1)
    colour = torch.poisson(x * levels, generator=generator) / levels - x
    y = (rgb_to_gray(img).clamp(0, 1) * 255).round() / 255
    levels_y = _levels(y).view(-1, 1, 1, 1)
    mono = (torch.poisson(y * levels_y, generator=generator) / levels_y - y).expand_as(colour)
    g = gray.view(-1, 1, 1, 1).to(img.dtype)
    return (g * mono + (1 - g) * colour) * scale.view(-1, 1, 1, 1).to(img.dtype)
