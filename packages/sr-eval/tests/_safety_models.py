"""Test models for the memory and file-safety tests (importable from a child process too).

* ``safety-nearest``: nearest-neighbour x2/x3 plus a zero-initialised conv, pad multiple 4: the
  output is exactly the nearest upscale, so every pixel of every written file can be predicted.
* ``safety-hungry``: nearest x2 computed through a ``(B, 3 * COPIES, h, w)`` float32 intermediate,
  i.e. about ``12 * COPIES`` bytes per LR pixel at its peak and almost no compute: it needs gigabytes
  for an image of a few hundred pixels, like the transformers do, in a fraction of a second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEAREST = "safety-nearest"
HUNGRY = "safety-hungry"
COPIES = 1000  # 12 kB per LR pixel


class NearestSR(nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale, self.pad_multiple, self.min_input_size = scale, 4, 4
        self.tail = nn.Conv2d(3, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        self.config: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x + self.tail(x), scale_factor=self.scale, mode="nearest")


class HungrySR(nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale, self.pad_multiple = scale, 8
        self.gain = nn.Parameter(torch.ones(1))
        self.config: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        big = x.repeat(1, COPIES, 1, 1) * self.gain  # (B, 3*COPIES, h, w): the memory-hungry part
        y = big.view(b, COPIES, c, h, w).amax(dim=1)  # exactly x again
        del big
        return F.interpolate(y, scale_factor=self.scale, mode="nearest")


def register() -> None:
    """Register both models (idempotent)."""
    from sr_models import list_models, register_model
    from sr_models.registry import _REGISTRY

    list_models()
    if NEAREST not in _REGISTRY:
        register_model(NEAREST, scales=(2, 3), description="test")(lambda scale: NearestSR(scale))
    if HUNGRY not in _REGISTRY:
        register_model(HUNGRY, scales=(2,), description="test")(lambda scale: HungrySR(scale))


def unregister() -> None:
    from sr_models.registry import _REGISTRY

    _REGISTRY.pop(NEAREST, None)
    _REGISTRY.pop(HUNGRY, None)
