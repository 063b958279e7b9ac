"""Upsamplers of ESC/SST, image skips, and the sub-pixel weight interpolation for scale transfer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

UPSAMPLER_KINDS = ("pixelshuffle_direct", "pixelshuffle")


def nearest_skip(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour upsampling of the LR image (B, 3, h, w) -> (B, 3, h*s, w*s).

    Equal to adding ``repeat_interleave(x, s*s, dim=1)`` before ``pixel_shuffle(s)``."""
    return F.interpolate(x, scale_factor=scale, mode="nearest")


def bicubic_skip(x: torch.Tensor, scale: int) -> torch.Tensor:
    """PyTorch bicubic upsampling (align_corners=False), ESC-FP's image skip. (B,C,h,w)->(B,C,hs,ws)."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic")


def pixel_shuffle_with_nearest(feat: torch.Tensor, image: torch.Tensor, scale: int) -> torch.Tensor:
    """``pixel_shuffle(feat + repeat_interleave(image, s^2, 1), s)`` exactly as the official code.

    feat: (B, 3 s^2, h, w); image: (B, 3, h, w). Returns (B, 3, h s, w s).
    """
    return F.pixel_shuffle(feat + torch.repeat_interleave(image, scale * scale, dim=1), scale)


class Upsampler(nn.Module):
    """SST's upsampler (keys under ``upsampler.``).

    * ``pixelshuffle_direct``: ``up_conv`` 3x3 dim->3 s^2; ``PS(up_conv(f) + repeat(x))``.
    * ``pixelshuffle``: ``feature_conv`` 3x3 dim->m, LeakyReLU(0.1), ``up_conv`` 3x3 m->m s^2 (one
      conv for any s), PS(s), ``final_conv`` 3x3 m->3, plus nearest-upsampled x.

    forward(feat (B, dim, h, w), image (B, 3, h, w) or None) -> (B, 3, h s, w s).
    """

    def __init__(self, dim: int, scale: int, kind: str = "pixelshuffle_direct", intermediate_dim: int = 64) -> None:
        super().__init__()
        if kind not in UPSAMPLER_KINDS:
            raise ValueError(f"upsampler kind must be one of {UPSAMPLER_KINDS}, got {kind!r}")
        self.scale, self.kind = scale, kind
        if kind == "pixelshuffle_direct":
            self.up_conv = nn.Conv2d(dim, 3 * scale * scale, 3, padding=1)
        else:
            self.feature_conv = nn.Conv2d(dim, intermediate_dim, 3, padding=1)
            self.up_conv = nn.Conv2d(intermediate_dim, intermediate_dim * scale * scale, 3, padding=1)
            self.final_conv = nn.Conv2d(intermediate_dim, 3, 3, padding=1)

    @property
    def group_channels(self) -> int:
        """Channels per sub-pixel position of ``up_conv`` (3 for direct, m otherwise)."""
        return self.up_conv.out_channels // (self.scale * self.scale)

    def forward(self, feat: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "pixelshuffle_direct":
            y = self.up_conv(feat)
            if image is not None:
                return pixel_shuffle_with_nearest(y, image, self.scale)
            return F.pixel_shuffle(y, self.scale)
        y = F.leaky_relu(self.feature_conv(feat), negative_slope=0.1)
        y = self.final_conv(F.pixel_shuffle(self.up_conv(y), self.scale))
        if image is not None:
            y = y + nearest_skip(image, self.scale)
        return y

    def extra_repr(self) -> str:
        return f"scale={self.scale}, kind={self.kind}"


def subpixel_scale(out_channels: int, group_channels: int) -> int:
    """The upscaling factor s of a sub-pixel conv with ``out_channels = group_channels * s^2``."""
    s = round(math.sqrt(out_channels / group_channels))
    if s < 1 or group_channels * s * s != out_channels:
        raise ValueError(
            f"{out_channels} output channels are not {group_channels} * s^2 for an integer s"
        )
    return s


def interpolate_subpixel_conv(
    weight: torch.Tensor, bias: torch.Tensor | None, group_channels: int, scale_out: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample a sub-pixel conv from scale s_in to ``scale_out`` by bilinear interpolation.

    ``weight``: (g s_in^2, Cin, kh, kw) with channels laid out (g, s_in, s_in); viewed as
    (Cin kh kw, g, s_in, s_in), resized to (scale_out, scale_out) with ``align_corners=False`` and laid
    back out; ``bias`` (g s_in^2,) likewise. This is how the official code starts x3/x4 from x2.
    Returns (weight (g s_out^2, Cin, kh, kw), bias (g s_out^2,) or None).
    """
    s_in = subpixel_scale(weight.shape[0], group_channels)
    kh, kw = weight.shape[-2:]
    w = rearrange(weight, "(g rh rw) cin kh kw -> (cin kh kw) g rh rw", g=group_channels, rh=s_in, rw=s_in)
    w = F.interpolate(w, size=(scale_out, scale_out), mode="bilinear", align_corners=False)
    w = rearrange(w, "(cin kh kw) g rh rw -> (g rh rw) cin kh kw", kh=kh, kw=kw)
    b = None
    if bias is not None:
        b = rearrange(bias, "(g rh rw) -> 1 g rh rw", g=group_channels, rh=s_in, rw=s_in)
        b = F.interpolate(b, size=(scale_out, scale_out), mode="bilinear", align_corners=False)
        b = rearrange(b, "1 g rh rw -> (g rh rw)")
    return w, b
