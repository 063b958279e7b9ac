"""``sr-data download div2k|flickr2k``: resumable, checksum-verified downloads (stdlib only).

Sources (documented in BasicSR's DatasetPreparation.md and the EDSR project page):

* DIV2K: ``https://data.vision.ee.ethz.ch/cvl/DIV2K/<file>.zip``. The sizes and sha256 values
  are the ones published in TensorFlow Datasets' ``url_checksums/div2k.txt``.
* Flickr2K: ``https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar``. Only an MD5 is published for
  it (torchSR's ``Flickr2K.tar`` entry), so it is verified with MD5; the sha256 is printed once
  the archive is verified, for pinning in a ``--checksums`` file.

Archives go to ``<root>/DIV2K/`` and ``<root>/`` and are extracted so that the folders match the
layout of :mod:`sr_data.datasets` (``DIV2K/DIV2K_train_HR``, ``Flickr2K/Flickr2K_HR``, ...).

Resume: data is written to ``<file>.part``; a new attempt asks the server for the rest with an
HTTP ``Range`` request (and starts over if the server ignores it). A finished archive is hashed
before it is renamed into place; a mismatch deletes it and fails.
"""

from __future__ import annotations

import hashlib
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COLLECTIONS", "DownloadError", "RemoteFile", "download_collection", "download_file", "extract"]

DIV2K_BASE = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
FLICKR2K_BASE = "https://cv.snu.ac.kr/research/EDSR/"


class DownloadError(RuntimeError):
    """A download that failed: unreachable host, HTTP error, or checksum mismatch."""


@dataclass(frozen=True)
class RemoteFile:
    """One archive: its file name, the folder (below the root) it goes to, size and digest."""

    filename: str
    subdir: str
    size: int | None
    digest: str | None
    algorithm: str = "sha256"


_DIV2K = {
    "DIV2K_train_HR.zip": (3530603713, "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335"),
    "DIV2K_valid_HR.zip": (448993893, "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc"),
    "DIV2K_train_LR_bicubic_X2.zip": (
        925390592,
        "a53a424317575838dadce4bcd97cf7b744d6855f43740ed5f0245af3cf4bd850",
    ),
    "DIV2K_train_LR_bicubic_X3.zip": (
        427847282,
        "ad5c8e5507e2765823d3c2c5bd0934842efcd487c5370604c224090898b3163a",
    ),
    "DIV2K_train_LR_bicubic_X4.zip": (
        246914039,
        "f006b837f4eb52b82909aa01478e6d6d199eefce932179491d0c9dbb706dde3a",
    ),
    "DIV2K_valid_LR_bicubic_X2.zip": (
        117763600,
        "60eed9875c697df51204aa579e2a699e1d5215095788a097ff54dd17e2664d57",
    ),
    "DIV2K_valid_LR_bicubic_X3.zip": (
        54513392,
        "04b9a2ed3b4a0715d3924d3ae8514830c3328fac8d30512ce716d6f419e052a3",
    ),
    "DIV2K_valid_LR_bicubic_X4.zip": (
        31505881,
        "a50a5d1c4b88de4e8d300d8fb2b904c52fe93b2b298a4899697760d7cbb6d553",
    ),
}

COLLECTIONS: dict[str, tuple[str, tuple[RemoteFile, ...]]] = {
    "div2k": (DIV2K_BASE, tuple(RemoteFile(n, "DIV2K", s, d) for n, (s, d) in _DIV2K.items())),
    "flickr2k": (
        FLICKR2K_BASE,
        (RemoteFile("Flickr2K.tar", ".", None, "5d3f39443d5e9489bff8963f8f26cb03", "md5"),),
    ),
}

Progress = Callable[[int, int | None], None]


def _hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _open_url(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "sr-data"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the .part file is complete
            return None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"{url}: cannot reach the server ({reason}); check the network, or download the file by hand "
            "and place it in the target folder"
        ) from exc


