"""Datasets built from small synthetic DIV2K-like folders: sizes, naming, alignment, seeding, workers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from sr_data import DataError, build_eval_dataset, build_train_dataset, imresize, write_image
from sr_data.transforms import bicubic_downscale_uint8, pil_bicubic_downscale_uint8


def _rand(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _up(lr: np.ndarray, s: int) -> np.ndarray:
    return lr.repeat(s, 0).repeat(s, 1)


def _u8(t: torch.Tensor) -> np.ndarray:
    return np.round(t.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


def _pair_folder(
    hr_dir: Path, lr_dir: Path, names: list[str], s: int, tmpl: str, size=(12, 10), seed=0
) -> None:
    """HR = nearest-upsampled LR, so any aligned crop satisfies hr == up(lr)."""
    for k, n in enumerate(names):
        lr = _rand(*size, seed + k)
        write_image(hr_dir / f"{n}.png", _up(lr, s))
        sub, _, stem = n.rpartition("/")
        write_image(lr_dir / sub / f"{tmpl.format(stem)}.png", lr)


def _make_root(root: Path, s: int = 2) -> Path:
    _pair_folder(
        root / "DIV2K/DIV2K_train_HR",
        root / f"DIV2K/DIV2K_train_LR_bicubic/X{s}",
        ["0001", "0002", "0003"],
        s,
        f"{{}}x{s}",
    )
    _pair_folder(
        root / "Flickr2K/Flickr2K_HR",
        root / f"Flickr2K/Flickr2K_LR_bicubic/X{s}",
        ["000001", "000002"],
        s,
        f"{{}}x{s}",
        seed=10,
    )
    _pair_folder(
        root / "LSDIR/HR/train",
        root / f"LSDIR/X{s}/train",
        ["0001000/0000001", "0002000/0001001"],
        s,
        f"{{}}x{s}",
        seed=20,
    )
    _pair_folder(
        root / "DiverSeg-IP/HR",
        root / f"DiverSeg-IP/X{s}",
        ["n01/a", "pass/b", "pass/c"],
        s,
        f"{{}}x{s}",
        seed=30,
    )
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_root(tmp_path_factory.mktemp("datasets"))


@pytest.mark.parametrize(
    ("name", "count", "first"),
    [
        ("div2k", 3, "0001"),
        ("flickr2k", 2, "000001"),
        ("lsdir", 2, "0001000/0000001"),
        ("diverseg", 3, "n01/a"),
        ("df2k", 5, "div2k/0001"),
        ("dflip", 10, "div2k/0001"),
    ],
)
@pytest.mark.parametrize("lr_source", ["folder", "bicubic"])
def test_collection_sizes_and_names(
    data_root: Path, name: str, count: int, first: str, lr_source: str
) -> None:
    ds = build_train_dataset(name, root=data_root, scale=2, patch_size=4, lr_source=lr_source)
    assert len(ds) == count
    assert ds.hr_store.names[0] == first
    item = ds[count - 1]
    assert item["lr"].shape == (3, 4, 4) and item["hr"].shape == (3, 8, 8)
    assert item["lr"].dtype == torch.float32 and 0 <= float(item["lr"].min()) and float(item["hr"].max()) <= 1


def test_df2k_names_and_repeat(data_root: Path) -> None:
    ds = build_train_dataset("df2k", root=data_root, scale=2, patch_size=4, repeat=3)
    assert len(ds) == 15
    assert [ds[i]["name"] for i in range(5)] == [
        "div2k/0001", "div2k/0002", "div2k/0003", "flickr2k/000001", "flickr2k/000002",
    ]  # fmt: skip
    assert ds[5]["name"] == "div2k/0001"


def test_folder_pairs_stay_aligned_with_augmentation(data_root: Path) -> None:
    ds = build_train_dataset("dflip", root=data_root, scale=2, patch_size=5, lr_source="folder", seed=3)
    for i in range(len(ds)):
        item = ds[i]
        np.testing.assert_array_equal(_u8(item["hr"]), _up(_u8(item["lr"]), 2))


def test_on_the_fly_bicubic_and_pil(data_root: Path) -> None:
    for source, fn in (("bicubic", bicubic_downscale_uint8), ("pil", pil_bicubic_downscale_uint8)):
        ds = build_train_dataset(
            "div2k", root=data_root, scale=2, patch_size=4, lr_source=source, augment=False
        )
        for i in range(len(ds)):
            item = ds[i]
            np.testing.assert_array_equal(_u8(item["lr"]), fn(_u8(item["hr"]), 2))


def test_cached_lr_crops_are_aligned(tmp_path: Path) -> None:
    hr_full = _rand(26, 22, 5)
    write_image(tmp_path / "hr" / "img.png", hr_full)
    ds = build_train_dataset(
        "folder", root=tmp_path / "hr", scale=2, patch_size=3, cache_lr=True, augment=False
    )
    lr_full = np.round(np.clip(imresize(hr_full / 255.0, scale=0.5), 0, 1) * 255).astype(np.uint8)
    for i in range(8):
        ds.set_epoch(i)
        item = ds[0]
        hr_c, lr_c = _u8(item["hr"]), _u8(item["lr"])
        hits = [
            (y, x) for y in range(0, 26 - 5, 1) for x in range(0, 22 - 5, 1)
            if np.array_equal(hr_full[y : y + 6, x : x + 6], hr_c)
        ]  # fmt: skip
        assert len(hits) == 1
        y, x = hits[0]
        assert y % 2 == 0 and x % 2 == 0
        np.testing.assert_array_equal(lr_c, lr_full[y // 2 : y // 2 + 3, x // 2 : x // 2 + 3])


def test_seeded_and_epoch_dependent(data_root: Path) -> None:
    a = build_train_dataset("div2k", root=data_root, scale=2, patch_size=4, seed=7)
    b = build_train_dataset("div2k", root=data_root, scale=2, patch_size=4, seed=7)
    c = build_train_dataset("div2k", root=data_root, scale=2, patch_size=4, seed=8)
    assert torch.equal(a[1]["hr"], b[1]["hr"])
    assert any(not torch.equal(a[i]["hr"], c[i]["hr"]) for i in range(3))
    before = [a[i]["hr"] for i in range(3)]
    a.set_epoch(1)
    assert any(not torch.equal(before[i], a[i]["hr"]) for i in range(3))


def test_worker_count_does_not_change_batches(data_root: Path) -> None:
    ds = build_train_dataset("dflip", root=data_root, scale=2, patch_size=4, seed=1)
    ref = [b["hr"] for b in DataLoader(ds, batch_size=4, num_workers=0)]
    got = [b["hr"] for b in DataLoader(ds, batch_size=4, num_workers=2)]
    assert len(ref) == len(got) == 3
    for r, g in zip(ref, got):
        assert torch.equal(r, g)


def test_distributed_sampler_shards(data_root: Path) -> None:
    ds = build_train_dataset("dflip", root=data_root, scale=2, patch_size=4, seed=1)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        idx = list(sampler)
        batch = next(iter(DataLoader(ds, batch_size=len(idx), sampler=sampler)))
        for k, i in enumerate(idx):
            assert torch.equal(batch["lr"][k], ds[i]["lr"])
        seen += idx
    assert sorted(seen) == list(range(len(ds)))


def test_small_images_pad_or_skip(tmp_path: Path) -> None:
    _pair_folder(tmp_path / "hr", tmp_path / "lr", ["big", "tiny"], 2, "{}", size=(6, 6))
    write_image(tmp_path / "hr" / "tiny.png", _up(_rand(2, 3, 9), 2))
    write_image(tmp_path / "lr" / "tiny.png", _rand(2, 3, 9))
    ds = build_train_dataset(
        "folder", root=tmp_path / "hr", lr_root=tmp_path / "lr", lr_source="folder", scale=2, patch_size=4
    )
    assert len(ds) == 2
    for i in range(2):
        item = ds[i]
        assert item["lr"].shape == (3, 4, 4)
        np.testing.assert_array_equal(_u8(item["hr"]), _up(_u8(item["lr"]), 2))
    with pytest.warns(UserWarning, match=r"skipped 1 bad image.*tiny\.png.*smaller than the patch"):
        ds = build_train_dataset("folder", root=tmp_path / "hr", scale=2, patch_size=4, small="skip")
    assert len(ds) == 1 and ds[0]["name"] == "big"


def _bench_root(root: Path, s: int = 2) -> Path:
    _pair_folder(
        root / "Set5/HR", root / f"Set5/LR_bicubic/X{s}", ["baby", "bird"], s, f"{{}}x{s}", size=(9, 7)
    )
    for k, n in enumerate(["a", "b", "c"]):  # B100 under its alternative name, HR not a multiple of s
        write_image(root / "BSD100/HR" / f"{n}.png", _rand(21, 17, 40 + k))
    _pair_folder(root / "Set14/GTmod12", root / f"Set14/LRbicx{s}", ["comic"], s, "{}", size=(6, 6))
    _pair_folder(
        root / "DIV2K/DIV2K_valid_HR", root / f"DIV2K/DIV2K_valid_LR_bicubic/X{s}", ["0801"], s, f"{{}}x{s}"
    )
    return root


def test_eval_layouts(tmp_path: Path) -> None:
    root = _bench_root(tmp_path)
    ds = build_eval_dataset("set5", root=root, scale=2)
    assert len(ds) == 2 and ds[0]["name"] == "baby"
    assert ds[0]["lr"].shape == (3, 9, 7) and ds[0]["hr"].shape == (3, 18, 14)
    np.testing.assert_array_equal(_u8(ds[1]["hr"]), _up(_u8(ds[1]["lr"]), 2))  # provided LR is used
    assert len(build_eval_dataset("set14", root=root, scale=2)) == 1
    assert len(build_eval_dataset("div2k-val", root=root, scale=2)) == 1
    b100 = build_eval_dataset("b100", root=root, scale=2)
    item = b100[0]
    assert item["hr"].shape == (3, 20, 16) and item["lr"].shape == (3, 10, 8)  # modcrop to 2
    hr = _rand(21, 17, 40)[:20, :16]
    np.testing.assert_array_equal(_u8(item["hr"]), hr)
    np.testing.assert_array_equal(_u8(item["lr"]), bicubic_downscale_uint8(hr, 2))
    # forcing bicubic ignores the provided LR folder
    forced = build_eval_dataset("set5", root=root, scale=2, lr_source="bicubic")
    np.testing.assert_array_equal(_u8(forced[0]["lr"]), bicubic_downscale_uint8(_u8(forced[0]["hr"]), 2))
    with pytest.raises(DataError, match="Urban100"):
        build_eval_dataset("urban100", root=root, scale=2)


def test_eval_hr_cropped_to_lr_times_scale(tmp_path: Path) -> None:
    lr = _rand(5, 4, 1)
    hr = _rand(11, 9, 2)  # 10x8 would be exact; one extra HR pixel is tolerated (top-left crop)
    write_image(tmp_path / "hr/x.png", hr)
    write_image(tmp_path / "lr/x.png", lr)
    ds = build_eval_dataset(
        "folder", root=tmp_path / "hr", lr_root=tmp_path / "lr", lr_source="folder", scale=2
    )
    np.testing.assert_array_equal(_u8(ds[0]["hr"]), hr[:10, :8])


def test_unknown_names() -> None:
    with pytest.raises(DataError, match="unknown training dataset"):
        build_train_dataset("imagenet", scale=2, patch_size=4)
    with pytest.raises(DataError, match="unknown evaluation dataset"):
        build_eval_dataset("imagenet", scale=2)
    with pytest.raises(ValueError, match="scale"):
        build_train_dataset("sample", scale=0, patch_size=4)
    with pytest.raises(ValueError, match="lr_source"):
        build_train_dataset("sample", scale=2, patch_size=4, lr_source="nearest")


def test_default_root_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_root(tmp_path)
    monkeypatch.setenv("SR_DATA_ROOT", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(build_train_dataset("div2k", scale=2, patch_size=4)) == 3
