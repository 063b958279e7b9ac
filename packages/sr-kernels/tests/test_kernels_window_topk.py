"""window_topk_select / window_gather / window_topk_attention (SSCAN's FGCA) against brute force.

* selection: the ids are the top-k by the stated pooled score (brute-force Python sort), ties to the
  lower id, self-first option, per-head and shared scores, chunked fast path equal to one chunk;
* attention: every query token attends to exactly the tokens of its k windows (one-hot values show the
  support), SDPA and explicit paths equal the dense masked reference, gradients match it;
* bad input raises ValueErrors naming the argument; the FLOP formula is what FlopCounterMode reports.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import sr_kernels
from sr_kernels import flops
from sr_kernels.window_topk import op as wop
from sr_kernels.window_topk import reference as ref


def _windows(seed: int, b: int, h: int, nw: int, t: int, d: int, dtype=torch.float64, ties: bool = False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values, and some identical windows -> exact ties in the pooled scores
        x = torch.randint(-2, 3, (b, h, nw, t, d), generator=g).to(dtype)
        x[:, :, 1::3] = x[:, :, :1]
        return x
    return torch.randn(b, h, nw, t, d, generator=g, dtype=dtype)


@settings(max_examples=25)
@given(b=st.integers(1, 2), h=st.integers(1, 3), nq=st.integers(1, 9), nk=st.integers(1, 9),
       t=st.integers(1, 5), d=st.integers(1, 4), shared=st.booleans(), ties=st.booleans(),
       frac=st.floats(0, 1), seed=st.integers(0, 2**31 - 1))
def test_selection_is_the_brute_force_top_k(b, h, nq, nk, t, d, shared, ties, frac, seed):
    # key windows may have another token count; with ties, power-of-two counts keep the window means
    # (and so the pooled scores) exact, so equal scores are equal on every path and the tie rule decides
    tq, tk = (2 ** (t % 3), 2 ** ((t + 1) % 3)) if ties else (t, t + 1)
    q = _windows(seed, b, h, nq, tq, d, ties=ties)
    k = _windows(seed + 1, b, h, nk, tk, d, ties=ties)
    topk = 1 + int(frac * (nk - 1))
    ids = sr_kernels.window_topk_select(q, k, topk, shared_heads=shared)
    assert ids.shape == (b, 1 if shared else h, nq, topk) and ids.dtype == torch.int64
    assert torch.equal(ids, ref.window_topk_select_reference(q, k, topk, shared_heads=shared))
    # and the defining property, independent of the tie rule: nothing left out scores higher
    scores = ref.pooled_scores_reference(q, k, shared)
    picked = scores.gather(-1, ids)
    rest = scores.scatter(-1, ids, float("-inf"))
    assert (picked.min(-1).values >= rest.max(-1).values).all()
    assert (ids.sort(-1).values.diff(dim=-1) > 0).all()  # distinct windows


@settings(max_examples=15)
@given(b=st.integers(1, 2), h=st.integers(1, 3), nw=st.integers(1, 8), shared=st.booleans(),
       frac=st.floats(0, 1), seed=st.integers(0, 2**31 - 1))
def test_include_self_lists_the_own_window_first(b, h, nw, shared, frac, seed):
    q, k = _windows(seed, b, h, nw, 4, 3), _windows(seed + 7, b, h, nw, 4, 3)
    topk = 1 + int(frac * (nw - 1))
    ids = sr_kernels.window_topk_select(q, k, topk, shared_heads=shared, include_self=True)
    assert torch.equal(ids, ref.window_topk_select_reference(q, k, topk, shared_heads=shared, include_self=True))
    assert torch.equal(ids[..., 0], torch.arange(nw).expand_as(ids[..., 0]))


def test_chunked_selection_equals_one_chunk(monkeypatch):
    q, k = _windows(3, 2, 2, 37, 4, 3, ties=True), _windows(4, 2, 2, 37, 4, 3, ties=True)
    whole = sr_kernels.window_topk_select(q, k, 5, include_self=True)
    monkeypatch.setattr(wop, "SCORE_CHUNK_ELEMENTS", 2 * 37 * 3)  # 3 query rows per chunk
    assert torch.equal(sr_kernels.window_topk_select(q, k, 5, include_self=True), whole)


def test_selection_of_half_inputs_uses_float32_scores():
    q, k = _windows(5, 1, 2, 12, 16, 8), _windows(6, 1, 2, 12, 16, 8)
    want = ref.window_topk_select_reference(q.half().float(), k.half().float(), 4)
    assert torch.equal(sr_kernels.window_topk_select(q.half(), k.half(), 4), want)


def test_selection_scores_stay_float32_under_autocast():
    q, k = _windows(7, 1, 2, 40, 16, 8, dtype=torch.float32), _windows(8, 1, 2, 40, 16, 8, dtype=torch.float32)
    want = sr_kernels.window_topk_select(q, k, 6)
    assert torch.equal(want, ref.window_topk_select_reference(q, k, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sr_kernels.window_topk_select(q, k, 6)
        out = sr_kernels.window_topk_attention(q.bfloat16(), k.bfloat16(), k.bfloat16(), got)
    assert torch.equal(got, want) and out.dtype == torch.bfloat16


def test_gather_equals_explicit_indexing():
    x = _windows(1, 2, 3, 5, 4, 2)
    g = torch.Generator().manual_seed(0)
    for hi in (1, 3):
        ids = torch.randint(0, 5, (2, hi, 6, 3), generator=g)  # repeats allowed
        assert torch.equal(sr_kernels.window_gather(x, ids), ref.gather_windows_reference(x, ids))


def test_every_query_attends_to_exactly_its_windows_tokens():
    """With v = identity over the key tokens, out[i, t] is the attention row: positive exactly on the
    tokens of the listed windows, zero elsewhere, summing to one."""
    b, h, nw, t = 2, 2, 5, 4
    m = nw * t
    q = _windows(11, b, h, nw, t, m)
    k = _windows(12, b, h, nw, t, m)
    v = torch.eye(m, dtype=torch.float64).reshape(1, 1, nw, t, m).expand(b, h, nw, t, m).contiguous()
    for shared in (True, False):
        ids = sr_kernels.window_topk_select(q, k, 2, shared_heads=shared)
        for impl in wop.IMPLS:
            rows = sr_kernels.window_topk_attention(q, k, v, ids, impl=impl)  # (B, H, nQ, T, M)
            window_of_key = torch.arange(m) // t
            listed = (window_of_key.view(1, 1, 1, m) == ids.expand(b, h, nw, 2).unsqueeze(-1)).any(-2)
            support = rows > 0
            assert torch.equal(support, listed.unsqueeze(3).expand_as(support)), (shared, impl)
            torch.testing.assert_close(rows.sum(-1), torch.ones(b, h, nw, t, dtype=torch.float64))


@settings(max_examples=20)
@given(b=st.integers(1, 2), h=st.integers(1, 3), nq=st.integers(1, 6), nk=st.integers(1, 6),
       t=st.integers(1, 6), d=st.integers(1, 8), kk=st.integers(1, 4), per_head=st.booleans(),
       impl=st.sampled_from(wop.IMPLS), seed=st.integers(0, 2**31 - 1))
def test_output_and_gradients_match_dense_masked_attention(b, h, nq, nk, t, d, kk, per_head, impl, seed):
    g = torch.Generator().manual_seed(seed)
    q = _windows(seed, b, h, nq, t, d).requires_grad_()
    k = _windows(seed + 1, b, h, nk, t + 1, d).requires_grad_()
    v = _windows(seed + 2, b, h, nk, t + 1, d).requires_grad_()
    ids = torch.randint(0, nk, (b, h if per_head else 1, nq, kk), generator=g)  # repeats count twice
    grad = torch.randn(b, h, nq, t, d, generator=g, dtype=torch.float64)
    out = sr_kernels.window_topk_attention(q, k, v, ids, scale=0.7, impl=impl)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    want = ref.dense_masked_attention_reference(q, k, v, ids, scale=0.7)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    torch.testing.assert_close(out, want)
    for got, exp in zip(grads, want_grads):
        torch.testing.assert_close(got, exp)


def test_float32_sdpa_matches_reference():
    q, k, v = (_windows(s, 1, 3, 16, 64, 20, dtype=torch.float32) for s in (1, 2, 3))
    ids = sr_kernels.window_topk_select(q, k, 4)
    out = sr_kernels.window_topk_attention(q, k, v, ids)
    torch.testing.assert_close(out, ref.dense_masked_attention_reference(q, k, v, ids).float(), atol=2e-5, rtol=1e-4)


def test_flop_formulas_are_what_the_counter_sees():
    b, h, nq, t, d, kk = 2, 3, 6, 16, 8, 2
    q, k, v = (_windows(s, b, h, nq, t, d, dtype=torch.float32) for s in (1, 2, 3))
    flops.register_flop_formulas()
    with FlopCounterMode(display=False) as counter:
        ids = sr_kernels.window_topk_select(q, k, kk)
    assert counter.get_total_flops() == flops.window_topk_select_flops(b, 1, nq, nq, h * d) > 0
    with FlopCounterMode(display=False) as counter:
        sr_kernels.window_topk_select(q, k, kk, shared_heads=False)
    assert counter.get_total_flops() == flops.window_topk_select_flops(b, h, nq, nq, d)
    with FlopCounterMode(display=False) as counter:
        sr_kernels.window_topk_attention(q, k, v, ids)
    assert counter.get_total_flops() == flops.window_topk_attention_flops(b, h, nq, t, kk, t, d)


def test_meta_tensors_give_shapes_and_flops():
    q = torch.empty(1, 2, 9, 16, 4, device="meta")
    flops.register_flop_formulas()
    with FlopCounterMode(display=False) as counter:
        ids = sr_kernels.window_topk_select(q, q, 3)
        out = sr_kernels.window_topk_attention(q, q, q, ids)
    assert ids.shape == (1, 1, 9, 3) and out.shape == q.shape
    assert counter.get_total_flops() == (
        flops.window_topk_select_flops(1, 1, 9, 9, 8) + flops.window_topk_attention_flops(1, 2, 9, 16, 3, 16, 4)
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda q, ids: sr_kernels.window_topk_select(q, q, 7), "topk"),
        (lambda q, ids: sr_kernels.window_topk_select(q, q, 0), "topk"),
        (lambda q, ids: sr_kernels.window_topk_select(q[:, :, :1, :1], q, 2, include_self=True), "include_self"),
        (lambda q, ids: sr_kernels.window_topk_select(q[0], q, 2), "q must have 5"),
        (lambda q, ids: sr_kernels.window_topk_select(q, q.double(), 2), "dtype"),
        (lambda q, ids: sr_kernels.window_topk_select(q, q[:, :1], 2), "k has shape"),
        (lambda q, ids: sr_kernels.window_topk_attention(q, q, q, ids + 6), "ids has value 6"),
        (lambda q, ids: sr_kernels.window_topk_attention(q, q, q, ids - 1), "ids has value -1"),
        (lambda q, ids: sr_kernels.window_topk_attention(q, q, q, ids.float()), "integer"),
        (lambda q, ids: sr_kernels.window_topk_attention(q, q, q, ids[:, :, :2]), "ids has shape"),
        (lambda q, ids: sr_kernels.window_topk_attention(q, q, q[..., :1], ids), "v has shape"),
        (lambda q, ids: sr_kernels.window_topk_attention(q, q, q, ids, impl="flash"), "impl"),
        (lambda q, ids: sr_kernels.window_gather(q, ids[..., :0]), "k = 0"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(call, match):
    q = torch.zeros(1, 2, 6, 4, 3)
    ids = torch.zeros(1, 1, 6, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match=match):
        call(q, ids)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [30, 32])  # 30: zero-padded to 32 for the flash / efficient kernels
def test_cuda_sdpa_matches_reference(dtype, head_dim):
    q, k, v = (_windows(s, 2, 6, 24, 64, head_dim, dtype=torch.float32).cuda() for s in (1, 2, 3))
    ids = sr_kernels.window_topk_select(q, k, 4)
    want = ref.dense_masked_attention_reference(q.cpu(), k.cpu(), v.cpu(), ids.cpu()).float()
    qd, kd, vd = (x.to(dtype).requires_grad_() for x in (q, k, v))
    out = sr_kernels.window_topk_attention(qd, kd, vd, ids)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float().cpu(), want, atol=tol, rtol=tol)
    out.float().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (qd, kd, vd))
