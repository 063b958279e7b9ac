"""Exponential moving average of a model's weights (BasicSR's ``net_g_ema``), with a decay warm-up."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(update: int, decay: float, warmup: bool) -> float:
    """The decay used by the ``update``-th update (0-based): ``min(decay, (1 + t) / (10 + t))`` with
    warm-up (TensorFlow's ``num_updates`` rule, as in timm's EMA), else ``decay``.

    With warm-up the first update keeps 10% of the initial weights, update 90 keeps 91%, and the
    configured 0.999 is reached at update 8991; without it a 0.999 average still holds 60% of the
    initial weights after 500 updates.
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + update) / (10.0 + update))


class ModelEMA:
    """A frozen copy of ``model`` updated after each optimizer step as ``e = d_t*e + (1-d_t)*p``.

    ``d_t = ema_decay_at(t, decay, warmup)`` for the t-th update; :attr:`updates` counts the updates
    done (a resumed run sets it from its checkpoint, so a resumed average equals an uninterrupted one).
    As in BasicSR the average runs over ``named_parameters()`` only; buffers are copied from the live
    model (so a model with running statistics validates with current ones). The copy stays in eval
    mode, never requires grad and is never wrapped in DDP. ``model`` must be the unwrapped module.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        return ema_decay_at(self.updates, self.decay, self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s parameters into the average and copy its buffers."""
        d = self.current_decay()
        live = dict(model.named_parameters())
        for name, e in self.module.named_parameters():
            e.lerp_(live[name].detach().to(e.dtype), 1.0 - d)
        live_b = dict(model.named_buffers())
        for name, b in self.module.named_buffers():
            if name in live_b:
                b.copy_(live_b[name])
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
