"""Evaluation dataset: full LR/HR image pairs.

LR comes from a provided LR folder (``lr_mode="folder"``) or is made with MATLAB bicubic
(``"bicubic"``) after a **modcrop of the HR to a multiple of the scale** (top-left kept; the HAT
convention: x2 mod 2, x3 mod 3, x4 mod 4). With a provided LR folder the HR is cropped top-left to
``LR * scale`` (BasicSR's test-phase crop); an HR smaller than that, or larger by a whole LR pixel
or more, is a size mismatch and raises DataError naming both files. LR made here is rounded to
uint8, as a saved LR PNG would be.

``max_hr_side`` (optional) centre-crops the HR to at most that side before the modcrop; the
sample set uses it to keep CPU validation fast.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from sr_data.errors import DataError, ImageReadError
from sr_data.stores import ImageStore
from sr_data.transforms import bicubic_downscale_uint8, modcrop, to_tensor

__all__ = ["PairedEvalDataset", "centre_crop"]


def centre_crop(img: np.ndarray, max_side: int) -> np.ndarray:
    """Centre crop ``(H, W, ...)`` to at most ``max_side`` on each side."""
    h, w = img.shape[:2]
    th, tw = min(h, max_side), min(w, max_side)
    top, left = (h - th) // 2, (w - tw) // 2
    return img[top : top + th, left : left + tw]


class PairedEvalDataset(Dataset):
    """Items ``{"lr": float32 (3, h, w), "hr": float32 (3, h*s, w*s), "name": str}`` in [0, 1]."""

    def __init__(
        self,
        hr: ImageStore,
        lr: ImageStore | None,
        *,
        scale: int,
        max_hr_side: int | None = None,
        on_bad_image: str = "error",
        pre_skipped: list[tuple[str, str]] | None = None,
    ) -> None:
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        self.scale = int(scale)
        self.hr_store, self.lr_store = hr, lr
        self.max_hr_side = max_hr_side
        self.on_bad_image = on_bad_image
        lr_index = lr.index_of() if lr is not None else None
        skipped = list(pre_skipped or [])
        self.items: list[tuple[int, int | None]] = []
        for i, name in enumerate(hr.names):
            try:
                j = self._check(i, name, lr_index)
            except (ImageReadError, DataError) as exc:
                if on_bad_image == "error":
                    raise
                skipped.append((hr.describe(i), str(exc)))
                continue
            self.items.append((i, j))
        if skipped:
            first = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
            warnings.warn(
                f"evaluation set {hr.location}: skipped {len(skipped)} bad image(s): {first}", stacklevel=2
            )
        self.skipped = skipped
        if not self.items:
            raise DataError(f"{hr.location}: no usable evaluation images (skipped {len(skipped)})")

    def _check(self, i: int, name: str, lr_index: dict[str, int] | None) -> int | None:
        s = self.scale
        h, w = self.hr_store.shape(i)
        if lr_index is None:
            if h < s or w < s:
                raise DataError(f"{self.hr_store.describe(i)}: HR {h}x{w} is smaller than the scale {s}")
            return None
        assert self.lr_store is not None
        if name not in lr_index:
            raise DataError(
                f"{self.hr_store.describe(i)}: no LR image named {name!r} in {self.lr_store.location}"
            )
        j = lr_index[name]
        lh, lw = self.lr_store.shape(j)
        self._check_sizes((lh, lw), (h, w), i, j)
        return j

    def _check_sizes(self, lr_hw: tuple[int, int], hr_hw: tuple[int, int], i: int, j: int) -> None:
        s = self.scale
        ok = all(lr_len * s <= hr_len < (lr_len + 1) * s for lr_len, hr_len in zip(lr_hw, hr_hw))
        if not ok:
            assert self.lr_store is not None
            raise DataError(
                f"{self.lr_store.describe(j)}: LR size {lr_hw[0]}x{lr_hw[1]} times {s} does not match "
                f"HR {self.hr_store.describe(i)} size {hr_hw[0]}x{hr_hw[1]}"
            )

    def __len__(self) -> int:
        return len(self.items)

    def load_pair(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(lr, hr)`` arrays of item ``k``."""
        s = self.scale
        i, j = self.items[k]
        hr = self.hr_store.read(i)
        if j is None:
            if self.max_hr_side is not None:
                hr = centre_crop(hr, self.max_hr_side)
            hr = np.ascontiguousarray(modcrop(hr, s))
            return bicubic_downscale_uint8(hr, s), hr
        assert self.lr_store is not None
        lr = self.lr_store.read(j)
        self._check_sizes(lr.shape[:2], hr.shape[:2], i, j)
        hr = np.ascontiguousarray(hr[: lr.shape[0] * s, : lr.shape[1] * s])
        return lr, hr

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        lr, hr = self.load_pair(index)
        return {"lr": to_tensor(lr), "hr": to_tensor(hr), "name": self.hr_store.names[self.items[index][0]]}
