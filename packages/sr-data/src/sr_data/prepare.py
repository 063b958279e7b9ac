"""Offline preparation: BasicSR sub-image extraction and MATLAB-bicubic LR folders.

Sub-images (BasicSR ``extract_subimages.py``): crops of ``crop_size`` every ``step`` pixels, plus
one crop flush with the right/bottom edge when the remainder exceeds ``thresh_size``; names
``{name}_s{idx:03d}.png`` (idx from 1, row-major), PNG compress level 3. For an LR folder pass
``scale``: crop and step are divided by the scale (HR 480/240 -> x2 240/120, x3 160/80,
x4 120/60) and a trailing ``x{scale}`` is removed from the name (only at the end of the name,
unlike BasicSR's plain ``str.replace``), so LR and HR sub-images share names and stay aligned.
An image smaller than the crop is written whole as ``_s001``.

Both commands write into a hidden temporary folder next to the output and rename it to the output
name only when every image is done, so a failed or interrupted run leaves nothing that blocks the
rerun; every setting is checked before anything is created.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sr_data.errors import DataError, ImageReadError
from sr_data.stores import FileStore
from sr_data.transforms import bicubic_downscale_uint8, modcrop

__all__ = ["PrepareReport", "crop_positions", "extract_subimages", "make_lr_folder"]

HR_CROP, HR_STEP = 480, 240


@dataclass
class PrepareReport:
    """What a preparation run did: files written, and bad inputs skipped as ``(path, reason)``."""

    written: int
    skipped: list[tuple[str, str]]


def crop_positions(length: int, crop: int, step: int, thresh: int = 0) -> list[int]:
    """Start offsets along one axis (BasicSR): ``0, step, ...`` plus an edge-flush one if needed."""
    if length <= crop:
        return [0]
    pos = list(range(0, length - crop + 1, step))
    if length - (pos[-1] + crop) > thresh:
        pos.append(length - crop)
    return pos


def _strip_scale_suffix(name: str, scale: int) -> str:
    return re.sub(rf"x{scale}$", "", name) if scale > 1 else name


def _subimages_one(
    args: tuple[Path, str, Path, int, int, int, int, str],
) -> tuple[int, tuple[str, str] | None]:
    path, name, out_dir, crop, step, thresh, scale, on_bad = args
    from sr_data.io import read_image, write_image

    try:
        img = read_image(path)
    except ImageReadError as exc:
        if on_bad == "error":
            raise
        return 0, (str(path), exc.reason)
    base = _strip_scale_suffix(Path(name).name, scale)
    sub = Path(name).parent
    idx = 0
    for top in crop_positions(img.shape[0], crop, step, thresh):
        for left in crop_positions(img.shape[1], crop, step, thresh):
            idx += 1
            tile = np.ascontiguousarray(img[top : top + crop, left : left + crop])
            write_image(out_dir / sub / f"{base}_s{idx:03d}.png", tile, compress_level=3)
    return idx, None


def _run(fn, jobs: list, workers: int, desc: str, progress: bool) -> list:
    from tqdm import tqdm

    if workers <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc, unit="img", disable=not progress)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(
            tqdm(
                pool.map(fn, jobs, chunksize=1), total=len(jobs), desc=desc, unit="img", disable=not progress
            )
        )


def _check_out(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: output folder exists and is not empty")


@contextlib.contextmanager
def _staged_output(out_dir: Path) -> Iterator[Path]:
    """A temporary folder next to ``out_dir`` that becomes ``out_dir`` on success, vanishes on failure."""
    _check_out(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _check_out(out_dir)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def extract_subimages(
    src: str | Path,
    out_dir: str | Path,
    *,
    crop_size: int = HR_CROP,
    step: int = HR_STEP,
    thresh_size: int = 0,
    scale: int = 1,
    workers: int = 4,
    recursive: bool = False,
    on_bad_image: str = "error",
    progress: bool = True,
) -> PrepareReport:
    """Cut every image of ``src`` into sub-images in ``out_dir`` (see the module docstring).

    ``crop_size``/``step``/``thresh_size`` are given for the HR; with ``scale > 1`` (an LR folder)
    they are divided by ``scale``. Raises DataError/ImageReadError naming the file on bad input
    unless ``on_bad_image="skip"``.
    """
    _positive(crop_size=crop_size, step=step, scale=scale, workers=workers)
    if thresh_size < 0:
        raise ValueError(f"thresh_size must be >= 0, got {thresh_size!r}")
    if crop_size % scale or step % scale:
        raise ValueError(f"crop_size {crop_size} and step {step} must be multiples of scale {scale}")
    store, skipped = FileStore.from_folder(src, recursive=recursive, on_bad_image=on_bad_image)
    crop, stp, thr = crop_size // scale, step // scale, thresh_size // scale
    with _staged_output(Path(out_dir)) as out:
        jobs = [(p, n, out, crop, stp, thr, scale, on_bad_image) for p, n in zip(store.paths, store.names)]
        results = _run(_subimages_one, jobs, workers, f"sub-images {Path(src).name}", progress)
    skipped += [bad for _, bad in results if bad is not None]
    return PrepareReport(written=sum(n for n, _ in results), skipped=skipped)


def _lr_one(args: tuple[Path, str, Path, int, str, str]) -> tuple[int, tuple[str, str] | None]:
    path, name, out_dir, scale, tmpl, on_bad = args
    from sr_data.io import read_image, write_image

    try:
        hr = read_image(path)
    except ImageReadError as exc:
        if on_bad == "error":
            raise
        return 0, (str(path), exc.reason)
    if hr.shape[0] < scale or hr.shape[1] < scale:
        if on_bad == "error":
            raise ImageReadError(path, f"smaller than the scale {scale}")
        return 0, (str(path), f"smaller than the scale {scale}")
    lr = bicubic_downscale_uint8(np.ascontiguousarray(modcrop(hr, scale)), scale)
    p = Path(name)
    write_image(out_dir / p.parent / f"{tmpl.format(p.name)}.png", lr, compress_level=3)
    return 1, None


def make_lr_folder(
    src: str | Path,
    out_dir: str | Path,
    *,
    scale: int,
    name_tmpl: str | None = None,
    workers: int = 4,
    recursive: bool = False,
    on_bad_image: str = "error",
    progress: bool = True,
) -> PrepareReport:
    """MATLAB-bicubic LR images of every HR image in ``src`` (HR modcropped to the scale first).

    Names follow ``name_tmpl`` (default ``"{}x<scale>"``, BasicSR/DIV2K naming: ``0001x4.png``).
    """
    if int(scale) != scale or scale < 2:
        raise ValueError(f"scale must be an integer >= 2, got {scale!r}")
    _positive(workers=workers)
    tmpl = name_tmpl or f"{{}}x{scale}"
    if "{}" not in tmpl:
        raise ValueError(f"name template {tmpl!r} must contain {{}} (the HR name)")
    store, skipped = FileStore.from_folder(src, recursive=recursive, on_bad_image=on_bad_image)
    with _staged_output(Path(out_dir)) as out:
        jobs = [(p, n, out, int(scale), tmpl, on_bad_image) for p, n in zip(store.paths, store.names)]
        results = _run(_lr_one, jobs, workers, f"LR x{scale} {Path(src).name}", progress)
    skipped += [bad for _, bad in results if bad is not None]
    return PrepareReport(written=sum(n for n, _ in results), skipped=skipped)
