"""The packed format: one LMDB database per image folder, with a manifest and checksums.

Why LMDB: it is what BasicSR (and the ESC/SST configs) use, py-lmdb is small, mature and
maintained, reads are memory-mapped and zero-copy (``buffers=True``), it is safe for many reader
processes (DataLoader workers, several ranks) without locks, and needs no server.

Layout of ``<name>.lmdb/``:

* ``data.mdb``, ``lock.mdb``: the LMDB environment. Key: the image name (path relative to the
  source folder, no extension, ``/``-separated) in UTF-8. Value: the image.
* ``manifest.json``: ``{"format": "sr-data-packed", "version": 2, "encoding": "raw"|"png",
  "count": n, "source": "<absolute source folder>", "recursive": bool, "source_files": [{"name",
  "size", "mtime_ns"}, ...], "data_bytes": <size of data.mdb>, "entries": [{"name", "height",
  "width", "channels", "nbytes", "sha256"}, ...]}``; ``sha256`` is the hash of the stored value
  bytes, ``source_files`` the image files of the source folder when it was packed (the folder's
  manifest: relative name with extension, size in bytes, modification time). Version 1 manifests
  (no ``source_files``/``data_bytes``) are still read.
* ``meta_info.txt``: BasicSR's ``name (h,w,c) compress_level`` lines.

Safety checks:

* **Stale copies.** :func:`stale_reason` compares a packed copy with its source folder (names,
  sizes and modification times of the image files; only names for version 1 manifests);
  :func:`sr_data.datasets.open_store` refuses a copy whose folder changed instead of using it
  silently. ``sr-data prepare pack SRC OUT --replace`` re-packs it.
* **Truncation.** Before the LMDB file is memory-mapped, its size is checked against the size
  its own header needs (the newest of LMDB's two meta pages: ``(last page + 1) * page size``) and
  against ``data_bytes``; reading a truncated memory map would kill the process with SIGBUS.
  :func:`verify_packed` also runs the re-hashing in a child process, so even a corruption that
  crashes LMDB is reported as one line.

Encodings:

* ``"raw"`` (default): uncompressed ``uint8`` HWC RGB bytes. No decoding at all; a training crop
  reads only the rows it needs straight from the memory map. Larger on disk (3 bytes per pixel).
* ``"png"``: PNG bytes (compress level 1), BasicSR-compatible values; smaller, but each read
  decodes the whole image.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import stat
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import lmdb
import numpy as np

from sr_data.errors import DataError, ImageReadError
from sr_data.io import IMAGE_EXTENSIONS, decode_image, encode_png
from sr_data.stores import FileStore, ImageStore

__all__ = [
    "FORMAT",
    "PackedStore",
    "check_data_file",
    "is_packed",
    "lmdb_required_bytes",
    "scan_source",
    "stale_reason",
    "verify_packed",
    "write_packed",
]

FORMAT = "sr-data-packed"
VERSION = 2
ENCODINGS = ("raw", "png")
DATA_FILE = "data.mdb"
_LMDB_MAGIC = 0xBEEFC0DE
_PAGE_HEADER = 16  # bytes before an LMDB meta page's MDB_meta struct (64-bit builds)


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


def lmdb_required_bytes(data_file: str | Path) -> int:
    """The size ``data.mdb`` must have at least, from its own header (no memory map involved).

    LMDB keeps two meta pages at the start of the file; the one with the larger transaction id is
    current and records the last page in use, so the file needs ``(last_page + 1) * page_size``
    bytes. Raises DataError naming the file when the header is missing or not LMDB's.
    """
    path = Path(data_file)
    try:
        with open(path, "rb") as fh:
            head = fh.read(_PAGE_HEADER + 136)
            if len(head) < _PAGE_HEADER + 136:
                raise DataError(f"{path}: truncated LMDB file ({len(head)} bytes, not even a header)")
            magic, _version = struct.unpack_from("<II", head, _PAGE_HEADER)
            if magic != _LMDB_MAGIC:
                raise DataError(f"{path}: not an LMDB data file (bad magic number)")
            page_size = struct.unpack_from("<I", head, _PAGE_HEADER + 24)[0]  # md_pad of the free DB
            if page_size < 512 or page_size & (page_size - 1):
                raise DataError(f"{path}: corrupt LMDB header (page size {page_size})")
            fh.seek(page_size)
            second = fh.read(_PAGE_HEADER + 136)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    metas = [head]
    if len(second) == len(head) and struct.unpack_from("<I", second, _PAGE_HEADER)[0] == _LMDB_MAGIC:
        metas.append(second)
    last_page, _txn = max(
        (struct.unpack_from("<QQ", m, _PAGE_HEADER + 120) for m in metas), key=lambda t: t[1]
    )
    return (last_page + 1) * page_size


def check_data_file(path: str | Path, manifest: dict | None = None) -> None:
    """DataError if the LMDB file of packed directory ``path`` is missing, truncated or changed.

    Compares the file size with what its header needs (:func:`lmdb_required_bytes`) and with the
    manifest's ``data_bytes`` (version 2; a smaller file is truncated). Call it before opening the environment: LMDB memory-maps
    the file, and reading a page past the end of a truncated file raises SIGBUS, not an error.
    """
    path = Path(path)
    data = path / DATA_FILE
    if not data.is_file():
        raise DataError(f"{path}: {DATA_FILE} is missing (packed copy incomplete?)")
    size = data.stat().st_size
    need = lmdb_required_bytes(data)
    if size < need:
        raise DataError(
            f"{data}: truncated: {size} bytes, its LMDB header needs {need}; re-pack it or copy it again"
        )
    recorded = (manifest or {}).get("data_bytes")
    if recorded is not None and size < recorded:  # larger is harmless for the map; hashes check content
        raise DataError(
            f"{data}: truncated: {size} bytes, but {recorded} were written when it was packed; "
            "re-pack it or copy it again"
        )


def scan_source(folder: str | Path, *, recursive: bool = False) -> list[dict]:
    """The folder's manifest: ``[{"name", "size", "mtime_ns"}, ...]`` of its image files.

    Same selection as :func:`sr_data.stores.list_image_files` (image extensions, hidden files and
    folders ignored, sub-folders only when ``recursive``); ``name`` is the path relative to the
    folder, ``/``-separated, with its extension. Sorted by name.
    """
    root = Path(folder)
    found = []
    walker = os.walk(root) if recursive else [(str(root), [], os.listdir(root))]
    for dirpath, dirnames, filenames in walker:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            p = Path(dirpath) / fn
            if fn.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            found.append({"name": p.relative_to(root).as_posix(), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return sorted(found, key=lambda e: e["name"])


def _strip_ext(name: str) -> str:
    head, _, tail = name.rpartition("/")
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    return f"{head}/{stem}" if head else stem


def stale_reason(path: str | Path, folder: str | Path | None = None) -> str | None:
    """Why packed directory ``path`` no longer matches its source folder, or None if it does.

    ``folder`` defaults to the source recorded in the manifest; when that folder does not exist
    (the images were deleted after packing, or the copy was moved to another machine) there is
    nothing to compare and None is returned. Version 2 manifests compare names, sizes and
    modification times of every image file; version 1 manifests only the image names.
    """
    path = Path(path)
    manifest = _load_manifest(path)
    src = Path(folder) if folder is not None else Path(manifest.get("source") or "")
    if not str(src) or not src.is_dir():
        return None
    recursive = bool(manifest.get("recursive", False))
    try:
        now = scan_source(src, recursive=recursive)
    except OSError as exc:
        return f"cannot list {src} ({exc.strerror or exc})"
    recorded = manifest.get("source_files")
    if recorded is None:  # version 1: names only (keys without extension)
        before_names = {e["name"] for e in manifest["entries"]}
        now_names = {_strip_ext(e["name"]) for e in now}
        added, removed = sorted(now_names - before_names), sorted(before_names - now_names)
        changed: list[str] = []
    else:
        before = {e["name"]: (e["size"], e["mtime_ns"]) for e in recorded}
        cur = {e["name"]: (e["size"], e["mtime_ns"]) for e in now}
        added, removed = sorted(set(cur) - set(before)), sorted(set(before) - set(cur))
        changed = sorted(n for n in set(cur) & set(before) if cur[n] != before[n])
    if not (added or removed or changed):
        return None
    parts = []
    for what, names in (("new", added), ("removed", removed), ("changed", changed)):
        if names:
            parts.append(f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    return f"{src} changed since it was packed: " + "; ".join(parts)


_ENVS: dict[tuple[int, str], lmdb.Environment] = {}
# `sr-data check` decodes in a thread pool: without the lock two threads could both miss the cache and
# the second lmdb.open fail with "already open in this process" (seen once in CI-sized runs)
_ENVS_LOCK = threading.Lock()


def _shared_env(path: Path, resolved: str | None = None) -> lmdb.Environment:
    """One read-only environment per (process, directory): LMDB forbids opening one twice.
    Thread-safe: the first caller opens it, the others wait and share it."""
    key = (os.getpid(), resolved or str(path.resolve()))
    env = _ENVS.get(key)
    if env is not None:
        return env
    with _ENVS_LOCK:
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
        check_data_file(self.path, manifest)
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


def _prepare_target(out: Path, replace: bool) -> None:
    """Refuse a target that would lose data: only a missing/empty folder, or (``replace``) a packed one."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not replace:
        raise DataError(f"{out}: already exists and is not empty (re-pack over a packed copy with --replace)")
    if not is_packed(out):
        raise DataError(f"{out}: not a packed dataset; --replace only replaces an earlier packed copy")


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
    replace: bool = False,
) -> Path:
    """Pack every image of ``store`` into ``out`` (a new directory, conventionally ``*.lmdb``).

    Images are read (and PNG-encoded) in ``workers`` processes and written in order by this one,
    into a hidden temporary folder next to ``out`` that is renamed to ``out`` only when complete
    (an interrupted or failed run leaves nothing behind). For a folder store
    (:meth:`FileStore.from_folder`) the manifest records the folder's files (names, sizes,
    modification times), read before any image, so a later change of the folder is detected.

    Returns ``out``. Raises DataError if ``out`` exists and is not empty (unless ``replace`` and
    ``out`` is an earlier packed copy, which is then replaced), ImageReadError for a bad source
    image; with ``on_bad_image="skip"`` bad images are left out and appended to ``skipped``.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    out = Path(out)
    _prepare_target(out, replace)
    source_root = getattr(store, "root", None) if isinstance(store, FileStore) else None
    recursive = bool(getattr(store, "recursive", False))
    source_files = scan_source(source_root, recursive=recursive) if source_root is not None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        entries = _write_lmdb(store, tmp, out.name, encoding, workers, progress, commit_every, on_bad_image, skipped)
        if not entries:
            raise DataError(f"{store.location}: no image could be packed")
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "encoding": encoding,
            "count": len(entries),
            "source": str(Path(source_root).resolve()) if source_root is not None else store.location,
            "recursive": recursive,
            "source_files": source_files,
            "data_bytes": (tmp / DATA_FILE).stat().st_size,
            "entries": entries,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        level = 1 if encoding == "png" else 0
        (tmp / "meta_info.txt").write_text(
            "".join(f"{e['name']} ({e['height']},{e['width']},{e['channels']}) {level}\n" for e in entries)
        )
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_lmdb(
    store: ImageStore,
    folder: Path,
    label: str,
    encoding: str,
    workers: int,
    progress: bool,
    commit_every: int,
    on_bad_image: str,
    skipped: list[tuple[str, str]] | None,
) -> list[dict]:
    """Write the LMDB environment into ``folder``; returns the manifest entries."""
    from tqdm import tqdm

    total = sum(h * w * 3 for h, w in (store.shape(i) for i in range(len(store))))
    map_size = int(total * 1.6) + (64 << 20)
    env = lmdb.open(str(folder), map_size=map_size, subdir=True, meminit=False, map_async=True)
    entries = []
    try:
        txn = env.begin(write=True)
        bar = tqdm(total=len(store), desc=f"pack {label}", unit="img", disable=not progress)
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
    return entries


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` folder to ``out``; an earlier packed ``out`` is removed only after."""
    if out.exists() and any(out.iterdir()):
        with _ENVS_LOCK:
            stale_env = _ENVS.pop((os.getpid(), str(out.resolve())), None)
        if stale_env is not None:  # this process read the old copy: close it before it goes away
            stale_env.close()
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)


