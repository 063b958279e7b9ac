"""imresize: golden values (BasicSR's baboon check), an independent loop oracle, invariants."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sr_data import imresize
from sr_data.io import read_image

# BasicSR's test_scripts/data/baboon.png (a copy of the project's shared/data/baboon.png).
BABOON = Path(__file__).resolve().parent / "data" / "baboon.png"


def _cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def _ref_axis(x: np.ndarray, out_len: int, scale: float) -> np.ndarray:
    """Readable MATLAB bicubic along axis 0: explicit loops, explicit symmetric padding."""
    n = x.shape[0]
    width = 4.0 / scale if scale < 1 else 4.0
    pad = math.ceil(width) + 4

    def mirror(i: int) -> int:  # MATLAB: index into [1..n, n..1] periodically (edge repeated)
        i %= 2 * n
        return i if i < n else 2 * n - 1 - i

    idx = [mirror(i) for i in range(-pad, n + pad)]
    padded = x[idx]
    out = np.zeros((out_len, *x.shape[1:]))
    for o in range(out_len):
        u = (o + 1) / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = math.ceil(width) + 2
        ws, rows = [], []
        for t in range(taps):
            j = left + t  # 1-based input index
            d = u - j
            ws.append(scale * _cubic(d * scale) if scale < 1 else _cubic(d))
            rows.append(padded[j - 1 + pad])
        total = sum(ws)
        out[o] = sum(w / total * r for w, r in zip(ws, rows))
    return out


def _ref_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    oh, ow = math.ceil(h * scale), math.ceil(w * scale)
    tmp = _ref_axis(img.astype(np.float64), oh, scale)
    return _ref_axis(tmp.swapaxes(0, 1), ow, scale).swapaxes(0, 1)


def _y(img_uint8: np.ndarray) -> np.ndarray:
    f = img_uint8.astype(np.float64) / 255.0
    return 16.0 + 65.481 * f[..., 0] + 128.553 * f[..., 1] + 24.966 * f[..., 2]


def _psnr(a: np.ndarray, b: np.ndarray, crop: int) -> float:
    a, b = a[crop:-crop, crop:-crop].astype(np.float64), b[crop:-crop, crop:-crop].astype(np.float64)
    return 10.0 * math.log10(255.0**2 / np.mean((a - b) ** 2))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def test_baboon_golden_psnr() -> None:
    """conventions.md §1.4: baboon x4 down, round, x4 up, round; Y PSNR 22.441899, RGB 20.419710."""
    hr = read_image(BABOON)
    hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
    assert hr.shape == (480, 492, 3)
    lr = _to_uint8(imresize(hr / 255.0, scale=1 / 4))
    assert lr.shape == (120, 123, 3)
    sr = _to_uint8(imresize(lr / 255.0, scale=4))
    assert abs(_psnr(_y(sr), _y(hr), 4) - 22.441899) < 1e-4
    assert abs(_psnr(sr, hr, 4) - 20.419710) < 1e-4
    # the torch path gives the same uint8 images
    t = torch.from_numpy(hr.transpose(2, 0, 1).copy()).float()[None] / 255
    lr_t = _to_uint8(imresize(t, scale=0.25)[0].permute(1, 2, 0).numpy())
    assert np.abs(lr_t.astype(int) - lr.astype(int)).max() <= 1
    assert (lr_t != lr).mean() < 1e-3


@settings(max_examples=12)
@given(
    h=st.integers(1, 13),
    w=st.integers(1, 13),
    scale=st.sampled_from([1 / 4, 1 / 3, 1 / 2, 0.7, 1.0, 1.5, 2.0, 3.0, 4.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_loop_oracle(h: int, w: int, scale: float, seed: int) -> None:
    img = np.random.default_rng(seed).random((h, w, 3))
    if math.ceil(h * scale) < 1 or math.ceil(w * scale) < 1:
        return
    np.testing.assert_allclose(imresize(img, scale=scale), _ref_imresize(img, scale), atol=1e-10)


@settings(max_examples=15)
@given(
    b=st.integers(1, 2),
    h=st.integers(2, 24),
    w=st.integers(2, 24),
    scale=st.sampled_from([1 / 4, 1 / 3, 1 / 2, 2.0, 3.0, 4.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_torch_matches_numpy(b: int, h: int, w: int, scale: float, seed: int) -> None:
    x = np.random.default_rng(seed).random((b, 3, h, w)).astype(np.float32)
    out_t = imresize(torch.from_numpy(x), scale=scale)
    for i in range(b):
        ref = imresize(x[i].transpose(1, 2, 0).astype(np.float64), scale=scale)
        np.testing.assert_allclose(out_t[i].numpy().transpose(1, 2, 0), ref, atol=1e-5)
    assert out_t.dtype == torch.float32


@settings(max_examples=10)
@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    c=st.floats(-3, 3),
    scale=st.sampled_from([0.25, 0.5, 1 / 3, 2.0, 3.0]),
)
def test_constant_stays_constant(h: int, w: int, c: float, scale: float) -> None:
    out = imresize(np.full((h, w, 3), c), scale=scale)
    np.testing.assert_allclose(out, c, atol=1e-12)


@settings(max_examples=10)
@given(
    seed=st.integers(0, 2**31 - 1),
    a=st.floats(-2, 2),
    b=st.floats(-2, 2),
    scale=st.sampled_from([0.25, 0.5, 3.0]),
)
def test_linearity(seed: int, a: float, b: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.random((9, 11, 3)), rng.random((9, 11, 3))
    np.testing.assert_allclose(
        imresize(a * x + b * y, scale=scale),
        a * imresize(x, scale=scale) + b * imresize(y, scale=scale),
        atol=1e-12,
    )


def test_down_then_up_of_smooth_image_is_close() -> None:
    yy, xx = np.mgrid[0:96, 0:80] / 40.0
    img = np.stack([np.sin(xx + yy), np.cos(xx * 0.7), 0.5 + 0.3 * np.sin(yy * 1.3)], -1) * 0.5 + 0.5
    back = imresize(imresize(img, scale=0.25), scale=4)
    assert back.shape == img.shape
    assert np.abs(back - img)[8:-8, 8:-8].max() < 0.02


def test_size_argument_and_identity() -> None:
    img = np.random.default_rng(0).random((10, 14, 3)).astype(np.float32)
    np.testing.assert_allclose(imresize(img, scale=1.0), img, atol=1e-6)
    out = imresize(img, size=(5, 7))
    assert out.shape == (5, 7, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, imresize(img, scale=0.5), atol=1e-6)
    assert imresize(img[..., 0], scale=2).shape == (20, 28)


def test_bad_arguments() -> None:
    img = np.zeros((4, 4, 3))
    with pytest.raises(TypeError, match="float"):
        imresize(np.zeros((4, 4, 3), np.uint8), scale=2)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(img)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(img, scale=2, size=(3, 3))
    with pytest.raises(ValueError, match="scale"):
        imresize(img, scale=-1)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        imresize([[0.0]], scale=2)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    x = torch.rand(2, 3, 37, 41)
    np.testing.assert_allclose(
        imresize(x.cuda(), scale=0.25).cpu().numpy(), imresize(x, scale=0.25).numpy(), atol=1e-5
    )
