"""Triton gather-attention kernels against the PyTorch reference (CPU: the Triton interpreter)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sr_kernels
from sr_kernels._dispatch import interpreter_enabled
from sr_kernels.gather_attention import reference as ref

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
pytestmark = pytest.mark.skipif(
    not HAS_CUDA and not interpreter_enabled(), reason="needs CUDA or TRITON_INTERPRET=1 (set by the root conftest)"
)


def _case(seed, b, h, shared, n, m, kk, d, *, dtype=torch.float32, p_empty=0.25, dup=True, empty_rows=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g)
    k = torch.randn(b, h, m, d, generator=g)
    v = torch.randn(b, h, m, d, generator=g)
    index = torch.randint(0, m, (b, 1 if shared else h, n, kk), generator=g)
    index[torch.rand(index.shape, generator=g) < p_empty] = -1
    if dup and kk > 1:
        index[..., kk // 2] = index[..., 0]
    if empty_rows:
        index[:, :, ::7] = -1
    bias = torch.randn(b, h, n, kk, generator=g)
    return [t.to(DEVICE) for t in (q.to(dtype), k.to(dtype), v.to(dtype), bias)] + [index.to(DEVICE)]


shapes = dict(
    b=st.integers(1, 2), h=st.integers(1, 3), shared=st.booleans(), n=st.integers(1, 70),
    m=st.integers(1, 50), kk=st.integers(1, 24), d=st.sampled_from([16, 18, 32, 40, 64]),
    with_bias=st.booleans(), idx32=st.booleans(), seed=st.integers(0, 2**31 - 1),
)


@settings(max_examples=10)
@given(**shapes)
def test_triton_attention_forward_and_backward_match_reference(b, h, shared, n, m, kk, d, with_bias, idx32, seed):
    q, k, v, bias, index = _case(seed, b, h, shared, n, m, kk, d)
    if idx32:
        index = index.int()
    bias = bias if with_bias else None
    w_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    w_lse = torch.randn(q.shape[:3], generator=torch.Generator().manual_seed(seed + 2)).to(DEVICE)
    results = {}
    for be in ("triton", "torch"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        bl = bias.clone().requires_grad_() if bias is not None else None
        out, lse = sr_kernels.gather_attention(*leaves, index, bias=bl, backend=be, return_lse=True)
        loss = (out * w_out).sum() + (lse.masked_fill(torch.isinf(lse), 0.0) * w_lse).sum()
        loss.backward()
        grads = [t.grad for t in leaves] + ([bl.grad] if bl is not None else [])
        results[be] = (out, lse, grads)
    out_t, lse_t, grads_t = results["triton"]
    out_r, lse_r, grads_r = results["torch"]
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.isneginf(lse_t), torch.isneginf(lse_r))
    torch.testing.assert_close(lse_t.masked_fill(torch.isinf(lse_t), 0), lse_r.masked_fill(torch.isinf(lse_r), 0))
    for got, want in zip(grads_t, grads_r):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@settings(max_examples=6)
@given(**shapes)
def test_triton_scores_and_values_match_reference(b, h, shared, n, m, kk, d, with_bias, idx32, seed):
    q, k, v, bias, index = _case(seed, b, h, shared, n, m, kk, d)
    if idx32:
        index = index.int()
    bias = bias if with_bias else None
    p = torch.rand(b, h, n, kk, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    res = {}
    for be in ("triton", "torch"):
        qq, kk_, vv, pp = (t.clone().requires_grad_() for t in (q, k, v, p))
        bl = bias.clone().requires_grad_() if bias is not None else None
        s = sr_kernels.gather_scores(qq, kk_, index, bias=bl, backend=be)
        o = sr_kernels.gather_values(pp, vv, index, backend=be)
        (s.masked_fill(torch.isinf(s), 0.0).square().sum() + o.square().sum()).backward()
        res[be] = [s, o, qq.grad, kk_.grad, vv.grad, pp.grad] + ([bl.grad] if bl is not None else [])
    assert torch.equal(torch.isneginf(res["triton"][0]), torch.isneginf(res["torch"][0]))
    res["triton"][0] = res["triton"][0].masked_fill(torch.isinf(res["triton"][0]), 0)
    res["torch"][0] = res["torch"][0].masked_fill(torch.isinf(res["torch"][0]), 0)
    for got, want in zip(res["triton"], res["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if HAS_CUDA else []))
def test_triton_half_precision_matches_reference(dtype):
    q, k, v, bias, index = _case(11, 1, 2, False, 45, 33, 13, 40, dtype=dtype)
    out_t = sr_kernels.gather_attention(q, k, v, index, bias=bias, backend="triton")
    out_r = sr_kernels.gather_attention(q, k, v, index, bias=bias, backend="torch")
    assert out_t.dtype == dtype
    torch.testing.assert_close(out_t.float(), out_r.float(), rtol=1e-2, atol=1e-2)
    qq = q.clone().requires_grad_()
    sr_kernels.gather_attention(qq, k, v, index, backend="triton").float().sum().backward()
    qr = q.clone().requires_grad_()
    sr_kernels.gather_attention(qr, k, v, index, backend="torch").float().sum().backward()
    assert qq.grad.dtype == dtype
    torch.testing.assert_close(qq.grad.float(), qr.grad.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_triton_bf16_training_shape_on_gpu():
    q, k, v, _, index = _case(12, 2, 6, False, 1000, 1000, 144, 40, dtype=torch.bfloat16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = sr_kernels.gather_attention(*leaves, index, backend="triton")
    out.float().sum().backward()
    ref_leaves = [t.float().clone().requires_grad_() for t in (q, k, v)]
    out_r, _ = ref.gather_attention_reference(*ref_leaves, index, 40**-0.5)
    out_r.sum().backward()
    torch.testing.assert_close(out.float(), out_r, rtol=2e-2, atol=2e-2)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad.float(), want.grad, rtol=5e-2, atol=5e-2)


def test_triton_large_key_count_uses_int64_offsets():
    """M * D > 2^31 elements: int32 offsets would wrap and gather the wrong rows.

    The key tensor is allocated but never written except for the rows used (untouched pages stay
    virtual), so the test needs little memory.
    """
    d = 16
    m = 2**31 // d + 96
    k = torch.empty(1, 1, m, d, dtype=torch.float16, device=DEVICE)
    v = torch.empty(1, 1, m, d, dtype=torch.float16, device=DEVICE)
    rows = torch.tensor([0, 5, m - 1, m - 2, m - 40, m - 95, 2**31 // d, 2**31 // d - 1], device=DEVICE)
    g = torch.Generator().manual_seed(13)
    k[0, 0, rows] = torch.randn(len(rows), d, generator=g).half().to(DEVICE)
    v[0, 0, rows] = torch.randn(len(rows), d, generator=g).half().to(DEVICE)
    q = torch.randn(1, 1, 3, d, generator=g).half().to(DEVICE)
    index = rows[torch.tensor([[0, 2, 3, 6, 7, 1], [4, 5, 6, -1, 2, 2], [7, 6, 5, 4, 3, 2]])]
    index[1, 3] = -1
    index = index[None, None]
    small_k, small_v = k[0, 0, rows][None, None].float(), v[0, 0, rows][None, None].float()
    remap = torch.full((m,), -1, dtype=torch.long, device=DEVICE)
    remap[rows] = torch.arange(len(rows), device=DEVICE)
    small_index = torch.where(index >= 0, remap[index.clamp_min(0)], -1)

    out = sr_kernels.gather_attention(q, k, v, index, backend="triton")
    expected, _ = ref.gather_attention_reference(q.float(), small_k, small_v, small_index, d**-0.5)
    torch.testing.assert_close(out.float(), expected, rtol=2e-3, atol=2e-3)
    s = sr_kernels.gather_scores(q, k, index, backend="triton")
    s_ref = ref.gather_scores_reference(q.float(), small_k, small_index, d**-0.5)
    torch.testing.assert_close(s.masked_fill(torch.isinf(s), 0), s_ref.masked_fill(torch.isinf(s_ref), 0),
                               rtol=2e-3, atol=2e-3)
    p = torch.softmax(s_ref, -1)
    o = sr_kernels.gather_values(p, v, index, backend="triton")
    torch.testing.assert_close(o.float(), ref.gather_values_reference(p, small_v, small_index), rtol=2e-3, atol=2e-3)


def test_triton_accepts_strided_views_of_a_packed_qkv():
    """q, k, v as permuted views of one (B, N, 3, H, D) tensor (what a fused qkv Linear gives)."""
    g = torch.Generator().manual_seed(14)
    b, n, h, d, kk = 2, 37, 3, 18, 9
    qkv = torch.randn(b, n, 3, h, d, generator=g).to(DEVICE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D), non-contiguous
    index = torch.randint(-1, n, (b, 1, n, kk), generator=g).to(DEVICE)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out_t = sr_kernels.gather_attention(q.requires_grad_(), k, v, index, backend="triton")
    out_r = sr_kernels.gather_attention(*leaves, index, backend="torch")
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    out_t.sum().backward()
    out_r.sum().backward()
    torch.testing.assert_close(q.grad, leaves[0].grad, rtol=1e-4, atol=1e-4)
