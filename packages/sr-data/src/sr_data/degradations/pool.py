"""Real-ESRGAN's training pair pool (``queue_size``): it mixes degradations across batches.

The degradation draws its resize factor, noise type and JPEG order once per batch, so every image
of a batch shares them. The pool keeps the last ``size`` (LR, HR) pairs; once full, each new batch is
swapped in at random positions and the pairs it displaces are trained on instead (Real-ESRGAN's
``_dequeue_and_enqueue``: shuffle the pool with one permutation, return its first B pairs, put the
new batch there). Until it is full, batches pass through unchanged. Its contents and the
permutations are part of the exact-resume state (:meth:`state_dict`).
"""

from __future__ import annotations

from typing import Any

import torch


class PairPool:
    """A pool of ``size`` (LR, HR) pairs; ``size`` must be a multiple of the batch size."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = int(size)
        self.lr: torch.Tensor | None = None
        self.hr: torch.Tensor | None = None
        self.filled = 0

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Push a batch ``lr (B, C, h, w)``, ``hr (B, C, H, W)``; returns the batch to train on (same shapes)."""
        if self.size == 0:
            return lr, hr
        b = lr.shape[0]
        if self.size % b:
            raise ValueError(f"the pair pool size ({self.size}) must be a multiple of the batch size ({b})")
        if self.lr is None or self.hr is None:
            self.lr = lr.new_zeros((self.size, *lr.shape[1:]))
            self.hr = hr.new_zeros((self.size, *hr.shape[1:]))
        if self.filled < self.size:
            self.lr[self.filled : self.filled + b] = lr
            self.hr[self.filled : self.filled + b] = hr
            self.filled += b
            return lr, hr
        perm = torch.randperm(self.size, generator=generator, device=generator.device).to(self.lr.device)
        self.lr, self.hr = self.lr[perm], self.hr[perm]
        out_lr, out_hr = self.lr[:b].clone(), self.hr[:b].clone()
        self.lr[:b], self.hr[:b] = lr, hr
        return out_lr, out_hr

    def state_dict(self) -> dict[str, Any]:
        """Pool contents (CPU tensors) and fill level."""
        return {"size": self.size, "filled": self.filled,
                "lr": None if self.lr is None else self.lr.cpu(), "hr": None if self.hr is None else self.hr.cpu()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_dict` (tensors moved to ``device``)."""
        if int(state["size"]) != self.size:
            raise ValueError(f"pair pool state has size {state['size']}, this pool {self.size}")
        self.filled = int(state["filled"])
        self.lr = None if state["lr"] is None else state["lr"].to(device)
        self.hr = None if state["hr"] is None else state["hr"].to(device)
