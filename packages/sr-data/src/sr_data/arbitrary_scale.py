"""Continuous-scale data (LIIF/LTE, used by ESC+LTE): training patches at a random scale with
sampled HR coordinates, and evaluation pairs at any float scale.

Training (:class:`ContinuousScaleDataset`, LTE's ``sr-implicit-downsampled`` wrapper), per item:

1. a scale ``s ~ U(scale_min, scale_max)`` (LTE: [1, 4]);
2. a random square HR crop of side ``round(patch_size * s)`` (images smaller than that are padded
   bottom/right symmetrically, see :func:`sr_data.transforms.pad_to`);
3. LR = the crop resized to ``patch_size x patch_size`` by **MATLAB bicubic** (our
   :func:`sr_data.bicubic.imresize`; LTE's code uses PIL's bicubic, ``lr_mode="pil"``), rounded to
   uint8 as every LR in this project;
4. the same random hflip / vflip / transpose on LR and HR (p = 0.5 each);
5. ``sample_q`` HR pixels drawn without replacement (LTE: 2304 = 48^2); their pixel-centre
   coordinates in [-1, 1] (row, column; LIIF's ``make_coord``), their RGB values, and the cell
   ``(2 / H_hr, 2 / W_hr)``.

Items: ``{"lr": float32 (3, p, p), "coord": float32 (Q, 2), "cell": float32 (Q, 2),
"gt": float32 (Q, 3), "scale": float32 (), "name": str}``; values in [0, 1]. The scale is drawn per
item, as in LTE's code (every item of a batch has the same LR size and Q, so they collate).
Randomness follows :mod:`sr_data.train`: item ``i`` of epoch ``e`` uses
``default_rng((seed, e, i))``.

Evaluation (:class:`ArbitraryScaleEvalDataset`, LTE's protocol for scales without an LR folder):
``h = floor(H / s + 1e-9)``, ``w = floor(W / s + 1e-9)``; HR cropped top-left to
``round(h s) x round(w s)``; LR = MATLAB bicubic resize of that crop to ``h x w``, rounded to uint8.
For integer scales this is exactly modcrop + ``imresize(1/s)``. :func:`build_arbitrary_eval_dataset`
uses a provided LR folder (DIV2K's X2-X4) for integer scales when it exists, as the paper did.
The score is RGB PSNR after removing ``paper_border(s)`` pixels per side: see
``sr_eval.arbitrary_scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sr_data.bicubic import imresize
from sr_data.errors import DataError
from sr_data.stores import ImageStore
from sr_data.transforms import dihedral, random_dihedral_flags, random_square_patch, to_tensor

__all__ = [
    "ArbitraryScaleEvalDataset",
    "ContinuousScaleConfig",
    "ContinuousScaleDataset",
    "arbitrary_scale_pair",
    "build_arbitrary_eval_dataset",
    "build_continuous_train_dataset",
    "make_coord",
    "paper_border",
]


def make_coord(h: int, w: int) -> np.ndarray:
    """Pixel-centre coordinates of an (h, w) grid in [-1, 1], row first: float32 (h*w, 2)
    (LIIF's ``make_coord``; equal to ``sr_layers.lte.make_coord``)."""
    ys = -1 + (2 * np.arange(h, dtype=np.float64) + 1) / h
    xs = -1 + (2 * np.arange(w, dtype=np.float64) + 1) / w
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1)
    return grid.reshape(-1, 2).astype(np.float32)


def paper_border(scale: float) -> int:
    """Pixels removed per side before the PSNR of the arbitrary-scale protocol: ``scale + 6``
    (LIIF/LTE's DIV2K rule, ESC section 4.3). For a non-integer scale (which the paper does not
    evaluate) we use ``ceil(scale) + 6``."""
    return math.ceil(float(scale) - 1e-9) + 6


