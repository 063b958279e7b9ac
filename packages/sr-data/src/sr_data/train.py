"""Training dataset: random aligned LR/HR patches with the 8 flips/rotations.

Randomness. Item ``index`` in epoch ``e`` draws from ``numpy.random.default_rng((seed, e, index))``.
The patch of an index therefore does not depend on the worker that loads it, on the number of
workers, on the rank or on the order of loading: any DataLoader/DistributedSampler setup sees the
same pairs for the same ``(seed, epoch, index)``. Call :meth:`PatchDataset.set_epoch` together with
``DistributedSampler.set_epoch`` so that every epoch draws new crops (with ``persistent_workers``
the workers keep the epoch they were started with, so prefer non-persistent workers or accept
fixed crops per index; the sampler still reshuffles).

LR sources (``lr_mode``):

* ``"folder"``: read from an LR store; HR must be exactly ``LR * scale`` (else an error naming both
  files). Patches are cropped at the same place in both.
* ``"bicubic"``: MATLAB bicubic made on the fly. With ``cache_lr=False`` (default for collections)
  a random HR patch of ``patch_size * scale`` is cropped and downscaled on its own (SST's recipe);
  with ``cache_lr=True`` each image is modcropped and downscaled once per dataset object and then
  cropped like a folder pair (exact whole-image LR; used by the small sample set).
* ``"pil"``: as ``"bicubic"`` but PIL's bicubic (what SST's DFLIP training used).

LR is always rounded to uint8 before use, as a saved LR PNG would be.

Images smaller than the patch (``small``): ``"pad"`` pads bottom/right with symmetric padding
(aligned for LR and HR, see :func:`sr_data.transforms.pad_to`); ``"skip"`` drops them when the
dataset is built (counted in a warning).

Bad files (``on_bad_image``): ``"error"`` raises DataError/ImageReadError naming the file;
``"skip"`` drops files found bad when the dataset is built (header scan) and, for files whose
pixel data turn out corrupt only when decoded, loads the next index instead; each skip is reported
in a warning with a count.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from sr_data.errors import DataError, ImageReadError
from sr_data.stores import ImageStore
from sr_data.transforms import (
    augment_pair,
    bicubic_downscale_uint8,
    modcrop,
    pad_to,
    paired_random_crop,
    pil_bicubic_downscale_uint8,
    random_square_patch,
    to_tensor,
)

__all__ = ["PatchDataset", "TrainConfig"]

LR_MODES = ("folder", "bicubic", "pil")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a :class:`PatchDataset` (see the module docstring)."""

    scale: int
    patch_size: int  # LR patch side; HR patch is patch_size * scale
    lr_mode: str = "bicubic"
    cache_lr: bool = False
    augment: bool = True
    use_rot: bool = True
    small: str = "pad"
    on_bad_image: str = "error"
    seed: int = 0
    repeat: int = 1

    def __post_init__(self) -> None:
        if int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale!r}")
        if int(self.patch_size) != self.patch_size or self.patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer (LR pixels), got {self.patch_size!r}")
        if self.lr_mode not in LR_MODES:
            raise ValueError(f"lr_mode must be one of {LR_MODES}, got {self.lr_mode!r}")
        if self.small not in ("pad", "skip"):
            raise ValueError(f"small must be 'pad' or 'skip', got {self.small!r}")
        if self.on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {self.on_bad_image!r}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat!r}")


