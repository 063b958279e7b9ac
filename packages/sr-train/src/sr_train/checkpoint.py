"""Training checkpoints: atomic writes, keep-last-N, full RNG state, resume lookup, weight export.

Layout of a run directory::

    <run>/checkpoints/iter_00001000.pt    full training state (see :func:`training_state`)
    <run>/weights/<model>_x<scale>.safetensors   EMA weights + metadata (sr_models.load_checkpoint)

Every file is first written to a temporary file in the same directory, flushed and fsynced, then
renamed over its final name (``os.replace`` is atomic on POSIX), so a crash or a full disk never
leaves a truncated checkpoint under a final name. Older checkpoints are deleted only after the new
one is in place.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sr_train.errors import CheckpointWriteError, ResumeError

CKPT_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^iter_(\d+)\.pt$")
FORMAT_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """The state of every RNG a training step may draw from: python, numpy, torch CPU and CUDA."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the legacy global RNG is what we must save)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only when CUDA is in use)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # another GPU count: restore what fits (only the current device matters per rank)
            for i, s in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it to ``path``.

    Any OSError (full disk, permissions) removes the temporary file and is re-raised as
    :class:`CheckpointWriteError` naming ``path``; an existing file at ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        reason = exc.strerror or str(exc)
        raise CheckpointWriteError(f"cannot write {path}: {reason}; earlier checkpoints are intact") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def checkpoint_path(run_dir: str | Path, iteration: int) -> Path:
    """``<run_dir>/checkpoints/iter_<iteration:08d>.pt``."""
    return Path(run_dir) / CKPT_DIR / f"iter_{iteration:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of every checkpoint in the run directory, oldest first."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(run_dir: str | Path, iteration: int, state: dict[str, Any], *, keep_last: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``iteration``, then prune to the last ``keep_last``."""
    path = checkpoint_path(run_dir, iteration)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        with contextlib.suppress(OSError):
            old.unlink()
    return path


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint on the CPU; ResumeError naming the file if it is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise ResumeError(f"checkpoint {str(p)!r} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # a pickle/zip error of any kind: the file is not a usable checkpoint
        raise ResumeError(f"checkpoint {str(p)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != "sr-train" or "model" not in state:
        raise ResumeError(f"{str(p)!r} is not an sr-train training checkpoint")
    return state


def find_resume_checkpoint(resume: str, run_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume`` points at: ``auto`` -> the newest in ``run_dir`` (None if none);
    a directory -> the newest in it (error if none); a file -> itself (error if missing)."""
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1][1] if found else None
    p = Path(resume)
    if p.is_dir():
        found = list_checkpoints(p)
        if not found and p.name == CKPT_DIR:
            found = list_checkpoints(p.parent)
        if not found:
            raise ResumeError(f"--resume {resume!r}: no checkpoints (checkpoints/iter_*.pt) in that directory")
        return found[-1][1]
    if not p.is_file():
        raise ResumeError(f"--resume {resume!r}: no such checkpoint file or run directory")
    return p


def check_compatible(state: dict[str, Any], *, model: str, scale: int, path: str | Path) -> None:
    """ResumeError if the checkpoint was written for another model name or scale."""
    got_model, got_scale = state.get("model_name"), state.get("scale")
    if got_model != model or got_scale != scale:
        raise ResumeError(
            f"checkpoint {str(path)!r} is for model {got_model!r} x{got_scale}, "
            f"not {model!r} x{scale}; use another --out or --resume"
        )


def export_weights(model: torch.nn.Module, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Save ``model``'s weights as safetensors with name/scale/config metadata, atomically.

    Uses ``sr_models.save_safetensors`` (the format ``sr_models.load_checkpoint`` reads);
    ``extra_metadata`` adds string entries (the trainer stores the iteration and training config).
    """
    from sr_models import save_safetensors

    atomic_write(path, lambda tmp: save_safetensors(model, tmp, extra_metadata=extra_metadata))
    return Path(path)
