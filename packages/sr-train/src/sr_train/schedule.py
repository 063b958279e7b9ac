"""Learning-rate schedule: linear warm-up, then multi-step decay (BasicSR's MultiStepLR + warmup_iter).

The factor applied to each group's initial lr at (1-based) training iteration ``it`` is::

    warm(it) * gamma ** #{m in milestones : it > m},   warm(it) = it / warmup_iters if it < warmup_iters else 1

so milestones are absolute ("halved at 250k": iterations 250001 on use half the lr) and the warm-up
ramps from ~0. By default nothing is rescaled when a run is shorter than the recipe (``--iters 20``
of a 500k recipe trains on the first 20 iterations of the recipe's schedule: deep in its warm-up);
:func:`schedule_warning` says so in one line, and ``schedule.rescale=true`` scales the warm-up and
the milestones by ``train.iters / schedule.reference_iters`` (:func:`effective_schedule`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def effective_schedule(schedule_cfg: dict[str, Any], iters: int) -> tuple[int, list[int]]:
    """(warm-up iterations, milestones) the run uses, from the ``schedule`` config section.

    Without ``rescale`` they are the configured ones. With it, each is multiplied by
    ``iters / reference_iters`` and rounded (milestones to at least 1; repeated values are kept, so
    the lr still drops once per configured milestone).
    """
    warmup, milestones = int(schedule_cfg["warmup_iters"]), [int(m) for m in schedule_cfg["milestones"]]
    ref = schedule_cfg.get("reference_iters")
    if not schedule_cfg.get("rescale") or not ref:
        return warmup, sorted(milestones)
    f = iters / ref
    return round(warmup * f), sorted(max(1, round(m * f)) for m in milestones)


def schedule_warning(schedule_cfg: dict[str, Any], iters: int) -> str | None:
    """One line when a shortened run (``iters`` below ``reference_iters``, not rescaled) ends before the
    warm-up or the first milestone of the schedule it keeps; None otherwise."""
    ref = schedule_cfg.get("reference_iters")
    if schedule_cfg.get("rescale") or not ref or iters >= ref:
        return None
    warmup, milestones = int(schedule_cfg["warmup_iters"]), sorted(int(m) for m in schedule_cfg["milestones"])
    parts = []
    if iters < warmup:
        parts.append(f"warm-up ({warmup} iterations)")
    if milestones and iters <= milestones[0]:
        parts.append(f"first lr milestone ({milestones[0]})")
    if not parts:
        return None
    ramp = f"; the lr never leaves the warm-up ramp (it ends at {iters / warmup:.2g} of the full lr)" if iters < warmup else ""
    return (f"warning: train.iters={iters} is below the {' and '.join(parts)} of the {ref}-iteration schedule, "
            f"which is not rescaled{ramp}; --set schedule.rescale=true scales them to {iters} iterations")


def lr_factor(it: int, *, warmup_iters: int, milestones: Sequence[int], gamma: float) -> float:
    """The multiplier of the initial lr at 1-based iteration ``it`` (see the module docstring)."""
    warm = it / warmup_iters if warmup_iters > 0 and it < warmup_iters else 1.0
    return warm * gamma ** sum(1 for m in milestones if it > m)


class WarmupMultiStepLR:
    """Sets every param group's ``lr`` to ``initial_lr * lr_factor(it)``; stateless apart from ``it``.

    Call :meth:`set_iteration` with the 1-based iteration about to be trained, before the
    optimizer step. ``initial_lr`` is taken from each group's ``lr`` at construction.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_iters: int, milestones: Sequence[int],
                 gamma: float) -> None:
        self.optimizer = optimizer
        self.warmup_iters = int(warmup_iters)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.iteration = 0
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def factor(self, it: int) -> float:
        """The lr multiplier at 1-based iteration ``it``."""
        return lr_factor(it, warmup_iters=self.warmup_iters, milestones=self.milestones, gamma=self.gamma)

    def set_iteration(self, it: int) -> None:
        """Set the lr of every group for 1-based iteration ``it``."""
        self.iteration = it
        f = self.factor(it)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "warmup_iters": self.warmup_iters, "milestones": list(self.milestones),
                "gamma": self.gamma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        if self.iteration > 0:
            self.set_iteration(self.iteration)
