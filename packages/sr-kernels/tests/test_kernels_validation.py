"""Bad input gives a ValueError naming the argument; backend selection rules."""

from __future__ import annotations

import pytest
import torch

import sr_kernels
from sr_kernels._dispatch import resolve_backend


def _ok(n=5, m=6, kk=3, h=2, d=8):
    q = torch.randn(1, h, n, d)
    k = torch.randn(1, h, m, d)
    v = torch.randn(1, h, m, d)
    index = torch.randint(-1, m, (1, 1, n, kk))
    return q, k, v, index


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda q, k, v, i: (q[0], k, v, i, {}), "q must have 4 dimensions"),
        (lambda q, k, v, i: (q.long(), k, v, i, {}), "q must be float"),
        (lambda q, k, v, i: (q, k[..., :4], v, i, {}), "k has shape"),
        (lambda q, k, v, i: (q, k, v[:, :, :3], i, {}), "v has shape"),
        (lambda q, k, v, i: (q, k, v.double(), i, {}), "v has dtype"),
        (lambda q, k, v, i: (q, k, v, i.float(), {}), "index must have an integer dtype"),
        (lambda q, k, v, i: (q, k, v, i[0], {}), "index must have 4 dimensions"),
        (lambda q, k, v, i: (q, k, v, i.expand(1, 3, 5, 3), {}), "index has shape"),
        (lambda q, k, v, i: (q, k, v, i[..., :0], {}), "K must be at least 1"),
        (lambda q, k, v, i: (q, k, v, torch.full_like(i, 6), {}), "index has value 6 >= 6"),
        (lambda q, k, v, i: (q, k, v, torch.full_like(i, -2), {}), "index has value -2 < -1"),
        (lambda q, k, v, i: (q, k, v, i, {"bias": torch.zeros(1, 2, 5, 4)}), "bias has shape"),
        (lambda q, k, v, i: (q, k, v, i, {"bias": torch.zeros(2, 5, 3)}), "bias must have 4 dimensions"),
        (lambda q, k, v, i: (q, k, v, i, {"scale": float("nan")}), "scale must be finite"),
        (lambda q, k, v, i: (q, k, v, i, {"backend": "cuda"}), "backend must be one of"),
        (lambda q, k, v, i: (q, k, v, i.to("meta"), {}), "index is on meta"),
    ],
)
def test_gather_attention_rejects_bad_input(mutate, match):
    q, k, v, i, kw = mutate(*_ok())
    with pytest.raises(ValueError, match=match):
        sr_kernels.gather_attention(q, k, v, i, **kw)


def test_trusted_index_skips_the_value_check():
    q, k, v, index = _ok()
    index = torch.full_like(index, 6)
    with pytest.raises(ValueError, match="index has value"):
        sr_kernels.gather_scores(q, k, index)
    with pytest.raises(ValueError, match="index has value"):
        sr_kernels.gather_values(torch.rand(1, 2, 5, 3), v, index)
    # check_index=False: no validation reduction; the torch path then fails inside torch.gather instead
    with pytest.raises(RuntimeError):
        sr_kernels.gather_attention(q, k, v, index + 50, check_index=False, backend="torch")


def test_other_ops_reject_bad_input():
    scores = torch.randn(1, 2, 5, 3)
    index = torch.randint(-1, 5, (1, 1, 5, 3))
    with pytest.raises(ValueError, match="k must be a positive int"):
        sr_kernels.topk_select(scores, index, 0)
    with pytest.raises(ValueError, match="index has K = 4"):
        sr_kernels.topk_select(scores, torch.zeros(1, 1, 5, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="scores must be float"):
        sr_kernels.topk_select(scores.long(), index, 2)
    with pytest.raises(ValueError, match="probs has shape"):
        sr_kernels.expand_two_hop(index, torch.rand(1, 2, 5, 3), 2, 2, 8)
    with pytest.raises(ValueError, match="index has value 5 >= 5"):
        sr_kernels.expand_two_hop(torch.full_like(index, 5), torch.rand(1, 1, 5, 3), 2, 2, 8)
    with pytest.raises(ValueError, match="k_out must be a positive int"):
        sr_kernels.expand_two_hop(index, torch.rand(1, 1, 5, 3), 2, 2, 0)
    with pytest.raises(ValueError, match="p must be float"):
        sr_kernels.gather_values(torch.zeros(1, 2, 5, 3, dtype=torch.long), torch.randn(1, 2, 5, 8), index)
    with pytest.raises(ValueError, match="local must be a positive int"):
        sr_kernels.dlsg_index(8, 8, local=0, samples=2, dilation=2)
    with pytest.raises(ValueError, match="generator must be"):
        sr_kernels.dlsg_index(8, 8, local=2, samples=2, dilation=2, generator=3)


def test_backend_resolution(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("SR_KERNELS_BACKEND", raising=False)
    assert resolve_backend(None, cpu) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    monkeypatch.setenv("SR_KERNELS_BACKEND", "torch")
    assert resolve_backend(None, cpu) == "torch"
    monkeypatch.setenv("SR_KERNELS_BACKEND", "fast")
    with pytest.raises(ValueError, match="SR_KERNELS_BACKEND must be one of"):
        resolve_backend(None, cpu)
    monkeypatch.setenv("SR_KERNELS_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend(None, cpu)
    assert resolve_backend("torch", cpu) == "torch"  # the keyword wins over the environment
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend(None, cpu) == "triton"
