"""Head dim 18 (IET-light: 54 channels / 3 heads) on every path of the gather ops, against the
readable reference, forward and backward: the torch backend's dense-then-gather and gather
strategies (forced) and the Triton kernels (on CPU: the interpreter). The Triton runs also check
that no torch fallback is taken (the torch_fast entry points raise while Triton runs)."""

from __future__ import annotations

import pytest
import torch

import sr_kernels
from sr_kernels._dispatch import interpreter_enabled
from sr_kernels.gather_attention import reference as ref
from sr_kernels.gather_attention import torch_fast

D = 18
HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
# (path, backend, dense-strategy threshold): "dense" / "gather" force the torch strategy
PATHS = [("torch-dense", "torch", 1e9), ("torch-gather", "torch", 0.0), ("triton", "triton", None)]


def _case(seed: int, shared: bool):
    g = torch.Generator().manual_seed(seed)
    b, h, n, m, kk = 2, 3, 37, 29, 11  # K not a power of two, IET-light's 3 heads
    q, k, v = (torch.randn(b, h, x, D, generator=g) for x in (n, m, m))
    index = torch.randint(0, m, (b, 1 if shared else h, n, kk), generator=g)
    index[torch.rand(index.shape, generator=g) < 0.2] = -1
    index[..., 5] = index[..., 0]  # a duplicate slot
    index[:, :, ::9] = -1  # empty rows
    bias = torch.randn(b, h, n, kk, generator=g)
    return [t.to(DEVICE) for t in (q, k, v, index, bias)]


def _forbid_torch_fast(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the torch path ran where the Triton kernel should have")

    for name in ("scores_forward", "scores_backward", "values_forward", "values_backward",
                 "attention_forward", "attention_backward"):
        monkeypatch.setattr(torch_fast, name, boom)


def _setup(path: str, threshold: float | None, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if path == "triton":
        if not HAS_CUDA and not interpreter_enabled():
            pytest.skip("needs CUDA or TRITON_INTERPRET=1 (set by the root conftest)")
        _forbid_torch_fast(monkeypatch)
    else:
        monkeypatch.setattr(torch_fast, "DENSE_MAX_KEYS_PER_SLOT_FEATURE", threshold)


def _grads(out: torch.Tensor, w: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad((out * w).sum(), leaves))


@pytest.mark.parametrize(("path", "backend", "threshold"), PATHS)
@pytest.mark.parametrize("shared", [True, False])
def test_attention_head_dim_18(path, backend, threshold, shared, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    q, k, v, index, bias = _case(1, shared)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    out_r, lse_r = ref.gather_attention_reference(*leaves[:3], index, D**-0.5, leaves[3])
    w = torch.randn_like(out_r)
    want = _grads(out_r, w, leaves)
    _setup(path, threshold, monkeypatch)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    out, lse = sr_kernels.gather_attention(*leaves[:3], index, bias=leaves[3], backend=backend, return_lse=True)
    got = _grads(out, w, leaves)
    torch.testing.assert_close(out, out_r, rtol=1e-5, atol=1e-5)
    fin = torch.isfinite(lse_r)
    assert torch.equal(torch.isfinite(lse), fin)
    torch.testing.assert_close(lse[fin], lse_r[fin], rtol=1e-5, atol=1e-5)
    for name, a, e in zip(("q", "k", "v", "bias"), got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=lambda s, name=name: f"d{name}: {s}")


@pytest.mark.parametrize(("path", "backend", "threshold"), PATHS)
def test_scores_and_values_head_dim_18(path, backend, threshold, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    q, k, v, index, bias = _case(2, shared=True)
    p = torch.rand(index.shape[0], 3, *index.shape[2:], device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (q, k, bias, p, v)]
    s_r = ref.gather_scores_reference(leaves[0], leaves[1], index, 0.3, leaves[2])
    o_r = ref.gather_values_reference(leaves[3], leaves[4], index)
    ws = torch.randn_like(s_r).masked_fill(index < 0, 0.0)
    wo = torch.randn_like(o_r)
    want = _grads(s_r.masked_fill(index < 0, 0.0), ws, leaves[:3]) + _grads(o_r, wo, leaves[3:])
    _setup(path, threshold, monkeypatch)
    leaves = [t.clone().requires_grad_() for t in (q, k, bias, p, v)]
    s = sr_kernels.gather_scores(leaves[0], leaves[1], index, scale=0.3, bias=leaves[2], backend=backend)
    o = sr_kernels.gather_values(leaves[3], leaves[4], index, backend=backend)
    assert torch.equal(torch.isneginf(s), torch.isneginf(s_r))
    torch.testing.assert_close(s.masked_fill(index < 0, 0.0), s_r.masked_fill(index < 0, 0.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o, o_r, rtol=1e-5, atol=1e-5)
    got = _grads(s.masked_fill(index < 0, 0.0), ws, leaves[:3]) + _grads(o, wo, leaves[3:])
    for name, a, e in zip(("q", "k", "bias", "p", "v"), got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=lambda s, name=name: f"d{name}: {s}")


def test_the_forced_torch_strategies_are_the_ones_that_run() -> None:
    """The thresholds used above do select each strategy at these shapes (the test would otherwise
    check one strategy twice)."""
    assert torch_fast.use_dense(29, 11, D)  # default threshold: dense at this size
    old = torch_fast.DENSE_MAX_KEYS_PER_SLOT_FEATURE
    try:
        torch_fast.DENSE_MAX_KEYS_PER_SLOT_FEATURE = 0.0
        assert not torch_fast.use_dense(29, 11, D)
    finally:
        torch_fast.DENSE_MAX_KEYS_PER_SLOT_FEATURE = old
