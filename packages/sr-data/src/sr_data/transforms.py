"""Pair transforms on numpy HWC arrays: modcrop, padding, aligned random crops, dihedral augmentation.

All functions keep an LR/HR pair aligned: HR pixel block ``[y*s:(y+1)*s, x*s:(x+1)*s]`` always
covers LR pixel ``(y, x)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from sr_data.bicubic import imresize

if TYPE_CHECKING:
    from sr_data.stores import ImageStore

__all__ = [
    "augment_pair",
    "bicubic_downscale_uint8",
    "dihedral",
    "modcrop",
    "pad_to",
    "paired_random_crop",
    "pil_bicubic_downscale_uint8",
    "random_dihedral_flags",
    "random_square_patch",
    "to_tensor",
]


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop ``(H, W, ...)`` from the bottom/right to multiples of ``scale`` (BasicSR/MATLAB modcrop)."""
    if scale < 1:
        raise ValueError(f"modcrop: scale must be >= 1, got {scale}")
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def pad_to(img: np.ndarray, min_h: int, min_w: int) -> np.ndarray:
    """Pad ``(H, W, C)`` on the bottom/right up to at least ``(min_h, min_w)``.

    Symmetric padding (mirror about the image edge, edge pixel repeated), repeated as often as
    needed. Mirroring about the edge is scale-consistent: padding an LR image and its x``s`` HR
    image this way keeps them aligned, which reflect-101 padding would not.
    """
    h, w = img.shape[:2]
    ph, pw = max(0, min_h - h), max(0, min_w - w)
    if ph == 0 and pw == 0:
        return img
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, widths, mode="symmetric")


def random_square_patch(store: ImageStore, index: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly placed ``side x side`` crop of image ``index`` of ``store`` -> uint8 ``(side, side, C)``.

    Reads only the region when the image is large enough (cheap for packed raw stores); a smaller
    image is read whole and padded with :func:`pad_to` first. Draws the top, then the left offset
    from ``rng``.
    """
    h, w = store.shape(index)
    if h >= side and w >= side:
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        patch = store.read_region(index, top, left, side, side)
        if patch.shape[:2] == (side, side):
            return patch
    img = pad_to(store.read(index), side, side)
    top = int(rng.integers(0, img.shape[0] - side + 1))
    left = int(rng.integers(0, img.shape[1] - side + 1))
    return np.ascontiguousarray(img[top : top + side, left : left + side])


def paired_random_crop(
    lr: np.ndarray, hr: np.ndarray, lr_patch: int, scale: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Crop an aligned random ``lr_patch`` LR square and the matching ``lr_patch*scale`` HR square.

    Returns ``(lr_crop, hr_crop, (top, left))`` with ``(top, left)`` in LR pixels. Requires
    ``hr.shape[:2] == (lr.shape[0]*scale, lr.shape[1]*scale)`` and an LR at least ``lr_patch``.
    """
    h, w = lr.shape[:2]
    if hr.shape[0] != h * scale or hr.shape[1] != w * scale:
        raise ValueError(f"paired_random_crop: HR {hr.shape[:2]} is not LR {lr.shape[:2]} x{scale}")
    if h < lr_patch or w < lr_patch:
        raise ValueError(f"paired_random_crop: LR {lr.shape[:2]} smaller than the patch {lr_patch}")
    top = int(rng.integers(0, h - lr_patch + 1))
    left = int(rng.integers(0, w - lr_patch + 1))
    hp = lr_patch * scale
    return (
        lr[top : top + lr_patch, left : left + lr_patch],
        hr[top * scale : top * scale + hp, left * scale : left * scale + hp],
        (top, left),
    )


def random_dihedral_flags(
    rng: np.random.Generator, *, hflip: bool = True, rot: bool = True
) -> tuple[bool, bool, bool]:
    """BasicSR's augmentation draw: hflip p=0.5; with ``rot`` also vflip and transpose, p=0.5 each."""
    h = bool(rng.random() < 0.5) if hflip else False
    v = bool(rng.random() < 0.5) if rot else False
    t = bool(rng.random() < 0.5) if rot else False
    return h, v, t


def dihedral(img: np.ndarray, flags: tuple[bool, bool, bool]) -> np.ndarray:
    """Apply (hflip, vflip, transpose), in that order, to ``(H, W, ...)``; the 8 flags give the 8 symmetries."""
    h, v, t = flags
    if h:
        img = img[:, ::-1]
    if v:
        img = img[::-1]
    if t:
        img = img.swapaxes(0, 1)
    return img


def augment_pair(
    lr: np.ndarray, hr: np.ndarray, rng: np.random.Generator, *, hflip: bool = True, rot: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The same random flip/rotation applied to both images of a pair."""
    flags = random_dihedral_flags(rng, hflip=hflip, rot=rot)
    return dihedral(lr, flags), dihedral(hr, flags)


def bicubic_downscale_uint8(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-bicubic LR of a ``uint8`` ``(H, W, 3)`` HR (whose sides are multiples of ``scale``),
    rounded to ``uint8`` once at the end, as when LR PNGs are saved."""
    lr = imresize(hr.astype(np.float64) / 255.0, scale=1.0 / scale)
    return np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)


def pil_bicubic_downscale_uint8(hr: np.ndarray, scale: int) -> np.ndarray:
    """PIL ``Image.resize(BICUBIC)`` LR (what SST's DFLIP training used via torchvision), ``uint8``."""
    from PIL import Image

    h, w = hr.shape[:2]
    im = Image.fromarray(np.ascontiguousarray(hr)).resize((w // scale, h // scale), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``uint8`` ``(H, W, 3)`` -> float32 ``(3, H, W)`` in [0, 1] (a fresh, contiguous tensor)."""
    out = np.empty((img.shape[2], img.shape[0], img.shape[1]), dtype=np.float32)
    np.divide(img.transpose(2, 0, 1), np.float32(255.0), out=out, dtype=np.float32)  # one pass
    return torch.from_numpy(out)
