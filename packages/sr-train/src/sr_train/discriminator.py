"""Real-ESRGAN's U-Net discriminator with spectral normalisation (``UNetDiscriminatorSN``).

Wang et al. 2021 (Real-ESRGAN), section 3.3: a U-Net with skip connections that outputs a realness
logit per pixel, spectral normalisation on every convolution except the first and the last. Layout,
for ``nf = num_feat``: ``conv0`` 3->nf (3x3); down ``conv1..3`` nf->2nf->4nf->8nf (4x4, stride 2);
up, each after a 2x bilinear upsample (half-pixel centres), ``conv4..6`` 8nf->4nf->2nf->nf (3x3),
with the encoder feature of the same size added when ``skip_connection``; ``conv7``, ``conv8``
nf->nf (3x3); ``conv9`` nf->1 (3x3). Leaky ReLU 0.2 after every convolution but the last; the
spectrally normalised convolutions have no bias. Parameter names (``conv1.weight_orig`` ...) match
Real-ESRGAN's discriminator checkpoints (``torch.nn.utils.spectral_norm``, one power iteration per
forward in training mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


class UNetDiscriminatorSN(nn.Module):
    """``(B, 3, H, W) -> (B, 1, H, W)`` realness logits; H and W must be multiples of 8."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        nf = num_feat
        self.skip_connection = skip_connection

        def sn(cin: int, cout: int, k: int, stride: int) -> nn.Module:
            return spectral_norm(nn.Conv2d(cin, cout, k, stride, 1, bias=False))

        self.conv0 = nn.Conv2d(num_in_ch, nf, 3, 1, 1)
        self.conv1 = sn(nf, nf * 2, 4, 2)
        self.conv2 = sn(nf * 2, nf * 4, 4, 2)
        self.conv3 = sn(nf * 4, nf * 8, 4, 2)
        self.conv4 = sn(nf * 8, nf * 4, 3, 1)
        self.conv5 = sn(nf * 4, nf * 2, 3, 1)
        self.conv6 = sn(nf * 2, nf, 3, 1)
        self.conv7 = sn(nf, nf, 3, 1)
        self.conv8 = sn(nf, nf, 3, 1)
        self.conv9 = nn.Conv2d(nf, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"UNetDiscriminatorSN needs H and W divisible by 8, got {tuple(x.shape[-2:])}")

        def act(t: torch.Tensor) -> torch.Tensor:
            return F.leaky_relu(t, 0.2)

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0
        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        return self.conv9(out)
