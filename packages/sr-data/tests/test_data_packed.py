"""Packed LMDB format: round trip, region reads, manifest checksums, use by the datasets."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

from sr_data import DataError, build_train_dataset, write_image
from sr_data.datasets import open_store
from sr_data.packed import PackedStore, is_packed, verify_packed, write_packed
from sr_data.stores import FileStore


def _folder(path: Path, n: int = 3) -> list[np.ndarray]:
    imgs = [np.random.default_rng(k).integers(0, 256, (10 + k, 12, 3), dtype=np.uint8) for k in range(n)]
    for k, img in enumerate(imgs):
        write_image(path / f"{k:04d}.png", img)
    return imgs


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_round_trip_and_verify(tmp_path: Path, encoding: str) -> None:
    imgs = _folder(tmp_path / "hr")
    store, _ = FileStore.from_folder(tmp_path / "hr")
    out = write_packed(store, tmp_path / "hr.lmdb", encoding=encoding, progress=False)
    assert is_packed(out)
    packed = PackedStore(out)
    assert packed.names == ["0000", "0001", "0002"]
    for k, img in enumerate(imgs):
        assert packed.shape(k) == img.shape[:2]
        np.testing.assert_array_equal(packed.read(k), img)
        np.testing.assert_array_equal(packed.read_region(k, 2, 3, 5, 4), img[2:7, 3:7])
    assert verify_packed(out) == []
    meta = (out / "meta_info.txt").read_text().splitlines()
    assert meta[0].startswith("0000 (10,12,3)")
    # the store survives pickling (DataLoader workers reopen the environment lazily)
    clone = pickle.loads(pickle.dumps(packed))
    np.testing.assert_array_equal(clone.read(1), imgs[1])


def test_verify_detects_tampering(tmp_path: Path) -> None:
    _folder(tmp_path / "hr")
    store, _ = FileStore.from_folder(tmp_path / "hr")
    out = write_packed(store, tmp_path / "p.lmdb", progress=False)
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        val = bytearray(txn.get(b"0001"))
        val[0] ^= 0xFF
        txn.put(b"0001", bytes(val))
    env.close()
    problems = verify_packed(out)
    assert len(problems) == 1 and "0001" in problems[0] and "sha256" in problems[0]


def test_write_refuses_non_empty_target_and_bad_manifest(tmp_path: Path) -> None:
    _folder(tmp_path / "hr", n=1)
    store, _ = FileStore.from_folder(tmp_path / "hr")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        write_packed(store, tmp_path / "busy", progress=False)
    out = write_packed(store, tmp_path / "ok.lmdb", progress=False)
    m = json.loads((out / "manifest.json").read_text())
    m["count"] = 5
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="count"):
        PackedStore(out)


def test_datasets_prefer_packed_sibling(tmp_path: Path) -> None:
    imgs = _folder(tmp_path / "hr")
    store, _ = FileStore.from_folder(tmp_path / "hr")
    write_packed(store, tmp_path / "hr.lmdb", progress=False)
    opened, _ = open_store(tmp_path / "hr")
    assert isinstance(opened, PackedStore)
    assert isinstance(open_store(tmp_path / "hr", packed=False)[0], FileStore)
    from_packed = build_train_dataset("folder", root=tmp_path / "hr", scale=2, patch_size=4, seed=5)
    from_files = build_train_dataset(
        "folder", root=tmp_path / "hr", scale=2, patch_size=4, seed=5, packed=False
    )
    for i in range(len(imgs)):
        assert torch.equal(from_packed[i]["hr"], from_files[i]["hr"])
        assert torch.equal(from_packed[i]["lr"], from_files[i]["lr"])
    with pytest.raises(DataError, match="packed file not found"):
        open_store(tmp_path / "other", packed=True)


def test_parallel_pack_matches_serial(tmp_path: Path) -> None:
    _folder(tmp_path / "hr", n=4)
    store, _ = FileStore.from_folder(tmp_path / "hr")
    a = write_packed(store, tmp_path / "a.lmdb", workers=1, encoding="png", progress=False)
    b = write_packed(store, tmp_path / "b.lmdb", workers=2, encoding="png", progress=False)
    ma, mb = (json.loads((p / "manifest.json").read_text())["entries"] for p in (a, b))
    assert ma == mb
