"""The convolutional feed-forward network shared by ESC and SST."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvFFN(nn.Module):
    """``y = W_out(h + GELU(DWConv_k(h)))`` with ``h = GELU(W_in x)``; all convs have biases.

    ``hidden = int(dim * ratio)`` (floor, as in the official code). Submodule names follow the
    official checkpoints: ``proj`` (1x1 dim->hidden), ``dwc`` (depthwise k x k) and the output 1x1
    conv, called ``aggr`` in ESC and ``agg`` in SST (pick with ``out_name``).

    Input and output: (B, dim, H, W). GELU is the exact erf form.
    """

    def __init__(self, dim: int, ratio: float, kernel_size: int = 3, out_name: str = "aggr") -> None:
        super().__init__()
        if out_name not in ("aggr", "agg"):
            raise ValueError(f"out_name must be 'aggr' or 'agg', got {out_name!r}")
        hidden = int(dim * ratio)
        if hidden <= 0:
            raise ValueError(f"ConvFFN hidden width int({dim}*{ratio}) must be positive")
        self.hidden = hidden
        self.proj = nn.Conv2d(dim, hidden, 1)
        self.dwc = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self._out_name = out_name
        setattr(self, out_name, nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        h = F.gelu(self.proj(x))
        h = F.gelu(self.dwc(h)) + h
        return getattr(self, self._out_name)(h)
