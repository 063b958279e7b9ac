"""Issue 17, cases 2, 3, 6 (sr-eval part) and 7: users' files are never lost, names never collide,
messages speak flags; plus the image kinds Real-ESRGAN / chaiNNer users bring (alpha, grayscale,
16 bits, --outscale, quality).

The model ``safety-nearest`` is exactly nearest-neighbour upscaling, so every output pixel is known.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sr_eval import cli, upscale_cli

sys.path.insert(0, str(Path(__file__).parent))
import _safety_models as sm

M = ["--model", sm.NEAREST, "--scale", "2", "--allow-random-weights", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _models():
    sm.register()
    yield
    sm.unregister()


def _run(argv, capsys, main=upscale_cli.main):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _img(path: Path, h: int = 12, w: int = 10, seed: int = 0, **save) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, **save)
    return np.asarray(Image.open(path).convert("RGB"))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _up(arr: np.ndarray, s: int = 2) -> np.ndarray:
    return arr.repeat(s, 0).repeat(s, 1)


# ----------------------------------------------------------------------------- case 2: inputs are never written


@pytest.mark.parametrize(
    "make_args",
    [
        lambda d: [str(d), "-o", str(d), "--overwrite"],                      # the hint the tool used to print
        lambda d: [str(d), "-o", str(d), "--overwrite", "--suffix", ""],
        lambda d: [str(d / "b.png"), "-o", str(d / "b.png"), "--overwrite"],  # output file = input file
        lambda d: [str(d / "b.png"), "-o", str(d / "B.PNG"), "--overwrite"],  # same file on a case-folding disk
        lambda d: [str(d / "a.png"), str(d / "a_x2.png"), "-o", str(d), "--overwrite"],
        lambda d: [str(d / "a.png"), str(d / "a_x2.png"), "-o", str(d / "sub" / ".."), "--overwrite"],
        lambda d: [str(d), "-o", str(d.parent / "link"), "--overwrite"],   # a symlink to the input folder
        lambda d: [str(d / "a.png"), "-o", str(d.parent / "hard"), "--overwrite", "--suffix", "", "--format", "png"],
    ],
)
def test_inputs_are_byte_identical_after_any_run(tmp_path, capsys, make_args):
    d = tmp_path / "in"
    d.mkdir()
    (d / "sub").mkdir()
    _img(d / "a.png")
    _img(d / "a_x2.png", seed=1)
    _img(d / "b.png", seed=2)
    (tmp_path / "link").symlink_to(d)
    (tmp_path / "hard").mkdir()
    (tmp_path / "hard" / "a.png").hardlink_to(d / "a.png")  # output name = a hard link of an input
    before = _digest(d)
    rc, _, err = _run([*make_args(d), *M], capsys)
    assert rc == 2, err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err
    assert ("input" in err) or ("would be written" in err)
    assert _digest(d) == before


def test_output_folder_inside_the_input_folder_is_fine_and_inputs_untouched(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    a = _img(d / "a.png")
    before = _digest(d)
    rc, _, err = _run([str(d), "-o", str(d / "up"), *M], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(d / "up" / "a_x2.png")), _up(a))
    assert {k: v for k, v in _digest(d).items() if not k.startswith("up/")} == before


# ----------------------------------------------------------------------------- case 3: collisions


def test_colliding_names_are_refused_before_anything_is_written(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    _img(d / "a.png")
    _img(d / "a.jpg", seed=1)
    _img(d / "c.png", seed=2)
    out = tmp_path / "out"
    for extra in ([], ["--overwrite"]):
        rc, _, err = _run([str(d), "-o", str(out), *M, *extra], capsys)
        assert rc == 2 and err.count("\n") == 1
        assert "a_x2.png would be written from 2 inputs" in err and "a.jpg" in err and "a.png" in err
        assert "--format same" in err
        assert not out.exists()  # not even c.png was written
    rc, _, err = _run([str(d), "-o", str(out), *M, "--format", "same"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.jpg", "a_x2.png", "c_x2.png"]
    assert "wrote 3 of 3" in err


def test_same_names_in_two_folders_collide(tmp_path, capsys):
    for k in (1, 2):
        (tmp_path / f"d{k}").mkdir()
        _img(tmp_path / f"d{k}" / "x.png", seed=k)
    rc, _, err = _run([str(tmp_path / "d1"), str(tmp_path / "d2"), "-o", str(tmp_path / "o"), *M, "--overwrite"],
                      capsys)
    assert rc == 2 and "separate -o folders" in err and not (tmp_path / "o").exists()


def test_existing_outputs_kept_unless_overwrite_and_counts_are_true(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    a = _img(d / "a.png")
    _img(d / "b.png", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_x2.png").write_bytes(b"user's own file")
    rc, _, err = _run([str(d), "-o", str(out), *M], capsys)
    assert rc == 1 and "wrote 1 of 2" in err and "output exists; not replaced (use --overwrite" in err
    assert (out / "a_x2.png").read_bytes() == b"user's own file"
    rc, _, err = _run([str(d), "-o", str(out), *M, "--overwrite"], capsys)
    assert rc == 0 and "wrote 2 of 2" in err
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_x2.png")), _up(a))
    assert len(list(out.iterdir())) == 2  # the reported count is the number of files there
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


# ----------------------------------------------------------------------------- case 7: messages


def test_gif_output_is_refused_not_made_a_folder(tmp_path, capsys):
    _img(tmp_path / "a.png")
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "out.gif"), *M], capsys)
    assert rc == 2 and "cannot write .gif" in err and err.count("\n") == 1
    assert not (tmp_path / "out.gif").exists()


def test_single_file_message_names_the_file(tmp_path, capsys):
    a = _img(tmp_path / "a.png")
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "res" / "big.png"), *M], capsys)
    assert rc == 0
    assert f"wrote {tmp_path / 'res' / 'big.png'}" in err and f"to {tmp_path}\n" not in err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "res" / "big.png")), _up(a))


def test_file_name_output_with_several_inputs_is_a_usage_error(tmp_path, capsys):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png", seed=1)
    rc, _, err = _run([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "o.png"), *M], capsys)
    assert rc == 2 and "names a file, but there are 2 input images" in err


def test_list_models_needs_no_input(capsys):
    rc, out, _err = _run(["--list-models"], capsys)
    assert rc == 0 and sm.NEAREST in out.split() and "esc-light" in out.split()


def test_list_models_into_a_closed_pipe_is_quiet():
    """`sr-eval --list-models | head -1` printed a BrokenPipe error."""
    proc = subprocess.Popen([sys.executable, "-m", "sr_eval.cli", "--list-models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line, like `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_tile_16_is_rounded_as_the_readme_says(tmp_path, capsys):
    """`--tile 16` was refused ('--tile-overlap must be in [0, tile)') although the README rounds it up."""
    a = _img(tmp_path / "a.png", 70, 90)
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), *M, "--tile", "16"], capsys)
    assert rc == 0, err
    assert "--tile 16 rounded up to 36 (a multiple of the model's pad multiple 4, at least --tile-overlap 32 + 4)" in err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), _up(a))


def test_bf16_on_cpu_warns(tmp_path, capsys):
    _img(tmp_path / "a.png")
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), *M, "--precision", "bf16"], capsys)
    assert rc == 0 and "--precision bf16 on the CPU is usually much slower than fp32" in err


def test_checkpoint_errors_speak_flags_not_python(tmp_path, capsys):
    """'pass name=' / 'pass allow_scale_transfer=True' named no flag of the command."""
    from sr_models import create_model, save_safetensors

    _img(tmp_path / "a.png")
    torch.save({"params": {"mystery.weight": torch.zeros(3, 3)}}, tmp_path / "unknown.pth")
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "unknown.pth"),
                       "--device", "cpu"], capsys)
    assert rc == 1 and "--model" in err and "name=" not in err
    esc = create_model("esc-light", scale=2)
    ckpt = save_safetensors(esc, tmp_path / "esc_x2.safetensors")
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", str(ckpt), "--scale", "4",
                       "--device", "cpu"], capsys)
    assert rc == 1 and "--scale 4 was given" in err and "allow_scale_transfer" not in err
    assert "leave --scale out" in err


# ----------------------------------------------------------------------------- case 6: sr-eval run folders


def test_sr_eval_never_overwrites_earlier_results(tmp_path, capsys):
    out = tmp_path / "res"
    args = ["--model", sm.NEAREST, "--scale", "2", "--allow-random-weights", "--datasets", "sample", "--out",
            str(out), "--device", "cpu", "--no-progress"]
    assert _run(args, capsys, cli.main)[0] == 0
    first = _digest(out)
    rc, _, err = _run(args, capsys, cli.main)
    assert rc == 0 and f"to {out / (sm.NEAREST + '_x2_2')}" in err
    assert {k: v for k, v in _digest(out).items() if k.startswith(f"{sm.NEAREST}_x2/")} == first
    assert sorted(p.name for p in out.iterdir()) == [f"{sm.NEAREST}_x2", f"{sm.NEAREST}_x2_2"]
    rc, _, err = _run([*args, "--overwrite"], capsys, cli.main)
    assert rc == 0 and sorted(p.name for p in out.iterdir()) == [f"{sm.NEAREST}_x2", f"{sm.NEAREST}_x2_2"]
    data = json.loads((out / f"{sm.NEAREST}_x2" / f"{sm.NEAREST}_x2.json").read_text())
    assert data["protocol"]["tile"] == "auto" and all(r["tile"] is None for r in data["results"][0]["per_image"])


def test_sr_eval_usage_errors_exit_2(tmp_path, capsys):
    base = ["--allow-random-weights", "--device", "cpu", "--out", str(tmp_path)]
    for extra, match in ((["--model", "nope"], "--model 'nope'"),
                         (["--model", sm.NEAREST, "--scale", "2", "--datasets", "set55"], "--datasets: unknown 'set55'"),
                         (["--model", sm.NEAREST, "--scale", "2", "--datasets", "folder"], "--data-root"),
                         (["--model", sm.NEAREST, "--scale", "2", "--batch-size", "0"], "--batch-size")):
        rc, _, err = _run([*base, *extra], capsys, cli.main)
        assert rc == 2 and match in err and err.count("\n") == 1, err


def test_sr_eval_tiles_an_image_that_does_not_fit_and_records_it(tmp_path, capsys):
    out = tmp_path / "res"
    rc, _, err = _run(["--model", sm.HUNGRY, "--scale", "2", "--allow-random-weights", "--datasets", "sample",
                       "--out", str(out), "--device", "cpu", "--no-progress", "--max-memory", "200M"], capsys, cli.main)
    assert rc == 0, err
    data = json.loads((out / f"{sm.HUNGRY}_x2" / f"{sm.HUNGRY}_x2.json").read_text())
    tiles = [r["tile"] for r in data["results"][0]["per_image"]]
    assert any(tiles) and data["protocol"]["tiles_used"]
    assert "did not fit the memory budget whole and were tiled" in err
    assert data["results"][0]["psnr"] > 20  # nearest upscaling of bicubic LR: a real score, not noise


# ----------------------------------------------------------------------------- image kinds


def test_rgba_alpha_upscaled_separately(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), *M], capsys)
    assert rc == 0, err
    out = Image.open(tmp_path / "o.png")
    assert out.mode == "RGBA"
    got = np.asarray(out)
    np.testing.assert_array_equal(got[..., 3], _up(rgba[..., 3]))  # the model on the alpha = nearest
    np.testing.assert_array_equal(got[..., :3], _up(rgba[..., :3]))  # colour kept where transparent too
    const = np.dstack([rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), np.full((10, 12), 128, np.uint8)])
    Image.fromarray(const, "RGBA").save(tmp_path / "c.png")
    rc, _, err = _run([str(tmp_path / "c.png"), "-o", str(tmp_path / "c_out.png"), *M, "--alpha", "bicubic"], capsys)
    assert rc == 0, err
    assert (np.asarray(Image.open(tmp_path / "c_out.png"))[..., 3] == 128).all()


def test_opaque_alpha_stays_opaque_and_jpeg_refuses_transparency(tmp_path, capsys):
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((8, 8), 255, np.uint8)]), "RGBA").save(tmp_path / "opaque.png")
    rc, _, _ = _run([str(tmp_path / "opaque.png"), "-o", str(tmp_path / "o.png"), *M], capsys)
    assert rc == 0
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape[2] == 4 and (out[..., 3] == 255).all()
    half = np.dstack([rgb, np.full((8, 8), 100, np.uint8)])
    Image.fromarray(half, "RGBA").save(tmp_path / "half.png")
    rc, _, err = _run([str(tmp_path / "half.png"), "-o", str(tmp_path / "o.jpg"), *M], capsys)
    assert rc == 1 and "transparent pixels, which JPG cannot store" in err and not (tmp_path / "o.jpg").exists()


def test_grayscale_is_saved_as_grayscale(tmp_path, capsys):
    g = np.random.default_rng(2).integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    rc, _, err = _run([str(tmp_path / "g.png"), "-o", str(tmp_path / "o.png"), *M], capsys)
    assert rc == 0, err
    out = Image.open(tmp_path / "o.png")
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), _up(g))


def test_16_bit_png_in_and_out(tmp_path, capsys):
    rng = np.random.default_rng(3)
    rgb16 = rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[:, :, ::-1])
    g16 = rng.integers(0, 65536, (6, 8), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")  # Pillow mode I;16
    rc, _, err = _run([str(tmp_path / "rgb16.png"), str(tmp_path / "g16.png"), "-o", str(tmp_path / "o"), *M], capsys)
    assert rc == 0, err
    got = cv2.imread(str(tmp_path / "o" / "rgb16_x2.png"), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got[:, :, ::-1], _up(rgb16))  # every one of the 65536 levels kept
    got = cv2.imread(str(tmp_path / "o" / "g16_x2.png"), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and got.ndim == 2
    np.testing.assert_array_equal(got, _up(g16))


def test_outscale_gives_any_final_size(tmp_path, capsys):
    _img(tmp_path / "a.png", 10, 14)
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), *M, "--outscale", "3.5"], capsys)
    assert rc == 0, err
    assert Image.open(tmp_path / "o" / "a_x3.5.png").size == (49, 35)
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "o1"), *M, "--outscale", "1"], capsys)
    assert rc == 0 and Image.open(tmp_path / "o1" / "a_x1.png").size == (14, 10)
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "o2"), *M, "--outscale", "0"], capsys)
    assert rc == 2 and "--outscale must be positive" in err


def test_jpeg_and_webp_quality(tmp_path, capsys):
    _img(tmp_path / "a.png", 40, 40)
    sizes = {}
    for q in (30, 95):
        rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / f"q{q}.jpg"), *M, "--quality", str(q)], capsys)
        assert rc == 0, err
        sizes[q] = (tmp_path / f"q{q}.jpg").stat().st_size
    assert sizes[30] < sizes[95]
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "l.webp"), *M, "--lossless"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "l.webp").convert("RGB")),
                                  _up(np.asarray(Image.open(tmp_path / "a.png"))))
    rc, _, err = _run([str(tmp_path / "a.png"), "-o", str(tmp_path / "x.jpg"), *M, "--quality", "101"], capsys)
    assert rc == 2 and "--quality" in err
