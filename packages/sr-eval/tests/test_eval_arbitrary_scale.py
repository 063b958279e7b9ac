"""Arbitrary-scale evaluation: the paper's metric (RGB, border scale + 6, no rounding) against
hand-computed values, the whole pipeline on a bilinear model, Table 5's layout, and the commands
(sr-upscale --scale 3.7 writes round(3.7 x size); sr-eval --scale list)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import sr_models
from sr_data import write_image
from sr_eval.arbitrary_scale import (
    PAPER_TABLE5,
    evaluate_arbitrary,
    psnr_rgb_border,
    render_table5,
    wants_arbitrary,
)
from sr_eval.cli import main as eval_main
from sr_eval.upscale_cli import main as upscale_main

TINY = {"dim": 16, "pdim": 8, "n_blocks": 1, "conv_blocks": 1, "window_size": 8, "num_heads": 2,
        "lte_hidden_dim": 8, "lte_mlp_hidden": [8], "attn_backend": "math"}


def _bilinear_lte() -> torch.nn.Module:
    """esc-lte whose MLP outputs 0: the model is the bilinear skip (checked in sr-models' tests)."""
    torch.manual_seed(0)
    model = sr_models.create_model("esc-lte", **TINY).eval()
    with torch.no_grad():
        model.upsampler.imnet.layers[-1].weight.zero_()
        model.upsampler.imnet.layers[-1].bias.zero_()
    return model


def test_psnr_on_a_synthetic_pair_by_hand():
    """20x20 pair, border 8 (x2): the 4x4 centre differs by 0.1 everywhere, MSE 0.01 -> 20 dB; the
    border holds large errors that must be ignored; values above 1 are clamped; no 8-bit rounding."""
    hr = torch.zeros(3, 20, 20, dtype=torch.float64)
    sr = torch.full((3, 20, 20), 5.0, dtype=torch.float64)  # border garbage (clamped to 1, then cropped away)
    sr[:, 8:12, 8:12] = 0.1
    assert psnr_rgb_border(sr, hr, 8) == pytest.approx(20.0, abs=1e-9)
    # one channel differs by 0.3 on half of the centre: MSE = 0.09 * 8 / 48 = 0.015
    sr2 = torch.zeros(3, 20, 20, dtype=torch.float64)
    sr2[1, 8:10, 8:12] = 0.3
    assert psnr_rgb_border(sr2, hr, 8) == pytest.approx(-10 * math.log10(0.015), abs=1e-9)
    # 0.001 is far below half an 8-bit level: rounding would give inf, the paper's float PSNR 60 dB
    assert psnr_rgb_border(torch.full((3, 20, 20), 0.001, dtype=torch.float64), hr, 8) == pytest.approx(60.0, abs=1e-9)
    assert psnr_rgb_border(hr, hr, 8) == math.inf
    with pytest.raises(ValueError, match="border"):
        psnr_rgb_border(sr, hr, 10)


def test_pipeline_on_a_bilinear_model_matches_a_hand_computation(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (45, 52, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", img)
    res = evaluate_arbitrary(_bilinear_lte(), ["folder"], [2.5, 3.0], root=tmp_path, device=torch.device("cpu"))
    from sr_data.arbitrary_scale import arbitrary_scale_pair

    for s, border in ((2.5, 9), (3.0, 9)):
        lr, hr = arbitrary_scale_pair(img, s)  # (18, 20) -> (45, 50) at 2.5; (15, 17) -> (45, 51) at 3
        lr_t = torch.from_numpy(lr).permute(2, 0, 1)[None].double() / 255
        up = F.interpolate(lr_t, size=hr.shape[:2], mode="bilinear", align_corners=False)[0].clamp(0, 1).numpy()
        ref = hr.transpose(2, 0, 1).astype(np.float64) / 255
        mse = np.mean((up[:, border:-border, border:-border] - ref[:, border:-border, border:-border]) ** 2)
        entry = res["folder"][s]
        assert entry["border"] == border and entry["images"] == 1
        assert entry["psnr"] == pytest.approx(-10 * np.log10(mse), abs=1e-4)


def test_table5_layout_lists_the_papers_rows_and_ours_last():
    text = render_table5("esc-lte", {2.0: 30.0, 12.0: 20.0}, compare_paper=True)
    lines = text.splitlines()
    assert "Seen" in lines[1] and "Unseen" in lines[1]
    assert lines[2].split() == ["|", "x2", "x3", "x4", "|", "x6", "x12", "x18", "x24", "x30"]
    esc = next(ln for ln in lines if ln.startswith("ESC+LTE [paper]"))
    assert [float(v) for v in esc.replace("|", " ").split()[2:]] == list(PAPER_TABLE5["ESC+LTE"])
    assert PAPER_TABLE5["ESC+LTE"] == (35.13, 31.38, 29.37, 27.08, 23.97, 22.40, 21.38, 20.64)
    ours = lines[-1].replace("|", " ").split()
    assert ours[:2] == ["esc-lte", "(ours)"] and ours[2:] == ["30.00", "-", "-", "-", "20.00", "-", "-", "-"]
    assert "[paper]" not in render_table5("esc-lte", {2.0: 30.0})


def _tiny_weights(tmp_path):
    torch.manual_seed(0)
    path = sr_models.save_safetensors(sr_models.create_model("esc-lte", **TINY), tmp_path / "lte.safetensors")
    assert wants_arbitrary(None, path) and wants_arbitrary("esc-lte", None) and not wants_arbitrary("esc", None)
    return path


def test_sr_upscale_writes_round_scale_times_size(tmp_path, capsys):
    weights = _tiny_weights(tmp_path)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    out = tmp_path / "out"
    rc = upscale_main(["--model", "esc-lte", "--scale", "3.7", str(tmp_path / "in.png"), "-o", str(out),
                       "--weights", str(weights), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert Image.open(out / "in_x3.7.png").size == (round(41 * 3.7), round(30 * 3.7))  # (152, 111)
    rc = upscale_main([str(tmp_path / "in.png"), "-o", str(out), "--size", "64x20", "--weights", str(weights),
                       "--no-progress"])
    assert rc == 0 and Image.open(out / "in_x64x20.png").size == (64, 20)
    rc = upscale_main(["--model", "esc-light", "--allow-random-weights", "--scale", "2.5", str(tmp_path / "in.png"),
                       "-o", str(tmp_path / "o2")])
    assert rc == 2 and "fixed integer scale" in capsys.readouterr().err


def test_sr_eval_scale_list_prints_table5_and_writes_json(tmp_path, capsys):
    weights = _tiny_weights(tmp_path)
    hr_dir = tmp_path / "hr"
    write_image(hr_dir / "a.png", np.random.default_rng(2).integers(0, 256, (40, 36, 3), dtype=np.uint8))
    rc = eval_main(["--weights", str(weights), "--datasets", "folder", "--data-root", str(hr_dir), "--scale", "2,2.5",
                    "--compare-paper", "--out", str(tmp_path / "res"), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "ESC+LTE [paper]" in out and "esc-lte (ours)" in out and "x2.5" in out
    payload = json.loads((tmp_path / "res" / "esc-lte_arbitrary" / "results.json").read_text())
    assert set(payload["results"]["folder"]) == {"2", "2.5"}
    assert payload["results"]["folder"]["2.5"]["border"] == 9
    rc = eval_main(["--weights", str(weights), "--datasets", "folder", "--data-root", str(hr_dir), "--tile", "64",
                    "--out", str(tmp_path / "res")])
    assert rc == 2 and "--tile" in capsys.readouterr().err
