"""The fast torch strategies (dense-then-gather and the lean gather) against the readable reference.

Every comparison runs in float64 against autograd of ``reference.gather_*_reference`` (the oracle), with
-1 slots, duplicated slots, fully empty rows, Hi = 1 and Hi = H, and broadcast biases. Shapes are drawn
on either side of ``torch_fast.use_dense`` so both strategies run through the public ops.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import sr_kernels
from sr_kernels.gather_attention import reference as ref
from sr_kernels.gather_attention import torch_fast as fast

F64 = torch.float64


def _index(g: torch.Generator, b: int, hi: int, n: int, kk: int, m: int, dtype: torch.dtype) -> torch.Tensor:
    """Random list with ~25% empty slots, a duplicated slot per row, and every third row fully empty."""
    idx = torch.randint(0, m, (b, hi, n, kk), generator=g)
    idx[torch.rand(idx.shape, generator=g) < 0.25] = -1
    if kk > 1:
        idx[..., 1] = idx[..., 0]
    idx[:, :, ::3] = -1
    return idx.to(dtype)


def _keys_for(dense: bool, kk: int, d: int, frac: float) -> int:
    """A key count M on the requested side of the dense threshold."""
    limit = int(fast.DENSE_MAX_KEYS_PER_SLOT_FEATURE * kk * d)
    assume(limit >= 1 or not dense)  # K * D too small for any dense case
    m = max(1, round(frac * limit)) if dense else limit + 1 + round(frac * 3 * max(limit, 4))
    assert fast.use_dense(m, kk, d) == dense
    return m


def _bias(g: torch.Generator, kind: str, b: int, h: int, n: int, kk: int) -> torch.Tensor | None:
    shapes = {"full": (b, h, n, kk), "per_head_row": (1, h, n, 1), "per_slot": (b, 1, 1, kk)}
    if kind == "none":
        return None
    return torch.randn(shapes[kind], generator=g, dtype=F64).requires_grad_()


def _grads(
    value: torch.Tensor, grad: torch.Tensor, inputs: list[torch.Tensor | None]
) -> list[torch.Tensor | None]:
    """d(sum(value * grad))/d(inputs), zeros where an input does not influence the value."""
    live = [t for t in inputs if t is not None]
    got = iter(torch.autograd.grad((value * grad).sum(), live, allow_unused=True, materialize_grads=True))
    return [None if t is None else next(got) for t in inputs]


shapes = {
    "b": st.integers(1, 2),
    "h": st.integers(1, 3),
    "shared": st.booleans(),
    "n": st.integers(1, 10),
    "kk": st.integers(1, 8),
    "d": st.sampled_from([1, 2, 4, 8]),
    "dense": st.booleans(),
    "frac": st.floats(0.0, 1.0),
    "idx32": st.booleans(),
    "seed": st.integers(0, 2**31 - 1),
}


@settings(max_examples=20)
@given(bias_kind=st.sampled_from(["none", "full", "per_head_row", "per_slot"]), **shapes)
def test_attention_forward_and_gradients_equal_reference(
    b, h, shared, n, kk, d, dense, frac, idx32, seed, bias_kind
):
    g = torch.Generator().manual_seed(seed)
    m = _keys_for(dense, kk, d, frac)
    q = torch.randn(b, h, n, d, generator=g, dtype=F64).requires_grad_()
    k, v = (torch.randn(b, h, m, d, generator=g, dtype=F64).requires_grad_() for _ in range(2))
    index = _index(g, b, 1 if shared else h, n, kk, m, torch.int32 if idx32 else torch.int64)
    bias = _bias(g, bias_kind, b, h, n, kk)
    scale = 0.7

    out, lse = sr_kernels.gather_attention(
        q, k, v, index, scale=scale, bias=bias, backend="torch", return_lse=True
    )
    out_ref, lse_ref = ref.gather_attention_reference(q, k, v, index, scale, bias)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-10, atol=1e-12)  # -inf on empty rows in both
    assert torch.all(out[:, :, ::3] == 0)

    g_out = torch.randn(out.shape, generator=g, dtype=F64)
    g_lse = torch.randn(lse.shape, generator=g, dtype=F64)
    finite = torch.isfinite(lse_ref)
    inputs = [q, k, v, bias]
    got = _grads(
        torch.cat([out.flatten(), lse.where(finite, 0).flatten()]),
        torch.cat([g_out.flatten(), g_lse.flatten()]),
        inputs,
    )
    want = _grads(
        torch.cat([out_ref.flatten(), lse_ref.where(finite, 0).flatten()]),
        torch.cat([g_out.flatten(), g_lse.flatten()]),
        inputs,
    )
    for name, a, e in zip("q k v bias".split(), got, want):
        if e is not None:
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11, msg=lambda s, name=name: f"d{name}: {s}")
    assert torch.all(got[0][:, :, ::3] == 0)  # empty rows: zero dq


@settings(max_examples=20)
@given(with_bias=st.booleans(), **shapes)
def test_scores_and_values_equal_reference(b, h, shared, n, kk, d, dense, frac, idx32, seed, with_bias):
    g = torch.Generator().manual_seed(seed)
    m = _keys_for(dense, kk, d, frac)
    q = torch.randn(b, h, n, d, generator=g, dtype=F64).requires_grad_()
    k, v = (torch.randn(b, h, m, d, generator=g, dtype=F64).requires_grad_() for _ in range(2))
    index = _index(g, b, 1 if shared else h, n, kk, m, torch.int32 if idx32 else torch.int64)
    bias = _bias(g, "per_head_row" if with_bias else "none", b, h, n, kk)

    s = sr_kernels.gather_scores(q, k, index, scale=0.5, bias=bias, backend="torch")
    s_ref = ref.gather_scores_reference(q, k, index, 0.5, bias)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-12)  # -inf at the same (empty) slots
    g_s = torch.randn(s.shape, generator=g, dtype=F64)  # finite also at empty slots: must be ignored there
    for a, e in zip(
        _grads(s.where(index >= 0, 0), g_s, [q, k, bias]),
        _grads(s_ref.where(index >= 0, 0), g_s, [q, k, bias]),
    ):
        if e is not None:
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)

    p = torch.rand(b, h, n, kk, generator=g, dtype=F64).requires_grad_()  # nonzero at empty slots too
    out = sr_kernels.gather_values(p, v, index, backend="torch")
    out_ref = ref.gather_values_reference(p, v, index)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-12)
    assert torch.all(out[:, :, ::3] == 0)
    g_o = torch.randn(out.shape, generator=g, dtype=F64)
    dp, dv = _grads(out, g_o, [p, v])
    dp_ref, dv_ref = _grads(out_ref, g_o, [p, v])
    torch.testing.assert_close(dp, dp_ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(dv, dv_ref, rtol=1e-9, atol=1e-11)
    assert torch.all(dp[(index < 0).expand_as(dp)] == 0)


@pytest.mark.parametrize("dense", [True, False])
@settings(max_examples=10)
@given(shared=st.booleans(), n=st.integers(1, 9), kk=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_forced_strategies_agree_with_each_other(dense, shared, n, kk, seed):
    """Both strategies on the same inputs (whatever use_dense says), fp32 like the model runs them."""
    g = torch.Generator().manual_seed(seed)
    b, h, d, m = 1, 3, 4, 11
    q = torch.randn(b, h, n, d, generator=g)
    k, v = (torch.randn(b, h, m, d, generator=g) for _ in range(2))
    index = _index(g, b, 1 if shared else h, n, kk, m, torch.int64)
    bias = torch.randn(b, h, n, kk, generator=g)
    g_out = torch.randn(b, h, n, d, generator=g)
    out, lse = fast.attention_forward(q, k, v, index, 0.5, bias, dense=dense)
    out_ref, lse_ref = ref.gather_attention_reference(q, k, v, index, 0.5, bias)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-5, atol=1e-6)
    got = fast.attention_backward(g_out, None, q, k, v, index, bias, out, lse, 0.5, dense=dense)
    want = ref.gather_attention_backward_torch(g_out, None, q, k, v, index, bias, out_ref, lse_ref, 0.5)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
    assert out.dtype == q.dtype and lse.dtype == torch.float32


def _gradcheck_inputs(dense: bool, shared: bool):
    g = torch.Generator().manual_seed(3 + 2 * dense + shared)
    b, h, n, kk, d = 1, 2, 5, 4, 3
    m = 6 if dense else 7  # threshold 0.5 * K * D = 6
    assert fast.use_dense(m, kk, d) == dense
    q = torch.randn(b, h, n, d, generator=g, dtype=F64, requires_grad=True)
    k, v = (torch.randn(b, h, m, d, generator=g, dtype=F64, requires_grad=True) for _ in range(2))
    index = _index(g, b, 1 if shared else h, n, kk, m, torch.int64)
    return q, k, v, index, g


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("dense", [True, False])
def test_gradcheck_fast_path(dense, shared):
    q, k, v, index, g = _gradcheck_inputs(dense, shared)
    bias = torch.randn(1, q.shape[1], q.shape[2], 1, generator=g, dtype=F64, requires_grad=True)
    live = index >= 0

    def attention(q, k, v, bias):
        out, lse = sr_kernels.gather_attention(q, k, v, index, bias=bias, backend="torch", return_lse=True)
        return out, lse.masked_fill(torch.isinf(lse), 0.0)

    def scores(q, k, bias):
        return sr_kernels.gather_scores(q, k, index, bias=bias, backend="torch").masked_fill(~live, 0.0)

    def values(p, v):
        return sr_kernels.gather_values(p, v, index, backend="torch")

    p = torch.rand((*q.shape[:3], index.shape[-1]), generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(attention, (q, k, v, bias))
    assert torch.autograd.gradcheck(scores, (q, k, bias))
    assert torch.autograd.gradcheck(values, (p, v))


def test_threshold_boundary_and_shared_list_is_not_expanded():
    c = fast.DENSE_MAX_KEYS_PER_SLOT_FEATURE
    assert fast.use_dense(int(c * 144 * 40), 144, 40)
    assert not fast.use_dense(int(c * 144 * 40) + 1, 144, 40)
    assert fast.use_dense(576, 64, 40)  # the IET training crop (24 x 24 LR) runs dense
    index = torch.randint(-1, 10, (2, 1, 5, 4))
    slot_ids = fast._slot_ids(index, 6, 10)
    assert slot_ids.shape == (2, 6, 5, 4) and slot_ids.stride(1) == 0  # Hi = 1: a view over heads
    assert torch.equal(slot_ids[:, 3], torch.where(index[:, 0] < 0, 10, index[:, 0]))


@settings(max_examples=12)
@given(
    dense=st.booleans(), shared=st.booleans(), n=st.integers(1, 23), kk=st.integers(1, 7),
    bias_kind=st.sampled_from(["none", "full", "per_head_row", "per_slot"]), rows=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_row_chunking_equals_one_pass(dense, shared, n, kk, bias_kind, rows, seed):
    """The public torch_fast functions run the query rows in chunks bounded by MAX_TEMP_ELEMENTS; a
    budget of 1 to 4 rows per chunk gives the one-pass results, forward and backward."""
    b, h, d = 2, 3, 4
    g = torch.Generator().manual_seed(seed)
    m = _keys_for(dense, kk, d, 0.5)
    q = torch.randn(b, h, n, d, generator=g, dtype=F64)
    k, v = (torch.randn(b, h, m, d, generator=g, dtype=F64) for _ in range(2))
    index = _index(g, b, 1 if shared else h, n, kk, m, torch.int64)
    bias = _bias(g, bias_kind, b, h, n, kk)
    bias = None if bias is None else bias.detach()
    p = torch.rand(b, h, n, kk, generator=g, dtype=F64)
    go, gl = torch.randn(b, h, n, d, generator=g, dtype=F64), torch.randn(b, h, n, generator=g, dtype=F64)
    gs = torch.randn(b, h, n, kk, generator=g, dtype=F64)

    def run():
        out, lse = fast.attention_forward(q, k, v, index, 0.5, bias)
        return [
            fast.scores_forward(q, k, index, 0.5, bias),
            *fast.scores_backward(gs, q, k, index, 0.5),
            fast.values_forward(p, v, index),
            *fast.values_backward(go, p, v, index),
            out, lse,
            *fast.attention_backward(go, gl, q, k, v, index, bias, out, lse, 0.5),
        ]

    whole = run()
    per_row = b * h * ((m + 1) if dense else kk * d)
    old = fast.MAX_TEMP_ELEMENTS
    fast.MAX_TEMP_ELEMENTS = rows * per_row
    try:
        assert fast.row_chunk(b, h, m, kk, d) == rows
        chunked = run()
    finally:
        fast.MAX_TEMP_ELEMENTS = old
    for i, (a, e) in enumerate(zip(chunked, whole)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=lambda s, i=i: f"output {i}: {s}")
