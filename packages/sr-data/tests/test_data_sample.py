"""The embedded sample set (scikit-image photographs): contract shapes, fixed split, determinism."""

from __future__ import annotations

import numpy as np
import torch

from sr_data import build_eval_dataset, build_train_dataset, sample_images
from sr_data.datasets import SAMPLE_TRAIN, SAMPLE_VAL
from sr_data.transforms import bicubic_downscale_uint8


def test_split_is_fixed_and_disjoint() -> None:
    train, val = sample_images("train"), sample_images("val")
    assert len(train) == len(SAMPLE_TRAIN) >= 5 and len(val) == len(SAMPLE_VAL) >= 2
    assert not set(train.names) & set(val.names)
    for i in range(len(train)):
        img = train.read(i)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256


def test_train_items_follow_the_contract() -> None:
    ds = build_train_dataset("sample", scale=4, patch_size=16, seed=0)
    assert len(ds) == len(SAMPLE_TRAIN) * 100
    item = ds[3]
    assert set(item) == {"lr", "hr", "name"}
    assert item["lr"].shape == (3, 16, 16) and item["hr"].shape == (3, 64, 64)
    assert item["lr"].dtype == torch.float32 and item["hr"].dtype == torch.float32
    assert 0.0 <= float(item["hr"].min()) and float(item["hr"].max()) <= 1.0
    again = build_train_dataset("sample", scale=4, patch_size=16, seed=0)[3]
    assert torch.equal(item["lr"], again["lr"]) and item["name"] == again["name"]


def test_eval_items_follow_the_contract() -> None:
    for scale in (2, 3, 4):
        ds = build_eval_dataset("sample", scale=scale)
        assert [ds[i]["name"] for i in range(len(ds))] == [n.split(".")[0] for n in SAMPLE_VAL]
        for i in range(len(ds)):
            item = ds[i]
            _, h, w = item["hr"].shape
            assert h <= 256 and w <= 256 and h % scale == 0 and w % scale == 0
            assert item["lr"].shape == (3, h // scale, w // scale)
        hr = np.round(ds[0]["hr"].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        lr = np.round(ds[0]["lr"].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        np.testing.assert_array_equal(lr, bicubic_downscale_uint8(hr, scale))
