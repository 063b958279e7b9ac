"""Backend choice for every op: Triton on CUDA, the PyTorch reference elsewhere.

Order of precedence:

1. the ``backend=`` keyword of the op (``"triton"`` or ``"torch"``);
2. the environment variable ``SR_KERNELS_BACKEND`` (``triton`` or ``torch``), read at every call;
3. the device of the inputs: ``"triton"`` for CUDA tensors (when Triton is installed), else ``"torch"``.

Forcing ``"triton"`` on CPU tensors runs the Triton interpreter. Triton reads ``TRITON_INTERPRET`` when
it is imported and when a kernel is defined, so the variable must be set before the first Triton call
in the process; the kernel modules of this package are imported lazily (on first use) for that reason.
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS: tuple[str, ...] = ("triton", "torch")
ENV_BACKEND = "SR_KERNELS_BACKEND"


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to run kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Return ``"triton"`` or ``"torch"`` for an op whose tensors live on ``device``.

    Raises ValueError naming ``backend`` (or the environment variable) for an unknown name, and when
    Triton is forced where it cannot run (not installed, or CPU tensors without ``TRITON_INTERPRET=1``).
    """
    source = "backend"
    if backend is None:
        env = os.environ.get(ENV_BACKEND, "").strip().lower()
        if env:
            backend, source = env, ENV_BACKEND
    if backend is None:
        if device.type == "cuda" and triton_available():
            return "triton"
        return "torch"
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "triton":
        if not triton_available():
            raise ValueError(f"{source}='triton' but the triton package is not installed")
        if device.type == "cpu" and not interpreter_enabled():
            raise ValueError(
                f"{source}='triton' with CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
                "in the environment before the first Triton call (or use CUDA tensors)"
            )
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"{source}='triton' supports CUDA (or CPU via the interpreter), got {device}")
    return backend