def download_file(
    url: str,
    dest: str | Path,
    *,
    digest: str | None = None,
    algorithm: str = "sha256",
    size: int | None = None,
    timeout: float = 30.0,
    progress: Progress | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, return ``dest``.

    An existing ``dest`` whose digest matches is kept without any network access.

    Raises:
        DownloadError: unreachable host, HTTP error, connection lost, or digest mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if digest is None or _hash_file(dest, algorithm) == digest:
            return dest
        dest.unlink()  # a stale or broken copy: fetch again
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    resp = _open_url(url, offset, timeout)
    if resp is not None:
        with resp:
            status = getattr(resp, "status", 200)
            if offset and status != 206:  # server ignored the Range request: start over
                offset = 0
            length = resp.headers.get("Content-Length")
            total = (offset + int(length)) if length is not None else size
            done = offset
            try:
                with open(part, "ab" if offset else "wb") as fh:
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        fh.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
            except (TimeoutError, OSError) as exc:
                raise DownloadError(
                    f"{url}: connection lost after {done} bytes ({exc}); run again to resume"
                ) from exc
            if total is not None and done < total:
                raise DownloadError(
                    f"{url}: connection closed after {done} of {total} bytes; run again to resume"
                )
    if digest is not None:
        got = _hash_file(part, algorithm)
        if got != digest:
            part.unlink()
            raise DownloadError(
                f"{dest}: {algorithm} mismatch (expected {digest}, got {got}); the file was deleted"
            )
    part.replace(dest)
    return dest


def _safe_target(base: Path, name: str) -> Path:
    target = (base / name).resolve()
    if not target.is_relative_to(base.resolve()):
        raise DownloadError(f"archive member {name!r} would be written outside {base}")
    return target


def extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a .zip or .tar(.gz) into ``dest``, refusing members that escape it."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _safe_target(dest, name)
                zf.extractall(dest)
            return
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _safe_target(dest, m.name)
                if m.issym() or m.islnk() or m.isdev():
                    raise DownloadError(
                        f"{archive}: member {m.name!r} is a link or device; refusing to extract"
                    )
            tf.extractall(dest, members=members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"{archive}: cannot extract ({exc})") from exc


def read_checksums(path: str | Path) -> dict[str, str]:
    """``filename digest`` lines (``#`` comments allowed) -> dict."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, digest = line.split()[:2]
            out[name] = digest.lower()
    return out


def download_collection(
    name: str,
    root: str | Path,
    *,
    base_url: str | None = None,
    files: Sequence[str] | None = None,
    checksums: dict[str, str] | None = None,
    keep_archives: bool = True,
    do_extract: bool = True,
    timeout: float = 30.0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Download (and extract) the archives of ``name`` ("div2k" or "flickr2k") under ``root``.

    ``files`` restricts the archives (by file name); ``base_url`` replaces the documented host (a
    mirror); ``checksums`` maps file names to sha256 digests that replace the built-in ones.
    Returns the archive paths.
    """
    from tqdm import tqdm

    if name not in COLLECTIONS:
        raise DownloadError(f"unknown collection {name!r}; choose from {', '.join(COLLECTIONS)}")
    default_base, remote = COLLECTIONS[name]
    base = (base_url or default_base).rstrip("/") + "/"
    chosen = list(remote)
    if files:
        known = {r.filename for r in remote}
        unknown = [f for f in files if f not in known]
        if unknown:
            raise DownloadError(f"{name}: unknown file(s) {unknown}; known: {sorted(known)}")
        chosen = [r for r in remote if r.filename in files]
    root = Path(root)
    out = []
    for rf in chosen:
        digest, algo = rf.digest, rf.algorithm
        if checksums and rf.filename in checksums:
            digest, algo = checksums[rf.filename], "sha256"
        target_dir = root / rf.subdir
        dest = target_dir / rf.filename
        log(f"{rf.filename}: {base}{rf.filename} -> {dest}")
        bars: list = []  # the bar appears once bytes arrive (no empty bar before a network error)

        def report(done: int, total: int | None, bars: list = bars, name: str = rf.filename) -> None:
            if not bars:
                bars.append(tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress))
            bar = bars[0]
            if total is not None:
                bar.total = total
            bar.n = done
            bar.refresh()

        try:
            download_file(
                base + rf.filename,
                dest,
                digest=digest,
                algorithm=algo,
                size=rf.size,
                timeout=timeout,
                progress=report,
            )
        finally:
            for bar in bars:
                bar.close()
        if algo != "sha256":
            log(f"{rf.filename}: {algo} verified; sha256 {_hash_file(dest, 'sha256')}")
        if do_extract:
            extract(dest, target_dir)
            if not keep_archives:
                dest.unlink()
        out.append(dest)
    return out