def _verify_entries(path: str) -> list[str]:
    """Re-hash every value (run in a child process by :func:`verify_packed`)."""
    root = Path(path)
    manifest = _load_manifest(root)
    problems: list[str] = []
    env = lmdb.open(str(root), readonly=True, lock=False, readahead=False, meminit=False)
    try:
        with env.begin(buffers=True) as txn:
            for e in manifest["entries"]:
                buf = txn.get(e["name"].encode("utf-8"))
                where = f"{root}:{e['name']}"
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
        n_entries = env.stat()["entries"]
    finally:
        env.close()
    if n_entries != manifest["count"]:
        problems.append(f"{root}: LMDB holds {n_entries} entries, manifest lists {manifest['count']}")
    return problems


def verify_packed(path: str | Path, *, isolate: bool = True) -> list[str]:
    """Check a packed directory against its manifest; returns the problems (empty when intact).

    First, without touching the memory map: the manifest, the LMDB file's size against its header
    and the recorded size (truncation). Then every value is re-hashed: missing keys, size or
    checksum mismatches, PNG values that do not decode to the recorded shape. With ``isolate``
    (default) the re-hashing runs in a child process, so a corruption that makes LMDB crash the
    process (SIGBUS, SIGSEGV) comes back as one problem instead of killing the caller.
    Raises DataError when ``path`` is not a packed directory at all.
    """
    path = Path(path)
    manifest = _load_manifest(path)
    try:
        check_data_file(path, manifest)
    except DataError as exc:
        return [str(exc)]
    if not isolate:
        try:
            return _verify_entries(str(path))
        except lmdb.Error as exc:
            return [f"{path}: corrupt LMDB ({' '.join(str(exc).split())})"]
    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(_verify_entries, str(path)).result()
    except BrokenProcessPool:
        return [f"{path / DATA_FILE}: corrupt: reading it crashed the verifying process; re-pack it or copy it again"]
    except lmdb.Error as exc:
        return [f"{path}: corrupt LMDB ({' '.join(str(exc).split())})"]
