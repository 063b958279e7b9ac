"""DDP plumbing: read torchrun's environment, pick the device, init/destroy the process group.

``torchrun --nproc-per-node N -m sr_train ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; a plain ``sr-train`` run has none of them and is single-process.
The backend is NCCL when training on CUDA and gloo otherwise; each rank uses ``cuda:LOCAL_RANK``
(not ``RANK % n_gpus``, which is wrong across heterogeneous nodes).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, local rank, world size and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def pick_device(device: str, local_rank: int) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; ``cuda`` without CUDA is an error."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("config key 'train.device' is 'cuda' but no CUDA device is available")
    return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Set up this process from torchrun's variables (single-process when ``WORLD_SIZE`` is unset or 1)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistEnv(rank=rank, local_rank=local, world_size=world, device=dev)


def cleanup_distributed() -> None:
    """Destroy the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a list of floats over all ranks (identity when single-process)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank if ``flag`` is True on any rank (a collective: every rank must call it)."""
    return all_reduce_sum([1.0 if flag else 0.0], env)[0] > 0


def broadcast_object(obj: object, env: DistEnv, src: int = 0) -> object:
    """``obj`` from rank ``src`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
