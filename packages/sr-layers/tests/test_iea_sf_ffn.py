"""SF-FFN: the per-head neighbour gather and the fusion, against loop / dense oracles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sr_layers.sf_ffn import SFFFN, gather_top1


@given(
    b=st.integers(1, 2),
    h=st.integers(1, 3),
    n=st.integers(1, 12),
    c=st.integers(1, 4),
    shared=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gather_top1_matches_loop(b: int, h: int, n: int, c: int, shared: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, n, c, generator=g)
    top1 = torch.randint(-1, n, (b, 1 if shared else h, n), generator=g)
    out = gather_top1(x, top1)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                j = int(top1[bi, 0 if shared else hi, i])
                assert torch.equal(out[bi, hi, i], x[bi, hi, j if j >= 0 else i])


def test_gather_top1_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="top1"):
        gather_top1(torch.zeros(1, 2, 5, 3), torch.zeros(1, 3, 5, dtype=torch.long))


def _oracle(ffn: SFFFN, x: torch.Tensor, size: tuple[int, int], top1: torch.Tensor) -> torch.Tensor:
    """Written out per head and per token with explicit loops over heads."""
    b = x.shape[0]
    heads, g = ffn.num_heads, ffn.hidden // ffn.num_heads
    h = F.gelu(x @ ffn.fc1.weight.t() + ffn.fc1.bias)  # (B, N, F)
    fused = []
    for j in range(heads):
        hj = h[..., j * g : (j + 1) * g]
        nb = torch.stack([hj[bi, top1[bi, j]] for bi in range(b)])  # neighbour features
        fused.append(torch.cat([hj, nb], -1) @ ffn.fuse.weight[j] + ffn.fuse.bias[j])
    f = torch.cat(fused, -1).transpose(1, 2).reshape(b, ffn.hidden, *size)
    f = f + F.gelu(ffn.dwconv(f.contiguous()))
    return f.flatten(2).transpose(1, 2) @ ffn.fc2.weight.t() + ffn.fc2.bias


def test_sf_ffn_matches_oracle_and_uses_the_neighbour() -> None:
    torch.manual_seed(0)
    b, c, heads, hidden, size = 2, 10, 2, 8, (3, 5)
    n = size[0] * size[1]
    ffn = SFFFN(c, heads, hidden, kernel_size=3)
    x = torch.randn(b, n, c)
    top1 = torch.randint(0, n, (b, heads, n))
    out = ffn(x, size, top1)
    torch.testing.assert_close(out, _oracle(ffn, x, size, top1), rtol=1e-5, atol=1e-5)
    # None = every token fused with itself
    own = torch.arange(n).expand(b, heads, n)
    torch.testing.assert_close(ffn(x, size, None), _oracle(ffn, x, size, own), rtol=1e-5, atol=1e-5)
    # changing one token's neighbour changes that token's output
    other = top1.clone()
    other[0, 1, 4] = (top1[0, 1, 4] + 1) % n
    assert not torch.allclose(ffn(x, size, other)[0, 4], out[0, 4])


def test_sf_ffn_parameter_count_and_validation() -> None:
    ffn = SFFFN(240, 6, 336, kernel_size=7)
    g = 56
    expected = (240 * 336 + 336) + 6 * (2 * g * g + g) + 336 * 50 + (336 * 240 + 240)
    assert sum(p.numel() for p in ffn.parameters()) == expected
    with pytest.raises(ValueError, match="divisible"):
        SFFFN(240, 6, 100)
