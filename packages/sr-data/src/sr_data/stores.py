"""Image stores: a list of named 8-bit RGB images behind one small interface.

* :class:`FileStore`: image files in a folder (optionally recursive), decoded on demand.
* :class:`MemoryStore`: arrays held in memory (the embedded sample set).
* :class:`sr_data.packed.PackedStore`: the packed LMDB format (see ``packed.py``).

Every store has ``names`` (keys such as ``"0001"`` or ``"shard/0000001"``: the path relative to
the folder, without extension, ``/``-separated), ``shape(i)`` (height, width; header only),
``read(i)`` (uint8 ``(H, W, 3)``), ``read_region(i, top, left, h, w)`` and ``describe(i)`` (the
file or key, for error messages).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sr_data.errors import DataError, ImageReadError
from sr_data.io import IMAGE_EXTENSIONS, probe_image, read_image

__all__ = ["FileStore", "ImageStore", "MemoryStore", "list_image_files"]


class ImageStore:
    """Base class; subclasses set ``names`` and ``location`` and implement ``read``/``shape``."""

    names: list[str]
    location: str

    def __len__(self) -> int:
        return len(self.names)

    def describe(self, i: int) -> str:
        return f"{self.location}:{self.names[i]}"

    def shape(self, i: int) -> tuple[int, int]:
        raise NotImplementedError

    def read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def read_region(self, i: int, top: int, left: int, h: int, w: int) -> np.ndarray:
        """uint8 ``(h, w, 3)`` region of image ``i`` (a copy)."""
        return np.ascontiguousarray(self.read(i)[top : top + h, left : left + w])

    def index_of(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def list_image_files(
    folder: str | Path, *, recursive: bool = False, on_bad_image: str = "error"
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files of a folder, sorted by relative path.

    Hidden files (``.*``) are ignored; sub-folders are ignored unless ``recursive``. Any other file
    whose extension is not an image extension (``IMAGE_EXTENSIONS``) is bad input: it raises
    DataError (``on_bad_image="error"``) or is returned in the ``skipped`` list of
    ``(path, reason)`` (``"skip"``).

    Raises:
        DataError: the folder is missing, is not a folder, or holds no image files.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: is not a folder")
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    walker = os.walk(root) if recursive else [(str(root), [], os.listdir(root))]
    for dirpath, dirnames, filenames in walker:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            p = Path(dirpath) / fn
            if fn.startswith(".") or p.is_dir():
                continue
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(p)
            else:
                reason = f"not an image file (extension {p.suffix or 'none'!r})"
                if on_bad_image == "error":
                    raise DataError(f"{p}: {reason}; remove it, or skip bad files (--on-bad-image skip)")
                skipped.append((str(p), reason))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"{root}: no image files found ({', '.join(IMAGE_EXTENSIONS)})")
    return files, skipped


class FileStore(ImageStore):
    """Image files decoded on demand with :func:`sr_data.io.read_image`."""

    def __init__(self, paths: Sequence[str | Path], names: Sequence[str], location: str) -> None:
        if len(paths) != len(names):
            raise ValueError("FileStore: paths and names differ in length")
        self.paths = [Path(p) for p in paths]
        self.names = list(names)
        self.location = location
        self.root: Path | None = None  # the folder, when built by from_folder
        self.recursive = False
        self._shapes: dict[int, tuple[int, int]] = {}

    @classmethod
    def from_folder(
        cls, folder: str | Path, *, recursive: bool = False, on_bad_image: str = "error"
    ) -> tuple[FileStore, list[tuple[str, str]]]:
        """Store of all images of ``folder`` (see :func:`list_image_files`) and the skipped files."""
        root = Path(folder)
        files, skipped = list_image_files(root, recursive=recursive, on_bad_image=on_bad_image)
        names = [p.relative_to(root).with_suffix("").as_posix() for p in files]
        dupes = {n for n in names if names.count(n) > 1} if len(set(names)) != len(names) else set()
        if dupes:
            raise DataError(
                f"{root}: several files share the name(s) {sorted(dupes)[:3]} with different extensions"
            )
        store = cls(files, names, str(root))
        store.root, store.recursive = root, recursive  # the folder's manifest is recorded when packing
        return store, skipped

    def describe(self, i: int) -> str:
        return str(self.paths[i])

    def shape(self, i: int) -> tuple[int, int]:
        if i not in self._shapes:
            self._shapes[i] = probe_image(self.paths[i])
        return self._shapes[i]

    def read(self, i: int) -> np.ndarray:
        return read_image(self.paths[i])


class MemoryStore(ImageStore):
    """uint8 ``(H, W, 3)`` arrays held in memory."""

    def __init__(
        self, images: Sequence[np.ndarray], names: Sequence[str], location: str = "<memory>"
    ) -> None:
        for img, n in zip(images, names):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ImageReadError(
                    f"{location}:{n}", f"expected uint8 (H, W, 3), got {img.dtype} {img.shape}"
                )
        self.images = [np.ascontiguousarray(im) for im in images]
        self.names = list(names)
        self.location = location

    def shape(self, i: int) -> tuple[int, int]:
        h, w = self.images[i].shape[:2]
        return h, w

    def read(self, i: int) -> np.ndarray:
        return self.images[i]

    def read_region(self, i: int, top: int, left: int, h: int, w: int) -> np.ndarray:
        return np.ascontiguousarray(self.images[i][top : top + h, left : left + w])
