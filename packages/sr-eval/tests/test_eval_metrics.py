"""PSNR/SSIM: BasicSR golden values, numpy vs torch agreement, independent oracles, input kinds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage.metrics import structural_similarity

from sr_eval import mean_score, psnr, psnr_numpy, psnr_torch, ssim, ssim_numpy, ssim_torch

BABOON = Path(__file__).resolve().parents[3] / "shared" / "data" / "baboon.png"
if not BABOON.exists():  # the repo's shared folder sits next to the checkout
    BABOON = Path("/work/shared/data/baboon.png")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def baboon_pair() -> tuple[np.ndarray, np.ndarray]:
    """(sr, hr) uint8: modcrop 4, MATLAB-bicubic x1/4, round, x4, round (conventions.md 1.4)."""
    if not BABOON.exists():
        pytest.skip("baboon.png not available")
    from sr_data import imresize

    img = np.asarray(Image.open(BABOON).convert("RGB"))
    h, w = img.shape[0] // 4 * 4, img.shape[1] // 4 * 4
    hr = img[:h, :w]
    lr = _to_uint8(imresize(hr.astype(np.float64) / 255.0, scale=1 / 4))
    sr = _to_uint8(imresize(lr.astype(np.float64) / 255.0, scale=4))
    assert hr.shape == (480, 492, 3) and sr.shape == hr.shape
    return sr, hr


# BasicSR basicsr/metrics/README.md (reproduced in conventions.md section 1.4).
GOLDEN = {False: (20.419710, 0.391853), True: (22.441899, 0.453097)}


@pytest.mark.parametrize("y_channel", [False, True])
def test_golden_numpy(baboon_pair, y_channel):
    sr, hr = baboon_pair
    p, s = GOLDEN[y_channel]
    assert psnr(sr, hr, crop_border=4, y_channel=y_channel) == pytest.approx(p, abs=1e-5)
    assert ssim(sr, hr, crop_border=4, y_channel=y_channel) == pytest.approx(s, abs=1e-5)


@pytest.mark.parametrize("y_channel", [False, True])
def test_golden_torch_float_batch(baboon_pair, y_channel):
    """Float CHW/BCHW tensors in [0, 1] give the same golden values (after the uint8 rounding)."""
    sr, hr = baboon_pair
    t_sr = torch.from_numpy(sr.copy()).permute(2, 0, 1).float() / 255
    t_hr = torch.from_numpy(hr.copy()).permute(2, 0, 1).float() / 255
    p, s = GOLDEN[y_channel]
    assert psnr(t_sr, t_hr, crop_border=4, y_channel=y_channel) == pytest.approx(p, abs=1e-5)
    batch = ssim(torch.stack([t_sr, t_hr]), torch.stack([t_hr, t_hr]), crop_border=4, y_channel=y_channel)
    assert batch.shape == (2,)
    assert float(batch[0]) == pytest.approx(s, abs=1e-5)
    assert float(batch[1]) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_skimage_oracle(baboon_pair):
    """skimage's Gaussian SSIM (sigma 1.5, population covariance) is the same definition."""
    sr, hr = baboon_pair
    a = sr[4:-4, 4:-4].astype(np.float64)
    b = hr[4:-4, 4:-4].astype(np.float64)
    ref = np.mean([
        structural_similarity(a[..., c], b[..., c], gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=255)
        for c in range(3)
    ])
    assert ssim(sr, hr, crop_border=4, y_channel=False) == pytest.approx(ref, abs=1e-9)


def test_psnr_by_hand():
    """A constant error of d levels on every pixel gives 10 log10(255^2 / d^2)."""
    hr = np.full((20, 20, 3), 100, np.uint8)
    sr = hr.copy()
    sr[...] = 103
    assert psnr(sr, hr, crop_border=0, y_channel=False) == pytest.approx(10 * math.log10(255**2 / 9))
    # Y of a grey level change of 3 is 3 * (65.481 + 128.553 + 24.966) / 255 = 3 * 219/255.
    dy = 3 * 219.0 / 255
    assert psnr(sr, hr, crop_border=2, y_channel=True) == pytest.approx(10 * math.log10(255**2 / dy**2), abs=1e-4)
    assert psnr(hr, hr, crop_border=0) == math.inf


def test_crop_border_only_sees_the_inside():
    hr = np.zeros((16, 16, 3), np.uint8)
    sr = hr.copy()
    sr[:2] = 255  # damage only the top 2 rows
    assert psnr(sr, hr, crop_border=2, y_channel=False) == math.inf
    assert psnr(sr, hr, crop_border=1, y_channel=False) < 20


