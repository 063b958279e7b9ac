"""JPEG compression of ``(B, 3, H, W)`` batches: a torch implementation (the default) and Pillow's libjpeg.

The torch path (:func:`jpeg_torch`) is baseline JPEG without the entropy coder, which is lossless
and so does not change the decoded image: RGB -> YCbCr (JFIF, full range), 4:2:0 chroma subsampling
by 2x2 means, 8x8 block DCT (orthonormal DCT-II, the JPEG FDCT), quantisation with the ITU T.81
Annex K tables scaled by libjpeg's quality rule, rounding, dequantisation, inverse DCT, chroma
upsampling by libjpeg's "fancy" triangle filter (bilinear with half-pixel centres), YCbCr -> RGB.
Quality is per image and may be fractional (Real-ESRGAN draws it uniformly in [30, 95]). It runs on
the batch's device (the GPU when training there), like Real-ESRGAN's own DiffJPEG, which is why it
is the default: a per-image CPU codec would move every batch to the host and back. It differs from
libjpeg only by the integer DCT and by rounding the YCbCr planes to 8 bits (which libjpeg does and
we do not); ``tests/test_degradations.py`` checks it against Pillow.

:func:`jpeg_pillow` encodes and decodes each image with Pillow (libjpeg, integer quality, 4:2:0),
the exact codec of real files, at the cost of a host round trip per batch (``jpeg.backend: pillow``).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4


def quality_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's ``jpeg_quality_scaling`` + baseline clamp: ``(B,)`` qualities in [1, 100] ->
    luma and chroma tables, each ``(B, 8, 8)`` float32 with integer values in [1, 255]."""
    q = quality.float().clamp(1, 100)
    s = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q).view(-1, 1, 1)
    out = []
    for table in (LUMA_TABLE, CHROMA_TABLE):
        t = torch.tensor(table, dtype=torch.float32, device=quality.device)
        out.append(torch.floor((t * s + 50.0) / 100.0).clamp(1, 255))
    return out[0], out[1]


def dct_matrix(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix ``D (8, 8)``: coefficients of a block X are ``D X D^T``."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n.view(1, -1) + 1) * n.view(-1, 1) * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


_RGB2YCC = ((0.299, 0.587, 0.114), (-0.168735892, -0.331264108, 0.5), (0.5, -0.418687589, -0.081312411))
_YCC2RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136286, -0.714136286), (1.0, 1.772, 0.0))


def _mix(img: torch.Tensor, matrix: tuple[tuple[float, ...], ...]) -> torch.Tensor:
    m = torch.tensor(matrix, dtype=img.dtype, device=img.device)
    return torch.einsum("ij,bjhw->bihw", m, img)


def _dct2_matrix(d: torch.Tensor) -> torch.Tensor:
    """``(64, 64)``: the 2-D DCT of a row-major flattened 8x8 block is ``block.flatten() @ M`` (M = kron(D, D)^T)."""
    return torch.kron(d, d).T.contiguous()


def _blocks_quantised(plane: torch.Tensor, table: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Integer-valued quantised DCT coefficients of a ``(B, H, W)`` level-shifted plane (H, W multiples
    of 8): ``(B, H/8, W/8, 8, 8)``. One GEMM with the 64x64 2-D DCT matrix (``D X D^T`` per block)."""
    blocks = rearrange(plane, "b (h p) (w q) -> b h w (p q)", p=8, q=8)
    coef = rearrange(blocks @ _dct2_matrix(d), "b h w (p q) -> b h w p q", p=8)
    return torch.round(coef / table[:, None, None])


def _unblock(q: torch.Tensor, table: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    coef = rearrange(q * table[:, None, None], "b h w p q -> b h w (p q)")
    blocks = coef @ _dct2_matrix(d).T  # the DCT matrix is orthogonal: its inverse is its transpose
    return rearrange(blocks, "b h w (p q) -> b (h p) (w q)", p=8)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def _encode(img: torch.Tensor, quality: torch.Tensor) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    x = _pad_to(img.float().clamp(0, 1) * 255.0, 16)
    ycc = _mix(x, _RGB2YCC)  # Y in [0, 255]; Cb, Cr centred on 0 (JFIF adds 128, the level shift removes it)
    chroma = F.avg_pool2d(ycc[:, 1:], 2)
    lt, ct = quality_tables(quality.to(img.device))
    d = dct_matrix(img.device)
    planes = [_blocks_quantised(ycc[:, 0] - 128.0, lt, d)]
    planes += [_blocks_quantised(chroma[:, i], ct, d) for i in range(2)]
    return planes, (lt, ct)


def quantised_coefficients(img: torch.Tensor, quality: torch.Tensor) -> list[torch.Tensor]:
    """The quantised DCT coefficients the torch codec keeps: [Y, Cb, Cr], each ``(B, h, w, 8, 8)``.

    Their non-zero count is what the entropy coder spends most bits on (a file-size proxy).
    """
    return _encode(img, quality)[0]


def per_image(value: torch.Tensor | float, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """One number or a ``(B,)`` tensor as a ``(B,)`` float32 tensor on ``device``."""
    t = torch.as_tensor(value, dtype=torch.float32).flatten().to(device)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"expected one value or {batch} (one per image), got {t.numel()}")
    return t


def jpeg_torch(img: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    """JPEG-compress and decode ``(B, 3, H, W)`` float images in [0, 1] at per-image ``quality`` ``(B,)``
    (or one number). Returns ``(B, 3, H, W)`` float32 in [0, 1] on img's device (see the module docstring)."""
    b, _, h, w = img.shape
    (qy, qcb, qcr), (lt, ct) = _encode(img, per_image(quality, b, img.device))
    d = dct_matrix(img.device)
    y = _unblock(qy, lt, d) + 128.0
    chroma = torch.stack([_unblock(qcb, ct, d), _unblock(qcr, ct, d)], dim=1)  # centred on 0
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    rgb = _mix(torch.cat([y.unsqueeze(1), chroma], dim=1), _YCC2RGB)[..., :h, :w]
    return (rgb / 255.0).clamp(0, 1)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _pillow_bytes(arr: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    return buf.getvalue()


def jpeg_pillow(img: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    """Like :func:`jpeg_torch` through Pillow's libjpeg (quality rounded to an integer, 4:2:0); the
    images are rounded to 8 bits first. Returns float32 on img's device."""
    from PIL import Image

    q = per_image(quality, img.shape[0])
    arr = _to_uint8(img)
    out = np.empty_like(arr)
    for i in range(arr.shape[0]):
        data = _pillow_bytes(arr[i], round(float(q[i])))
        out[i] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(out).to(img.device).permute(0, 3, 1, 2).float() / 255.0


def jpeg_size_pillow(img: torch.Tensor, quality: int) -> list[int]:
    """Byte sizes of Pillow's JPEG files of each ``(B, 3, H, W)`` image at integer ``quality``."""
    return [len(_pillow_bytes(a, quality)) for a in _to_uint8(img)]
