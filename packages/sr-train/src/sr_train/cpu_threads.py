"""How many CPU threads the training process uses (``train.threads``).

On a CPU shared with other work, torch's default of one OpenMP thread per core is a trap: every op
waits at a barrier for all its threads, and a thread whose core is busy elsewhere makes the whole op
wait for the scheduler. Measured on the 2-core CI-size machine at a load average of 4-8 (other
jobs): an esc-light quick step took 2.6-6.1 s with 2 threads and 0.65-0.95 s with 1; idle, 2 threads
are about 1.4x faster than 1 (BENCHMARKS.md). ``auto`` therefore uses the cores that are not already
busy when the run starts.

"Busy" is measured, not averaged: the kernel's CPU counters (``/proc/stat``) are read twice, a
fraction of a second apart, before the model is built. The 1-minute load average is only the
fallback where ``/proc/stat`` does not exist: it still counts a run that ended seconds ago (measured:
a second ``sr-train`` started right after the first saw load 1.0 on an idle 2-core machine and ran on
1 thread, 1.3 min instead of 0.6 min for the README job).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def auto_threads(cores: int, load: float, *, workers: int = 0, local_processes: int = 1) -> int:
    """Threads for one training process: the idle cores ``cores - load`` (rounded to nearest) minus the
    DataLoader ``workers``, shared among the node's ``local_processes`` training processes; at least 1."""
    idle = math.floor(cores - max(0.0, load) + 0.5)
    return max(1, (idle - max(0, workers)) // max(1, local_processes))


# /proc/stat columns after "cpu": user nice system idle iowait irq softirq steal (guest* are in user)
_IDLE_COLUMNS = (3, 4)


def cpu_jiffies(stat_text: str) -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs, from the aggregate ``cpu`` line of ``/proc/stat``'s
    text; idle and iowait count as not busy, guest time is already inside user."""
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            counts = [int(v) for v in fields[1:9]]
            idle = sum(counts[i] for i in _IDLE_COLUMNS if i < len(counts))
            return sum(counts) - idle, sum(counts)
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def busy_cores_between(before: tuple[int, int], after: tuple[int, int], cores: int) -> float:
    """Cores kept busy between two :func:`cpu_jiffies` readings: the busy share of the elapsed jiffies
    times ``cores`` (0.0 when no time elapsed)."""
    d_busy, d_total = after[0] - before[0], after[1] - before[1]
    if d_total <= 0:
        return 0.0
    return cores * min(1.0, max(0.0, d_busy / d_total))


def busy_cores_now(cores: int, *, seconds: float = 0.3, stat_path: str = "/proc/stat") -> float | None:
    """Cores other processes keep busy right now (this one sleeps while it measures), from two readings
    of ``stat_path`` ``seconds`` apart; None where the file cannot be read (not Linux)."""
    path = Path(stat_path)
    try:
        before = cpu_jiffies(path.read_text())
        time.sleep(seconds)
        after = cpu_jiffies(path.read_text())
    except (OSError, ValueError):
        return None
    return busy_cores_between(before, after, cores)


def resolve_threads(setting: int | str, *, workers: int, resumed: int | None = None) -> tuple[int, str]:
    """(thread count, reason) for ``train.threads``: an integer as given; ``auto`` -> the count of the
    run being resumed (``resumed``), else :func:`auto_threads` from the cores busy now
    (:func:`busy_cores_now`), or from the 1-minute load average where that cannot be measured."""
    if setting != "auto":
        return int(setting), "train.threads"
    if resumed is not None:
        return int(resumed), "as in the run being resumed"
    cores = usable_cores()
    busy = busy_cores_now(cores)
    if busy is not None:
        load, what = busy, f"{busy:.1f} busy now"
    else:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return cores, f"{cores} cores"
        what = f"load average {load:.1f}"
    # processes on this node: torchrun sets LOCAL_WORLD_SIZE; without it assume every rank is local
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)
    n = auto_threads(cores, load, workers=workers, local_processes=local)
    return n, f"{cores} cores, {what}" + (f", {workers} data workers" if workers else "")


def apply_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` if it differs from the current count."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
