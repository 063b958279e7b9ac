"""Pre-flight memory check: will one training step at the configured batch and patch fit?

Before the first step (and before the run directory is created) the trainer measures the peak memory
of one forward/backward of the real model at the configured LR patch for micro-batches of 1 and 2
(:func:`measure_step_memory`: allocator statistics on CUDA, the process's peak RSS on the CPU),
fits ``fixed + per_sample * batch`` through the two points (times a margin, :data:`MARGIN`), adds the
optimizer state the first step will allocate, and compares the estimate at the configured micro-batch with the free memory
(:func:`free_memory`: ``cudaMemGetInfo`` on CUDA; ``MemAvailable`` on the CPU, capped by a cgroup
limit). :func:`plan_memory` is the pure decision: it fits, or it names the smallest
``train.accumulate`` (same effective batch) and the largest ``data.batch_size`` that would fit;
:func:`memory_message` turns a failed plan into the one line the command prints.

The probes run under ``torch.random.fork_rng`` and restore the model's buffers and gradients, so a
run with the check trains bitwise like one without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

GIB = 1024**3
HEADROOM = 0.9  # use at most this fraction of the free memory (fragmentation, data loading, validation)
# The linear fit through batches 1 and 2 (after the warm-up pass) was within -0.3% to +7% of the
# measured CPU peak at batch 8 (esc-light 64x64, sst-light and iet-light 32x32); the measured part
# is scaled by this margin for allocator fragmentation and the data batch.
MARGIN = 1.2
# On the CPU the second probe is skipped when the first took longer than this (IET's recipe: a
# 50x50 sample takes ~30 s on one core); the slope is then the first probe minus the gradients.
SLOW_PROBE_S = 3.0


@dataclass(frozen=True)
class StepMemory:
    """Peak memory of one training step as a function of the micro-batch: ``fixed + per_sample * b``.

    ``fixed_bytes`` includes gradients and the optimizer state; ``measured_at`` names the
    micro-batches that were measured (for the message).
    """

    fixed_bytes: float
    per_sample_bytes: float
    measured_at: tuple[int, ...] = ()

    def at(self, micro_batch: int) -> float:
        """Estimated peak bytes of one step at ``micro_batch`` samples per process."""
        return self.fixed_bytes + self.per_sample_bytes * micro_batch


@dataclass(frozen=True)
class MemoryPlan:
    """The decision of :func:`plan_memory`.

    ``accumulate_fix``: the smallest ``train.accumulate`` (>= the configured one, dividing the
    per-process batch) whose micro-batch fits, or None. ``batch_fix``: the largest global
    ``data.batch_size`` (a multiple of world_size * accumulate) that fits at the configured
    accumulation, or None when not even one sample per micro-step fits.
    """

    fits: bool
    estimate_bytes: float
    free_bytes: float
    budget_bytes: float
    micro_batch: int
    accumulate_fix: int | None = None
    batch_fix: int | None = None


def plan_memory(step: StepMemory, *, batch_size: int, world_size: int, accumulate: int, free_bytes: float,
                headroom: float = HEADROOM) -> MemoryPlan:
    """Decide whether a step at global ``batch_size`` (split over ``world_size`` processes and
    ``accumulate`` micro-steps) fits ``headroom * free_bytes`` per process, and what would fit if not."""
    per_rank = batch_size // world_size
    micro = per_rank // accumulate
    budget = headroom * free_bytes
    estimate = step.at(micro)
    if estimate <= budget:
        return MemoryPlan(True, estimate, free_bytes, budget, micro)
    acc_fix = next((k for k in range(accumulate + 1, per_rank + 1)
                    if per_rank % k == 0 and step.at(per_rank // k) <= budget), None)
    batch_fix = None
    if step.per_sample_bytes > 0 and budget > step.fixed_bytes:
        max_micro = int((budget - step.fixed_bytes) // step.per_sample_bytes)
        # the division rounds; settle the boundary with the same comparison the check itself makes
        while step.at(max_micro + 1) <= budget:
            max_micro += 1
        while max_micro >= 1 and step.at(max_micro) > budget:
            max_micro -= 1
        if max_micro >= 1:
            batch_fix = max_micro * world_size * accumulate
    return MemoryPlan(False, estimate, free_bytes, budget, micro, acc_fix, batch_fix)


def memory_message(plan: MemoryPlan, *, model: str, scale: int, batch_size: int, patch: int, accumulate: int,
                   device: str) -> str:
    """One line for a plan that does not fit: model, batch x patch, estimate, free memory, the fixes."""
    micro = f", micro-batch {plan.micro_batch}" if accumulate > 1 else ""
    fixes = []
    if plan.accumulate_fix is not None:
        fixes.append(f"--set train.accumulate={plan.accumulate_fix} (the same effective batch of {batch_size} in "
                     f"{plan.accumulate_fix} micro-steps)")
    if plan.batch_fix is not None:
        fixes.append(f"--set data.batch_size={plan.batch_fix}")
    fixes.append("--preset quick" if plan.batch_fix is not None else "--preset quick or a smaller --set data.patch_size")
    return (f"not enough memory for {model} x{scale} at batch {batch_size} x {patch}x{patch} LR patches{micro}: "
            f"one training step needs about {plan.estimate_bytes / GIB:.1f} GiB per process, "
            f"{plan.free_bytes / GIB:.1f} GiB is free on {device}; use {', or '.join(fixes)}")


# ----------------------------------------------------------------------------- free memory


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 or v1), or None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit = _read_int(Path("/sys/fs/cgroup") / limit_file)
        usage = _read_int(Path("/sys/fs/cgroup") / usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(0, limit - usage)
    return None


def free_memory(device: torch.device) -> float | None:
    """Free bytes for this process: ``cudaMemGetInfo`` on CUDA; ``MemAvailable`` (capped by a cgroup
    limit) on the CPU, shared among the node's ``LOCAL_WORLD_SIZE`` processes. None if unknown."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, _total = torch.cuda.mem_get_info(device)
        return float(free)
    avail = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    if avail is None:
        return None
    cg = _cgroup_free()
    if cg is not None:
        avail = min(avail, cg)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1))
    return float(avail) / local


