"""Gather attention on the torch backend and its oracle: semantics against dense/window SDPA, autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import sr_kernels
from sr_kernels import flops
from sr_kernels.gather_attention import reference as ref


def _index(g, b, hi, n, kk, m, *, p_empty=0.2, dup=True, empty_rows=True):
    idx = torch.randint(0, m, (b, hi, n, kk), generator=g)
    idx[torch.rand(idx.shape, generator=g) < p_empty] = -1
    if dup and kk > 1:
        idx[..., -1] = idx[..., 0]
    if empty_rows:
        idx[:, :, ::5] = -1
    return idx


@settings(max_examples=20)
@given(
    b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 40), d=st.sampled_from([4, 16, 18]),
    shared=st.booleans(), permute=st.booleans(), with_mask=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_full_index_list_equals_dense_sdpa(b, h, n, d, shared, permute, with_mask, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3))
    perm = torch.randperm(n, generator=g) if permute else torch.arange(n)
    index = perm.expand(b, 1 if shared else h, n, n).contiguous()
    mask = torch.randn(b, h, n, n, generator=g, dtype=torch.float64) if with_mask else None
    bias = None if mask is None else torch.gather(mask, 3, index.expand(b, h, n, n))
    out = sr_kernels.gather_attention(q, k, v, index, bias=bias, backend="torch")
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, dense, rtol=1e-10, atol=1e-10)


@settings(max_examples=15)
@given(
    hw=st.tuples(st.integers(1, 3), st.integers(1, 3)), win=st.integers(1, 4), d=st.sampled_from([8, 16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_local_window_list_equals_window_attention(hw, win, d, seed):
    """Non-overlapping win x win windows: each token's list is its window -> Swin-style window attention."""
    g = torch.Generator().manual_seed(seed)
    hh, ww = hw[0] * win, hw[1] * win
    n, heads = hh * ww, 2
    q, k, v = (torch.randn(1, heads, n, d, generator=g) for _ in range(3))
    ys, xs = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing="ij")
    wy, wx = ys // win * win, xs // win * win
    oy, ox = torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")
    index = ((wy.reshape(n, 1) + oy.reshape(1, -1)) * ww + wx.reshape(n, 1) + ox.reshape(1, -1))[None, None]
    out = sr_kernels.gather_attention(q, k, v, index, backend="torch")

    def to_windows(x):  # (1, H, N, D) -> (nW, H, win*win, D)
        x = x.reshape(heads, hw[0], win, hw[1], win, d).permute(1, 3, 0, 2, 4, 5)
        return x.reshape(hw[0] * hw[1], heads, win * win, d)

    dense = F.scaled_dot_product_attention(to_windows(q), to_windows(k), to_windows(v))
    dense = dense.reshape(hw[0], hw[1], heads, win, win, d).permute(2, 0, 3, 1, 4, 5).reshape(1, heads, n, d)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_duplicate_slot_counts_twice():
    """A token listed twice weighs like one slot with +log(2) on its logit."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    index = torch.tensor([[[[0, 1, 1, 3]] * 5]])
    out_dup = sr_kernels.gather_attention(q, k, v, index, backend="torch")
    single = torch.tensor([[[[0, 1, 3]] * 5]])
    bias = torch.tensor([0.0, math.log(2.0), 0.0], dtype=torch.float64).expand(1, 2, 5, 3)
    out_bias = sr_kernels.gather_attention(q, k, v, single, bias=bias, backend="torch")
    torch.testing.assert_close(out_dup, out_bias)


def test_empty_rows_give_zero_output_and_zero_gradients():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=g).requires_grad_() for _ in range(3))
    index = torch.tensor([[[[-1, -1], [0, 2], [-1, -1], [3, -1]]]])
    out, lse = sr_kernels.gather_attention(q, k, v, index, backend="torch", return_lse=True)
    assert torch.equal(out[:, :, [0, 2]], torch.zeros(1, 2, 2, 8))
    assert torch.isneginf(lse[:, :, [0, 2]]).all() and torch.isfinite(lse[:, :, [1, 3]]).all()
    out.sum().backward()
    assert torch.equal(q.grad[:, :, [0, 2]], torch.zeros(1, 2, 2, 8))
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert torch.equal(k.grad[:, :, 1], torch.zeros(1, 2, 8))  # token 1 is never listed


def test_bias_minus_inf_excludes_slot():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 3, 8, generator=g) for _ in range(3))
    index = torch.tensor([[[[0, 1, 2]] * 3]])
    bias = torch.tensor([0.0, float("-inf"), 0.0]).expand(1, 1, 3, 3)
    out = sr_kernels.gather_attention(q, k, v, index, bias=bias, backend="torch")
    expected = sr_kernels.gather_attention(q, k, v, torch.tensor([[[[0, 2]] * 3]]), backend="torch")
    torch.testing.assert_close(out, expected)


@settings(max_examples=20)
@given(h=st.integers(1, 3), n=st.integers(1, 20), kk=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_shared_list_equals_expanded_list(h, n, kk, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, h, n, 16, generator=g) for _ in range(3))
    index = _index(g, 2, 1, n, kk, n)
    shared = sr_kernels.gather_attention(q, k, v, index, backend="torch")
    expanded = sr_kernels.gather_attention(q, k, v, index.expand(2, h, n, kk).contiguous(), backend="torch")
    torch.testing.assert_close(shared, expanded, rtol=0, atol=0)


@settings(max_examples=20)
@given(h=st.integers(1, 3), n=st.integers(1, 20), m=st.integers(1, 20), kk=st.integers(1, 9),
       shared=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_scores_softmax_values_compose_to_attention(h, n, m, kk, shared, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, h, n, 18, generator=g)
    k, v = (torch.randn(1, h, m, 18, generator=g) for _ in range(2))
    index = _index(g, 1, 1 if shared else h, n, kk, m)
    s = sr_kernels.gather_scores(q, k, index, backend="torch")
    assert s.dtype == torch.float32
    assert torch.equal(torch.isneginf(s), (index < 0).expand_as(s))
    p, _ = ref.safe_softmax(s)
    out = sr_kernels.gather_values(p, v, index, backend="torch")
    torch.testing.assert_close(out, sr_kernels.gather_attention(q, k, v, index, backend="torch"))


def _grad_inputs(seed, shared, dtype=torch.float64, n=6, m=7, kk=5, h=2, d=3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, h, n, d, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(1, h, m, d, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(1, h, m, d, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(1, h, n, kk, generator=g, dtype=dtype, requires_grad=True)
    index = _index(g, 1, 1 if shared else h, n, kk, m)
    return q, k, v, bias, index


@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck_reference_oracle(shared):
    q, k, v, bias, index = _grad_inputs(3, shared)

    def f(q, k, v, bias):
        out, lse = ref.gather_attention_reference(q, k, v, index, 0.7, bias)
        return out, lse.masked_fill(torch.isinf(lse), 0.0)

    assert torch.autograd.gradcheck(f, (q, k, v, bias))


@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck_torch_backend_explicit_backward(shared):
    """The custom op's hand-written backward (torch backend) against finite differences."""
    q, k, v, bias, index = _grad_inputs(4, shared)

    def f(q, k, v, bias):
        out, lse = sr_kernels.gather_attention(q, k, v, index, bias=bias, scale=0.7, backend="torch", return_lse=True)
        return out, lse.masked_fill(torch.isinf(lse), 0.0)

    assert torch.autograd.gradcheck(f, (q, k, v, bias))


