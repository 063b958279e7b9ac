"""The packed format: one LMDB database per image folder, with a manifest and checksums.

Why LMDB: it is what BasicSR (and the ESC/SST configs) use, py-lmdb is small, mature and
maintained, reads are memory-mapped and zero-copy (``buffers=True``), it is safe for many reader
processes (DataLoader workers, several ranks) without locks, and needs no server.

Layout of ``<name>.lmdb/``:

* ``data.mdb``, ``lock.mdb``: the LMDB environment. Key: the image name (path relative to the
  source folder, no extension, ``/``-separated) in UTF-8. Value: the image.
* ``manifest.json``: ``{"format": "sr-data-packed", "version": 1, "encoding": "raw"|"png",
  "count": n, "source": "...", "entries": [{"name", "height", "width", "channels", "nbytes",
  "sha256"}, ...]}``; ``sha256`` is the hash of the stored value bytes.
* ``meta_info.txt``: BasicSR's ``name (h,w,c) compress_level`` lines.

Encodings:

* ``"raw"`` (default): uncompressed ``uint8`` HWC RGB bytes. No decoding at all; a training crop
  reads only the rows it needs straight from the memory map. Larger on disk (3 bytes per pixel).
* ``"png"``: PNG bytes (compress level 1), BasicSR-compatible values; smaller, but each read
  decodes the whole image.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lmdb
import numpy as np

from sr_data.errors import DataError, ImageReadError
from sr_data.io import decode_image, encode_png
from sr_data.stores import ImageStore

__all__ = ["FORMAT", "PackedStore", "is_packed", "verify_packed", "write_packed"]

FORMAT = "sr-data-packed"
VERSION = 1
ENCODINGS = ("raw", "png")


def is_packed(path: str | Path) -> bool:
    """True when ``path`` is a packed directory (it holds a manifest of this format)."""
    m = Path(path) / "manifest.json"
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def _load_manifest(path: Path) -> dict:
    m = path / "manifest.json"
    try:
        manifest = json.loads(m.read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{path}: not a packed dataset (no manifest.json)") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{m}: unreadable manifest ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("encoding") not in ENCODINGS:
        raise DataError(f"{m}: not an {FORMAT} manifest or unknown encoding")
    if manifest.get("count") != len(manifest.get("entries", [])):
        raise DataError(f"{m}: count does not match the number of entries")
    return manifest


_ENVS: dict[tuple[int, str], lmdb.Environment] = {}


def _shared_env(path: Path, resolved: str | None = None) -> lmdb.Environment:
    """One read-only environment per (process, directory): LMDB forbids opening one twice."""
    key = (os.getpid(), resolved or str(path.resolve()))
    env = _ENVS.get(key)
    if env is None:
        try:
            env = lmdb.open(
                key[1], readonly=True, lock=False, readahead=False, meminit=False, max_readers=512
            )
        except lmdb.Error as exc:
            raise DataError(f"{path}: cannot open LMDB ({exc})") from exc
        _ENVS[key] = env
    return env


class PackedStore(ImageStore):
    """Read a packed LMDB directory. The environment is opened lazily, once per process and
    directory, so the store can be pickled into DataLoader workers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._resolved = str(self.path.resolve())
        self.location = str(self.path)
        manifest = _load_manifest(self.path)
        self.encoding: str = manifest["encoding"]
        entries = manifest["entries"]
        self.names = [e["name"] for e in entries]
        self._shapes = [(int(e["height"]), int(e["width"])) for e in entries]

    def _txn(self) -> lmdb.Transaction:
        return _shared_env(self.path, self._resolved).begin(write=False, buffers=True)

    def describe(self, i: int) -> str:
        return f"{self.path}:{self.names[i]}"

    def shape(self, i: int) -> tuple[int, int]:
        return self._shapes[i]

    def _get(self, txn: lmdb.Transaction, i: int) -> memoryview:
        buf = txn.get(self.names[i].encode("utf-8"))
        if buf is None:
            raise ImageReadError(self.describe(i), "key missing from the LMDB (packed file incomplete?)")
        return buf

    def read(self, i: int) -> np.ndarray:
        with self._txn() as txn:
            buf = self._get(txn, i)
            if self.encoding == "png":
                return decode_image(bytes(buf), self.describe(i))
            return self._raw_view(buf, i).copy()

    def _raw_view(self, buf: memoryview, i: int) -> np.ndarray:
        h, w = self._shapes[i]
        if len(buf) != h * w * 3:
            raise ImageReadError(self.describe(i), f"stored {len(buf)} bytes, expected {h}x{w}x3")
        return np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)

    def read_region(self, i: int, top: int, left: int, h: int, w: int) -> np.ndarray:
        if self.encoding != "raw":
            return super().read_region(i, top, left, h, w)
        with self._txn() as txn:
            view = self._raw_view(self._get(txn, i), i)
            return np.ascontiguousarray(view[top : top + h, left : left + w])


_WORKER: dict[str, object] = {}


