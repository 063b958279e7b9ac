"""Bad input: every case names the file and what is wrong, or is skipped and counted in a warning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr_data import DataError, ImageReadError, build_eval_dataset, build_train_dataset, write_image


def _rand(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _folder(path: Path, n: int = 3, size: tuple[int, int] = (16, 16)) -> Path:
    for k in range(n):
        write_image(path / f"{k:04d}.png", _rand(*size, k))
    return path


def _truncated(path: Path) -> None:
    write_image(path.with_suffix(".tmp.png"), _rand(64, 64, 99), compress_level=0)
    data = path.with_suffix(".tmp.png").read_bytes()
    path.with_suffix(".tmp.png").unlink()
    path.write_bytes(data[: len(data) // 2])


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.*does not exist"):
        build_train_dataset("folder", root=tmp_path / "nope", scale=2, patch_size=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no image files"):
        build_eval_dataset("folder", root=tmp_path / "empty", scale=2)
    with pytest.raises(DataError, match=r"DIV2K_train_HR.*does not exist"):
        build_train_dataset("div2k", root=tmp_path, scale=2, patch_size=4)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match=r"file\.txt.*not a folder"):
        build_train_dataset("folder", root=tmp_path / "file.txt", scale=2, patch_size=4)


def test_non_image_file_in_folder(tmp_path: Path) -> None:
    d = _folder(tmp_path / "hr")
    (d / "notes.txt").write_text("hello")
    (d / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    with pytest.raises(DataError, match=r"notes\.txt.*not an image file"):
        build_train_dataset("folder", root=d, scale=2, patch_size=4)
    with pytest.warns(UserWarning, match=r"skipped 1 bad image.*notes\.txt"):
        ds = build_train_dataset("folder", root=d, scale=2, patch_size=4, on_bad_image="skip")
    assert len(ds) == 3


def test_garbage_with_image_extension(tmp_path: Path) -> None:
    d = _folder(tmp_path / "hr")
    (d / "0009.png").write_bytes(b"<html>404</html>")
    with pytest.raises(ImageReadError, match=r"0009\.png.*not an image"):
        build_train_dataset("folder", root=d, scale=2, patch_size=4)
    with pytest.warns(UserWarning, match=r"skipped 1 bad image.*0009\.png"):
        ds = build_eval_dataset("folder", root=d, scale=2, on_bad_image="skip")
    assert len(ds) == 3


def test_truncated_file_found_when_loading(tmp_path: Path) -> None:
    d = _folder(tmp_path / "hr", n=2)
    _truncated(d / "0001.png")  # header intact: passes the build-time scan
    ds = build_train_dataset("folder", root=d, scale=2, patch_size=4)
    with pytest.raises(ImageReadError, match=r"0001\.png.*(truncated|corrupt)"):
        ds[1]
    ds = build_train_dataset("folder", root=d, scale=2, patch_size=4, on_bad_image="skip")
    with pytest.warns(UserWarning, match=r"0001\.png"):
        item = ds[1]
    assert item["name"] == "0000"  # the next good image, never a wrong pair


def test_grayscale_rgba_16bit(tmp_path: Path) -> None:
    d = _folder(tmp_path / "hr", n=1)
    Image.fromarray(np.full((16, 16), 7, np.uint8), mode="L").save(d / "gray.png")
    rgba = np.concatenate([_rand(16, 16), np.full((16, 16, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, mode="RGBA").save(d / "rgba.png")
    Image.fromarray(np.full((16, 16), 4000, np.uint16)).save(d / "deep.png")
    with pytest.raises(ImageReadError, match=r"deep\.png.*16-bit"):
        build_train_dataset("folder", root=d, scale=2, patch_size=4)
    (d / "deep.png").unlink()
    ds = build_train_dataset("folder", root=d, scale=2, patch_size=4)
    names = [ds.hr_store.names[i] for i, _ in ds.items]
    assert "gray" in names  # grayscale is accepted (replicated)
    with pytest.raises(ImageReadError, match=r"rgba\.png.*transparent"):
        for i in range(len(ds)):
            ds[i]


def test_lr_hr_size_mismatch(tmp_path: Path) -> None:
    hr = _folder(tmp_path / "hr", n=2, size=(16, 16))
    lr = _folder(tmp_path / "lr", n=2, size=(8, 8))
    write_image(lr / "0001.png", _rand(8, 7))
    with pytest.raises(
        DataError, match=r"lr/0001\.png: LR size 8x7 times 2 does not match HR .*hr/0001\.png size 16x16"
    ):
        build_train_dataset("folder", root=hr, lr_root=lr, lr_source="folder", scale=2, patch_size=4)
    with pytest.raises(DataError, match=r"lr/0001\.png.*does not match"):
        build_eval_dataset("folder", root=hr, lr_root=lr, lr_source="folder", scale=2)
    with pytest.warns(UserWarning, match="skipped 1 bad image"):
        ds = build_train_dataset(
            "folder", root=hr, lr_root=lr, lr_source="folder", scale=2, patch_size=4, on_bad_image="skip"
        )
    assert len(ds) == 1


def test_missing_lr_partner(tmp_path: Path) -> None:
    hr = _folder(tmp_path / "hr", n=2)
    lr = _folder(tmp_path / "lr", n=1, size=(8, 8))
    with pytest.raises(DataError, match=r"hr/0001\.png: no LR image '0001'"):
        build_train_dataset("folder", root=hr, lr_root=lr, lr_source="folder", scale=2, patch_size=4)
    with pytest.raises(DataError, match="--lr-root"):
        build_train_dataset("folder", root=hr, lr_source="folder", scale=2, patch_size=4)
