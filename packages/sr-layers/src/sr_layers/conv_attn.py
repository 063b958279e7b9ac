"""ESC's convolutional attention: a shared large kernel plus per-sample dynamic 3x3 kernels.

The first ``pdim`` channels of the input (the "16-channel split") are mixed by

* one dense ``pdim x pdim x 13 x 13`` kernel that is **shared by the whole network** (a parameter of
  the model, passed in at call time) and averaged over its 8 dihedral flips/rotations
  (:func:`d4_average`), and
* a depthwise 3x3 kernel generated per sample from the globally pooled features.

The remaining channels pass unchanged; a 1x1 ``aggr`` conv mixes everything. ESC-FP's decomposed
variant (:class:`DecomposedConvAttn`) replaces the dense kernel by a 1x1 channel mix followed by a
per-sample depthwise 13x13 kernel ``lk_spatial + zero-padded dynamic 3x3``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def d4_average(kernel: torch.Tensor) -> torch.Tensor:
    """Average a (O, I, k, k) kernel over the 8 dihedral transforms of its spatial axes.

    Summation order follows the official ``_geo_ensemble`` (identity, h-flip, v-flip, hv-flip, R,
    R∘h-flip, R∘v-flip, R∘hv-flip with R = rot90(k=-1)), then division by 8, so results are bit-exact.
    Returns a tensor of the same shape and dtype, invariant under flips and 90-degree rotations.
    """
    if kernel.ndim != 4 or kernel.shape[-1] != kernel.shape[-2]:
        raise ValueError(f"kernel must be (O, I, k, k), got {tuple(kernel.shape)}")
    rot = torch.rot90(kernel, -1, [2, 3])
    total = (
        kernel + kernel.flip([3]) + kernel.flip([2]) + kernel.flip([2, 3])
        + rot + rot.flip([3]) + rot.flip([2]) + rot.flip([2, 3])
    )
    return total / 8


def per_sample_depthwise_conv(x: torch.Tensor, kernels: torch.Tensor, padding: int) -> torch.Tensor:
    """Depthwise conv of each sample with its own kernels.

    x: (B, C, H, W); kernels: (B*C, 1, k, k) (sample-major). Returns (B, C, H', W').
    """
    b, c = x.shape[:2]
    y = F.conv2d(rearrange(x, "b c h w -> 1 (b c) h w"), kernels, padding=padding, groups=b * c)
    return rearrange(y, "1 (b c) h w -> b c h w", b=b, c=c)


class _SharedKernelMixer(nn.Module):
    """The ``plk`` submodule of ESC's ConvAttn: dynamic-kernel generator ``dwc_proj`` (keys .1, .3)."""

    def __init__(self, pdim: int, dynamic_size: int = 3, zero_init: bool = True) -> None:
        super().__init__()
        self.pdim = pdim
        self.dynamic_size = dynamic_size
        self.dwc_proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(pdim, pdim // 2, 1),
            nn.GELU(),
            nn.Conv2d(pdim // 2, pdim * dynamic_size * dynamic_size, 1),
        )
        if zero_init:
            nn.init.zeros_(self.dwc_proj[-1].weight)
            nn.init.zeros_(self.dwc_proj[-1].bias)

    def forward(self, x: torch.Tensor, large_kernel: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        p, s = self.pdim, self.dynamic_size
        x1, x2 = x[:, :p], x[:, p:]
        dyn = self.dwc_proj(x1).reshape(-1, 1, s, s)
        y1 = F.conv2d(x1, large_kernel, padding=large_kernel.shape[-1] // 2)
        y1 = y1 + per_sample_depthwise_conv(x1, dyn, s // 2)
        if inplace:  # the official eval path: overwrite the first pdim channels, no full-size copy
            x[:, :p] = y1
            return x
        return torch.cat([y1, x2], dim=1)


class ConvAttn(nn.Module):
    """ESC's ConvAttn (official ``ConvAttnWrapper``): keys ``plk.dwc_proj.{1,3}`` and ``aggr``.

    ``forward(x, large_kernel)``: x (B, dim, H, W); ``large_kernel`` (pdim, pdim, k, k), already
    D4-averaged by the caller (it is shared by every ConvAttn of a network). Returns (B, dim, H, W).
    Works for any batch size (per-sample dynamic kernels through a grouped conv).
    """

    def __init__(self, dim: int, pdim: int, dynamic_size: int = 3) -> None:
        super().__init__()
        if not 0 < pdim <= dim:
            raise ValueError(f"pdim must be in (0, dim={dim}], got {pdim}")
        self.plk = _SharedKernelMixer(pdim, dynamic_size)
        self.aggr = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, large_kernel: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """(B, dim, H, W), (pdim, pdim, k, k) -> (B, dim, H, W).

        ``inplace=True`` writes the mixed channels into ``x`` instead of concatenating (saves one
        feature map of peak memory at inference, like the official eval path); only for a temporary
        ``x`` with autograd off.
        """
        return self.aggr(self.plk(x, large_kernel, inplace))


class _DecomposedMixer(nn.Module):
    """The ``plk`` submodule of ESC-FP: generator ``proj`` (keys .1, .3), pdim -> pdim//4 -> 9 pdim."""

    def __init__(self, pdim: int, dynamic_size: int = 3) -> None:
        super().__init__()
        self.pdim = pdim
        self.dynamic_size = dynamic_size
        self.proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(pdim, pdim // 4, 1),
            nn.GELU(),
            nn.Conv2d(pdim // 4, pdim * dynamic_size * dynamic_size, 1),
        )

    def forward(self, x: torch.Tensor, lk_channel: torch.Tensor, lk_spatial: torch.Tensor) -> torch.Tensor:
        p, s = self.pdim, self.dynamic_size
        x1, x2 = x[:, :p], x[:, p:]
        b = x1.shape[0]
        size = lk_spatial.shape[-1]
        n_pad = (size - s) // 2
        dyn = F.pad(self.proj(x1).reshape(-1, 1, s, s), (n_pad, n_pad, n_pad, n_pad))
        y1 = F.conv2d(x1, lk_channel)
        y1 = per_sample_depthwise_conv(y1, dyn + lk_spatial.repeat(b, 1, 1, 1), size // 2)
        return torch.cat([y1, x2], dim=1)


class DecomposedConvAttn(nn.Module):
    """ESC-FP's decomposed ConvAttn: keys ``plk.proj.{1,3}`` and ``aggr``.

    ``forward(x, lk_channel, lk_spatial)``: x (B, dim, H, W); lk_channel (pdim, pdim, 1, 1);
    lk_spatial (pdim, 1, k, k). Returns (B, dim, H, W).
    """

    def __init__(self, dim: int, pdim: int, dynamic_size: int = 3) -> None:
        super().__init__()
        if not 0 < pdim <= dim:
            raise ValueError(f"pdim must be in (0, dim={dim}], got {pdim}")
        self.plk = _DecomposedMixer(pdim, dynamic_size)
        self.aggr = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, lk_channel: torch.Tensor, lk_spatial: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        return self.aggr(self.plk(x, lk_channel, lk_spatial))
