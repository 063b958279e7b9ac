"""Real-ESRGAN degradation stages: kernels against closed-form oracles, filtering against a pixel loop,
noise statistics, JPEG against Pillow and monotone in quality, the whole pipeline's contract and
seed determinism, the pair pool, presets and their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sr_data import DataError, sample_images
from sr_data.degradations import (
    BlurSettings,
    PairPool,
    degrade,
    filter2d,
    jpeg_pillow,
    jpeg_torch,
    list_degradation_presets,
    load_degradation_settings,
    random_blur_kernels,
    random_final_sinc,
    usm_sharpen,
)
from sr_data.degradations.filters import separable_blur
from sr_data.degradations.jpeg import (
    CHROMA_TABLE,
    LUMA_TABLE,
    jpeg_size_pillow,
    quality_tables,
    quantised_coefficients,
)
from sr_data.degradations.kernels import anisotropic_kernels, gaussian_kernel_1d, sinc_kernels
from sr_data.degradations.noise import gaussian_noise, poisson_noise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _photo(h: int = 64, w: int = 64, n: int = 2) -> torch.Tensor:
    """Crops of the embedded sample photos, (n, 3, h, w) float in [0, 1]."""
    store = sample_images("train")
    crops = [torch.from_numpy(np.ascontiguousarray(store.read(i)[40 : 40 + h, 60 : 60 + w])) for i in range(n)]
    return torch.stack(crops).permute(0, 3, 1, 2).float() / 255


# ----------------------------------------------------------------------------- kernels


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 6), size=st.sampled_from([7, 13, 21]),
       sinc=st.sampled_from([0.0, 0.5, 1.0]))
def test_random_kernels_sum_to_one_and_fit_their_size(seed: int, batch: int, size: int, sinc: float) -> None:
    k = random_blur_kernels(batch, BlurSettings(kernel_size=size, sinc_prob=sinc), _gen(seed))
    assert k.shape == (batch, size, size) and k.dtype == torch.float32
    torch.testing.assert_close(k.sum(dim=(1, 2)), torch.ones(batch), atol=1e-5, rtol=0)
    if sinc == 0.0:  # the Gaussian families are non-negative and symmetric under a half turn
        assert (k >= 0).all()
        torch.testing.assert_close(k, k.flip(1, 2), atol=1e-6, rtol=0)
    f = random_final_sinc(batch, size, 0.5, _gen(seed))
    torch.testing.assert_close(f.sum(dim=(1, 2)), torch.ones(batch), atol=1e-5, rtol=0)


def _oracle_aniso(size: int, sx: float, sy: float, theta: float, beta: float, shape: int) -> np.ndarray:
    """BasicSR's definition written out: Sigma = R diag(sx^2, sy^2) R^T, Q = x^T Sigma^-1 x, x = (col, row)."""
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    inv = np.linalg.inv(r @ np.diag([sx**2, sy**2]) @ r.T)
    half = size // 2
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            x = np.array([j - half, i - half], dtype=float)
            q = x @ inv @ x
            out[i, j] = (math.exp(-0.5 * q), math.exp(-0.5 * q**beta), 1 / (1 + q**beta))[shape]
    return out / out.sum()


@settings(max_examples=15)
@given(sx=st.floats(0.3, 3), sy=st.floats(0.3, 3), theta=st.floats(-math.pi, math.pi), beta=st.floats(0.5, 4),
       shape=st.integers(0, 2))
def test_gaussian_families_match_closed_form(sx: float, sy: float, theta: float, beta: float, shape: int) -> None:
    got = anisotropic_kernels(torch.tensor([sx]), torch.tensor([sy]), torch.tensor([theta]), torch.tensor([beta]),
                              torch.tensor([shape]), 11)[0].double()
    got = got / got.sum()
    np.testing.assert_allclose(got.numpy(), _oracle_aniso(11, sx, sy, theta, beta, shape), atol=1e-5)


