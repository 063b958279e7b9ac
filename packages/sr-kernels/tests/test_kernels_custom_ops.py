"""The torch.library registrations (schema, fake/meta kernels, autograd) pass torch's own op checks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import sr_kernels  # noqa: F401  (registers the sr_kernels:: ops)


def test_custom_ops_pass_opcheck():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 5, 8, generator=g, requires_grad=True)
    k = torch.randn(1, 2, 6, 8, generator=g, requires_grad=True)
    v = torch.randn(1, 2, 6, 8, generator=g, requires_grad=True)
    p = torch.rand(1, 2, 5, 3, generator=g, requires_grad=True)
    bias = torch.randn(1, 2, 5, 3, generator=g, requires_grad=True)
    index = torch.randint(-1, 6, (1, 1, 5, 3), generator=g)
    ops = torch.ops.sr_kernels
    cases = [
        (ops.gather_attention_fwd.default, (q, k, v, index, bias, 0.3, "torch")),
        (ops.gather_scores_fwd.default, (q, k, index, bias, 0.3, "torch")),
        (ops.gather_values_fwd.default, (p, v, index, "torch")),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args)
        assert all(status == "SUCCESS" for status in result.values()), (op, result)


def test_import_does_not_import_triton_on_a_cpu_machine():
    """TRITON_INTERPRET=1 must still work when set after `import sr_kernels` (before the first call)."""
    if torch.cuda.is_available():
        pytest.skip("on CUDA machines Triton may be imported eagerly")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import sys, sr_kernels; assert 'triton' not in sys.modules, 'triton imported'"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
