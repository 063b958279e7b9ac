"""read_image / write_image: the documented policy for odd files, and errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr_data import ImageReadError, decode_image, read_image, write_image
from sr_data.io import probe_image


def _rgb(h: int = 9, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_roundtrip_png(tmp_path: Path) -> None:
    img = _rgb()
    write_image(tmp_path / "sub" / "a.png", img)
    out = read_image(tmp_path / "sub" / "a.png")
    assert out.dtype == np.uint8 and out.shape == (9, 7, 3)
    np.testing.assert_array_equal(out, img)
    assert probe_image(tmp_path / "sub" / "a.png") == (9, 7)


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    g = np.arange(63, dtype=np.uint8).reshape(9, 7)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (9, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_palette_is_expanded(tmp_path: Path) -> None:
    img = _rgb()
    Image.fromarray(img).quantize(colors=16).save(tmp_path / "p.png")
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expected)


def test_opaque_alpha_is_dropped(tmp_path: Path) -> None:
    img = _rgb()
    rgba = np.concatenate([img, np.full((9, 7, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)


def test_transparent_alpha_is_refused(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb(), np.full((9, 7, 1), 255, np.uint8)], -1)
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    with pytest.raises(ImageReadError, match=r"t\.png.*transparent"):
        read_image(tmp_path / "t.png")


def test_16bit_png_is_refused(tmp_path: Path) -> None:
    arr = (np.arange(63, dtype=np.uint16).reshape(9, 7) * 1000).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "d16.png")
    with pytest.raises(ImageReadError, match=r"d16\.png.*16-bit"):
        read_image(tmp_path / "d16.png")
    with pytest.raises(ImageReadError, match="16-bit"):
        probe_image(tmp_path / "d16.png")


def test_16bit_rgb_png_is_refused(tmp_path: Path) -> None:
    # Hand-made 16-bit RGB PNG (Pillow cannot write one): the header says bit depth 16.
    import struct
    import zlib

    h, w = 2, 3
    raw = b"".join(b"\x00" + bytes(range(w * 6)) for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    (tmp_path / "rgb16.png").write_bytes(png)
    with pytest.raises(ImageReadError, match=r"rgb16\.png.*16-bit"):
        read_image(tmp_path / "rgb16.png")


def test_truncated_png(tmp_path: Path) -> None:
    write_image(tmp_path / "ok.png", _rgb(64, 64), compress_level=0)
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png.*(truncated|corrupt)"):
        read_image(tmp_path / "cut.png")


def test_corrupt_and_non_image(tmp_path: Path) -> None:
    (tmp_path / "junk.png").write_bytes(b"this is not a png at all")
    with pytest.raises(ImageReadError, match=r"junk\.png.*not an image"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(ImageReadError, match=r"missing\.png.*not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_decode_bytes_and_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_rgb(16, 16)).save(buf, format="JPEG", quality=95)
    out = decode_image(buf.getvalue(), "mem.jpg")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    with pytest.raises(ImageReadError, match=r"mem\.bin"):
        decode_image(b"\x00\x01", "mem.bin")


def test_write_image_checks(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="uint8"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.uint8))


def test_error_pickles_with_path() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ImageReadError("/a/b.png", "broken")))
    assert err.path == "/a/b.png" and err.reason == "broken" and "/a/b.png" in str(err)
