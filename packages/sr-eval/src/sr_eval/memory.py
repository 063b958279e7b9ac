"""Memory-bounded inference: measure a model's cost per pixel once, then plan each image to fit.

Why: on the CPU an out-of-memory forward does not raise, the kernel's OOM killer ends the process
(exit 137, every image lost). So the peak of a forward is estimated *before* it runs and the image
is tiled when the estimate does not fit the free memory.

1. :func:`measure_cost` (once per model, device and precision; cached on the model) runs small
   probe forwards of ``a x a`` and ``a x 2a`` LR pixels (``a`` = 64 rounded up to the model's
   ``pad_multiple``; doubled while the two peaks differ by less than 16 MiB, up to 512) after one
   warm-up forward, and measures the memory each *adds* at its peak: on CUDA
   ``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident set (``VmHWM``,
   reset through ``/proc/self/clear_refs`` and measured from the resident size after
   ``malloc_trim``), or, where that reset is not allowed, a 1 ms sampler of ``/proc/self/statm``.
   (The reset also restarts the peak that ``/usr/bin/time -v`` reports; it happens only at the
   probe, before the first image, so that report still covers every image.)
   The two peaks give a line ``fixed + per_pixel * padded_pixels`` (every family here scales
   linearly in pixels: window attention, convolutions, fixed top-k gather attention).
2. :func:`available_memory`: CPU: ``MemAvailable`` of ``/proc/meminfo``, lowered by a cgroup
   limit (``memory.max - memory.current``) and an address-space limit (``ulimit -v``) when set;
   CUDA: ``torch.cuda.mem_get_info`` free plus what torch's cache holds unused.
3. :func:`plan_image`: the estimate of a whole-image forward is ``SAFETY`` (1.25) times the line
   at the padded size, times the batch, plus the buffers outside the model (input, the tiled
   blend's output and weight accumulators, the clamped output, its uint8 copy, the x8-ensemble
   accumulator). The budget is ``--max-memory`` or ``BUDGET_FRACTION`` (60 %) of the free memory,
   read again for every image. If the whole image fits, it runs whole (the exact protocol); else
   the largest tile side (a multiple of the pad multiple) whose estimate fits is chosen; if not
   even the smallest tile fits, the image is refused with a message, never started.

After each forward the measured peak is compared with the estimate; when it was higher, the
model's cost is scaled up for the following images (:meth:`MemoryCost.observe`).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

SAFETY = 1.25
BUDGET_FRACTION = 0.6
MIN_PROBE_DELTA = 16 << 20
MAX_PROBE_SIDE = 512
_COST_ATTR = "_sr_eval_memory_costs"


# ----------------------------------------------------------------------------- free memory


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes left under a cgroup v2 (or v1) memory limit, or None when unlimited/unknown."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file) as fh:
                raw = fh.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit >= 1 << 60:  # v1 "unlimited"
                return None
            with open(usage_file) as fh:
                usage = int(fh.read().strip())
            return max(0, limit - usage)
        except (OSError, ValueError):
            continue
    return None


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _address_space_room() -> int | None:
    """Bytes left under ``ulimit -v`` (RLIMIT_AS), or None when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = _status_kib("VmSize") or 0
    return max(0, soft - used)


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a new allocation on ``device`` can use now, or None when it cannot be told.

    CPU: the smallest of MemAvailable, the room under a cgroup limit and under ``ulimit -v``.
    CUDA: free device memory plus memory torch's caching allocator reserved but does not use.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free + max(0, cached))
    if dev.type != "cpu":
        return None
    values = [v for v in (_meminfo_available(), _cgroup_room(), _address_space_room()) if v is not None]
    return min(values) if values else None


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5GB', '2048' (bytes) -> bytes; ValueError naming the text otherwise."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = 1
    if t and t[-1] in units:
        mult, t = units[t[-1]], t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; use e.g. 4G, 512M") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} must be a positive size")
    return int(value * mult)


