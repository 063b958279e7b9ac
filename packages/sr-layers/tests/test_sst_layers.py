"""SST building blocks: RIB Fourier features, the concatenated low-rank bias attention in bf16 and
fp32 on every CPU path, RIB window attention with the CLA gate and the cyclic-shift rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sr_layers.attention_backends import concat_bias_attention
from sr_layers.rib import conv_gate, cyclic_shift_enabled, rib_factors, rib_fourier_features
from sr_layers.window_attention import RIBWindowAttention, attention_logits_reference


def test_fourier_features_golden_window_2():
    feats = rib_fourier_features(2, n_freqs=2)
    assert feats.shape == (4, 2 + 8)
    # tokens row-major: (row, col) = (0,0), (0,1), (1,0), (1,1); centres at -0.5 and 0.5; column 0 = x
    x = torch.tensor([-0.5, 0.5, -0.5, 0.5])
    y = torch.tensor([-0.5, -0.5, 0.5, 0.5])
    expected = torch.stack([
        x, y,
        torch.sin(x), torch.sin(y), torch.cos(x), torch.cos(y),
        torch.sin(2 * x), torch.sin(2 * y), torch.cos(2 * x), torch.cos(2 * y),
    ], dim=1)
    torch.testing.assert_close(feats, expected)
    assert rib_fourier_features(64).shape == (4096, 42)


def test_rib_factors_formula():
    torch.manual_seed(0)
    feats = rib_fourier_features(4, 3)
    to_hidden, hidden_b = torch.randn(14, 6), torch.randn(1, 6)
    to_q, to_k = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    pq, pk = rib_factors(feats, to_hidden, hidden_b, to_q, to_k)
    hidden = torch.relu(feats @ to_hidden + hidden_b)
    for h in range(2):
        torch.testing.assert_close(pq[h], hidden @ to_q[h])
        torch.testing.assert_close(pk[h], hidden @ to_k[h])


def _reference_rib_attention(q, k, v, pq, pk):
    logits = attention_logits_reference(q, k, pq, pk)
    return torch.softmax(logits, -1) @ v.double()


@pytest.mark.parametrize("backend", ["math", "sdpa", "auto"])
@pytest.mark.parametrize("d,r", [(16, 16), (30, 18), (16, 24), (12, 7)])
def test_concat_bias_attention_fp32_matches_reference(backend, d, r):
    torch.manual_seed(1)
    q, k, v = (torch.randn(3, 2, 16, d) for _ in range(3))
    pq, pk = torch.randn(2, 16, r), torch.randn(2, 16, r)
    out = concat_bias_attention(q, k, v, pq, pk, precision="fp32", backend=backend)
    assert out.shape == q.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference_rib_attention(q, k, v, pq, pk), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_concat_bias_attention_bf16_within_bf16_tolerance_and_dtype_preserved(backend):
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 64, 16) for _ in range(3))
    pq, pk = torch.randn(3, 64, 16), torch.randn(3, 64, 16)
    out = concat_bias_attention(q, k, v, pq, pk, precision="bf16", backend=backend)
    assert out.dtype == torch.float32
    ref = _reference_rib_attention(q, k, v, pq, pk).float()
    err = (out - ref).abs().max().item()
    assert err < 3e-2
    # the bf16 core really rounds: the result is not the fp32 one
    assert err > 1e-6


def test_concat_bias_attention_cpu_paths_agree_in_bf16():
    torch.manual_seed(3)
    q, k, v = (torch.randn(4, 2, 64, 30) for _ in range(3))
    pq, pk = torch.randn(2, 64, 18), torch.randn(2, 64, 18)
    a = concat_bias_attention(q, k, v, pq, pk, backend="math")
    b = concat_bias_attention(q, k, v, pq, pk, backend="sdpa")
    torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)


def test_concat_bias_attention_rejects_bad_options():
    q = torch.randn(1, 1, 4, 8)
    p = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="precision"):
        concat_bias_attention(q, q, q, p, p, precision="fp16")
    with pytest.raises(ValueError, match="backend"):
        concat_bias_attention(q, q, q, p, p, backend="cuda-magic")


@pytest.mark.gpu
def test_concat_bias_attention_cuda_paths_agree():
    torch.manual_seed(4)
    q, k, v = (torch.randn(8, 6, 1024, 30, device="cuda") for _ in range(3))
    pq, pk = torch.randn(6, 1024, 18, device="cuda"), torch.randn(6, 1024, 18, device="cuda")
    ref = concat_bias_attention(q, k, v, pq, pk, backend="math")
    for backend in ("sdpa", "fa3", "auto"):
        out = concat_bias_attention(q, k, v, pq, pk, backend=backend)
        torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    full = concat_bias_attention(q, k, v, pq, pk, precision="fp32", backend="sdpa")
    torch.testing.assert_close(full, concat_bias_attention(q, k, v, pq, pk, precision="fp32", backend="math"),
                               atol=1e-4, rtol=1e-4)


def _reference_rib_window_attention(attn: RIBWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Per-window, per-head loops in float64 (full precision), official layout."""
    w, heads = attn.window, attn.heads
    dim = x.shape[1]
    d = dim // heads
    g = attn.gate(x)
    hh, ww = x.shape[-2:]
    ph, pw = (w - hh % w) % w, (w - ww % w) % w
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect")
    qkv = attn.to_qkv(xp)
    pq, pk = attn.positional_factors()
    out = torch.zeros(x.shape[0], dim, hh + ph, ww + pw, dtype=x.dtype)
    for b in range(x.shape[0]):
        for i in range((hh + ph) // w):
            for j in range((ww + pw) // w):
                tile = qkv[b, :, i * w:(i + 1) * w, j * w:(j + 1) * w].reshape(3, heads, d, w * w)
                for h in range(heads):
                    qh, kh, vh = (tile[p, h].T for p in range(3))
                    logits = qh @ kh.T / math.sqrt(d) + pq[h].double() @ pk[h].double().T / math.sqrt(attn.rank)
                    res = torch.softmax(logits, -1) @ vh
                    out[b, h * d:(h + 1) * d, i * w:(i + 1) * w, j * w:(j + 1) * w] = res.T.reshape(d, w, w)
    return attn.to_out(out[:, :, :hh, :ww] * g)


def test_rib_window_attention_fp32_matches_loop_reference():
    torch.manual_seed(5)
    attn = RIBWindowAttention(12, 4, 3, rank=5, hidden_dim=8, n_freqs=3, precision="fp32", backend="math").double()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 12, 6, 9, dtype=torch.float64)
    # the RIB factors are computed in float32 by design (official), hence the 1e-6 tolerance
    torch.testing.assert_close(attn(x), _reference_rib_window_attention(attn, x), atol=1e-6, rtol=1e-5)
    keys = list(attn.state_dict())
    assert keys[:4] == ["to_hidden", "hidden_b", "to_q", "to_k"]
    assert "rib_coords" not in keys
    assert keys[-4:] == ["gate.0.weight", "gate.0.bias", "gate.1.weight", "gate.1.bias"]


def test_rib_window_attention_bf16_close_to_fp32():
    torch.manual_seed(6)
    attn = RIBWindowAttention(16, 8, 2, rank=8, precision="bf16", backend="math")
    x = torch.randn(1, 16, 11, 13)
    out_bf16 = attn(x)
    attn.precision = "fp32"
    out_fp32 = attn(x)
    assert out_bf16.dtype == torch.float32
    torch.testing.assert_close(out_bf16, out_fp32, atol=5e-2, rtol=5e-2)
    assert not torch.equal(out_bf16, out_fp32)


def test_shifted_rib_attention_equals_rolled_unshifted():
    torch.manual_seed(7)
    a = RIBWindowAttention(8, 4, 2, rank=4, gate=None, shift=True, precision="fp32", backend="math")
    b = RIBWindowAttention(8, 4, 2, rank=4, gate=None, shift=False, precision="fp32", backend="math")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 8, 8, 8)  # a multiple of the window: no padding involved
    # shift(-2) -> attention -> shift(+2); to_qkv/to_out are 1x1 so they commute with the roll
    ref = torch.roll(b(torch.roll(x, (-2, -2), (2, 3))), (2, 2), (2, 3))
    torch.testing.assert_close(a(x), ref, atol=1e-5, rtol=1e-5)


def test_gate_and_cyclic_rule():
    g = conv_gate(6)
    assert [k for k in g.state_dict()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    y = g(torch.randn(1, 6, 4, 4))
    assert ((y > 0) & (y < 1)).all()
    assert not cyclic_shift_enabled([16, 32, 64, 16, 32, 64])
    assert cyclic_shift_enabled([8, 8, 8])
    with pytest.raises(ValueError, match="gate kind"):
        conv_gate(4, "Bogus")
