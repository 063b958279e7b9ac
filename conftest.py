"""Shared pytest setup for every package of the workspace.

* Lets Triton kernels run on a machine with no GPU: ``TRITON_INTERPRET=1`` is set here, before any
  test module (and so before any ``@triton.jit`` decorator) is imported, whenever CUDA is absent.
  Set ``TRITON_INTERPRET`` yourself to override the choice.
* Registers the hypothesis profiles ``dev`` (random, a few more examples) and ``ci`` (derandomized,
  bounded examples, no deadline). ``HYPOTHESIS_PROFILE`` picks one; without it, ``ci`` is used when
  the ``CI`` variable is set and ``dev`` otherwise.
* Skips tests marked ``gpu`` when CUDA is absent.
"""

from __future__ import annotations

import os


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of every package
        return False
    return torch.cuda.is_available()


HAS_CUDA = _cuda_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=20,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (none present)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
