"""LR schedule (BasicSR warm-up + multistep) and the EMA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sr_train.ema import ModelEMA
from sr_train.schedule import WarmupMultiStepLR, lr_factor


def test_lr_factor_warmup_and_milestones():
    kw = {"warmup_iters": 20000, "milestones": [250000, 400000, 450000, 475000, 490000], "gamma": 0.5}
    assert lr_factor(1, **kw) == pytest.approx(1 / 20000)
    assert lr_factor(10000, **kw) == pytest.approx(0.5)
    assert lr_factor(20000, **kw) == 1.0
    assert lr_factor(250000, **kw) == 1.0  # halved AFTER the milestone
    assert lr_factor(250001, **kw) == 0.5
    assert lr_factor(400001, **kw) == 0.25
    assert lr_factor(500000, **kw) == 0.5**5
    assert lr_factor(7, warmup_iters=0, milestones=[], gamma=0.5) == 1.0


def test_short_runs_truncate_rather_than_rescale():
    """--iters 20 of a 20k-warm-up recipe stays deep in the warm-up (no silent rescaling)."""
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = WarmupMultiStepLR(opt, warmup_iters=20000, milestones=[250000], gamma=0.5)
    sched.set_iteration(20)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 20 / 20000)


def test_scheduler_scales_every_group_and_restores():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 2e-4}], lr=1.0)
    sched = WarmupMultiStepLR(opt, warmup_iters=10, milestones=[20], gamma=0.5)
    sched.set_iteration(25)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 1e-4])
    opt2 = torch.optim.SGD([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 2e-4}], lr=1.0)
    s2 = WarmupMultiStepLR(opt2, warmup_iters=10, milestones=[20], gamma=0.5)
    s2.load_state_dict(sched.state_dict())
    assert s2.iteration == 25 and [g["lr"] for g in opt2.param_groups] == pytest.approx([5e-4, 1e-4])


def test_ema_formula_params_only_and_buffers_copied():
    m = nn.BatchNorm1d(3)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = ModelEMA(m, decay=0.9)
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with torch.no_grad():
        m.weight.fill_(2.0)
        m.running_mean.fill_(5.0)
    ema.update(m)
    torch.testing.assert_close(ema.module.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 2.0))
    torch.testing.assert_close(ema.module.running_mean, torch.full((3,), 5.0))
    ema.update(m)
    torch.testing.assert_close(ema.module.weight, torch.full((3,), 0.9 * 1.1 + 0.1 * 2.0))
    with pytest.raises(ValueError):
        ModelEMA(m, decay=1.0)
