"""Pair transforms: crops stay aligned, flips/rotations keep pairs aligned, padding is scale-consistent."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sr_data.transforms import augment_pair, dihedral, modcrop, pad_to, paired_random_crop, to_tensor


def _upsample_nearest(lr: np.ndarray, s: int) -> np.ndarray:
    return lr.repeat(s, axis=0).repeat(s, axis=1)


@given(
    h=st.integers(4, 30),
    w=st.integers(4, 30),
    s=st.integers(1, 4),
    p=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_crop_is_aligned(h: int, w: int, s: int, p: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, (h * s, w * s, 3), dtype=np.uint8)
    lc, hc, (top, left) = paired_random_crop(lr, hr, p, s, rng)
    assert lc.shape == (p, p, 3) and hc.shape == (p * s, p * s, 3)
    np.testing.assert_array_equal(lc, lr[top : top + p, left : left + p])
    # the HR crop is the region of the LR crop times the scale
    np.testing.assert_array_equal(hc, hr[top * s : (top + p) * s, left * s : (left + p) * s])


@given(h=st.integers(1, 9), w=st.integers(1, 9), s=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_augmentation_keeps_pairs_aligned(h: int, w: int, s: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hr = _upsample_nearest(lr, s)
    a_lr, a_hr = augment_pair(lr, hr, rng)
    np.testing.assert_array_equal(a_hr, _upsample_nearest(a_lr, s))


def test_dihedral_gives_eight_distinct_symmetries() -> None:
    img = np.arange(12).reshape(3, 4, 1)
    flags = [(a, b, c) for a in (False, True) for b in (False, True) for c in (False, True)]
    outs = {dihedral(img, f).tobytes() + bytes(dihedral(img, f).shape) for f in flags}
    assert len(outs) == 8
    # transpose swaps H and W; hflip mirrors columns
    assert dihedral(img, (False, False, True)).shape == (4, 3, 1)
    np.testing.assert_array_equal(dihedral(img, (True, False, False))[:, 0], img[:, -1])


def test_augment_draws_all_eight() -> None:
    img = np.arange(6).reshape(2, 3, 1)
    seen = {augment_pair(img, img, np.random.default_rng(i))[0].tobytes() for i in range(200)}
    assert len(seen) == 8


@given(
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    s=st.integers(1, 4),
    p=st.integers(1, 12),
    seed=st.integers(0, 999),
)
def test_symmetric_padding_is_scale_consistent(h: int, w: int, s: int, p: int, seed: int) -> None:
    lr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    lp, hp = pad_to(lr, p, p), pad_to(_upsample_nearest(lr, s), p * s, p * s)
    assert lp.shape[0] >= p and lp.shape[1] >= p
    np.testing.assert_array_equal(hp, _upsample_nearest(lp, s))
    np.testing.assert_array_equal(lp[:h, :w], lr)


def test_modcrop_and_to_tensor() -> None:
    img = np.zeros((10, 13, 3), np.uint8)
    assert modcrop(img, 4).shape == (8, 12, 3)
    assert modcrop(img, 1).shape == (10, 13, 3)
    with pytest.raises(ValueError, match="scale"):
        modcrop(img, 0)
    t = to_tensor(np.full((2, 3, 3), 255, np.uint8))
    assert t.shape == (3, 2, 3) and float(t.max()) == 1.0 and t.dtype.is_floating_point


def test_crop_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="not LR"):
        paired_random_crop(np.zeros((4, 4, 3)), np.zeros((9, 8, 3)), 2, 2, rng)
    with pytest.raises(ValueError, match="smaller than the patch"):
        paired_random_crop(np.zeros((4, 4, 3)), np.zeros((8, 8, 3)), 5, 2, rng)