def _resize_uint8(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    if mode == "pil":
        from PIL import Image

        im = Image.fromarray(np.ascontiguousarray(img)).resize((size[1], size[0]), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8)
    out = imresize(img.astype(np.float64) / 255.0, size=size)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ContinuousScaleConfig:
    """Settings of a :class:`ContinuousScaleDataset` (see the module docstring).

    ``patch_size``: LR side (ESC+LTE: 64; LTE with RDN: 48). ``sample_q``: HR pixels per item
    (2304); must not exceed ``patch_size^2`` (the HR pixels at scale 1). ``lr_mode``: ``"bicubic"``
    (MATLAB, default) or ``"pil"`` (LTE's code).
    """

    patch_size: int = 64
    scale_min: float = 1.0
    scale_max: float = 4.0
    sample_q: int = 2304
    lr_mode: str = "bicubic"
    augment: bool = True
    seed: int = 0
    repeat: int = 1

    def __post_init__(self) -> None:
        if int(self.patch_size) != self.patch_size or self.patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer (LR pixels), got {self.patch_size!r}")
        if not 1.0 <= self.scale_min <= self.scale_max:
            raise ValueError(
                f"need 1 <= scale_min <= scale_max, got scale_min={self.scale_min!r}, scale_max={self.scale_max!r}"
            )
        if not 1 <= self.sample_q <= self.patch_size**2:
            raise ValueError(
                f"sample_q must be in [1, patch_size^2 = {self.patch_size**2}] (the HR pixels of a patch at "
                f"scale 1), got {self.sample_q!r}"
            )
        if self.lr_mode not in ("bicubic", "pil"):
            raise ValueError(f"lr_mode must be 'bicubic' or 'pil', got {self.lr_mode!r}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat!r}")


class ContinuousScaleDataset(Dataset):
    """LTE's training items from the HR images of ``store`` (indices ``image_indices``); see the
    module docstring. ``len = len(image_indices) * repeat``."""

    def __init__(self, store: ImageStore, config: ContinuousScaleConfig,
                 image_indices: list[int] | None = None) -> None:
        self.hr_store = store
        self.cfg = config
        self.images = list(range(len(store))) if image_indices is None else list(image_indices)
        if not self.images:
            raise DataError(f"{store.location}: no training images")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws ``__getitem__`` makes."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images) * self.cfg.repeat

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch."""
        return np.random.default_rng((self.cfg.seed, self.epoch, index))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        cfg = self.cfg
        rng = self.rng_for(index)
        hi = self.images[index % len(self.images)]
        s = float(rng.uniform(cfg.scale_min, cfg.scale_max))
        side = round(cfg.patch_size * s)
        hr = random_square_patch(self.hr_store, hi, side, rng)
        lr = _resize_uint8(hr, (cfg.patch_size, cfg.patch_size), cfg.lr_mode)
        if cfg.augment:
            flags = random_dihedral_flags(rng)
            lr, hr = dihedral(lr, flags), dihedral(hr, flags)
        hr = np.ascontiguousarray(hr)
        n = side * side
        pick = rng.choice(n, size=cfg.sample_q, replace=False)
        coord = make_coord(side, side)[pick]
        gt = (hr.reshape(n, 3)[pick].astype(np.float32)) / np.float32(255.0)
        cell = np.full((cfg.sample_q, 2), 2.0 / side, dtype=np.float32)
        return {
            "lr": to_tensor(np.ascontiguousarray(lr)),
            "coord": torch.from_numpy(coord),
            "cell": torch.from_numpy(cell),
            "gt": torch.from_numpy(np.ascontiguousarray(gt)),
            "scale": torch.tensor(side / cfg.patch_size, dtype=torch.float32),
            "name": self.hr_store.names[hi],
        }


def build_continuous_train_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    patch_size: int = 64,
    scale_min: float = 1.0,
    scale_max: float = 4.0,
    sample_q: int = 2304,
    lr_mode: str = "bicubic",
    augment: bool = True,
    seed: int = 0,
    repeat: int | None = None,
    on_bad_image: str = "error",
    packed: bool | None = None,
) -> ContinuousScaleDataset:
    """The continuous-scale training set of a collection (names as :func:`sr_data.build_train_dataset`:
    ``sample, div2k, df2k, ..., folder``). ``repeat`` defaults to 100 for ``sample`` and 1 otherwise
    (LTE's DIV2K recipe: 20). Bad files, packed copies and folders are handled as there."""
    from sr_data.datasets import build_train_dataset

    base = build_train_dataset(
        name, root=root, scale=1, patch_size=1, lr_source="bicubic", on_bad_image=on_bad_image,
        packed=packed, cache_lr=False, repeat=1,
    )
    if repeat is None:
        repeat = 100 if name.lower() == "sample" else 1
    cfg = ContinuousScaleConfig(
        patch_size=patch_size, scale_min=scale_min, scale_max=scale_max, sample_q=sample_q,
        lr_mode=lr_mode, augment=augment, seed=seed, repeat=repeat,
    )
    return ContinuousScaleDataset(base.hr_store, cfg, [hi for hi, _ in base.items])


def arbitrary_scale_pair(hr: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """LTE's evaluation pair of a uint8 (H, W, 3) HR at a float ``scale`` >= 1 (module docstring):
    returns ``(lr uint8 (h, w, 3), hr uint8 (round(h s), round(w s), 3))``."""
    s = float(scale)
    if not math.isfinite(s) or s < 1:
        raise ValueError(f"scale must be a finite float >= 1, got {scale!r}")
    h = math.floor(hr.shape[0] / s + 1e-9)
    w = math.floor(hr.shape[1] / s + 1e-9)
    if h < 1 or w < 1:
        raise DataError(f"HR {hr.shape[0]}x{hr.shape[1]} is smaller than the scale {s}")
    crop = np.ascontiguousarray(hr[: round(h * s), : round(w * s)])
    return _resize_uint8(crop, (h, w), "bicubic"), crop


class ArbitraryScaleEvalDataset(Dataset):
    """Full-image evaluation pairs at a float ``scale`` made from HR images (LTE's protocol).

    Items ``{"lr": float32 (3, h, w), "hr": float32 (3, round(h s), round(w s)), "name": str,
    "scale": float}``; ``max_hr_side`` centre-crops each HR first (as the sample set does).
    """

    def __init__(self, store: ImageStore, scale: float, *, image_indices: list[int] | None = None,
                 max_hr_side: int | None = None) -> None:
        if not math.isfinite(float(scale)) or float(scale) < 1:
            raise ValueError(f"scale must be a finite float >= 1, got {scale!r}")
        self.hr_store = store
        self.scale = float(scale)
        self.images = list(range(len(store))) if image_indices is None else list(image_indices)
        self.max_hr_side = max_hr_side

    def __len__(self) -> int:
        return len(self.images)

    def load_pair(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(lr, hr)`` of item ``k``."""
        from sr_data.evaluation import centre_crop

        hr = self.hr_store.read(self.images[k])
        if self.max_hr_side is not None:
            hr = centre_crop(hr, self.max_hr_side)
        try:
            return arbitrary_scale_pair(hr, self.scale)
        except DataError as exc:
            raise DataError(f"{self.hr_store.describe(self.images[k])}: {exc}") from exc

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str | float]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        lr, hr = self.load_pair(index)
        return {"lr": to_tensor(lr), "hr": to_tensor(hr), "name": self.hr_store.names[self.images[index]],
                "scale": self.scale}


def build_arbitrary_eval_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    scale: float,
    lr_source: str = "auto",
    max_hr_side: int | None = None,
    on_bad_image: str = "error",
    packed: bool | None = None,
) -> Dataset:
    """Evaluation set at a float ``scale`` (names as :func:`sr_data.build_eval_dataset`).

    An integer scale with ``lr_source="auto"``/``"folder"`` is :func:`sr_data.build_eval_dataset`
    (the provided LR folder when it exists, e.g. DIV2K's X2-X4, else modcrop + bicubic); any other
    scale, or ``lr_source="bicubic"``, builds :class:`ArbitraryScaleEvalDataset` from the HR images.
    """
    from sr_data.datasets import build_eval_dataset

    s = float(scale)
    if not math.isfinite(s) or s < 1:
        raise ValueError(f"scale must be a finite float >= 1, got {scale!r}")
    if s == int(s) and lr_source != "bicubic":
        return build_eval_dataset(name, root=root, scale=int(s), lr_source=lr_source,
                                  max_hr_side=max_hr_side, on_bad_image=on_bad_image, packed=packed)
    if lr_source == "folder":
        raise DataError(f"{name}: no LR folder exists for the non-integer scale {s}; use lr_source='bicubic'")
    base = build_eval_dataset(name, root=root, scale=1, lr_source="bicubic", max_hr_side=max_hr_side,
                              on_bad_image=on_bad_image, packed=packed)
    return ArbitraryScaleEvalDataset(base.hr_store, s, image_indices=[i for i, _ in base.items],
                                     max_hr_side=base.max_hr_side)
