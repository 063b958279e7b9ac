"""ESC building blocks against readable references: LayerNorm, ConvFFN, windows, RPB attention,
ConvAttn (shared D4 kernel + per-sample dynamic kernels), upsamplers and sub-pixel interpolation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sr_layers.attention_backends import biased_attention, gather_rpb, rpb_index
from sr_layers.conv_attn import ConvAttn, DecomposedConvAttn, d4_average
from sr_layers.conv_ffn import ConvFFN
from sr_layers.layer_norm import LayerNorm2d
from sr_layers.upsamplers import (
    Upsampler,
    interpolate_subpixel_conv,
    pixel_shuffle_with_nearest,
    subpixel_scale,
)
from sr_layers.window_attention import RPBWindowAttention
from sr_layers.windows import pad_to_window, qkv_to_windows, reflect_pad_bottom_right, windows_to_feature


def test_layer_norm_matches_per_pixel_statistics():
    torch.manual_seed(0)
    ln = LayerNorm2d(5)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(5))
        ln.bias.copy_(torch.randn(5))
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    ln = ln.double()
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + 1e-6) * ln.weight.view(1, -1, 1, 1) + ln.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(ln(x), ref)
    assert [k for k, _ in ln.state_dict().items()] == ["weight", "bias"]


def test_conv_ffn_residual_goes_around_the_depthwise_conv_after_gelu():
    torch.manual_seed(0)
    ffn = ConvFFN(8, 1.25).double()
    assert ffn.hidden == 10
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    h = F.gelu(F.conv2d(x, ffn.proj.weight, ffn.proj.bias))
    d = F.conv2d(h, ffn.dwc.weight, ffn.dwc.bias, padding=1, groups=10)
    ref = F.conv2d(F.gelu(d) + h, ffn.aggr.weight, ffn.aggr.bias)
    torch.testing.assert_close(ffn(x), ref)
    assert set(dict(ConvFFN(8, 2.0, out_name="agg").named_children())) == {"proj", "dwc", "agg"}


@given(h=st.integers(2, 40), w=st.integers(2, 40), ph=st.integers(0, 39), pw=st.integers(0, 39))
def test_reflect_pad_matches_torch_where_torch_accepts_and_keeps_the_image(h, w, ph, pw):
    x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    y = reflect_pad_bottom_right(x, ph, pw)
    assert y.shape == (1, 1, h + ph, w + pw)
    torch.testing.assert_close(y[..., :h, :w], x)
    if ph < h and pw < w:
        torch.testing.assert_close(y, F.pad(x, (0, pw, 0, ph), mode="reflect"))


def test_reflect_pad_handles_a_single_row():
    x = torch.randn(1, 2, 1, 3)
    y = reflect_pad_bottom_right(x, 4, 5)
    assert y.shape == (1, 2, 5, 8)
    assert torch.isfinite(y).all()


def test_window_partition_order_and_round_trip():
    b, heads, d, win = 2, 2, 3, 4
    c = heads * d
    qkv = torch.randn(b, 3 * c, 8, 12)
    q, k, v = qkv_to_windows(qkv, win, heads)
    n_h, n_w = 2, 3
    assert q.shape == (b * n_h * n_w, heads, win * win, d)
    for bi in range(b):
        for i in range(n_h):
            for j in range(n_w):
                idx = (bi * n_h + i) * n_w + j
                for part, t in enumerate((q, k, v)):
                    for head in range(heads):
                        ch = slice(part * c + head * d, part * c + (head + 1) * d)
                        tile = qkv[bi, ch, i * win:(i + 1) * win, j * win:(j + 1) * win]
                        # tokens row-major inside the window, channels last
                        torch.testing.assert_close(t[idx, head], tile.reshape(d, -1).T)
    back = windows_to_feature(k, win, n_h, n_w)
    torch.testing.assert_close(back, qkv[:, c:2 * c])


def test_pad_to_window_shape():
    assert pad_to_window(torch.randn(1, 2, 37, 53), 32).shape == (1, 2, 64, 64)
    assert pad_to_window(torch.randn(1, 2, 32, 64), 32).shape == (1, 2, 32, 64)


def test_rpb_index_is_key_minus_query_and_flips_swin():
    w = 3
    idx = rpb_index(w)
    span = 2 * w - 1
    for i in range(w * w):
        for j in range(w * w):
            qy, qx, ky, kx = i // w, i % w, j // w, j % w
            assert idx[i, j] == (ky - qy + w - 1) * span + (kx - qx + w - 1)
            swin = (qy - ky + w - 1) * span + (qx - kx + w - 1)
            assert idx[i, j] == span * span - 1 - swin


def _naive_biased(q, k, v, bias):
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            logits = q[b, h] @ k[b, h].T / q.shape[-1] ** 0.5 + bias[h]
            out[b, h] = torch.softmax(logits, -1) @ v[b, h]
    return out


@pytest.mark.parametrize("backend", ["math", "sdpa", "auto"])
def test_biased_attention_backends_agree_with_naive_reference(backend):
    torch.manual_seed(1)
    w = 4
    q, k, v = (torch.randn(3, 2, w * w, 8, dtype=torch.float64) for _ in range(3))
    table = torch.randn(2, (2 * w - 1) ** 2, dtype=torch.float64)
    ref = _naive_biased(q, k, v, gather_rpb(table, w))
    out = biased_attention(q, k, v, table, w, backend=backend)
    torch.testing.assert_close(out, ref)


def test_gather_rpb_is_the_table_read_at_rpb_index():
    torch.manual_seed(9)
    w = 5
    table = torch.randn(3, (2 * w - 1) ** 2, dtype=torch.float64, requires_grad=True)
    dense = gather_rpb(table, w)
    idx = rpb_index(w)
    for h in range(3):
        torch.testing.assert_close(dense[h], table[h][idx])
    g = torch.randn_like(dense)
    (grad,) = torch.autograd.grad(dense, table, g)
    ref = torch.zeros_like(table).index_put_((torch.arange(3)[:, None, None], idx[None]), g, accumulate=True)
    torch.testing.assert_close(grad, ref)


@given(w=st.integers(2, 6), n=st.integers(1, 5), heads=st.integers(1, 3), d=st.sampled_from([4, 8]),
       block=st.sampled_from([1, 7, 64, 1 << 19]))
def test_cpu_sdpa_with_bias_gradient_matches_the_naive_reference(w, n, heads, d, block):
    """The fused CPU path (torch's flash kernel + our blocked bias gradient): output and the gradients
    of q, k, v and the RPB table against the readable per-window loop, for block sizes that split the
    windows and the query rows in every way."""
    import sr_layers.attention_backends as ab

    torch.manual_seed(w * 100 + n * 10 + heads)
    q, k, v = (torch.randn(n, heads, w * w, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    table = (torch.randn(heads, (2 * w - 1) ** 2, dtype=torch.float64) * 0.5).requires_grad_(True)
    old = ab.BIAS_GRAD_BLOCK_ELEMENTS
    ab.BIAS_GRAD_BLOCK_ELEMENTS = block
    try:
        out = biased_attention(q, k, v, table, w, backend="sdpa")
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v, table), g)
    finally:
        ab.BIAS_GRAD_BLOCK_ELEMENTS = old
    ref = _naive_biased(q, k, v, gather_rpb(table, w))
    ref_grads = torch.autograd.grad(ref, (q, k, v, table), g)
    torch.testing.assert_close(out, ref)
    for name, a, b in zip("q k v table".split(), grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "flex"])
def test_cpu_training_path_keeps_no_windows_x_heads_score_map(backend):
    """On the CPU the default (and "flex") path saves no (windows, heads, N, N) map for the backward:
    the unfused math path does (its softmax output), which is what made big batches run out of memory."""
    torch.manual_seed(10)
    n, heads, w, d = 4, 2, 8, 16
    q, k, v = (torch.randn(n, heads, w * w, d, requires_grad=True) for _ in range(3))
    table = torch.randn(heads, (2 * w - 1) ** 2, requires_grad=True)
    full_map = n * heads * (w * w) ** 2

    def biggest_saved(b: str) -> int:
        sizes = [0]
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            out = biased_attention(q, k, v, table, w, backend=b)
        out.sum().backward()
        return max(sizes)

    assert biggest_saved("math") >= full_map  # the check can fail: the reference path keeps the map
    assert biggest_saved(backend) < full_map
    assert table.grad is not None and torch.isfinite(table.grad).all()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_eager_agrees_with_math_on_cpu():
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(2)
    w = 4
    q, k, v = (torch.randn(2, 2, w * w, 16) for _ in range(3))
    table = torch.randn(2, (2 * w - 1) ** 2)
    ref = biased_attention(q, k, v, table, w, backend="math")
    out = biased_attention(q, k, v, table, w, backend="flex", compile_flex=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_flex_and_sdpa_agree_with_math_on_cuda(dtype):
    torch.manual_seed(3)
    w = 32
    q, k, v = (torch.randn(4, 4, w * w, 16, device="cuda", dtype=dtype) for _ in range(3))
    table = torch.randn(4, (2 * w - 1) ** 2, device="cuda")
    ref = biased_attention(q.float(), k.float(), v.float(), table, w, backend="math")
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-4
    for backend in ("flex", "sdpa"):
        out = biased_attention(q, k, v, table, w, backend=backend)
        torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_rpb_window_attention_matches_per_window_reference():
    torch.manual_seed(4)
    dim, heads, w = 8, 2, 4
    attn = RPBWindowAttention(dim, w, heads, backend="math").double()
    with torch.no_grad():
        attn.relative_position_bias.normal_()
    x = torch.randn(2, dim, 6, 7, dtype=torch.float64)
    xp = F.pad(x, (0, 1, 0, 2), mode="reflect")
    qkv = attn.to_qkv(xp)
    bias = gather_rpb(attn.relative_position_bias, w)
    d = dim // heads
    out = torch.zeros(2, dim, 8, 8, dtype=torch.float64)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                tile = qkv[b, :, i * w:(i + 1) * w, j * w:(j + 1) * w].reshape(3, heads, d, w * w)
                for h in range(heads):
                    qh, kh, vh = (tile[p, h].T for p in range(3))
                    p_ = torch.softmax(qh @ kh.T / d**0.5 + bias[h], -1)
                    out[b, h * d:(h + 1) * d, i * w:(i + 1) * w, j * w:(j + 1) * w] = (p_ @ vh).T.reshape(d, w, w)
    ref = attn.to_out(out[:, :, :6, :7])
    torch.testing.assert_close(attn(x), ref)


def _d4_group(k):
    outs = []
    for t in range(4):
        r = torch.rot90(k, t, [2, 3])
        outs += [r, r.transpose(2, 3)]
    return outs


def test_d4_average_is_the_group_mean_and_invariant():
    k = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    avg = d4_average(k)
    torch.testing.assert_close(avg, torch.stack(_d4_group(k)).mean(0))
    for g in _d4_group(avg):
        torch.testing.assert_close(g, avg)
    with pytest.raises(ValueError, match="kernel"):
        d4_average(torch.randn(2, 2, 3, 5))


def _conv_attn_reference_batch1(mod: ConvAttn, x, lk):
    """The official eval-mode formula (valid for batch 1): groups = pdim, kernel reshaped to (pdim,1,3,3)."""
    p = mod.plk.pdim
    dyn = mod.plk.dwc_proj(x[:, :p]).reshape(p, 1, 3, 3)
    y = x.clone()
    y[:, :p] = F.conv2d(x[:, :p], lk, padding=lk.shape[-1] // 2) + F.conv2d(x[:, :p], dyn, padding=1, groups=p)
    return mod.aggr(y)


def test_conv_attn_is_per_sample_and_matches_the_official_batch1_formula():
    torch.manual_seed(5)
    mod = ConvAttn(12, 4).double()
    for p in mod.parameters():  # the generator is zero-initialised; make it non-trivial
        torch.nn.init.normal_(p, std=0.3)
    lk = d4_average(torch.randn(4, 4, 13, 13, dtype=torch.float64))
    x = torch.randn(3, 12, 9, 11, dtype=torch.float64)
    out = mod(x, lk)
    for b in range(3):
        torch.testing.assert_close(out[b:b + 1], _conv_attn_reference_batch1(mod, x[b:b + 1], lk))
    assert set(mod.state_dict()) == {
        "plk.dwc_proj.1.weight", "plk.dwc_proj.1.bias", "plk.dwc_proj.3.weight", "plk.dwc_proj.3.bias",
        "aggr.weight", "aggr.bias",
    }


def test_conv_attn_inplace_path_equals_concatenation():
    torch.manual_seed(8)
    mod = ConvAttn(10, 4)
    torch.nn.init.normal_(mod.plk.dwc_proj[3].weight, std=0.2)
    lk = torch.randn(4, 4, 13, 13)
    x = torch.randn(2, 10, 6, 7)
    with torch.no_grad():
        ref = mod(x.clone(), lk)
        buf = x.clone()
        out = mod(buf, lk, inplace=True)
    torch.testing.assert_close(out, ref)
    assert not torch.equal(buf[:, :4], x[:, :4])  # the input buffer was overwritten
    torch.testing.assert_close(buf[:, 4:], x[:, 4:])


def test_conv_attn_generator_is_zero_initialised():
    mod = ConvAttn(8, 4)
    assert torch.count_nonzero(mod.plk.dwc_proj[3].weight) == 0
    assert torch.count_nonzero(mod.plk.dwc_proj[3].bias) == 0


def test_decomposed_conv_attn_matches_per_sample_reference():
    torch.manual_seed(6)
    mod = DecomposedConvAttn(8, 4).double()
    lk_c = torch.randn(4, 4, 1, 1, dtype=torch.float64)
    lk_s = torch.randn(4, 1, 13, 13, dtype=torch.float64)
    x = torch.randn(2, 8, 10, 7, dtype=torch.float64)
    out = mod(x, lk_c, lk_s)
    for b in range(2):
        xb = x[b:b + 1]
        dyn = mod.plk.proj(xb[:, :4]).reshape(4, 1, 3, 3)
        kernel = lk_s.clone()
        kernel[:, :, 5:8, 5:8] += dyn
        y1 = F.conv2d(F.conv2d(xb[:, :4], lk_c), kernel, padding=6, groups=4)
        ref = mod.aggr(torch.cat([y1, xb[:, 4:]], 1))
        torch.testing.assert_close(out[b:b + 1], ref)


def test_pixel_shuffle_direct_skip_is_nearest_upsampling():
    feat = torch.randn(2, 3 * 9, 4, 5)
    img = torch.randn(2, 3, 4, 5)
    out = pixel_shuffle_with_nearest(feat, img, 3)
    ref = F.pixel_shuffle(feat, 3) + F.interpolate(img, scale_factor=3, mode="nearest")
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("kind", ["pixelshuffle_direct", "pixelshuffle"])
def test_upsampler_shapes_and_keys(kind):
    up = Upsampler(16, 3, kind, intermediate_dim=8)
    out = up(torch.randn(2, 16, 5, 6), torch.randn(2, 3, 5, 6))
    assert out.shape == (2, 3, 15, 18)
    expected = {"up_conv"} if kind == "pixelshuffle_direct" else {"feature_conv", "up_conv", "final_conv"}
    assert {k.split(".")[0] for k in up.state_dict()} == expected
    assert up.group_channels == (3 if kind == "pixelshuffle_direct" else 8)
    with pytest.raises(ValueError, match="upsampler kind"):
        Upsampler(16, 2, "bogus")


def test_subpixel_interpolation_golden_x2_to_x4():
    # bilinear, align_corners=False, 2 -> 4 samples: [a, .75a+.25b, .25a+.75b, b]
    a, b_, c, d = 1.0, 5.0, 9.0, 13.0
    weight = torch.tensor([a, b_, c, d]).view(4, 1, 1, 1)  # one group, sub-pixels (0,0),(0,1),(1,0),(1,1)
    w4, bias4 = interpolate_subpixel_conv(weight, torch.tensor([a, b_, c, d]), group_channels=1, scale_out=4)
    row0 = torch.tensor([a, 0.75 * a + 0.25 * b_, 0.25 * a + 0.75 * b_, b_])
    row3 = torch.tensor([c, 0.75 * c + 0.25 * d, 0.25 * c + 0.75 * d, d])
    grid = w4.view(4, 4)
    torch.testing.assert_close(grid[0], row0)
    torch.testing.assert_close(grid[3], row3)
    torch.testing.assert_close(grid[1], 0.75 * row0 + 0.25 * row3)
    torch.testing.assert_close(bias4.view(4, 4), grid)


def test_subpixel_interpolation_identity_and_errors():
    w = torch.randn(3 * 4, 5, 3, 3)
    b = torch.randn(12)
    w2, b2 = interpolate_subpixel_conv(w, b, 3, 2)
    torch.testing.assert_close(w2, w)
    torch.testing.assert_close(b2, b)
    w3, b3 = interpolate_subpixel_conv(w, b, 3, 3)
    assert w3.shape == (27, 5, 3, 3) and b3.shape == (27,)
    assert subpixel_scale(48, 3) == 4
    with pytest.raises(ValueError, match=r"sub-pixel|s\^2"):
        subpixel_scale(10, 3)
