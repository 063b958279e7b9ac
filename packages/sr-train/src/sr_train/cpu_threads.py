"""How many CPU threads the training process uses (``train.threads``).

On a CPU shared with other work, torch's default of one OpenMP thread per core is a trap: every op
waits at a barrier for all its threads, and a thread whose core is busy elsewhere makes the whole op
wait for the scheduler. Measured on the 2-core CI-size machine at a load average of 4-8 (other
jobs): an esc-light quick step took 2.6-6.1 s with 2 threads and 0.65-0.95 s with 1; idle, 2 threads
are about 1.4x faster than 1 (BENCHMARKS.md). ``auto`` therefore uses the cores that are not already
busy when the run starts.
"""

from __future__ import annotations

import math
import os

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


def resolve_threads(setting: int | str, *, workers: int, resumed: int | None = None) -> tuple[int, str]:
    """(thread count, reason) for ``train.threads``: an integer as given; ``auto`` -> the count of the
    run being resumed (``resumed``), else :func:`auto_threads` from the 1-minute load average."""
    if setting != "auto":
        return int(setting), "train.threads"
    if resumed is not None:
        return int(resumed), "as in the run being resumed"
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores, f"{cores} cores"
    # processes on this node: torchrun sets LOCAL_WORLD_SIZE; without it assume every rank is local
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)
    n = auto_threads(cores, load, workers=workers, local_processes=local)
    return n, f"{cores} cores, load average {load:.1f}" + (f", {workers} data workers" if workers else "")


def apply_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` if it differs from the current count."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