def _init_worker(store: ImageStore, encoding: str, on_bad_image: str) -> None:
    _WORKER["store"], _WORKER["encoding"], _WORKER["on_bad"] = store, encoding, on_bad_image


def _encode_one(i: int) -> tuple[str, tuple[int, int, int] | None, bytes | str]:
    store, encoding = _WORKER["store"], _WORKER["encoding"]
    assert isinstance(store, ImageStore)
    try:
        img = store.read(i)
    except ImageReadError as exc:
        if _WORKER["on_bad"] == "error":
            raise
        return store.describe(i), None, exc.reason
    value = img.tobytes() if encoding == "raw" else encode_png(img, compress_level=1)
    return store.names[i], img.shape, value


def _iter_encoded(
    store: ImageStore, encoding: str, workers: int, on_bad_image: str
) -> Iterator[tuple[str, tuple[int, int, int] | None, bytes | str]]:
    if workers <= 1:
        _init_worker(store, encoding, on_bad_image)
        yield from map(_encode_one, range(len(store)))
        return
    init = (store, encoding, on_bad_image)
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=init) as pool:
        yield from pool.map(_encode_one, range(len(store)), chunksize=4)


def write_packed(
    store: ImageStore,
    out: str | Path,
    *,
    encoding: str = "raw",
    workers: int = 1,
    progress: bool = True,
    commit_every: int = 64,
    on_bad_image: str = "error",
    skipped: list[tuple[str, str]] | None = None,
) -> Path:
    """Pack every image of ``store`` into ``out`` (a new directory, conventionally ``*.lmdb``).

    Images are read (and PNG-encoded) in ``workers`` processes and written in order by this one.
    Returns ``out``. Raises DataError if ``out`` exists and is not empty, ImageReadError for a bad
    source image; with ``on_bad_image="skip"`` bad images are left out and appended to ``skipped``.
    """
    from tqdm import tqdm

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: already exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    total = sum(h * w * 3 for h, w in (store.shape(i) for i in range(len(store))))
    map_size = int(total * 1.6) + (64 << 20)
    env = lmdb.open(str(out), map_size=map_size, subdir=True, meminit=False, map_async=True)
    entries = []
    try:
        txn = env.begin(write=True)
        bar = tqdm(total=len(store), desc=f"pack {out.name}", unit="img", disable=not progress)
        for k, (name, shape, value) in enumerate(_iter_encoded(store, encoding, workers, on_bad_image)):
            bar.update(1)
            if shape is None:
                assert isinstance(value, str)
                if skipped is not None:
                    skipped.append((name, value))
                continue
            assert isinstance(value, bytes)
            txn.put(name.encode("utf-8"), value)
            entries.append(
                {
                    "name": name,
                    "height": int(shape[0]),
                    "width": int(shape[1]),
                    "channels": int(shape[2]),
                    "nbytes": len(value),
                    "sha256": hashlib.sha256(value).hexdigest(),
                }
            )
            if (k + 1) % commit_every == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
        bar.close()
        env.sync()
    finally:
        env.close()
    if not entries:
        raise DataError(f"{store.location}: no image could be packed")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "encoding": encoding,
        "count": len(entries),
        "source": store.location,
        "entries": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    level = 1 if encoding == "png" else 0
    (out / "meta_info.txt").write_text(
        "".join(f"{e['name']} ({e['height']},{e['width']},{e['channels']}) {level}\n" for e in entries)
    )
    return out


def verify_packed(path: str | Path, *, progress: bool = False) -> list[str]:
    """Re-hash every value of a packed directory against its manifest.

    Returns a list of problems (empty when the file is intact): missing keys, size or checksum
    mismatches, PNG values that do not decode to the recorded shape.
    """
    from tqdm import tqdm

    path = Path(path)
    manifest = _load_manifest(path)
    problems: list[str] = []
    env = _shared_env(path)
    with env.begin(buffers=True) as txn:
        for e in tqdm(manifest["entries"], desc=f"verify {path.name}", disable=not progress):
            buf = txn.get(e["name"].encode("utf-8"))
            where = f"{path}:{e['name']}"
            if buf is None:
                problems.append(f"{where}: missing")
                continue
            if len(buf) != e["nbytes"]:
                problems.append(f"{where}: {len(buf)} bytes, manifest says {e['nbytes']}")
                continue
            if hashlib.sha256(buf).hexdigest() != e["sha256"]:
                problems.append(f"{where}: sha256 mismatch")
                continue
            if manifest["encoding"] == "png":
                try:
                    shape = decode_image(bytes(buf), where).shape
                except ImageReadError as exc:
                    problems.append(str(exc))
                    continue
                if shape != (e["height"], e["width"], e["channels"]):
                    problems.append(f"{where}: decodes to {shape}, manifest says {e['height']}x{e['width']}")
    stat = env.stat()
    if stat["entries"] != manifest["count"]:
        problems.append(f"{path}: LMDB holds {stat['entries']} entries, manifest lists {manifest['count']}")
    return problems