def test_sinc_matches_bessel_oracle() -> None:
    omega, size = 2.0, 9
    got = sinc_kernels(torch.tensor([omega]), size)[0].double().numpy()
    half = size // 2
    want = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            r = math.hypot(i - half, j - half)
            want[i, j] = omega**2 / (4 * math.pi) if r == 0 else omega * scipy.special.j1(omega * r) / (2 * math.pi * r)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_opencv_sigma_rule() -> None:
    # OpenCV's getGaussianKernel(51, 0) uses sigma 0.3 * ((51 - 1) / 2 - 1) + 0.8 = 8.0
    x = np.arange(51) - 25
    want = np.exp(-(x**2) / (2 * 8.0**2))
    np.testing.assert_allclose(gaussian_kernel_1d(51).numpy(), want / want.sum(), atol=1e-7)


# ----------------------------------------------------------------------------- filtering


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31), h=st.integers(6, 12), w=st.integers(6, 12))
def test_filter2d_matches_pixel_loop(seed: int, h: int, w: int) -> None:
    rng = np.random.default_rng(seed)
    img = rng.random((2, 3, h, w)).astype(np.float32)
    ker = rng.random((2, 5, 5)).astype(np.float32)
    got = filter2d(torch.from_numpy(img), torch.from_numpy(ker)).numpy()
    pad = np.pad(img, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    want = np.zeros_like(img)
    for b in range(2):
        for i in range(h):
            for j in range(w):
                want[b, :, i, j] = (pad[b, :, i : i + 5, j : j + 5] * ker[b]).sum(axis=(1, 2))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_separable_blur_equals_outer_product_filter() -> None:
    img = torch.rand(2, 3, 20, 24, generator=_gen(1))
    taps = gaussian_kernel_1d(9, 1.7)
    full = torch.outer(taps, taps)
    torch.testing.assert_close(separable_blur(img, taps), filter2d(img, full), atol=1e-6, rtol=0)


def test_filter_on_image_smaller_than_pad_is_replicated() -> None:
    img = torch.rand(1, 3, 5, 5, generator=_gen(2))
    out = filter2d(img, torch.full((1, 21, 21), 1 / 441))
    assert out.shape == img.shape and torch.isfinite(out).all()


def test_usm_keeps_flat_images_and_range() -> None:
    flat = torch.full((1, 3, 64, 64), 0.4)
    torch.testing.assert_close(usm_sharpen(flat), flat)
    img = _photo()
    out = usm_sharpen(img)
    assert out.min() >= 0 and out.max() <= 1 and (out - img).abs().max() > 0.01


# ----------------------------------------------------------------------------- noise


@pytest.mark.parametrize("sigma", [1.0, 10.0, 30.0])
def test_gaussian_noise_std_and_gray(sigma: float) -> None:
    n = gaussian_noise(torch.Size((2, 3, 128, 128)), torch.tensor([sigma, sigma]), torch.tensor([False, True]), _gen(3))
    for b in range(2):  # 49k samples: the sample std is within 1.5 % of sigma / 255
        assert abs(float(n[b].std()) * 255 / sigma - 1) < 0.015
    torch.testing.assert_close(n[1, 0], n[1, 2])  # gray noise: one plane for all channels
    assert not torch.equal(n[0, 0], n[0, 2])


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_poisson_noise_variance(scale: float) -> None:
    # a two-level image (L = 2 photon levels): noise = scale * (Poisson(2x) / 2 - x), variance scale^2 x / 2
    x = torch.zeros(1, 3, 128, 128)
    x[..., ::2, :] = 0.6
    x[..., 1::2, :] = 0.2
    n = poisson_noise(x, torch.tensor([scale]), torch.tensor([False]), _gen(4))
    for value in (0.6, 0.2):
        sel = n[x == value]
        assert abs(float(sel.mean())) < 0.02 * scale
        assert abs(float(sel.var()) / (scale**2 * value / 2) - 1) < 0.05


# ----------------------------------------------------------------------------- JPEG


def test_quality_tables_follow_libjpeg() -> None:
    lt, ct = quality_tables(torch.tensor([50.0, 100.0, 10.0]))
    np.testing.assert_array_equal(lt[0].numpy(), np.array(LUMA_TABLE))  # quality 50 = Annex K
    np.testing.assert_array_equal(ct[0].numpy(), np.array(CHROMA_TABLE))
    assert (lt[1] == 1).all() and (ct[1] == 1).all()
    # quality 10: scale 500 -> floor((16 * 500 + 50) / 100) = 80
    assert lt[2, 0, 0] == 80


@pytest.mark.parametrize("quality", [30, 60, 90])
def test_torch_jpeg_matches_pillow(quality: int) -> None:
    img = _photo(48, 80)
    ours, ref = jpeg_torch(img, quality), jpeg_pillow(img, quality)
    psnr = 10 * math.log10(1 / float(((ours - ref) ** 2).mean()))
    assert psnr > 42, psnr  # measured 45-48 dB; the codec's own error is ~34-41 dB
    assert ours.shape == img.shape and ours.min() >= 0 and ours.max() <= 1


def test_jpeg_quality_is_monotone_in_size_and_error() -> None:
    img = _photo(64, 64, n=1)
    qualities = [10, 30, 50, 70, 90, 100]
    nonzero = [sum(int((c != 0).sum()) for c in quantised_coefficients(img, torch.tensor([float(q)]))) for q in qualities]
    sizes = [jpeg_size_pillow(img, q)[0] for q in qualities]
    errors = [float((jpeg_torch(img, q) - img).abs().mean()) for q in qualities]
    assert nonzero == sorted(nonzero) and len(set(nonzero)) == len(nonzero)
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert errors == sorted(errors, reverse=True)


def test_jpeg_per_image_quality() -> None:
    img = _photo(32, 32).repeat(2, 1, 1, 1)[:2]
    img[1] = img[0]
    out = jpeg_torch(img, torch.tensor([20.0, 95.0]))
    torch.testing.assert_close(out[0:1], jpeg_torch(img[0:1], 20.0))
    torch.testing.assert_close(out[1:2], jpeg_torch(img[1:2], 95.0))


# ----------------------------------------------------------------------------- the pipeline


SETTINGS = load_degradation_settings("realesrgan-x4plus")


@settings(max_examples=8)
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 3), side=st.sampled_from([32, 48, 64]))
def test_degrade_shape_range_levels(seed: int, batch: int, side: int) -> None:
    hr = torch.rand(batch, 3, side, side, generator=_gen(seed + 1))
    lr = degrade(hr, SETTINGS, _gen(seed))
    assert lr.shape == (batch, 3, side // 4, side // 4) and lr.dtype == torch.float32
    assert lr.min() >= 0 and lr.max() <= 1
    torch.testing.assert_close(lr * 255, (lr * 255).round(), atol=1e-4, rtol=0)


def test_degrade_is_determined_by_the_generator() -> None:
    hr = _photo()
    g1, g2 = _gen(7), _gen(7)
    a = [degrade(hr, SETTINGS, g1) for _ in range(3)]
    b = [degrade(hr, SETTINGS, g2) for _ in range(3)]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], a[1])  # the stream moves on
    # resume: a generator restored from a saved state continues the same stream
    g3 = _gen(7)
    degrade(hr, SETTINGS, g3)
    state = g3.get_state()
    g4 = torch.Generator()
    g4.set_state(state)
    assert torch.equal(degrade(hr, SETTINGS, g4), a[1])
    assert not torch.equal(degrade(hr, SETTINGS, _gen(8)), a[0])


