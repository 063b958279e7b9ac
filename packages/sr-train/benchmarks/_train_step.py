"""One trainer-like training step on random tensors, shared by the CPU step benchmarks.

Imported lazily inside the benchmark workers, so that ``sr_train`` resolves to whichever source tree
``PYTHONPATH`` puts first (``bench_cpu_step.py --baseline-src``).
"""

from __future__ import annotations

from collections.abc import Callable


def make_train_step(model: str, batch: int, patch: int) -> Callable[[], None]:
    """Build ``model`` with its quick preset's optimizer and an EMA; return one step as a closure.

    The step is the trainer's: forward of a random (batch, 3, patch, patch) float32 LR batch, L1 against a
    random (batch, 3, patch * scale, patch * scale) HR batch, backward, optimizer step, EMA update.
    """
    import torch
    import torch.nn.functional as F

    from sr_train.config import resolve_config
    from sr_train.ema import ModelEMA
    from sr_train.optim import build_optimizer
    from sr_train.trainer import build_model

    cfg = resolve_config(model, preset="quick")
    torch.manual_seed(0)
    net = build_model(cfg).train()
    opt = build_optimizer(net, cfg["optim"])
    ema = ModelEMA(net, 0.999)
    scale = cfg["model"]["scale"]
    lr = torch.rand(batch, 3, patch, patch)
    hr = torch.rand(batch, 3, patch * scale, patch * scale)

    def step() -> None:
        loss = F.l1_loss(net(lr), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(net)

    return step
