"""One image at a time within a memory budget: the inference engine of ``sr-upscale`` and ``sr-eval``.

:class:`Upscaler` wraps :func:`sr_eval.inference.upscale_tensor` with the planning of
:mod:`sr_eval.memory`: before each image it estimates the peak, tiles when the whole image would not
fit (one line says so), shows per-tile progress with an ETA when there is more than one tile, and on
an allocator failure that still happens retries with half the tile side (automatic tiling only).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sr_eval.inference import DEFAULT_TILE_OVERLAP, effective_tile, is_oom, pad_policy, upscale_tensor
from sr_eval.memory import (
    SAFETY,
    MemoryCost,
    MemoryPlanError,
    PeakMeter,
    Plan,
    budget_for,
    count_tiles,
    format_bytes,
    measure_cost,
    plan_image,
)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass
class RunInfo:
    """What one call did: the plan it ran with, the measured peak (bytes) and retries after OOM."""

    plan: Plan
    peak: int
    retries: int = 0


class Upscaler:
    """Memory-bounded upscaling of (B, 3, h, w) float batches with one model on one device.

    ``tile``: None (default) chooses per image: whole image when it fits the budget, else tiles;
    an int forces tiles of that side (rounded as :func:`sr_eval.inference.effective_tile` says),
    refused for an image whose estimate does not fit. ``max_memory``: the budget in bytes
    (default: :data:`sr_eval.memory.BUDGET_FRACTION` of the free memory, read before each image).
    ``note`` receives the one-line messages (tiling chosen, OOM retries); ``progress`` shows a
    per-tile bar (tqdm, stderr) for images of more than one tile.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str,
        *,
        tile: int | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        precision: str = "fp32",
        self_ensemble: bool = False,
        max_memory: int | None = None,
        note: Callable[[str], None] = _stderr,
        progress: bool = True,
        prog: str = "sr-upscale",
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.precision = precision
        self.self_ensemble = self_ensemble
        self.max_memory = max_memory
        self.note = note
        self.progress = progress
        self.prog = prog
        self._cost: MemoryCost | None = None

    # -- planning ---------------------------------------------------------------------------
    def cost(self) -> MemoryCost:
        """The model's measured memory line (probe forwards on first use)."""
        if self._cost is None:
            self._cost = measure_cost(self.model, self.device, self.precision)
        return self._cost

    def plan(self, h: int, w: int, batch: int = 1) -> Plan:
        """The plan for ``batch`` images of ``h x w`` now (free memory read again)."""
        budget = budget_for(self.device, self.max_memory)
        if budget is None and self.tile is None:
            return Plan(tile=None, tiles=1, estimate=0, whole_estimate=0, budget=None, fits=True)
        return plan_image(self.model, self.cost(), h, w, budget=budget, tile=self.tile, auto=self.tile is None,
                          tile_overlap=self.tile_overlap, batch=batch, self_ensemble=self.self_ensemble)

    # -- running ----------------------------------------------------------------------------
    def __call__(self, lr: torch.Tensor, name: str = "image") -> tuple[torch.Tensor, RunInfo]:
        """Upscale ``lr`` (B, 3, h, w) on the device; returns the clamped (B, 3, h*s, w*s) float32 output.

        Raises :class:`sr_eval.memory.MemoryPlanError` (a ValueError) when the image cannot fit.
        """
        b, _, h, w = lr.shape
        try:
            plan = self.plan(h, w, b)
        except MemoryPlanError as exc:
            raise MemoryPlanError(f"{w}x{h} {exc}; use --max-memory to allow more, or a smaller image") from None
        if not plan.fits:
            assert plan.budget is not None
            tile_txt = f"--tile {self.tile}" + (f" (used as {plan.tile})" if plan.tile and plan.tile != self.tile else "")
            raise MemoryPlanError(
                f"{w}x{h} with {tile_txt} needs about {format_bytes(plan.estimate)}, but the budget is "
                f"{format_bytes(plan.budget)}; use a smaller --tile, or leave --tile out to choose one automatically"
            )
        if plan.tile is not None and self.tile is None:
            assert plan.budget is not None
            self.note(
                f"{self.prog}: {name} ({w}x{h}): the whole image needs about {format_bytes(plan.whole_estimate)}, "
                f"the budget is {format_bytes(plan.budget)}: upscaling in {plan.tiles} tiles of {plan.tile} px "
                f"(overlap {self.tile_overlap}; about {format_bytes(plan.estimate)})"
            )
        retries = 0
        while True:
            try:
                y, peak = self._run(lr, plan, name)
                break
            except Exception as err:
                if not is_oom(err) or self.tile is not None:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                smaller = self._smaller_tile(plan, h, w)
                if smaller is None:
                    raise MemoryError(f"out of memory even in tiles of {plan.tile} px") from None
                retries += 1
                self.note(f"{self.prog}: {name}: out of memory with "
                          f"{'the whole image' if plan.tile is None else f'tiles of {plan.tile} px'}; "
                          f"retrying in {smaller.tiles} tiles of {smaller.tile} px")
                plan = smaller
        if plan.estimate and self._cost is not None:
            raw = plan.estimate / SAFETY
            if peak > raw:  # the estimate was low: scale the model's cost up for the next images
                self._cost.correction *= peak / raw
        return y, RunInfo(plan=plan, peak=peak, retries=retries)

    def _smaller_tile(self, plan: Plan, h: int, w: int) -> Plan | None:
        m = pad_policy(self.model).multiple
        current = plan.tile if plan.tile is not None else max(h, w)
        smallest = effective_tile(max(pad_policy(self.model).min_size, 1), self.tile_overlap, m)
        t = effective_tile(max(1, current // 2), self.tile_overlap, m)
        if plan.tile is not None and t >= plan.tile:
            t = plan.tile - m
        if t < smallest:
            return None
        n = count_tiles(h, w, t, self.tile_overlap, m)
        return Plan(tile=t, tiles=n, estimate=plan.estimate // 2, whole_estimate=plan.whole_estimate,
                    budget=plan.budget, fits=True, reason="out of memory")

    def _run(self, lr: torch.Tensor, plan: Plan, name: str) -> tuple[torch.Tensor, int]:
        passes = 8 if self.self_ensemble else 1
        total = plan.tiles * passes
        bar = None
        if self.progress and total > 1:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=f"{name}", unit="tile", leave=False, file=sys.stderr, dynamic_ncols=True)

        def tick(done: int, _total: int) -> None:
            if bar is not None:
                bar.n = done
                bar.refresh()

        try:
            with PeakMeter(self.device) as meter:
                y = upscale_tensor(self.model, lr, tile=plan.tile, tile_overlap=self.tile_overlap,
                                   precision=self.precision, self_ensemble=self.self_ensemble, progress=tick)
        finally:
            if bar is not None:
                bar.close()
        return y, meter.peak