def _warn_skipped(what: str, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        first = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        warnings.warn(f"{what}: skipped {len(skipped)} bad image(s): {first}{more}", stacklevel=3)


class PatchDataset(Dataset):
    """Random aligned patches from an HR store (and an LR store for ``lr_mode="folder"``).

    Items are dicts ``{"lr": float32 (3, p, p), "hr": float32 (3, p*s, p*s), "name": str}`` in
    [0, 1]. ``len`` is ``number of usable images * repeat``; index ``i`` uses image ``i % n``.
    """

    def __init__(
        self,
        hr: ImageStore,
        lr: ImageStore | None,
        config: TrainConfig,
        *,
        pre_skipped: list[tuple[str, str]] | None = None,
    ) -> None:
        self.cfg = config
        self.hr_store = hr
        self.lr_store = lr
        self.epoch = 0
        if config.lr_mode == "folder" and lr is None:
            raise DataError(f"{hr.location}: lr_mode='folder' needs an LR folder")
        skipped = list(pre_skipped or [])
        self.items: list[tuple[int, int | None]] = []  # (hr index, lr index)
        lr_index = lr.index_of() if lr is not None and config.lr_mode == "folder" else None
        for i, name in enumerate(hr.names):
            try:
                j = self._check_pair(i, name, lr_index)
            except (ImageReadError, DataError) as exc:
                if config.on_bad_image == "error":
                    raise
                skipped.append((hr.describe(i), str(exc)))
                continue
            if j is not None and j < 0:  # too small, skipped by policy
                skipped.append(
                    (hr.describe(i), f"smaller than the patch ({config.patch_size * config.scale} HR px)")
                )
                continue
            self.items.append((i, None if lr_index is None else j))
        _warn_skipped(f"training set {hr.location}", skipped)
        self.skipped = skipped
        if not self.items:
            raise DataError(f"{hr.location}: no usable training images (skipped {len(skipped)})")
        self._lr_cache: dict[int, np.ndarray] = {}
        if config.cache_lr and config.lr_mode != "folder":
            for hi, _ in self.items:
                self._lr_cache[hi] = self._make_lr(modcrop(self._padded_hr(hi), config.scale))

    # -- construction helpers -------------------------------------------------------------
    def _check_pair(self, i: int, name: str, lr_index: dict[str, int] | None) -> int | None:
        """Validate image ``i``; returns the LR index (folder mode), None, or -1 if too small."""
        s, p = self.cfg.scale, self.cfg.patch_size
        h, w = self.hr_store.shape(i)
        j: int | None = None
        if lr_index is not None:
            assert self.lr_store is not None
            if name not in lr_index:
                raise DataError(
                    f"{self.hr_store.describe(i)}: no LR image named {name!r} in {self.lr_store.location}"
                )
            j = lr_index[name]
            lh, lw = self.lr_store.shape(j)
            if (lh * s, lw * s) != (h, w):
                raise DataError(
                    f"{self.lr_store.describe(j)}: LR size {lh}x{lw} times {s} does not match "
                    f"HR {self.hr_store.describe(i)} size {h}x{w}"
                )
        if self.cfg.small == "skip" and (h < p * s or w < p * s):
            return -1
        return j

    def _padded_hr(self, i: int) -> np.ndarray:
        s, p = self.cfg.scale, self.cfg.patch_size
        return pad_to(self.hr_store.read(i), p * s, p * s)

    def _make_lr(self, hr: np.ndarray) -> np.ndarray:
        if self.cfg.lr_mode == "pil":
            return pil_bicubic_downscale_uint8(hr, self.cfg.scale)
        return bicubic_downscale_uint8(hr, self.cfg.scale)

    # -- Dataset API -----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops/augmentations ``__getitem__`` draws (see module docstring)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items) * self.cfg.repeat

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch."""
        return np.random.default_rng((self.cfg.seed, self.epoch, index))

    def _pair(self, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        s, p = cfg.scale, cfg.patch_size
        hi, li = self.items[k]
        if cfg.lr_mode == "folder":
            assert self.lr_store is not None and li is not None
            lr_c, hr_c = self._folder_crop(hi, li, rng)
        elif hi in self._lr_cache:
            lr_full = self._lr_cache[hi]
            hr_full = modcrop(self._padded_hr(hi), s)
            lr_c, hr_c, _ = paired_random_crop(lr_full, hr_full, p, s, rng)
        else:
            hr_c = random_square_patch(self.hr_store, hi, self.cfg.patch_size * self.cfg.scale, rng)
            lr_c = self._make_lr(hr_c)
        if cfg.augment:
            lr_c, hr_c = augment_pair(lr_c, hr_c, rng, rot=cfg.use_rot)
        return lr_c, hr_c

    def _folder_crop(self, hi: int, li: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Aligned crop of a pre-made pair (the draws are the same as paired_random_crop's)."""
        s, p = self.cfg.scale, self.cfg.patch_size
        assert self.lr_store is not None
        lh, lw = self.lr_store.shape(li)
        if lh >= p and lw >= p:
            # Read only the two regions (no full decode for packed raw stores); the sizes were
            # checked when the dataset was built.
            top = int(rng.integers(0, lh - p + 1))
            left = int(rng.integers(0, lw - p + 1))
            lr_c = self.lr_store.read_region(li, top, left, p, p)
            hr_c = self.hr_store.read_region(hi, top * s, left * s, p * s, p * s)
            if lr_c.shape[:2] == (p, p) and hr_c.shape[:2] == (p * s, p * s):
                return lr_c, hr_c
        lr_full = pad_to(self.lr_store.read(li), p, p)
        hr_full = pad_to(self.hr_store.read(hi), p * s, p * s)
        if hr_full.shape[:2] != (lr_full.shape[0] * s, lr_full.shape[1] * s):
            raise DataError(
                f"{self.lr_store.describe(li)}: decoded LR size {lr_full.shape[:2]} x{s} does not match "
                f"HR {self.hr_store.describe(hi)} {hr_full.shape[:2]}"
            )
        lr_c, hr_c, _ = paired_random_crop(lr_full, hr_full, p, s, rng)
        return lr_c, hr_c

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        n = len(self.items)
        k = index % n
        for attempt in range(n):
            kk = (k + attempt) % n
            try:
                lr, hr = self._pair(kk, self.rng_for(index))
            except (ImageReadError, DataError) as exc:
                if self.cfg.on_bad_image == "error":
                    raise
                warnings.warn(f"skipped a bad image while loading: {exc}", stacklevel=2)
                continue
            name = self.hr_store.names[self.items[kk][0]]
            return {"lr": to_tensor(lr), "hr": to_tensor(hr), "name": name}
        raise DataError(f"{self.hr_store.location}: every image failed to load")
