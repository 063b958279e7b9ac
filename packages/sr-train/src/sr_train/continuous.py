"""Arbitrary-scale (LTE) training helpers: the memory probe of a sampled-coordinate step.

The step itself lives in :mod:`sr_train.trainer` (``data.continuous.enabled``): the model is called
as ``model(lr, coord=coord, cell=cell)`` and the loss compares its (B, Q, 3) output with the RGB at
those coordinates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SampledQueryProbe(nn.Module):
    """Wraps an arbitrary-scale model so that ``probe(lr)`` runs what one training step runs:
    ``model(lr, coord=..., cell=...)`` at ``sample_q`` random coordinates (cells of a x4 patch),
    returning (B, Q, 3). Pair it with :meth:`loss`, which ignores the probe's HR target."""

    def __init__(self, model: nn.Module, sample_q: int) -> None:
        super().__init__()
        self.model = model
        self.sample_q = int(sample_q)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        b, _, h, _ = lr.shape
        coord = torch.rand(b, self.sample_q, 2, device=lr.device) * 2 - 1
        cell = torch.full_like(coord, 2.0 / (4 * h))
        return self.model(lr, coord=coord, cell=cell)

    @staticmethod
    def loss(criterion: Loss) -> Loss:
        """``criterion(sr, zeros)``: the probe's target tensor (an HR patch) has another shape."""
        return lambda sr, _hr: criterion(sr, torch.zeros_like(sr))
