"""Continuous-scale training items (LTE's sampled coordinates) and float-scale evaluation pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sr_data import DataError, write_image
from sr_data.arbitrary_scale import (
    ArbitraryScaleEvalDataset,
    ContinuousScaleConfig,
    ContinuousScaleDataset,
    arbitrary_scale_pair,
    build_arbitrary_eval_dataset,
    build_continuous_train_dataset,
    make_coord,
    paper_border,
)
from sr_data.stores import MemoryStore
from sr_data.transforms import bicubic_downscale_uint8, modcrop


def _store(*shapes: tuple[int, int]) -> MemoryStore:
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    return MemoryStore(imgs, [f"im{i}" for i in range(len(imgs))])


def _pixels_of(coord: torch.Tensor, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of pixel-centre coordinates of a side x side grid (inverse of make_coord)."""
    rc = np.round(((coord.numpy().astype(np.float64) + 1) * side - 1) / 2).astype(int)
    return rc[:, 0], rc[:, 1]


def test_make_coord_is_pixel_centres_row_first():
    c = make_coord(2, 4)
    assert c.shape == (8, 2) and c.dtype == np.float32
    np.testing.assert_allclose(c[:4, 0], -0.5)
    np.testing.assert_allclose(c[:4, 1], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(c[4:, 0], 0.5)


def test_at_scale_one_coordinates_and_values_rebuild_the_lr_patch():
    """s = 1 and every pixel sampled: the (coord, gt) pairs, put back on the grid, are the LR patch
    (MATLAB bicubic at scale 1 is the identity), flips included."""
    cfg = ContinuousScaleConfig(patch_size=6, scale_min=1.0, scale_max=1.0, sample_q=36, augment=True, repeat=4)
    ds = ContinuousScaleDataset(_store((20, 17)), cfg)
    for i in range(4):
        item = ds[i]
        rows, cols = _pixels_of(item["coord"], 6)
        grid = np.zeros((6, 6, 3), dtype=np.float32)
        grid[rows, cols] = item["gt"].numpy()
        assert len(set(zip(rows, cols))) == 36  # without replacement
        np.testing.assert_allclose(grid.transpose(2, 0, 1), item["lr"].numpy(), atol=1e-6)
        torch.testing.assert_close(item["cell"], torch.full((36, 2), 2.0 / 6))


def test_random_scales_cells_shapes_seeding_and_collation():
    cfg = ContinuousScaleConfig(patch_size=8, scale_min=1.0, scale_max=4.0, sample_q=50, repeat=5)
    ds = ContinuousScaleDataset(_store((40, 40), (12, 50)), cfg)  # the second needs padding at s > 1.5
    scales = []
    for i in range(len(ds)):
        item = ds[i]
        s = float(item["scale"])
        side = round(8 * s)
        assert 1.0 <= s <= 4.0 + 1e-6 and abs(s - side / 8) < 1e-6
        assert item["lr"].shape == (3, 8, 8) and item["coord"].shape == (50, 2) and item["gt"].shape == (50, 3)
        torch.testing.assert_close(item["cell"], torch.full((50, 2), 2.0 / side))
        rows, cols = _pixels_of(item["coord"], side)
        assert rows.min() >= 0 and rows.max() < side and cols.max() < side
        scales.append(s)
    assert max(scales) - min(scales) > 1.0  # really random
    again = ContinuousScaleDataset(_store((40, 40), (12, 50)), cfg)
    torch.testing.assert_close(again[3]["gt"], ds[3]["gt"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["coord"], again[3]["coord"])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["lr"].shape == (4, 3, 8, 8) and batch["coord"].shape == (4, 50, 2)


def test_lr_is_matlab_bicubic_of_the_hr_crop():
    """s = 2 and an HR crop as large as the image (so it is the whole image): LR is the MATLAB x1/2."""
    cfg = ContinuousScaleConfig(patch_size=5, scale_min=2.0, scale_max=2.0, sample_q=25, augment=False)
    img = np.random.default_rng(3).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    item = ContinuousScaleDataset(MemoryStore([img], ["a"]), cfg)[0]
    expected = bicubic_downscale_uint8(img, 2).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(item["lr"].numpy(), expected, atol=1e-6)
    rows, cols = _pixels_of(item["coord"], 10)
    np.testing.assert_allclose(item["gt"].numpy(), img[rows, cols] / 255.0, atol=1e-6)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="sample_q"):
        ContinuousScaleConfig(patch_size=8, sample_q=65)
    with pytest.raises(ValueError, match="scale_min"):
        ContinuousScaleConfig(scale_min=0.5)
    with pytest.raises(ValueError, match="lr_mode"):
        ContinuousScaleConfig(lr_mode="nearest")


def test_sample_collection_builds():
    ds = build_continuous_train_dataset("sample", patch_size=8, sample_q=64)
    assert len(ds) == 600 and ds[0]["lr"].shape == (3, 8, 8)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_eval_pair_at_integer_scales_is_modcrop_plus_bicubic(s):
    hr = np.random.default_rng(s).integers(0, 256, (23, 19, 3), dtype=np.uint8)
    lr, crop = arbitrary_scale_pair(hr, s)
    ref_hr = modcrop(hr, s)
    np.testing.assert_array_equal(crop, ref_hr)
    np.testing.assert_array_equal(lr, bicubic_downscale_uint8(ref_hr, s))


def test_eval_pair_at_float_scales_follows_lte_sizes():
    hr = np.zeros((31, 47, 3), dtype=np.uint8)
    lr, crop = arbitrary_scale_pair(hr, 2.5)
    assert lr.shape[:2] == (12, 18) and crop.shape[:2] == (30, 45)  # floor(31/2.5) = 12, 18 * 2.5 = 45
    lr, crop = arbitrary_scale_pair(hr, 3.7)
    assert lr.shape[:2] == (8, 12) and crop.shape[:2] == (30, 44)  # round(8 * 3.7) = 30, round(44.4) = 44
    lr, crop = arbitrary_scale_pair(hr, 30)
    assert lr.shape[:2] == (1, 1) and crop.shape[:2] == (30, 30)
    with pytest.raises(DataError, match="smaller than the scale"):
        arbitrary_scale_pair(hr, 32)
    with pytest.raises(ValueError, match="scale"):
        arbitrary_scale_pair(hr, 0.9)


def test_paper_border_is_scale_plus_six():
    assert [paper_border(s) for s in (2, 3, 4, 6, 12, 18, 24, 30)] == [8, 9, 10, 12, 18, 24, 30, 36]
    assert paper_border(2.5) == 9


def test_eval_builder_uses_the_lr_folder_for_integer_scales_and_hr_otherwise(tmp_path):
    hr_dir, lr_dir = tmp_path / "HR", tmp_path / "LR"
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    write_image(hr_dir / "a.png", img)
    write_image(lr_dir / "ax2.png", np.zeros((12, 12, 3), dtype=np.uint8))  # a recognisable LR
    folder = build_arbitrary_eval_dataset("folder", root=hr_dir, scale=2)
    assert folder[0]["lr"].shape == (3, 12, 12)
    ds = build_arbitrary_eval_dataset("sample", scale=6.5)
    assert isinstance(ds, ArbitraryScaleEvalDataset) and len(ds) == 3
    item = ds[0]
    h, w = item["lr"].shape[-2:]
    assert item["hr"].shape[-2:] == (round(h * 6.5), round(w * 6.5))
    with pytest.raises(DataError, match="non-integer"):
        build_arbitrary_eval_dataset("folder", root=hr_dir, scale=2.5, lr_source="folder")
