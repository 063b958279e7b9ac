"""topk_select: brute-force oracle, ordering contract, gradients, Triton equality."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sr_kernels
from sr_kernels._dispatch import interpreter_enabled

HAS_TRITON_RUNTIME = torch.cuda.is_available() or interpreter_enabled()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NEG_INF = float("-inf")


def _case(seed, b, h, shared, n, kk, *, ties=True):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values -> many ties
        scores = torch.randint(-3, 4, (b, h, n, kk), generator=g).float() / 2
    else:
        scores = torch.randn(b, h, n, kk, generator=g)
    scores[torch.rand(scores.shape, generator=g) < 0.1] = NEG_INF
    index = torch.randint(0, 1000, (b, 1 if shared else h, n, kk), generator=g)
    index[torch.rand(index.shape, generator=g) < 0.2] = -1
    index[:, :, ::6] = -1
    return scores, index


def _brute_force(scores, index, k):
    b, h, n, kk = scores.shape
    idx = index.expand(b, h, n, kk)
    values = torch.full((b, h, n, k), NEG_INF)
    sel = torch.full((b, h, n, k), -1, dtype=index.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                live = [c for c in range(kk) if idx[bi, hi, i, c] >= 0 and scores[bi, hi, i, c] > NEG_INF]
                live.sort(key=lambda c: (-scores[bi, hi, i, c].item(), c))
                for j, c in enumerate(live[:k]):
                    values[bi, hi, i, j] = scores[bi, hi, i, c]
                    sel[bi, hi, i, j] = idx[bi, hi, i, c]
    return values, sel


@settings(max_examples=20)
@given(b=st.integers(1, 2), h=st.integers(1, 3), shared=st.booleans(), n=st.integers(1, 12),
       kk=st.integers(1, 20), k=st.integers(1, 24), seed=st.integers(0, 2**31 - 1))
def test_reference_matches_brute_force(b, h, shared, n, kk, k, seed):
    scores, index = _case(seed, b, h, shared, n, kk)
    values, sel = sr_kernels.topk_select(scores, index, k, backend="torch")
    want_values, want_sel = _brute_force(scores, index, k)
    assert torch.equal(values, want_values)
    assert torch.equal(sel, want_sel)
    assert sel.shape == (b, h, n, k) and sel.dtype == index.dtype


def test_values_are_differentiable_in_scores():
    scores, index = _case(1, 1, 2, True, 5, 9, ties=False)
    scores = scores.requires_grad_()
    values, _, slots = sr_kernels.topk_select(scores, index, 3, backend="torch", return_slots=True)
    values.masked_fill(torch.isinf(values), 0).sum().backward()
    expected = torch.zeros_like(scores)
    ok = slots >= 0
    expected.scatter_(-1, slots.clamp_min(0), ok.float())
    assert torch.equal(scores.grad, expected)


@pytest.mark.skipif(not HAS_TRITON_RUNTIME, reason="needs CUDA or TRITON_INTERPRET=1")
@settings(max_examples=10)
@given(b=st.integers(1, 2), h=st.integers(1, 3), shared=st.booleans(), n=st.integers(1, 80),
       kk=st.integers(1, 40), k=st.integers(1, 48), half=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_triton_equals_reference(b, h, shared, n, kk, k, half, seed):
    scores, index = _case(seed, b, h, shared, n, kk)
    if half:
        scores = scores.half()
    scores, index = scores.to(DEVICE), index.to(DEVICE)
    got = sr_kernels.topk_select(scores, index, k, backend="triton", return_slots=True)
    want = sr_kernels.topk_select(scores, index, k, backend="torch", return_slots=True)
    for a, w in zip(got, want):
        assert torch.equal(a, w)


@pytest.mark.skipif(not HAS_TRITON_RUNTIME, reason="needs CUDA or TRITON_INTERPRET=1")
def test_triton_sort_network_path_equals_reference(monkeypatch):
    """The tl.sort path (the GPU default) at a tiny size; the interpreter runs it slowly."""
    monkeypatch.setenv("SR_KERNELS_RANK_SORT", "0")
    scores, index = _case(2, 1, 2, True, 3, 10)
    got = sr_kernels.topk_select(scores.to(DEVICE), index.to(DEVICE), 6, backend="triton", return_slots=True)
    want = sr_kernels.topk_select(scores, index, 6, backend="torch", return_slots=True)
    for a, w in zip(got, want):
        assert torch.equal(a.cpu(), w)
