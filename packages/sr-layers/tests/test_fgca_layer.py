"""FGCA and the SSCAN block against a readable reference built from sr_kernels' oracles: the layer's
window layout, shift, selection, attention, LCE and crop; awkward sizes; SDPA vs explicit logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sr_kernels.window_topk import reference as ref
from sr_layers.fgca import FGCA, FGCABlock, PointwiseMLP, SSCANBlock
from sr_layers.windows import pad_to_window


def fgca_reference(layer: FGCA, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's forward written out with explicit loops over the window grid and the dense masked
    attention oracle. Returns (output, window ids)."""
    ws, heads, dim = layer.window, layer.heads, layer.dim
    h, w = x.shape[-2:]
    xp = pad_to_window(x, ws)
    s = ws // 2 if layer.shift else 0
    xp = torch.roll(xp, (-s, -s), (2, 3))
    hp, wp = xp.shape[-2:]
    nh, nw = hp // ws, wp // ws
    qkv = F.conv2d(xp, layer.to_qkv.weight, layer.to_qkv.bias)
    b = x.shape[0]
    c = dim // heads

    def windows(part: int) -> torch.Tensor:  # (B, heads, nW, T, c), windows and tokens row-major
        t = qkv[:, part * dim : (part + 1) * dim].reshape(b, heads, c, hp, wp)
        out = torch.empty(b, heads, nh * nw, ws * ws, c, dtype=x.dtype)
        for i in range(nh):
            for j in range(nw):
                blk = t[:, :, :, i * ws : (i + 1) * ws, j * ws : (j + 1) * ws]
                out[:, :, i * nw + j] = blk.reshape(b, heads, c, ws * ws).transpose(-1, -2)
        return out

    q, k, v = windows(0), windows(1), windows(2)
    kk = min(layer.topk, nh * nw)
    ids = ref.window_topk_select_reference(q, k, kk, shared_heads=layer.shared_heads, include_self=layer.include_self)
    o = ref.dense_masked_attention_reference(q, k, v, ids)
    feat = torch.empty(b, dim, hp, wp, dtype=x.dtype)
    for i in range(nh):
        for j in range(nw):
            blk = o[:, :, i * nw + j].transpose(-1, -2).reshape(b, dim, ws, ws)
            feat[:, :, i * ws : (i + 1) * ws, j * ws : (j + 1) * ws] = blk
    if layer.lce is not None:
        feat = feat + layer.lce(qkv[:, 2 * dim :])
    feat = torch.roll(feat, (s, s), (2, 3))[:, :, :h, :w]
    return F.conv2d(feat, layer.to_out.weight, layer.to_out.bias), ids


@settings(max_examples=12)
@given(h=st.integers(1, 13), w=st.integers(1, 13), window=st.sampled_from([2, 3, 4]), topk=st.integers(1, 5),
       shift=st.booleans(), shared=st.booleans(), include_self=st.booleans(), lce=st.sampled_from([0, 3]),
       seed=st.integers(0, 2**31 - 1))
def test_fgca_equals_the_reference(h, w, window, topk, shift, shared, include_self, lce, seed):
    torch.manual_seed(seed)
    layer = FGCA(8, window, 2, topk, shift=shift, shared_heads=shared, include_self=include_self, lce_kernel=lce).double()
    layer.keep_selection = True
    x = torch.randn(2, 8, h, w, dtype=torch.float64)
    got = layer(x)
    want, ids = fgca_reference(layer, x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want)
    assert torch.equal(layer.last_selection, ids)


def test_sdpa_and_explicit_paths_agree_in_float32_and_gradients_flow():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 17, 11, requires_grad=True)
    a = FGCA(12, 4, 3, 3, shift=True)
    b = FGCA(12, 4, 3, 3, shift=True, impl="math")
    b.load_state_dict(a.state_dict())
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-4)
    ya.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in a.parameters())
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_topk_is_clamped_to_the_number_of_windows():
    layer = FGCA(6, 8, 2, topk=4)
    layer.keep_selection = True
    y = layer(torch.randn(1, 6, 5, 7))  # one 8x8 window after padding
    assert y.shape == (1, 6, 5, 7) and layer.last_selection.shape == (1, 1, 1, 1)


def test_sscan_block_alternates_shifts_and_adds_the_residual():
    torch.manual_seed(0)
    blk = SSCANBlock(8, 3, shift=True, window=4, heads=2, topk=2).double()
    assert [b.attn.shift for b in blk.blocks] == [False, True, False]
    x = torch.randn(1, 8, 9, 10, dtype=torch.float64)
    y = x
    for b in blk.blocks:
        y = b(y)
    torch.testing.assert_close(blk(x), F.conv2d(y, blk.conv.weight, blk.conv.bias, padding=1) + x)
    assert [b.attn.shift for b in SSCANBlock(8, 2, shift=False, window=4, heads=2, topk=2).blocks] == [False, False]


def test_fgca_block_is_pre_norm_with_two_residuals():
    torch.manual_seed(0)
    blk = FGCABlock(8, ffn="mlp", ffn_ratio=1.5, window=4, heads=2, topk=2).double()
    assert isinstance(blk.ffn, PointwiseMLP) and blk.ffn.fc1.out_channels == 12
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    y = x + blk.attn(blk.norm1(x))
    torch.testing.assert_close(blk(x), y + blk.ffn(blk.norm2(y)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, "divisible"),
        ({"topk": 0}, "topk"),
        ({"lce_kernel": 4}, "lce_kernel"),
        ({"impl": "flash"}, "impl"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"dim": 8, "window": 4, "heads": 2, "topk": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        FGCA(args.pop("dim"), args.pop("window"), args.pop("heads"), args.pop("topk"), **args)
    with pytest.raises(ValueError, match="ffn"):
        FGCABlock(8, ffn="swiglu", window=4, heads=2, topk=2)
