"""Reading and writing 8-bit RGB images, with one documented policy for unusual files.

Policy of :func:`read_image` (the same for every loader of the package):

* 8-bit RGB: returned as is.
* Grayscale (``L``, ``1``, ``LA``): replicated to three channels; palettes (``P``) expanded.
* Alpha (``RGBA``, ``LA``, ``PA``, palettes with transparency): dropped when every pixel is
  opaque (alpha 255); an image with any transparent pixel is refused, because there is no single
  right background colour and a silent choice would change the pair.
* 16-bit (and 32-bit integer or float) images are refused: the pipelines and the benchmark
  conventions are 8-bit, and a silent down-conversion would hide a choice (round vs truncate).
  Convert them to 8-bit PNG first.
* ``CMYK``/``YCbCr`` (e.g. some JPEGs) are converted to RGB by Pillow.
* A corrupt, truncated or non-image file raises :class:`~sr_data.errors.ImageReadError`, whose
  message names the file and what is wrong.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sr_data.errors import ImageReadError

__all__ = ["IMAGE_EXTENSIONS", "decode_image", "probe_image", "read_image", "write_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

_GRAY_MODES = {"1", "L"}
_DIRECT_RGB = {"RGB", "CMYK", "YCbCr", "P"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N", "RGB;16", "RGBA;16"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_bit_depth(head: bytes) -> int | None:
    """Bit depth from a PNG's IHDR chunk (byte 24), or None when ``head`` is not a PNG."""
    if len(head) >= 25 and head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
        return head[24]
    return None


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    try:
        if isinstance(source, bytes):
            head = source[:32]
            im = Image.open(io.BytesIO(source))
        else:
            with open(source, "rb") as fh:
                head = fh.read(32)
            im = Image.open(source)
    except FileNotFoundError as exc:
        raise ImageReadError(name, "file not found") from exc
    except IsADirectoryError as exc:
        raise ImageReadError(name, "is a directory, not an image file") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(name, "not an image file (no decoder recognises it)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(name, f"cannot open image ({exc})") from exc
    depth = _png_bit_depth(head)
    if depth == 16 or im.mode in _WIDE_MODES:
        im.close()
        detail = "16-bit PNG" if depth == 16 else f"mode {im.mode}"
        raise ImageReadError(name, f"{detail}: only 8-bit images are supported (convert to 8-bit first)")
    return im


def probe_image(path: str | Path) -> tuple[int, int]:
    """Check a file's header without decoding the pixels; returns ``(height, width)``.

    Raises ImageReadError for a missing, non-image or unsupported (16-bit) file. Truncated pixel
    data is only found by :func:`read_image`.
    """
    im = _open(path, str(path))
    with im:
        w, h = im.size
    return h, w


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, EOFError) as exc:
        raise ImageReadError(name, f"corrupt or truncated image data ({exc})") from exc
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            raise ImageReadError(
                name, f"{mode} image with transparent pixels: alpha is refused unless fully opaque"
            )
        im = im.convert("RGB")
    elif mode in _GRAY_MODES:
        im = im.convert("L").convert("RGB")
    elif mode in _DIRECT_RGB:
        im = im.convert("RGB")
    else:
        raise ImageReadError(name, f"unsupported image mode {mode}")
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - guarded by the conversions above
        raise ImageReadError(name, f"decoded to shape {arr.shape}, expected (H, W, 3)")
    return np.ascontiguousarray(arr)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8`` RGB of shape ``(H, W, 3)`` (policy in the module docstring).

    Raises:
        ImageReadError: the file is missing, not an image, corrupt/truncated, 16-bit, or has
            transparent pixels. The message starts with the path.
    """
    name = str(path)
    with _open(path, name) as im:
        return _to_rgb(im, name)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) like :func:`read_image`; ``name`` is used in errors."""
    with _open(data, name) as im:
        return _to_rgb(im, name)


def encode_png(img: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a ``uint8`` ``(H, W, 3)`` array."""
    buf = io.BytesIO()
    Image.fromarray(_check_uint8_rgb(img, "img")).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _check_uint8_rgb(img: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise TypeError(
            f"{what} must be a uint8 numpy array, got {getattr(img, 'dtype', type(img).__name__)}"
        )
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{what} must have shape (H, W, 3), got {img.shape}")
    return np.ascontiguousarray(img)


def write_image(path: str | Path, img: np.ndarray, *, compress_level: int = 3) -> None:
    """Write a ``uint8`` ``(H, W, 3)`` RGB array; the format follows the extension (PNG by default).

    Parent folders are created. ``compress_level`` applies to PNG (BasicSR uses 3 for sub-images).
    """
    arr = _check_uint8_rgb(img, f"image for {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"compress_level": compress_level} if path.suffix.lower() in ("", ".png") else {}
    fmt = "PNG" if path.suffix == "" else None
    Image.fromarray(arr).save(path, format=fmt, **kwargs)