def format_bytes(n: float) -> str:
    """1234567890 -> '1.1 GiB'."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


# ----------------------------------------------------------------------------- peak measurement


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


class PeakMeter:
    """Context manager measuring the memory a block adds at its peak on ``device`` (``.peak`` bytes).

    CPU: with ``reset_hwm`` the kernel's peak resident set (VmHWM) is reset and read back (exact,
    but it also resets the peak that ``getrusage``/``/usr/bin/time -v`` report for the process, so
    only the once-per-model probe uses it); otherwise a thread samples ``/proc/self/statm`` every
    millisecond (a peak shorter than that can be missed).
    """

    def __init__(self, device: torch.device | str, *, reset_hwm: bool = False) -> None:
        self.device = torch.device(device)
        self.reset_hwm = reset_hwm
        self.peak = 0
        self._base = 0
        self._hwm = False
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled = 0

    def __enter__(self) -> PeakMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()
        self._base = _rss() or 0
        self._hwm = self.reset_hwm and _reset_hwm()
        if not self._hwm:
            self._sampled = self._base
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            r = _rss()
            if r is not None:
                self._sampled = max(self._sampled, r)
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
            return
        if self._hwm:
            hwm = _status_kib("VmHWM")
            self.peak = max(0, (hwm or 0) - self._base)
        else:
            self._stop.set()
            if self._sampler is not None:
                self._sampler.join()
            self.peak = max(0, self._sampled - self._base)


# ----------------------------------------------------------------------------- the cost model


@dataclass
class MemoryCost:
    """Peak memory a forward adds: ``fixed + per_pixel * padded LR pixels`` (bytes), per image."""

    fixed: float
    per_pixel: float
    device: str
    precision: str
    probes: list[tuple[int, int, int]] = field(default_factory=list)  # (h, w, measured peak bytes)
    correction: float = 1.0

    def forward_bytes(self, h: int, w: int, batch: int = 1) -> int:
        """Estimated peak (with :data:`SAFETY`) of one forward of ``batch`` padded ``h x w`` inputs."""
        return int(SAFETY * self.correction * (self.fixed + self.per_pixel * h * w * batch))

    def observe(self, h: int, w: int, batch: int, measured: int) -> bool:
        """Raise :attr:`correction` if a forward needed more than estimated; True if it did."""
        raw = self.fixed + self.per_pixel * h * w * batch
        if raw <= 0 or measured <= self.correction * raw:
            return False
        self.correction = measured / raw
        return True


def _padded(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


def measure_cost(
    model: nn.Module,
    device: torch.device | str,
    precision: str = "fp32",
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> MemoryCost:
    """Measure (once; cached on the model per device and precision) the model's memory cost line.

    ``forward`` maps a (1, 3, h, w) float tensor to the output (default: :func:`forward_padded`).
    Probe inputs are uniform noise from a fixed generator (the families' memory does not depend on
    the content).
    """
    from sr_eval.inference import forward_padded, pad_policy

    dev = torch.device(device)
    cache = getattr(model, _COST_ATTR, None)
    if cache is None:
        cache = {}
        with contextlib.suppress(AttributeError):
            object.__setattr__(model, _COST_ATTR, cache)
    key = (str(dev), precision)
    if key in cache:
        return cache[key]
    pol = pad_policy(model)
    run = forward or (lambda t: forward_padded(model, t, precision=precision))
    gen = torch.Generator().manual_seed(0)

    def probe(h: int, w: int) -> int:
        x = torch.rand(1, 3, h, w, generator=gen).to(dev)
        with PeakMeter(dev, reset_hwm=True) as meter, torch.no_grad():
            y = run(x)
            del y
        del x
        return meter.peak

    a = _padded(max(64, pol.min_size), pol.multiple)
    with torch.no_grad():
        run(torch.rand(1, 3, a, a, generator=gen).to(dev))  # warm-up: one-time allocations
    probes: list[tuple[int, int, int]] = []
    while True:
        p1, p2 = probe(a, a), probe(a, 2 * a)
        probes += [(a, a, p1), (a, 2 * a, p2)]
        if p2 - p1 >= MIN_PROBE_DELTA or 2 * a > MAX_PROBE_SIDE:
            break
        a *= 2
    per_pixel = max(0.0, (p2 - p1) / (a * a))
    fixed = max(0.0, p1 - per_pixel * a * a)
    cost = MemoryCost(fixed=fixed, per_pixel=per_pixel, device=str(dev), precision=precision, probes=probes)
    cache[key] = cost
    return cost


# ----------------------------------------------------------------------------- planning


def outside_bytes(h: int, w: int, scale: float, *, tiled: bool, batch: int = 1, self_ensemble: bool = False) -> int:
    """Buffers outside the model's forward for ``batch`` LR images of ``h x w`` (float32 RGB).

    Input (12 B per LR pixel), the clamped float output (12 B per output pixel) plus its uint8
    copies on the way to a file (2 x 3 B); a tiled pass adds the blend accumulators (12 + 4 B per
    output pixel), the x8 ensemble one more float output.
    """
    out_px = math.ceil(h * w * scale * scale)
    per_out = 12 + 6 + (16 if tiled else 0) + (12 if self_ensemble else 0)
    return batch * (12 * h * w + per_out * out_px)


@dataclass(frozen=True)
class Plan:
    """How one image (or batch) runs: whole (``tile=None``) or in tiles of ``tile`` LR pixels."""

    tile: int | None
    tiles: int
    estimate: int  # bytes, the planned peak
    whole_estimate: int  # bytes, the whole-image estimate
    budget: int | None  # bytes, None when the free memory is unknown
    fits: bool
    reason: str = ""


class MemoryPlanError(ValueError):
    """Not even the smallest tile fits the memory budget (message names the sizes)."""


def count_tiles(h: int, w: int, tile: int, overlap: int, multiple: int) -> int:
    """Number of tiles :func:`sr_eval.inference.forward_tiled` uses for an ``h x w`` image."""
    from sr_eval.inference import effective_tile, tile_starts

    t = effective_tile(tile, overlap, multiple)
    return len(tile_starts(h, t, overlap, multiple)) * len(tile_starts(w, t, overlap, multiple))


def plan_image(
    model: nn.Module,
    cost: MemoryCost,
    h: int,
    w: int,
    *,
    budget: int | None,
    tile: int | None = None,
    auto: bool = True,
    tile_overlap: int = 32,
    batch: int = 1,
    self_ensemble: bool = False,
    out_scale: float | None = None,
) -> Plan:
    """Choose whole image or tiles for ``batch`` LR images of ``h x w`` under ``budget`` bytes.

    ``out_scale``: the output/input size ratio when it is not the model's scale (an arbitrary-scale
    model rendering x3.7 or x12); it sizes the output buffers.

    ``auto`` (with ``tile=None``): whole image if it fits, else the largest tile that fits.
    An explicit ``tile`` is kept; its plan has ``fits=False`` when it does not fit.
    ``budget=None`` (free memory unknown): whole image, or the given tile, unchecked.
    Raises :class:`MemoryPlanError` when ``auto`` finds no tile that fits.
    """
    from sr_eval.inference import effective_tile, model_scale, pad_policy

    pol = pad_policy(model)
    s = model_scale(model) if out_scale is None else float(out_scale)
    m = pol.multiple
    hp, wp = _padded(h, m), _padded(w, m)

    def tiled_estimate(t: int) -> int:
        th, tw = min(_padded(t, m), hp), min(_padded(t, m), wp)
        return cost.forward_bytes(th, tw, batch) + outside_bytes(h, w, s, tiled=True, batch=batch,
                                                                  self_ensemble=self_ensemble)

    whole = cost.forward_bytes(hp, wp, batch) + outside_bytes(h, w, s, tiled=False, batch=batch,
                                                               self_ensemble=self_ensemble)
    if tile is not None:
        t = effective_tile(tile, tile_overlap, m)
        n = count_tiles(h, w, t, tile_overlap, m)
        est = whole if n == 1 else tiled_estimate(t)
        ok = budget is None or est <= budget
        return Plan(tile=t if n > 1 else None, tiles=n, estimate=est, whole_estimate=whole, budget=budget, fits=ok)
    if budget is None or whole <= budget or not auto:
        return Plan(tile=None, tiles=1, estimate=whole, whole_estimate=whole, budget=budget,
                    fits=budget is None or whole <= budget)
    smallest = effective_tile(max(pol.min_size, 1), tile_overlap, m)
    largest = max(hp, wp)
    if tiled_estimate(smallest) > budget:
        raise MemoryPlanError(
            f"needs about {format_bytes(tiled_estimate(smallest))} even in tiles of {smallest} px, "
            f"but the budget is {format_bytes(budget)}"
        )
    lo, hi = smallest // m, largest // m  # in units of the multiple: largest fitting tile side
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tiled_estimate(mid * m) <= budget:
            lo = mid
        else:
            hi = mid - 1
    t = lo * m
    n = count_tiles(h, w, t, tile_overlap, m)
    if n == 1:  # the whole image in one "tile" (only when the tiled buffers were the difference)
        t = max(smallest, t - m)
        n = count_tiles(h, w, t, tile_overlap, m)
    return Plan(tile=t, tiles=n, estimate=tiled_estimate(t), whole_estimate=whole, budget=budget, fits=True,
                reason="whole image does not fit")


def budget_for(device: torch.device | str, max_memory: int | None) -> int | None:
    """The memory budget of the next image: ``max_memory`` if given (capped by the free memory),
    else :data:`BUDGET_FRACTION` of the free memory (None when unknown)."""
    free = available_memory(device)
    if max_memory is not None:
        return max_memory if free is None else min(max_memory, free)
    return None if free is None else int(free * BUDGET_FRACTION)


