"""Exponential moving average of a model's weights (BasicSR's ``net_g_ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """A frozen copy of ``model`` updated after each optimizer step as ``e = d*e + (1-d)*p``.

    As in BasicSR the average runs over ``named_parameters()`` only; buffers are copied from the live
    model (so a model with running statistics validates with current ones). The copy stays in eval
    mode, never requires grad and is never wrapped in DDP. ``model`` must be the unwrapped module.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s parameters into the average and copy its buffers."""
        live = dict(model.named_parameters())
        for name, e in self.module.named_parameters():
            e.lerp_(live[name].detach().to(e.dtype), 1.0 - self.decay)
        live_b = dict(model.named_buffers())
        for name, b in self.module.named_buffers():
            if name in live_b:
                b.copy_(live_b[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
