"""Issue 17, case 5 and the sr-data messages of case 7: stale and truncated packed copies, a
``check`` that decodes every image, and prepare commands that leave nothing behind on failure.

Each test reproduces the reported behaviour (the commands used to accept it silently or crash).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sr_data import DataError, build_train_dataset, write_image
from sr_data.cli import main
from sr_data.datasets import open_store
from sr_data.packed import (
    PackedStore,
    check_data_file,
    lmdb_required_bytes,
    stale_reason,
    verify_packed,
    write_packed,
)
from sr_data.stores import FileStore


def _rand(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _folder(path: Path, n: int, size: tuple[int, int] = (24, 20)) -> Path:
    for k in range(n):
        write_image(path / f"{k:04d}.png", _rand(*size, k))
    return path


def _pack(folder: Path) -> Path:
    store, _ = FileStore.from_folder(folder)
    return write_packed(store, folder.parent / (folder.name + ".lmdb"), progress=False)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and "it/s]" not in ln and "img/s]" not in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith("sr-data: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def _truncated_png(path: Path) -> None:
    write_image(path.with_suffix(".tmp.png"), _rand(64, 64, 99), compress_level=0)
    data = path.with_suffix(".tmp.png").read_bytes()
    path.with_suffix(".tmp.png").unlink()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut


# --- stale packed copies ----------------------------------------------------------------------


def test_stale_packed_sibling_is_refused_not_used(tmp_path: Path, capsys) -> None:
    """Case 5: a .lmdb next to a folder that gained an image was used silently (5 counted, 6 there)."""
    hr = _folder(tmp_path / "hr", 5)
    _pack(hr)
    assert main(["check", "folder", "--root", str(hr), "--scale", "2", "--patch-size", "4"]) == 0
    assert "5 images" in capsys.readouterr().out
    write_image(hr / "0005.png", _rand(24, 20, 5))
    rc = main(["check", "folder", "--root", str(hr), "--scale", "2", "--patch-size", "4"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1
    assert "hr.lmdb: out of date" in line and "1 new (0005.png)" in line and "--replace" in line
    with pytest.raises(DataError, match="out of date"):
        build_train_dataset("folder", root=hr, scale=2, patch_size=4)
    # reading the folder itself is still possible, and --replace re-packs on request
    assert main(["check", "folder", "--root", str(hr), "--scale", "2", "--patch-size", "4", "--no-packed"]) == 0
    assert "6 images" in capsys.readouterr().out
    assert main(["prepare", "pack", str(hr), str(tmp_path / "hr.lmdb"), "--no-progress"]) == 1
    assert "--replace" in _one_error_line(capsys.readouterr().err)
    assert main(["prepare", "pack", str(hr), str(tmp_path / "hr.lmdb"), "--replace", "--no-progress",
                 "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["check", "folder", "--root", str(hr), "--scale", "2", "--patch-size", "4"]) == 0
    assert "6 images" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_changed_and_removed_files_make_the_copy_stale(tmp_path: Path) -> None:
    hr = _folder(tmp_path / "hr", 3)
    packed = _pack(hr)
    assert stale_reason(packed) is None
    st = (hr / "0001.png").stat()
    write_image(hr / "0001.png", _rand(30, 20, 7))  # same name, other content and size
    os.utime(hr / "0001.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "1 changed (0001.png)" in stale_reason(packed)
    (hr / "0002.png").unlink()
    why = stale_reason(packed)
    assert "1 removed (0002.png)" in why and "1 changed" in why
    with pytest.raises(DataError, match="out of date"):
        open_store(packed)  # the packed copy named directly is checked against its recorded folder too
    # a folder that is gone leaves nothing to compare: the copy is used (it may be all there is)
    for p in hr.iterdir():
        p.unlink()
    hr.rmdir()
    assert stale_reason(packed) is None
    assert isinstance(open_store(packed)[0], PackedStore)


def test_non_image_files_do_not_make_a_copy_stale(tmp_path: Path) -> None:
    hr = _folder(tmp_path / "hr", 2)
    packed = _pack(hr)
    (hr / "notes.txt").write_text("not data")
    (hr / ".DS_Store").write_bytes(b"x")
    time.sleep(0.01)
    assert stale_reason(packed) is None


# --- truncated / corrupt LMDB -----------------------------------------------------------------


def _truncate(packed: Path, keep: int) -> None:
    data = packed / "data.mdb"
    with open(data, "r+b") as fh:
        fh.truncate(keep)


def test_header_size_matches_the_file(tmp_path: Path) -> None:
    packed = _pack(_folder(tmp_path / "hr", 3))
    assert lmdb_required_bytes(packed / "data.mdb") == (packed / "data.mdb").stat().st_size
    check_data_file(packed)


@pytest.mark.parametrize("cut", ["half", "one_page"])
def test_verify_on_a_truncated_lmdb_is_one_line_not_a_bus_error(tmp_path: Path, cut: str) -> None:
    """Case 5: `sr-data verify` on a truncated LMDB died with 'Bus error' (exit 135)."""
    packed = _pack(_folder(tmp_path / "hr", 4, size=(64, 64)))
    size = (packed / "data.mdb").stat().st_size
    _truncate(packed, size // 2 if cut == "half" else size - 4096)
    proc = subprocess.run([sys.executable, "-m", "sr_data.cli", "verify", str(packed)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    line = _one_error_line(proc.stderr)
    assert "truncated" in line and "data.mdb" in line
    with pytest.raises(DataError, match="truncated"):
        PackedStore(packed)  # training refuses it too, before the memory map is read
    proc = subprocess.run([sys.executable, "-m", "sr_data.cli", "check", "folder", "--root", str(packed),
                           "--scale", "2", "--patch-size", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "truncated" in _one_error_line(proc.stderr)


def test_verify_survives_garbage_pages(tmp_path: Path) -> None:
    """Overwriting the B-tree pages (size intact) is reported as problems, whatever LMDB does with it."""
    packed = _pack(_folder(tmp_path / "hr", 4, size=(64, 64)))
    data = packed / "data.mdb"
    raw = bytearray(data.read_bytes())
    rng = np.random.default_rng(0)
    raw[2 * 4096 :] = rng.integers(0, 256, len(raw) - 2 * 4096, dtype=np.uint8).tobytes()
    data.write_bytes(bytes(raw))
    problems = verify_packed(packed)
    assert problems, "garbage pages must not verify"
    assert all("\n" not in p for p in problems)


# --- check decodes every image ----------------------------------------------------------------


def test_check_decodes_every_image_by_default(tmp_path: Path, capsys) -> None:
    """Case 5: `check` without --load passed a corrupt PNG (its header is fine) that then stopped training."""
    hr = _folder(tmp_path / "hr", 3, size=(64, 64))
    _truncated_png(hr / "0002.png")
    rc = main(["check", "folder", "--root", str(hr), "--scale", "2", "--patch-size", "4", "--no-progress"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1 and "0002.png" in line and "1 of 3 images fail to decode" in line
    rc = main(["check", "folder", "--root", str(hr), "--scale", "2", "--patch-size", "4", "--fast", "--load", "0"])
    assert rc == 0 and "headers checked" in capsys.readouterr().out


def test_skip_never_substitutes_silently(tmp_path: Path, capsys) -> None:
    """Case 5: with --on-bad-image skip --load, another image was substituted without a word."""
    hr = _folder(tmp_path / "hr", 3, size=(64, 64))
    _truncated_png(hr / "0001.png")
    rc = main(["check", "folder", "--root", str(hr), "--scale", "2", "--patch-size", "4", "--on-bad-image", "skip",
               "--load", "3", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0
    assert "1 of 3 images fail to decode" in cap.err and "0001.png" in cap.err
    assert "skipped a bad image while loading" in cap.err  # item 1 was replaced: said so
    assert "2 of 3 decoded" in cap.out


# --- prepare: usage errors and nothing left behind -------------------------------------------


def test_step_zero_is_a_usage_error_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    """Case 7: `--step 0` gave 'range() arg 3 must not be zero' and left a folder blocking the rerun."""
    hr = _folder(tmp_path / "hr", 2, size=(40, 40))
    out = tmp_path / "sub"
    rc = main(["prepare", "subimages", str(hr), str(out), "--step", "0", "--no-progress"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "--step must be a positive integer, got 0" in line
    assert not out.exists()
    assert main(["prepare", "subimages", str(hr), str(out), "--crop-size", "20", "--step", "20", "--no-progress",
                 "--workers", "1"]) == 0
    assert len(list(out.iterdir())) == 8


def test_failed_prepare_leaves_nothing_that_blocks_the_rerun(tmp_path: Path, capsys) -> None:
    hr = _folder(tmp_path / "hr", 3, size=(40, 40))
    _truncated_png(hr / "0002.png")
    out = tmp_path / "X2"
    assert main(["prepare", "lr", str(hr), str(out), "--scale", "2", "--no-progress", "--workers", "1"]) == 1
    assert "0002.png" in _one_error_line(capsys.readouterr().err)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (hr / "0002.png").unlink()
    assert main(["prepare", "lr", str(hr), str(out), "--scale", "2", "--no-progress", "--workers", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000x2.png", "0001x2.png"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["check", "folder"], "--root is required"),
        (["check", "sample", "--scale", "0"], "--scale must be a positive integer"),
        (["prepare", "lr", "a", "b", "--scale", "1"], "--scale must be an integer >= 2"),
        (["prepare", "subimages", "a", "b", "--crop-size", "100", "--scale", "3"], "multiples of --scale 3"),
        (["prepare", "pack", "a", "b", "--workers", "0"], "--workers must be a positive integer"),
    ],
)
def test_usage_errors_exit_2_naming_the_flag(args, match, capsys) -> None:
    assert main(args) == 2
    assert match in _one_error_line(capsys.readouterr().err)


def test_threads_opening_one_packed_store_share_one_environment(tmp_path: Path, monkeypatch) -> None:
    """`sr-data check` decodes in a thread pool: threads that miss the environment cache together
    must not open the LMDB twice ("already open in this process"). The open is slowed to widen the race."""
    import threading

    import sr_data.packed as packed

    packed_dir = _pack(_folder(tmp_path / "hr", 2))
    real_open = packed.lmdb.open

    def slow_open(*args, **kwargs):
        time.sleep(0.05)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(packed.lmdb, "open", slow_open)
    barrier, envs, errors = threading.Barrier(6), [], []

    def worker() -> None:
        barrier.wait()
        try:
            envs.append(packed._shared_env(packed_dir))
        except DataError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(envs) == 6 and len({id(e) for e in envs}) == 1
