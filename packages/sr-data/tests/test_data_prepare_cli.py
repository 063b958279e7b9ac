"""Sub-image extraction, LR folders, and the sr-data command (one-line errors, exit codes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sr_data import read_image, write_image
from sr_data.cli import main
from sr_data.prepare import crop_positions, extract_subimages, make_lr_folder
from sr_data.transforms import bicubic_downscale_uint8


def _rand(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_crop_positions_basicsr() -> None:
    # DIV2K 2040 px wide: 0..1440 every 240, plus one flush with the edge (remainder 120 > 0)
    assert crop_positions(2040, 480, 240) == [0, 240, 480, 720, 960, 1200, 1440, 1560]
    assert crop_positions(960, 480, 240) == [0, 240, 480]  # exact fit, no extra crop
    assert crop_positions(1000, 480, 240, thresh=40) == [0, 240, 480]  # remainder 40 not > 40
    assert crop_positions(100, 480, 240) == [0]
    assert crop_positions(510, 120, 60) == [0, 60, 120, 180, 240, 300, 360, 390]  # x4 LR of 2040


def test_subimages_hr_and_lr_stay_aligned(tmp_path: Path) -> None:
    s = 2
    lr = _rand(15, 11, 1)
    write_image(tmp_path / "lr" / f"0001x{s}.png", lr)
    write_image(tmp_path / "hr" / "0001.png", lr.repeat(s, 0).repeat(s, 1))
    rep_hr = extract_subimages(
        tmp_path / "hr", tmp_path / "hr_sub", crop_size=8, step=4, workers=1, progress=False
    )
    rep_lr = extract_subimages(
        tmp_path / "lr", tmp_path / "lr_sub", crop_size=8, step=4, scale=s, workers=2, progress=False
    )
    hr_names = sorted(p.name for p in (tmp_path / "hr_sub").iterdir())
    lr_names = sorted(p.name for p in (tmp_path / "lr_sub").iterdir())
    # HR 30x22: rows 0,4,..,20 (+22 flush), cols 0,4,..,12 (+14 flush) -> 7 x 5 = 35 crops
    assert rep_hr.written == rep_lr.written == 35 and hr_names == lr_names
    assert hr_names[0] == "0001_s001.png" and hr_names[-1] == "0001_s035.png"
    for n in hr_names:
        h, l_ = read_image(tmp_path / "hr_sub" / n), read_image(tmp_path / "lr_sub" / n)
        assert h.shape == (8, 8, 3) and l_.shape == (4, 4, 3)
        np.testing.assert_array_equal(h, l_.repeat(s, 0).repeat(s, 1))


def test_make_lr_folder(tmp_path: Path) -> None:
    hr = _rand(13, 10, 3)
    write_image(tmp_path / "hr" / "img.png", hr)
    rep = make_lr_folder(tmp_path / "hr", tmp_path / "X3", scale=3, workers=1, progress=False)
    assert rep.written == 1
    out = read_image(tmp_path / "X3" / "imgx3.png")
    np.testing.assert_array_equal(out, bicubic_downscale_uint8(hr[:12, :9], 3))


def test_cli_prepare_pack_verify_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for k in range(2):
        write_image(tmp_path / "hr" / f"{k:04d}.png", _rand(40, 36, k))
    (tmp_path / "hr" / "readme.txt").write_text("not an image")
    assert main(["prepare", "pack", str(tmp_path / "hr"), str(tmp_path / "x.lmdb"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sr-data: error:") and "readme.txt" in err and "\n" not in err
    code = main(
        [
            "prepare",
            "pack",
            str(tmp_path / "hr"),
            str(tmp_path / "hr.lmdb"),
            "--no-progress",
            "--on-bad-image",
            "skip",
            "--workers",
            "1",
        ]
    )
    cap = capsys.readouterr()
    assert code == 0 and "packed 2 images" in cap.out and "skipped 1 bad file" in cap.err
    assert main(["verify", str(tmp_path / "hr.lmdb")]) == 0
    assert main(["check", "folder", "--root", str(tmp_path / "hr"), "--scale", "2", "--patch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "2 images" in out and "lr (3, 8, 8) hr (3, 16, 16)" in out
    assert main(["prepare", "subimages", str(tmp_path / "nope"), str(tmp_path / "o"), "--no-progress"]) == 1
    assert "nope: folder does not exist" in capsys.readouterr().err
    assert main(["check", "set5", "--root", str(tmp_path), "--kind", "eval"]) == 1
    assert "no folder for set5" in capsys.readouterr().err


def test_console_script_has_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bad.png").write_bytes(b"garbage")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sr_data.cli",
            "prepare",
            "pack",
            str(tmp_path / "src"),
            str(tmp_path / "o.lmdb"),
            "--workers",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("sr-data: error:") and "bad.png" in proc.stderr
