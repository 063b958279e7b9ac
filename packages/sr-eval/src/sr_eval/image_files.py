"""Image files as practitioners have them, for ``sr-upscale``: alpha, grayscale, 16 bits, quality.

Unlike sr-data's dataset policy (8-bit RGB only, transparency refused), ``sr-upscale`` takes what
Real-ESRGAN and chaiNNer users feed it and writes back the same kind of image:

* **RGBA / LA / palettes with transparency**: the colour is upscaled by the model and the alpha
  channel separately (``--alpha model``: the model on the alpha replicated to three channels, its
  luma taken, Real-ESRGAN's default; ``--alpha bicubic``: bicubic resize). A fully opaque alpha is
  not computed: the output keeps an alpha channel of all opaque.
* **Grayscale** (``L``, ``1``, ``I;16``, gray+alpha) runs through the model as three equal channels
  and is saved as grayscale (ITU-R BT.601 luma of the output, as Pillow's ``convert("L")``).
* **16 bits per channel** (PNG and TIFF) is read at full precision and, for PNG/TIFF outputs,
  written as 16 bits (``round(x * 65535)``); 8-bit formats get ``round(x * 255)``. Pillow cannot
  read or write 16-bit RGB, so those files go through OpenCV (``cv2.imdecode``/``imencode`` with
  ``IMREAD_UNCHANGED``), as Real-ESRGAN does.
* The EXIF orientation is applied on reading (the output is upright and carries no EXIF); an ICC
  colour profile is copied to 8-bit outputs written with Pillow.
* JPEG and WebP ``quality`` (default 95, as OpenCV's JPEG default that Real-ESRGAN uses), WebP
  ``lossless``. JPEG cannot hold transparency: an image with transparent pixels is refused for JPEG
  output (opaque alpha is dropped).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

INPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FORMAT_EXTENSIONS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tif": ".tif", "bmp": ".bmp"}
EXTENSION_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp", ".tif": "tif",
                     ".tiff": "tif", ".bmp": "bmp"}
SIXTEEN_BIT_FORMATS = ("png", "tif")
DEFAULT_QUALITY = 95
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY_MODES = {"1", "L", "I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageFileError(ValueError):
    """An image file that cannot be read or written; the message starts with the path."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says (no pixels decoded)."""

    width: int
    height: int
    mode: str
    has_alpha: bool
    gray: bool
    bits: int


@dataclass
class LoadedImage:
    """Decoded pixels: ``rgb`` float32 (H, W, 3) in [0, 1]; ``alpha`` float32 (H, W) or None."""

    rgb: np.ndarray
    alpha: np.ndarray | None  # None: no alpha channel, or a fully opaque one (see has_alpha)
    has_alpha: bool
    gray: bool
    bits: int
    icc: bytes | None = None


def _png_header(head: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None when not a PNG."""
    if len(head) >= 26 and head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
        return head[24], head[25]
    return None


def _open(path: Path) -> tuple[Image.Image, bytes]:
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
        return Image.open(path), head
    except FileNotFoundError:
        raise ImageFileError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageFileError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageFileError(f"{path}: not an image file (no decoder recognises it)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageFileError(f"{path}: cannot open image ({exc})") from None


def _tiff_bits(im: Image.Image) -> int:
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return 8
    bps = tags.get(258)
    if isinstance(bps, tuple):
        bps = bps[0] if bps else 8
    return int(bps or 8)


def _describe(im: Image.Image, head: bytes) -> ImageInfo:
    png = _png_header(head)
    mode = im.mode
    if png is not None:
        depth, ctype = png
        bits = 16 if depth == 16 else 8
        gray = ctype in (0, 4)
        has_alpha = ctype in (4, 6) or "transparency" in im.info
    else:
        bits = 16 if (im.format == "TIFF" and _tiff_bits(im) == 16) or mode.startswith("I;16") else 8
        gray = mode in _GRAY_MODES or mode in ("LA", "La")
        has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if mode == "F":
        raise ImageFileError("float (32-bit) images are not supported; convert to 8- or 16-bit first")
    w, h = im.size
    return ImageInfo(width=w, height=h, mode=mode, has_alpha=has_alpha, gray=gray, bits=bits)


def _split(arr: np.ndarray, maxval: float, info: ImageInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W[, C]) integer array -> float rgb (H, W, 3) and alpha (H, W) or None."""
    a = arr.astype(np.float32) / maxval
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2), None
    c = a.shape[2]
    if c == 1:
        return np.repeat(a, 3, axis=2), None
    if c == 2:
        return np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1]
    if c == 3:
        return a, None
    return a[:, :, :3], a[:, :, 3]


def _decode_cv2(path: Path) -> np.ndarray:
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageFileError(f"{path}: corrupt or truncated 16-bit image data")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    return np.ascontiguousarray(arr)


