"""expand_two_hop: a per-row Python oracle, graph properties, and Triton equality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sr_kernels
from sr_kernels._dispatch import interpreter_enabled

HAS_TRITON_RUNTIME = torch.cuda.is_available() or interpreter_enabled()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _case(seed, b, hi, n, kk, *, ties=True):
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n, (b, hi, n, kk), generator=g)
    index[torch.rand(index.shape, generator=g) < 0.2] = -1
    if kk > 2:
        index[..., 2] = index[..., 0]  # duplicates inside the current list
    index[:, :, ::9] = -1
    if ties:
        probs = torch.randint(0, 4, (b, hi, n, kk), generator=g).float() / 4
    else:
        probs = torch.rand(b, hi, n, kk, generator=g)
    return index, probs


def _oracle(index, probs, k1, k2, k_out):
    b, hi, n, kk = index.shape
    out = torch.full((b, hi, n, k_out), -1, dtype=torch.int64)
    count = torch.zeros(b, hi, n, dtype=torch.int64)
    for bi in range(b):
        for h in range(hi):
            idx, pr = index[bi, h].tolist(), probs[bi, h].tolist()

            def top(i, kmax, idx=idx, pr=pr):
                live = [c for c in range(kk) if idx[i][c] >= 0]
                live.sort(key=lambda c: (-pr[i][c], c))
                return [(idx[i][c], pr[i][c]) for c in live[:kmax]]

            for i in range(n):
                cur = []
                for t in idx[i]:
                    if t >= 0 and t not in cur:
                        cur.append(t)
                best: dict[int, float] = {}
                for u, pu in top(i, k1):
                    for v, pv in top(u, k2):
                        w = max(float(np.float32(pu) * np.float32(pv)), 0.0)
                        if v not in cur:
                            best[v] = max(best.get(v, -1.0), w)
                row = (cur + sorted(best, key=lambda t: (-best[t], t)))[:k_out]
                out[bi, h, i, : len(row)] = torch.tensor(row, dtype=torch.int64)
                count[bi, h, i] = len(row)
    return out, count


params = dict(
    b=st.integers(1, 2), hi=st.integers(1, 2), n=st.integers(1, 24), kk=st.integers(1, 10),
    k1=st.integers(1, 6), k2=st.integers(1, 6), k_out=st.integers(1, 40), seed=st.integers(0, 2**31 - 1),
)


@settings(max_examples=20)
@given(**params)
def test_reference_matches_python_oracle(b, hi, n, kk, k1, k2, k_out, seed):
    index, probs = _case(seed, b, hi, n, kk)
    out, count = sr_kernels.expand_two_hop(index, probs, k1, k2, k_out, backend="torch")
    want_out, want_count = _oracle(index, probs, k1, k2, k_out)
    assert torch.equal(out, want_out)
    assert torch.equal(count, want_count)


@settings(max_examples=20)
@given(n=st.integers(2, 60), kk=st.integers(1, 16), k1=st.integers(1, 8), k2=st.integers(1, 8),
       extra=st.integers(0, 64), seed=st.integers(0, 2**31 - 1))
def test_expansion_graph_properties(n, kk, k1, k2, extra, seed):
    index, probs = _case(seed, 1, 2, n, kk, ties=False)
    k_out = kk + extra
    out, count = sr_kernels.expand_two_hop(index, probs, k1, k2, k_out, backend="torch")
    assert out.shape == (1, 2, n, k_out) and out.dtype == index.dtype
    for h in range(2):
        for i in range(n):
            row = out[0, h, i].tolist()
            valid = [t for t in row if t >= 0]
            assert row[: len(valid)] == valid and count[0, h, i] == len(valid)  # compact, -1 padded
            assert len(set(valid)) == len(valid)  # no duplicates
            cur = list(dict.fromkeys(t for t in index[0, h, i].tolist() if t >= 0))
            assert valid[: len(cur)] == cur[: len(valid)]  # starts with the current list, in order
            reach = {v for u in cur for v in index[0, h, u].tolist() if v >= 0}
            assert set(valid[len(cur):]) <= reach  # new tokens are two-hop reachable


@pytest.mark.skipif(not HAS_TRITON_RUNTIME, reason="needs CUDA or TRITON_INTERPRET=1")
@settings(max_examples=8)
@given(**params)
def test_triton_equals_reference(b, hi, n, kk, k1, k2, k_out, seed):
    index, probs = _case(seed, b, hi, n, kk)
    got = sr_kernels.expand_two_hop(index.to(DEVICE), probs.to(DEVICE), k1, k2, k_out, backend="triton")
    want = sr_kernels.expand_two_hop(index, probs, k1, k2, k_out, backend="torch")
    assert torch.equal(got[0].cpu(), want[0])
    assert torch.equal(got[1].cpu(), want[1])


@pytest.mark.skipif(not HAS_TRITON_RUNTIME, reason="needs CUDA or TRITON_INTERPRET=1")
def test_triton_sort_network_path_equals_reference(monkeypatch):
    """The tl.sort + tl.gather path (the GPU default) at a tiny size."""
    monkeypatch.setenv("SR_KERNELS_RANK_SORT", "0")
    index, probs = _case(3, 1, 1, 3, 5)
    got = sr_kernels.expand_two_hop(index.to(DEVICE), probs.to(DEVICE), 2, 2, 8, backend="triton")
    want = sr_kernels.expand_two_hop(index, probs, 2, 2, 8, backend="torch")
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