# ----------------------------------------------------------------------------- measurement


class _CpuPeak:
    """Peak resident memory above the current level, for a block of code (Linux /proc)."""

    @staticmethod
    def available() -> bool:
        return os.access("/proc/self/clear_refs", os.W_OK) and Path("/proc/self/status").is_file()

    @staticmethod
    def _status_bytes(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(f"/proc/self/status has no {key}")

    def __enter__(self) -> _CpuPeak:
        with contextlib.suppress(OSError, AttributeError):  # return freed heap memory to the OS first
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.base = self._status_bytes("VmRSS")
        self.peak = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(0, self._status_bytes("VmHWM") - self.base)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the state the first step will allocate: 2 tensors per AdamW parameter, 1 per Muon
    parameter (momentum), for parameters that have none yet (a resumed optimizer has its state)."""
    total = 0
    for group in optimizer.param_groups:
        per = 1 if group.get("use_muon") else 2
        for p in group["params"]:
            if p.requires_grad and not optimizer.state.get(p):
                total += per * p.numel() * p.element_size()
    return total


def _probe(model: nn.Module, device: torch.device, batch: int, patch: int, scale: int,
           loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], autocast_dtype: torch.dtype | None) -> int:
    """Peak bytes of one forward/backward at ``batch``, gradients included (the caller clears them)."""
    lr = torch.rand(batch, 3, patch, patch, device=device)
    hr = torch.rand(batch, 3, patch * scale, patch * scale, device=device)

    def run() -> None:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            sr = model(lr)
        loss_fn(sr.float(), hr).backward()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with _CpuPeak() as peak:
        run()
    return peak.peak


def measure_step_memory(model: nn.Module, *, device: torch.device, patch: int, scale: int, micro_batch: int,
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        autocast_dtype: torch.dtype | None = None, optimizer: torch.optim.Optimizer | None = None,
                        extra_fixed_bytes: int = 0, budget_bytes: float | None = None) -> StepMemory | None:
    """Measure one step at micro-batches 1 and 2 and return the linear fit (None when this process
    cannot measure its memory, e.g. without /proc). The model's RNG draws, buffers, gradients and
    train/eval mode are restored afterwards.

    An unmeasured warm-up pass on a small patch comes first (the first pass of a process pages in
    library code and fills caches, which is not per-sample memory). The second probe is skipped when
    ``micro_batch`` is 1, when even a pessimistic extrapolation of the first (all of it per-sample)
    exceeds ``budget_bytes`` (so that the probe itself cannot run out of memory), or on the CPU when
    the first took longer than :data:`SLOW_PROBE_S`; the slope is then the first probe minus the
    gradients' size (an over-estimate).
    """
    if device.type != "cuda" and not _CpuPeak.available():
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    grad_bytes = sum(p.numel() * p.element_size() for p in params)
    opt_bytes = optimizer_state_bytes(optimizer) if optimizer is not None else 0
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    old_grads = [p.grad for p in params]
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    peaks: dict[int, int] = {}
    try:
        with torch.random.fork_rng(devices=devices):
            model.train()
            _probe(model, device, 1, min(patch, 8), scale, loss_fn, autocast_dtype)  # warm-up
            for p in params:
                p.grad = None
            t0 = time.perf_counter()
            peaks[1] = _probe(model, device, 1, patch, scale, loss_fn, autocast_dtype)
            slow = device.type != "cuda" and time.perf_counter() - t0 > SLOW_PROBE_S
            pessimistic_2 = 2 * peaks[1] + opt_bytes + extra_fixed_bytes
            if micro_batch >= 2 and not slow and (budget_bytes is None or pessimistic_2 <= budget_bytes):
                for p in params:  # both probes allocate their gradients
                    p.grad = None
                peaks[2] = max(_probe(model, device, 2, patch, scale, loss_fn, autocast_dtype), peaks[1])
    finally:
        model.train(was_training)
        for p, g in zip(params, old_grads, strict=True):
            p.grad = g
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
    if 2 in peaks:
        slope = float(peaks[2] - peaks[1])
        fixed = float(peaks[1]) - slope
    else:
        slope = float(max(peaks[1] - grad_bytes, 0))
        fixed = float(grad_bytes)
    return StepMemory(MARGIN * fixed + opt_bytes + extra_fixed_bytes, MARGIN * max(slope, 0.0), tuple(sorted(peaks)))


def describe(step: StepMemory, plan: MemoryPlan, device: Any) -> str:
    """The one-line log of a check that passed."""
    return (f"memory check: one training step needs about {plan.estimate_bytes / GIB:.2f} GiB at micro-batch "
            f"{plan.micro_batch} (measured at {'/'.join(map(str, step.measured_at))}), "
            f"{plan.free_bytes / GIB:.1f} GiB free on {device}")