def test_degrade_actually_degrades() -> None:
    hr = _photo()
    lr = degrade(hr, SETTINGS, _gen(0))
    bicubic = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True)
    assert float((lr - bicubic).abs().mean()) > 0.005


def test_degrade_bad_input_errors() -> None:
    with pytest.raises(ValueError, match="multiple of scale 4"):
        degrade(torch.rand(1, 3, 30, 32), SETTINGS, _gen(0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        degrade(torch.rand(3, 32, 32), SETTINGS, _gen(0))
    with pytest.raises(ValueError, match="generator"):
        degrade(torch.rand(1, 3, 32, 32, device="meta"), SETTINGS, _gen(0))


def test_presets_and_their_errors(tmp_path) -> None:
    assert "realesrgan-x4plus" in list_degradation_presets()
    s = SETTINGS
    assert s.first.resize_range == (0.15, 1.5) and s.second.noise_range == (1.0, 25.0)
    assert s.first.blur.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and s.final_sinc_prob == 0.8
    assert load_degradation_settings("realesrgan-x4plus", {"scale": 2, "second": {"blur_prob": 0.5}}).second.blur_prob == 0.5
    with pytest.raises(DataError, match="'blurr'"):
        load_degradation_settings("realesrgan-x4plus", {"first": {"blurr": {}}})
    with pytest.raises(DataError, match="jpeg_range"):
        load_degradation_settings("realesrgan-x4plus", {"first": {"jpeg_range": [30, 120]}})
    with pytest.raises(DataError, match="nor an existing YAML file"):
        load_degradation_settings(str(tmp_path / "missing.yaml"))
    f = tmp_path / "mine.yaml"
    f.write_text("scale: 2\nfinal_sinc_prob: 0.0\n")
    assert load_degradation_settings(str(f)).scale == 2


# ----------------------------------------------------------------------------- the pool


def test_pair_pool_mixes_and_keeps_pairs_aligned() -> None:
    pool, g = PairPool(4), _gen(0)
    seen = []
    for step in range(6):
        v = torch.arange(2, dtype=torch.float32) + 2 * step  # pair identity, shared by LR and HR
        lr, hr = v.view(2, 1, 1, 1).expand(2, 3, 2, 2), v.view(2, 1, 1, 1).expand(2, 3, 8, 8)
        out_lr, out_hr = pool(lr.clone(), hr.clone(), g)
        assert torch.equal(out_lr[:, :, 0, 0], out_hr[:, :, 0, 0])
        seen.append(out_lr[:, 0, 0, 0].tolist())
    assert seen[0] == [0, 1] and seen[1] == [2, 3]  # pass-through until full
    later = {x for s in seen[2:] for x in s}
    assert later <= set(range(12)) and later != {4, 5, 6, 7, 8, 9, 10, 11}  # older pairs come back out
    restored = PairPool(4)
    restored.load_state_dict(pool.state_dict())
    g2 = torch.Generator()
    g2.set_state(g.get_state())
    x = torch.rand(2, 3, 2, 2)
    y = torch.rand(2, 3, 8, 8)
    a, b = pool(x, y, g), restored(x, y, g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="multiple of the batch size"):
        PairPool(5)(x, y, g)


def test_resize_draws_follow_resize_prob_and_range() -> None:
    from sr_data.degradations.pipeline import random_resize_factor

    g = _gen(11)
    f = torch.tensor([random_resize_factor(SETTINGS.first, g) for _ in range(2000)])
    up, down, keep = float((f > 1).float().mean()), float((f < 1).float().mean()), float((f == 1).float().mean())
    assert abs(up - 0.2) < 0.03 and abs(down - 0.7) < 0.03 and abs(keep - 0.1) < 0.02  # resize_prob
    assert f.min() >= 0.15 and f.max() <= 1.5


def test_random_kernel_families_and_sizes_are_drawn_by_their_probabilities() -> None:
    # isotropic Gaussian only: every kernel is separable (rank 1) with the drawn side; sinc only: ringing (< 0)
    iso = random_blur_kernels(64, BlurSettings(kernel_list=("iso",), kernel_prob=(1.0,), sinc_prob=0.0), _gen(5))
    assert all(int(torch.linalg.matrix_rank(k.double(), atol=1e-7)) == 1 for k in iso)
    sides = {int((k.sum(0) > 0).sum()) for k in iso}
    assert sides <= set(range(7, 22, 2)) and len(sides) > 4
    sinc = random_blur_kernels(16, BlurSettings(sinc_prob=1.0), _gen(5))
    assert (sinc.amin(dim=(1, 2)) < 0).all()