def load(path: str | Path) -> LoadedImage:
    """Decode an image file (policy in the module docstring); ImageFileError naming the file otherwise."""
    path = Path(path)
    im, head = _open(path)
    with im:
        try:
            info = _describe(im, head)
        except ImageFileError as exc:
            raise ImageFileError(f"{path}: {exc}") from None
        icc = im.info.get("icc_profile")
        try:
            if info.bits == 16 and not im.mode.startswith("I"):
                arr = _decode_cv2(path)  # 16-bit RGB(A) / gray+alpha: Pillow would drop to 8 bits
                maxval = 65535.0
            else:
                im.load()
                im = ImageOps.exif_transpose(im)
                if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                    arr = np.asarray(im).astype(np.uint32)
                    maxval = 65535.0
                    arr = np.clip(arr, 0, 65535)
                elif im.mode == "P":
                    im = im.convert("RGBA" if info.has_alpha else "RGB")
                    arr, maxval = np.asarray(im), 255.0
                elif im.mode == "1":
                    arr, maxval = np.asarray(im.convert("L")), 255.0
                elif im.mode in ("L", "LA", "RGB", "RGBA"):
                    arr, maxval = np.asarray(im), 255.0
                elif im.mode in ("La", "RGBa", "PA"):
                    arr, maxval = np.asarray(im.convert("RGBA" if im.mode != "La" else "LA")), 255.0
                else:  # CMYK, YCbCr, ...
                    arr, maxval = np.asarray(im.convert("RGB")), 255.0
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageFileError(f"{path}: corrupt or truncated image data ({exc})") from None
    rgb, alpha = _split(arr, maxval, info)
    has_alpha = alpha is not None
    if alpha is not None and float(alpha.min()) >= 1.0:
        alpha = None  # fully opaque: nothing to compute, the output is written opaque
    gray = info.gray or (arr.ndim == 2)
    return LoadedImage(rgb=np.ascontiguousarray(rgb), alpha=alpha, has_alpha=has_alpha, gray=gray,
                       bits=info.bits, icc=icc)


def to_luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float -> (H, W) BT.601 luma (Pillow's convert('L') weights)."""
    return rgb @ _LUMA


def _quantize(x: np.ndarray, bits: int) -> np.ndarray:
    maxval = 65535.0 if bits == 16 else 255.0
    out = np.clip(x, 0.0, 1.0) * maxval
    np.rint(out, out=out)
    return out.astype(np.uint16 if bits == 16 else np.uint8)


def encode(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    *,
    fmt: str,
    has_alpha: bool = False,
    gray: bool = False,
    bits: int = 8,
    quality: int = DEFAULT_QUALITY,
    lossless: bool = False,
    icc: bytes | None = None,
    name: str = "image",
) -> bytes:
    """Encoded bytes of an output image.

    rgb: float32 (H, W, 3) in [0, 1]; alpha: float32 (H, W) or None (then opaque when
    ``has_alpha``). ``fmt``: png | jpg | webp | tif | bmp. 16 bits only for png/tif (others 8).
    """
    if fmt not in FORMAT_EXTENSIONS:
        raise ImageFileError(f"{name}: unknown output format {fmt!r}")
    bits = bits if fmt in SIXTEEN_BIT_FORMATS else 8
    if fmt in ("jpg", "bmp") and alpha is not None:
        raise ImageFileError(f"{name}: has transparent pixels, which {fmt.upper()} cannot store; "
                             "use --format png or webp")
    keep_alpha = has_alpha and fmt not in ("jpg", "bmp")
    if keep_alpha and alpha is None:
        alpha = np.ones(rgb.shape[:2], dtype=np.float32)
    color = to_luma(rgb) if gray else rgb
    if bits == 16:
        return _encode_cv2(color, alpha if keep_alpha else None, fmt, name)
    c8 = _quantize(color, 8)
    if keep_alpha:
        a8 = _quantize(alpha, 8)
        arr = np.dstack([c8, a8])
        mode = "LA" if gray else "RGBA"
    else:
        arr, mode = c8, ("L" if gray else "RGB")
    im = Image.fromarray(np.ascontiguousarray(arr), mode=mode)
    if fmt == "webp" and mode == "LA":
        im = im.convert("RGBA")
    if fmt == "jpg" and mode == "LA":
        im = im.convert("L")
    kwargs: dict = {}
    if icc:
        kwargs["icc_profile"] = icc
    if fmt == "jpg":
        kwargs["quality"] = int(quality)
    elif fmt == "webp":
        kwargs.update(quality=int(quality), lossless=bool(lossless), exact=True)
    elif fmt == "png":
        kwargs["compress_level"] = 6
    buf = io.BytesIO()
    im.save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "tif": "TIFF", "bmp": "BMP"}[fmt], **kwargs)
    return buf.getvalue()


def _encode_cv2(color: np.ndarray, alpha: np.ndarray | None, fmt: str, name: str) -> bytes:
    import cv2

    c16 = _quantize(color, 16)
    if alpha is not None:
        a16 = _quantize(alpha, 16)
        base = np.repeat(c16[:, :, None], 3, axis=2) if c16.ndim == 2 else c16
        arr = np.dstack([base[:, :, ::-1], a16])  # BGRA (16-bit gray+alpha is written as RGBA)
    else:
        arr = c16 if c16.ndim == 2 else c16[:, :, ::-1]
    ok, buf = cv2.imencode(FORMAT_EXTENSIONS[fmt], np.ascontiguousarray(arr))
    if not ok:
        raise ImageFileError(f"{name}: OpenCV could not encode a 16-bit {fmt.upper()}")
    return buf.tobytes()