def test_float_inputs_are_clamped_and_rounded():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    # within half a level of the uint8 values, plus out-of-range values that clamp to 0/255
    f = hr / 255.0 + rng.uniform(-0.49, 0.49, hr.shape) / 255.0
    f[hr == 0] = -0.3
    f[hr == 255] = 1.7
    assert psnr(f, hr, crop_border=0) == math.inf
    t = torch.from_numpy(f).permute(2, 0, 1).float()
    assert psnr(t, torch.from_numpy(hr).permute(2, 0, 1).contiguous(), crop_border=0) == math.inf


images = st.tuples(st.integers(12, 40), st.integers(12, 40), st.integers(0, 2**32 - 1), st.integers(0, 3))


@settings(max_examples=15)
@given(images, st.booleans(), st.booleans())
def test_numpy_and_torch_agree(spec, y_channel, as_float):
    """The batched torch path equals the numpy reference to 1e-6 on random (noisy-pair) images."""
    h, w, seed, crop = spec
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    noise = rng.normal(0, rng.uniform(1, 40), (h, w, 3))
    sr = np.clip(hr + noise, 0, 255).astype(np.uint8)
    if as_float:
        sr_np, hr_np = sr / 255.0, hr / 255.0
        sr_t = torch.from_numpy(sr_np).permute(2, 0, 1).float()
        hr_t = torch.from_numpy(hr_np).permute(2, 0, 1).float()
    else:
        sr_np, hr_np = sr, hr
        sr_t = torch.from_numpy(sr).permute(2, 0, 1).contiguous()
        hr_t = torch.from_numpy(hr).permute(2, 0, 1).contiguous()
    p_np = psnr_numpy(sr_np, hr_np, crop_border=crop, y_channel=y_channel)
    p_t = float(psnr_torch(sr_t, hr_t, crop_border=crop, y_channel=y_channel)[0])
    assert p_t == pytest.approx(p_np, abs=1e-6)
    if min(h, w) - 2 * crop >= 11:
        s_np = ssim_numpy(sr_np, hr_np, crop_border=crop, y_channel=y_channel)
        s_t = float(ssim_torch(sr_t, hr_t, crop_border=crop, y_channel=y_channel)[0])
        assert s_t == pytest.approx(s_np, abs=1e-6)


def test_batch_equals_per_image():
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(3, 3, 20, 22, generator=g)
    sr = (hr + 0.05 * torch.randn(3, 3, 20, 22, generator=g)).clamp(0, 1)
    pb, sb = psnr(sr, hr, crop_border=2), ssim(sr, hr, crop_border=2)
    for i in range(3):
        assert float(pb[i]) == pytest.approx(psnr(sr[i], hr[i], crop_border=2), abs=1e-12)
        assert float(sb[i]) == pytest.approx(ssim(sr[i], hr[i], crop_border=2), abs=1e-12)


def test_mean_score_is_mean_of_per_image():
    assert mean_score([30.0, 20.0]) == 25.0
    with pytest.raises(ValueError, match="no values"):
        mean_score([])


@pytest.mark.parametrize(
    ("sr", "hr", "kwargs", "match"),
    [
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), {"crop_border": 0}, "shapes differ"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), {"crop_border": 4}, "leaves nothing"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), {"crop_border": -1}, "non-negative"),
        (np.zeros((8, 8, 1), np.uint8), np.zeros((8, 8, 1), np.uint8), {"crop_border": 0}, "3-channel"),
    ],
)
def test_bad_input_names_the_problem(sr, hr, kwargs, match):
    with pytest.raises(ValueError, match=match):
        psnr(sr, hr, **kwargs)


def test_bad_types():
    with pytest.raises(TypeError, match="both"):
        psnr(np.zeros((8, 8, 3), np.uint8), torch.zeros(3, 8, 8), crop_border=0)
    with pytest.raises(TypeError, match="dtype"):
        psnr(np.zeros((8, 8, 3), np.int32), np.zeros((8, 8, 3), np.int32), crop_border=0)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((12, 12, 3), np.uint8), np.zeros((12, 12, 3), np.uint8), crop_border=1)


@pytest.mark.gpu
def test_cuda_metrics_agree_with_numpy(baboon_pair):
    sr, hr = baboon_pair
    t_sr = torch.from_numpy(sr.copy()).permute(2, 0, 1)[None].cuda()
    t_hr = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].cuda()
    for y in (False, True):
        p = psnr(t_sr, t_hr, crop_border=4, y_channel=y)
        s = ssim(t_sr, t_hr, crop_border=4, y_channel=y)
        assert p.device.type == "cuda"
        assert float(p[0]) == pytest.approx(psnr(sr, hr, crop_border=4, y_channel=y), abs=1e-6)
        assert float(s[0]) == pytest.approx(ssim(sr, hr, crop_border=4, y_channel=y), abs=1e-6)
