"""LayerNorm over the channel axis of NCHW feature maps (ESC/SST "channels_first" LayerNorm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at every pixel of a (B, C, H, W) tensor.

    Parameters ``weight`` (C,) (ones) and ``bias`` (C,) (zeros), as in the official ESC/SST code, so
    state_dict keys are ``<name>.weight`` / ``<name>.bias``. ``affine=False`` keeps no parameters.

    Input and output: (B, C, H, W), any float dtype; statistics follow ``F.layer_norm``.

    ``order`` picks how the channel axis is moved last before ``F.layer_norm``: ``"permute"`` (ESC:
    (B, H, W, C)) or ``"transpose"`` (SST: (B, W, H, C)). The maths is identical; the float rounding
    of the reduction differs in the last bit, so each family uses its official order (bit-exactness).
    """

    def __init__(self, channels: int, eps: float = 1e-6, affine: bool = True, order: str = "permute") -> None:
        super().__init__()
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        if order not in ("permute", "transpose"):
            raise ValueError(f"order must be 'permute' or 'transpose', got {order!r}")
        self.channels = channels
        self.eps = eps
        self.order = order
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if self.order == "transpose":
            y = F.layer_norm(x.transpose(1, -1), (self.channels,), self.weight, self.bias, self.eps)
            return y.transpose(1, -1)
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"
