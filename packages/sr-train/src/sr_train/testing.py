"""A tiny SR model for sr-train's own tests (and for trying the loop quickly): ``sr-train-tiny``.

It has one of each parameter kind the optimizer sorts (conv kernels incl. a depthwise one, a linear
layer, a LayerNorm, biases, a free 3-D tensor) and a dropout, so that a run draws from torch's RNG
the way IET's random DLSG sampling does. Register it with :func:`register_tiny_model` before use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TINY_NAME = "sr-train-tiny"


class TinySR(nn.Module):
    """(B, 3, h, w) -> (B, 3, h*s, w*s): conv, depthwise conv, LayerNorm + Linear over channels,
    dropout, a learned 3-D gain, pixel-shuffle head, plus a nearest-neighbour image skip."""

    def __init__(self, scale: int, dim: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, dim, 3, padding=1)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.gain = nn.Parameter(torch.ones(1, dim, 1))  # 3-D: the optimizer's "other" kind
        self.drop = nn.Dropout(dropout)
        self.to_img = nn.Conv2d(dim, 3 * scale * scale, 3, padding=1)
        self.upscale = scale
        self.config = {"dim": dim, "dropout": dropout}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.gelu(self.head(x))
        f = f + self.dw(f)
        t = self.mix(self.norm(f.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        f = f + self.drop(t) * self.gain.unsqueeze(-1)
        out = F.pixel_shuffle(self.to_img(f), self.upscale)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


def register_tiny_model() -> str:
    """Register :class:`TinySR` as ``sr-train-tiny`` in the sr_models registry (idempotent); returns the name."""
    import sr_models
    from sr_models.registry import _REGISTRY

    if TINY_NAME not in _REGISTRY:
        sr_models.register_model(TINY_NAME, description="sr-train's tiny test model")(
            lambda scale, **overrides: TinySR(scale, **overrides)
        )
    return TINY_NAME


def ddp_worker(rank: int, world_size: int, port: int, cfg: dict, result_dir: str) -> None:
    """Entry point of one spawned process of a CPU/gloo DDP test run (torchrun's variables set by hand).

    Trains ``cfg`` and saves this rank's final live parameters, validation result and checkpoint
    path to ``<result_dir>/rank<rank>.pt``.
    """
    import os

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    register_tiny_model()
    from sr_train.trainer import train

    result = train(cfg, log=lambda _m: None)
    assert result.model is not None
    disc = result.discriminator
    torch.save({"val": result.val, "checkpoint": str(result.last_checkpoint),
                "model": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
                "discriminator": None if disc is None else {k: v.detach().clone() for k, v in disc.state_dict().items()}},
               os.path.join(result_dir, f"rank{rank}.pt"))