def test_gradcheck_scores_and_values_torch_backend():
    q, k, v, bias, index = _grad_inputs(5, True)
    p = torch.rand(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)

    def scores(q, k, bias):
        s = sr_kernels.gather_scores(q, k, index, bias=bias, backend="torch")
        return s.masked_fill(torch.isinf(s), 0.0)

    assert torch.autograd.gradcheck(scores, (q, k, bias))
    assert torch.autograd.gradcheck(lambda p, v: sr_kernels.gather_values(p, v, index, backend="torch"), (p, v))


def test_explicit_backward_matches_autograd_of_oracle_fp32():
    q, k, v, bias, index = _grad_inputs(6, False, dtype=torch.float32, n=30, m=25, kk=9, h=3, d=18)
    w = torch.randn(1, 3, 30, 18)
    out = sr_kernels.gather_attention(q, k, v, index, bias=bias, backend="torch")
    grads = torch.autograd.grad((out * w).sum(), (q, k, v, bias))
    out_ref, _ = ref.gather_attention_reference(q, k, v, index, 18**-0.5, bias)
    grads_ref = torch.autograd.grad((out_ref * w).sum(), (q, k, v, bias))
    torch.testing.assert_close(out, out_ref)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_broadcast_bias_gets_reduced_gradient():
    q, k, v, _, index = _grad_inputs(7, True)
    bias = torch.randn(1, 2, 1, 5, dtype=torch.float64, requires_grad=True)  # one bias per (head, slot)
    assert torch.autograd.gradcheck(
        lambda b: sr_kernels.gather_attention(q, k, v, index, bias=b, backend="torch"), (bias,)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_keep_dtype_and_match_fp32(dtype):
    q, k, v, _, index = _grad_inputs(8, False, dtype=torch.float32, n=12, m=10, kk=6, h=2, d=16)
    out = sr_kernels.gather_attention(q.to(dtype), k.to(dtype), v.to(dtype), index, backend="torch")
    assert out.dtype == dtype
    expected = sr_kernels.gather_attention(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float(), index, backend="torch")
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


def test_flop_counter_counts_the_sparse_work():
    b, h, n, m, kk, d = 2, 3, 17, 19, 7, 18
    g = torch.Generator().manual_seed(9)
    q = torch.randn(b, h, n, d, generator=g, requires_grad=True)
    k = torch.randn(b, h, m, d, generator=g, requires_grad=True)
    v = torch.randn(b, h, m, d, generator=g, requires_grad=True)
    index = _index(g, b, 1, n, kk, m)
    with FlopCounterMode(display=False) as counter:
        out = sr_kernels.gather_attention(q, k, v, index, backend="torch")
    assert counter.get_total_flops() == 4 * b * h * n * kk * d == flops.gather_attention_flops(b, h, n, kk, d)
    with FlopCounterMode(display=False) as counter:
        out = sr_kernels.gather_attention(q, k, v, index, backend="torch")
        out.sum().backward()
    assert counter.get_total_flops() == 12 * b * h * n * kk * d
    with FlopCounterMode(display=False) as counter:
        s = sr_kernels.gather_scores(q, k, index, backend="torch")
        o = sr_kernels.gather_values(torch.softmax(s, -1).nan_to_num(), v, index, backend="torch")
        o.sum().backward()
    expected = (flops.gather_scores_flops(b, h, n, kk, d) + flops.gather_scores_backward_flops(b, h, n, kk, d)
                + flops.gather_values_flops(b, h, n, kk, d) + flops.gather_values_backward_flops(b, h, n, kk, d))
    assert counter.get_total_flops() == expected == 12 * b * h * n * kk * d
