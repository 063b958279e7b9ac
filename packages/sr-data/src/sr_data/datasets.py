"""Named training and evaluation collections, their folder layouts, and the two builders.

Root folder (``root=None``): ``$SR_DATA_ROOT`` if set, else ``./datasets``. Layout below the root
(``{s}`` is the scale; LR names follow BasicSR/EDSR, e.g. ``X4/0001x4.png``):

==============  ===============================  ==========================================  =========
collection      HR folder                        LR folder (``lr_source="folder"``)          LR name
==============  ===============================  ==========================================  =========
div2k           DIV2K/DIV2K_train_HR             DIV2K/DIV2K_train_LR_bicubic/X{s}           {}x{s}
flickr2k        Flickr2K/Flickr2K_HR             Flickr2K/Flickr2K_LR_bicubic/X{s}           {}x{s}
lsdir           LSDIR/HR/train (recursive)       LSDIR/X{s}/train (same sub-folders)         {}x{s}
diverseg        DiverSeg-IP/HR (recursive)       DiverSeg-IP/X{s} (same sub-folders)         {}x{s}
df2k            div2k + flickr2k
dflip           div2k + flickr2k + lsdir + diverseg
div2k-val       DIV2K/DIV2K_valid_HR             DIV2K/DIV2K_valid_LR_bicubic/X{s}           {}x{s}
lsdir-val       LSDIR/HR/val (recursive)         LSDIR/X{s}/val                              {}x{s}
set5 ...        <Set>/HR                         <Set>/LR_bicubic/X{s}                       {}x{s}
  (or BasicSR)  <Set>/GTmod12                    <Set>/LRbicx{s}                             {}
==============  ===============================  ==========================================  =========

Benchmark set folder names: Set5, Set14, B100 (or BSD100, BSDS100), Urban100, Manga109 (lower
case also accepted). A packed copy of any folder (``sr-data prepare pack``), stored next to it as
``<folder>.lmdb``, is used instead of the folder when present (``packed=None``, the default) and
still matches the folder (a copy whose folder gained, lost or changed files since packing is
refused with a DataError saying what changed, never used silently);
``packed=False`` ignores it, ``packed=True`` requires it.

``"folder"``: ``root`` is an HR folder or packed file; ``lr_root`` an optional LR folder whose
names follow ``lr_tmpl`` (default ``"{}"``; use e.g. ``"{}x4"`` for BasicSR names).

``"sample"``: the embedded sample set, photographs shipped inside scikit-image (see
:data:`SAMPLE_TRAIN` / :data:`SAMPLE_VAL`); no root, no download.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sr_data.errors import DataError
from sr_data.evaluation import PairedEvalDataset
from sr_data.io import read_image
from sr_data.stores import FileStore, ImageStore, MemoryStore
from sr_data.train import PatchDataset, TrainConfig

__all__ = [
    "EVAL_SETS",
    "SAMPLE_TRAIN",
    "SAMPLE_VAL",
    "TRAIN_COLLECTIONS",
    "ConcatStore",
    "SubsetStore",
    "build_eval_dataset",
    "build_train_dataset",
    "default_root",
    "open_store",
    "sample_images",
]

# Photographs (RGB, 8-bit) shipped inside the scikit-image wheel, in skimage/data/.
# Fixed split; the motorcycle stereo pair stays together on the training side.
SAMPLE_TRAIN = (
    "astronaut.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
)
SAMPLE_VAL = ("chelsea.png", "coffee.png", "rocket.jpg")
SAMPLE_VAL_MAX_HR_SIDE = 256
SAMPLE_REPEAT = 100


@dataclass(frozen=True)
class Part:
    """One HR folder of a collection and where its LR lives (relative to the root)."""

    label: str
    hr: str
    lr: str  # with {s}
    lr_tmpl: str = "{}x{s}"
    recursive: bool = False


_DIV2K = Part("div2k", "DIV2K/DIV2K_train_HR", "DIV2K/DIV2K_train_LR_bicubic/X{s}")
_FLICKR = Part("flickr2k", "Flickr2K/Flickr2K_HR", "Flickr2K/Flickr2K_LR_bicubic/X{s}")
_LSDIR = Part("lsdir", "LSDIR/HR/train", "LSDIR/X{s}/train", recursive=True)
_DIVERSEG = Part("diverseg", "DiverSeg-IP/HR", "DiverSeg-IP/X{s}", recursive=True)

TRAIN_COLLECTIONS: dict[str, tuple[Part, ...]] = {
    "div2k": (_DIV2K,),
    "flickr2k": (_FLICKR,),
    "df2k": (_DIV2K, _FLICKR),
    "lsdir": (_LSDIR,),
    "diverseg": (_DIVERSEG,),
    "dflip": (_DIV2K, _FLICKR, _LSDIR, _DIVERSEG),
}

_BENCH_DIRS = {
    "set5": ("Set5", "set5"),
    "set14": ("Set14", "set14"),
    "b100": ("B100", "BSD100", "BSDS100", "b100"),
    "urban100": ("Urban100", "urban100"),
    "manga109": ("Manga109", "manga109"),
}
EVAL_SETS = (*_BENCH_DIRS, "div2k-val", "lsdir-val", "sample", "folder")
_EVAL_FIXED = {
    "div2k-val": Part("div2k-val", "DIV2K/DIV2K_valid_HR", "DIV2K/DIV2K_valid_LR_bicubic/X{s}"),
    "lsdir-val": Part("lsdir-val", "LSDIR/HR/val", "LSDIR/X{s}/val", recursive=True),
}


def default_root() -> Path:
    """``$SR_DATA_ROOT`` if set, else ``./datasets``."""
    return Path(os.environ.get("SR_DATA_ROOT", "datasets"))


class SubsetStore(ImageStore):
    """A re-ordered, renamed view of some images of another store."""

    def __init__(self, base: ImageStore, indices: Sequence[int], names: Sequence[str]) -> None:
        self.base, self.indices, self.names = base, list(indices), list(names)
        self.location = base.location

    def describe(self, i: int) -> str:
        return self.base.describe(self.indices[i])

    def shape(self, i: int) -> tuple[int, int]:
        return self.base.shape(self.indices[i])

    def read(self, i: int):
        return self.base.read(self.indices[i])

    def read_region(self, i: int, top: int, left: int, h: int, w: int):
        return self.base.read_region(self.indices[i], top, left, h, w)


class ConcatStore(ImageStore):
    """Several stores one after another; names are prefixed with ``label/``."""

    def __init__(self, stores: Sequence[ImageStore], labels: Sequence[str]) -> None:
        self.parts: list[tuple[ImageStore, int]] = []
        self.names = []
        for st, label in zip(stores, labels):
            self.parts.extend((st, k) for k in range(len(st)))
            self.names.extend(f"{label}/{n}" for n in st.names)
        self.location = " + ".join(st.location for st in stores)

    def describe(self, i: int) -> str:
        st, k = self.parts[i]
        return st.describe(k)

    def shape(self, i: int) -> tuple[int, int]:
        st, k = self.parts[i]
        return st.shape(k)

    def read(self, i: int):
        st, k = self.parts[i]
        return st.read(k)

    def read_region(self, i: int, top: int, left: int, h: int, w: int):
        st, k = self.parts[i]
        return st.read_region(k, top, left, h, w)


def open_store(
    path: str | Path, *, recursive: bool = False, packed: bool | None = None, on_bad_image: str = "error"
) -> tuple[ImageStore, list[tuple[str, str]]]:
    """Open a folder of images or a packed file; returns ``(store, skipped_files)``.

    ``path`` may be a packed directory itself. Otherwise ``<path>.lmdb`` is used when it exists
    and ``packed`` is not False (required when ``packed`` is True).
    """
    from sr_data.packed import PackedStore, is_packed

    p = Path(path)
    if is_packed(p):
        _refuse_stale(p, None)
        return PackedStore(p), []
    sibling = p.parent / (p.name + ".lmdb")
    if packed is not False and is_packed(sibling):
        _refuse_stale(sibling, p if p.is_dir() else None)
        return PackedStore(sibling), []
    if packed is True:
        raise DataError(
            f"{sibling}: packed file not found (make it with `sr-data prepare pack {p} {sibling}`)"
        )
    return FileStore.from_folder(p, recursive=recursive, on_bad_image=on_bad_image)


def _refuse_stale(packed_dir: Path, folder: Path | None) -> None:
    """DataError when the packed copy no longer matches its source folder (never used silently)."""
    import json

    from sr_data.packed import stale_reason

    why = stale_reason(packed_dir, folder)
    if why is not None:
        src = folder if folder is not None else json.loads((packed_dir / "manifest.json").read_text())["source"]
        raise DataError(
            f"{packed_dir}: out of date ({why}); re-pack it with `sr-data prepare pack {src} {packed_dir} "
            "--replace`, or delete it to read the folder"
        )


def _lr_name(tmpl: str, hr_name: str) -> str:
    head, _, tail = hr_name.rpartition("/")
    mapped = tmpl.format(tail)
    return f"{head}/{mapped}" if head else mapped


def _align_lr(
    hr: ImageStore, lr: ImageStore, tmpl: str, on_bad_image: str, skipped: list[tuple[str, str]]
) -> tuple[ImageStore, ImageStore]:
    """Pair HR and LR images by name; returns HR and LR views in the same order."""
    lr_index = lr.index_of()
    hr_keep, lr_keep = [], []
    for i, name in enumerate(hr.names):
        want = _lr_name(tmpl, name)
        if want not in lr_index:
            msg = f"no LR image {want!r} in {lr.location}"
            if on_bad_image == "error":
                raise DataError(f"{hr.describe(i)}: {msg}")
            skipped.append((hr.describe(i), msg))
            continue
        hr_keep.append(i)
        lr_keep.append(lr_index[want])
    names = [hr.names[i] for i in hr_keep]
    if not names:
        raise DataError(f"{hr.location}: no HR image has an LR partner in {lr.location} (LR names '{tmpl}')")
    return SubsetStore(hr, hr_keep, names), SubsetStore(lr, lr_keep, names)


def _open_part(
    root: Path, part: Part, scale: int, use_lr: bool, packed: bool | None, on_bad_image: str
) -> tuple[ImageStore, ImageStore | None, list[tuple[str, str]]]:
    hr, skipped = open_store(
        root / part.hr, recursive=part.recursive, packed=packed, on_bad_image=on_bad_image
    )
    if not use_lr:
        return hr, None, skipped
    lr_dir = root / part.lr.format(s=scale)
    lr, more = open_store(lr_dir, recursive=part.recursive, packed=packed, on_bad_image=on_bad_image)
    skipped.extend(more)
    hr, lr_aligned = _align_lr(hr, lr, part.lr_tmpl.replace("{s}", str(scale)), on_bad_image, skipped)
    return hr, lr_aligned, skipped


def sample_images(split: str) -> MemoryStore:
    """The embedded sample images of ``split`` ("train" or "val") as a MemoryStore (uint8 RGB)."""
    import skimage.data

    files = {"train": SAMPLE_TRAIN, "val": SAMPLE_VAL}.get(split)
    if files is None:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    folder = Path(skimage.data.__file__).parent
    images = [read_image(folder / f) for f in files]
    return MemoryStore(images, [Path(f).stem for f in files], location=f"sample/{split}")


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def build_train_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    scale: int,
    patch_size: int,
    lr_source: str = "bicubic",
    lr_root: str | Path | None = None,
    lr_tmpl: str = "{}",
    seed: int = 0,
    augment: bool = True,
    use_rot: bool = True,
    small: str = "pad",
    on_bad_image: str = "error",
    repeat: int | None = None,
    cache_lr: bool | None = None,
    packed: bool | None = None,
) -> PatchDataset:
    """Training dataset of random aligned patches.

    Args:
        name: ``sample | div2k | flickr2k | df2k | lsdir | diverseg | dflip | folder``.
        root: data root (collections; default :func:`default_root`) or, for ``"folder"``, the HR
            folder (or packed file). Unused by ``"sample"``.
        scale: integer upscaling factor.
        patch_size: LR patch side; the HR patch side is ``patch_size * scale``.
        lr_source: ``"bicubic"`` (MATLAB bicubic on the fly), ``"pil"`` (PIL bicubic on the fly,
            SST's DFLIP recipe) or ``"folder"`` (pre-made LR images).
        lr_root, lr_tmpl: LR folder and LR name template for ``name="folder"``.
        seed: seeds every crop/augmentation (see :mod:`sr_data.train`).
        augment, use_rot: hflip, plus vflip and transpose when ``use_rot`` (8 symmetries).
        small: ``"pad"`` or ``"skip"`` images smaller than the HR patch.
        on_bad_image: ``"error"`` or ``"skip"`` (skips are counted in a warning).
        repeat: dataset enlargement ratio (length = images * repeat); default 100 for
            ``"sample"`` (6 images -> 600 items, so batches of 16 with drop_last work), else 1.
        cache_lr: make each image's whole LR once per dataset object (default: True for
            ``"sample"``, False otherwise, where each HR patch is downscaled on its own).
        packed: use ``<folder>.lmdb`` packed copies (None: when present).

    Returns:
        A :class:`~sr_data.train.PatchDataset` whose items are ``{"lr": float32 (3, p, p),
        "hr": float32 (3, p*s, p*s), "name": str}`` in [0, 1].

    Raises:
        DataError: unknown name, missing/empty folders, bad files (``on_bad_image="error"``).
    """
    scale = _check_scale(scale)
    if lr_source not in ("bicubic", "pil", "folder"):
        raise ValueError(f"lr_source must be 'bicubic', 'pil' or 'folder', got {lr_source!r}")
    key = name.lower()
    use_lr = lr_source == "folder"
    skipped: list[tuple[str, str]] = []
    if key == "sample":
        if use_lr:
            raise DataError("sample: has no LR folder; use lr_source='bicubic' or 'pil'")
        hr: ImageStore = sample_images("train")
        lr: ImageStore | None = None
    elif key == "folder":
        if root is None:
            raise DataError("dataset 'folder' needs the folder of HR images (--root in sr-data, --data-root in sr-train and sr-eval)")
        hr, skipped = open_store(root, packed=packed, on_bad_image=on_bad_image)
        lr = None
        if use_lr:
            if lr_root is None:
                raise DataError(f"{root}: LR images from a folder need that folder (--lr-root in sr-data)")
            lr_store, more = open_store(lr_root, packed=packed, on_bad_image=on_bad_image)
            skipped.extend(more)
            hr, lr = _align_lr(hr, lr_store, lr_tmpl, on_bad_image, skipped)
    elif key in TRAIN_COLLECTIONS:
        base = Path(root) if root is not None else default_root()
        parts = TRAIN_COLLECTIONS[key]
        opened = [_open_part(base, p, scale, use_lr, packed, on_bad_image) for p in parts]
        for _, _, sk in opened:
            skipped.extend(sk)
        if len(parts) == 1:
            hr, lr = opened[0][0], opened[0][1]
        else:
            labels = [p.label for p in parts]
            hr = ConcatStore([o[0] for o in opened], labels)
            lr = ConcatStore([o[1] for o in opened], labels) if use_lr else None  # type: ignore[misc]
    else:
        raise DataError(
            f"unknown training dataset {name!r}; choose from sample, folder, {', '.join(TRAIN_COLLECTIONS)}"
        )
    cfg = TrainConfig(
        scale=scale,
        patch_size=patch_size,
        lr_mode=lr_source,
        cache_lr=(key == "sample") if cache_lr is None else cache_lr,
        augment=augment,
        use_rot=use_rot,
        small=small,
        on_bad_image=on_bad_image,
        seed=seed,
        repeat=(SAMPLE_REPEAT if key == "sample" else 1) if repeat is None else repeat,
    )
    return PatchDataset(hr, lr, cfg, pre_skipped=skipped)


def _find_bench_dir(base: Path, key: str) -> Path:
    for d in _BENCH_DIRS[key]:
        if (base / d).is_dir():
            return base / d
    raise DataError(f"{base}: no folder for {key} (looked for {', '.join(_BENCH_DIRS[key])})")


def _bench_layout(set_dir: Path, scale: int) -> tuple[Path, Path, str]:
    """(HR folder, LR folder, LR name template) of a benchmark set folder."""
    if (set_dir / "HR").exists() or (set_dir / "HR.lmdb").exists():
        return set_dir / "HR", set_dir / "LR_bicubic" / f"X{scale}", f"{{}}x{scale}"
    for gt in ("GTmod12", f"GTmod{scale}", "GT"):
        if (set_dir / gt).exists():
            return set_dir / gt, set_dir / f"LRbicx{scale}", "{}"
    raise DataError(f"{set_dir}: expected an HR/ folder (or GTmod12/) inside")


def build_eval_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    scale: int,
    lr_source: str = "auto",
    lr_root: str | Path | None = None,
    lr_tmpl: str = "{}",
    on_bad_image: str = "error",
    max_hr_side: int | None = None,
    packed: bool | None = None,
) -> PairedEvalDataset:
    """Evaluation dataset of full images.

    Args:
        name: ``sample | set5 | set14 | b100 | urban100 | manga109 | div2k-val | lsdir-val | folder``.
        root: data root (default :func:`default_root`); for ``"folder"`` the HR folder.
        scale: integer factor.
        lr_source: ``"bicubic"`` (modcrop HR to the scale, MATLAB bicubic, round to uint8),
            ``"folder"`` (provided LR folder, HR cropped top-left to LR*scale) or ``"auto"``
            (the LR folder when it exists, else bicubic). ``"sample"`` is always bicubic.
        lr_root, lr_tmpl: LR folder and name template for ``name="folder"``.
        on_bad_image: ``"error"`` or ``"skip"``.
        max_hr_side: centre-crop HR to at most this side (bicubic LR only). ``"sample"`` uses 256.

    Returns:
        A :class:`~sr_data.evaluation.PairedEvalDataset` of ``{"lr": float32 (3, h, w),
        "hr": float32 (3, h*s, w*s), "name": str}`` in [0, 1].
    """
    scale = _check_scale(scale)
    if lr_source not in ("auto", "bicubic", "folder"):
        raise ValueError(f"lr_source must be 'auto', 'bicubic' or 'folder', got {lr_source!r}")
    key = name.lower()
    skipped: list[tuple[str, str]] = []
    if key == "sample":
        if lr_source == "folder":
            raise DataError("sample: has no LR folder; use lr_source='bicubic'")
        return PairedEvalDataset(
            sample_images("val"),
            None,
            scale=scale,
            max_hr_side=SAMPLE_VAL_MAX_HR_SIDE if max_hr_side is None else max_hr_side,
            on_bad_image=on_bad_image,
        )
    if key == "folder":
        if root is None:
            raise DataError("dataset 'folder' needs the folder of HR images (--root in sr-data, --data-root in sr-train and sr-eval)")
        hr_dir, lr_dir, tmpl, recursive = Path(root), Path(lr_root) if lr_root else None, lr_tmpl, False
    elif key in _BENCH_DIRS:
        base = Path(root) if root is not None else default_root()
        set_dir = _find_bench_dir(base, key)
        hr_dir, lr_dir, tmpl = _bench_layout(set_dir, scale)
        recursive = False
    elif key in _EVAL_FIXED:
        base = Path(root) if root is not None else default_root()
        part = _EVAL_FIXED[key]
        hr_dir, lr_dir = base / part.hr, base / part.lr.format(s=scale)
        tmpl, recursive = part.lr_tmpl.replace("{s}", str(scale)), part.recursive
    else:
        raise DataError(f"unknown evaluation dataset {name!r}; choose from {', '.join(EVAL_SETS)}")

    hr, skipped = open_store(hr_dir, recursive=recursive, packed=packed, on_bad_image=on_bad_image)
    lr: ImageStore | None = None
    want_lr = lr_source == "folder" or (
        lr_source == "auto"
        and lr_dir is not None
        and (lr_dir.exists() or (lr_dir.parent / (lr_dir.name + ".lmdb")).exists())
    )
    if want_lr:
        if lr_dir is None:
            raise DataError(f"{hr_dir}: LR images from a folder need that folder (--lr-root in sr-data)")
        lr_store, more = open_store(lr_dir, recursive=recursive, packed=packed, on_bad_image=on_bad_image)
        skipped.extend(more)
        hr, lr = _align_lr(hr, lr_store, tmpl, on_bad_image, skipped)
    return PairedEvalDataset(
        hr, lr, scale=scale, max_hr_side=max_hr_side, on_bad_image=on_bad_image, pre_skipped=skipped
    )
