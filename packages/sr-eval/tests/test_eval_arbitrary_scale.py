"""Arbitrary-scale evaluation: the paper's metric (RGB, border scale + 6, no rounding) against
hand-computed values, the whole pipeline on a bilinear model, Table 5's layout, and the commands
(sr-upscale --scale 3.7 writes round(3.7 x size); sr-eval --scale list)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import sr_models
from sr_data import write_image
from sr_eval.arbitrary_scale import (
    PAPER_TABLE5,
    evaluate_arbitrary,
    psnr_rgb_border,
    render_table5,
    render_tiled,
    tile_parts,
    wants_arbitrary,
)
from sr_eval.cli import main as eval_main
from sr_eval.upscale_cli import main as upscale_main
from sr_models.arbitrary_scale import LTESR, LTEHeadConfig

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


@given(length=st.integers(1, 80), ratio=st.floats(1.0, 12.0), tile=st.integers(2, 40), overlap=st.integers(0, 12))
def test_tile_parts_give_every_output_pixel_to_the_tile_whose_core_holds_it(length, ratio, tile, overlap):
    overlap = min(overlap, tile - 1)
    out_length = max(1, round(length * ratio))
    parts = tile_parts(length, out_length, tile, overlap)
    assert parts[0][2] == 0 and parts[-1][3] == out_length
    assert all(a[3] == b[2] for a, b in itertools.pairwise(parts))  # a partition, in order
    for k, (start, extent, lo, hi) in enumerate(parts):
        assert 0 <= start and start + extent <= length and lo <= hi
        for i in range(lo, hi):
            centre = (i + 0.5) * length / out_length  # LR pixel units
            assert start <= centre <= start + extent
            if 0 < k:  # at least half the overlap away from the tile's inner edges
                assert centre - start >= (parts[k - 1][0] + parts[k - 1][1] - start) / 2 - 1e-9
            if k + 1 < len(parts):
                assert start + extent - centre >= (start + extent - parts[k + 1][0]) / 2 - 1e-9


class _LocalBody(torch.nn.Module):
    """A body whose receptive field is one pixel (1x1 convs), so tiling with an overlap wider than
    the LTE head's own reach (3x3 convs, the 2x2 codes, the bilinear skip) must change nothing."""

    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1), torch.nn.GELU(), torch.nn.Conv2d(6, 6, 1))

    def body_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# LR sides even and output sides odd: then no HR pixel centre sits exactly on an LR pixel centre, where
# LTE's choice of the four codes is a tie that float rounding decides differently in the two frames
@pytest.mark.parametrize(("size", "tile"), [((21, 25), 9), ((53, 61), 12), ((27, 23), 10)])
def test_tiled_render_equals_the_whole_render_for_a_local_body(size, tile):
    torch.manual_seed(0)
    model = LTESR(_LocalBody(), LTEHeadConfig(hidden_dim=8, mlp_hidden=(8,), query_chunk=97), scale=4).eval()
    lr = torch.rand(2, 3, 12, 14)
    with torch.no_grad():
        whole = model(lr, size=size)
        tiled = render_tiled(model, lr, size, tile=tile, overlap=6)
    assert tiled.shape == whole.shape == (2, 3, *size)
    torch.testing.assert_close(tiled, whole, atol=2e-5, rtol=1e-5)


def test_arbitrary_upscaler_tiles_when_the_whole_image_exceeds_the_budget(monkeypatch):
    import sr_eval.memory as memory
    from sr_eval.arbitrary_scale import ArbitraryUpscaler

    torch.manual_seed(0)
    model = LTESR(_LocalBody(), LTEHeadConfig(hidden_dim=8, mlp_hidden=(8,)), scale=4).eval()
    cost = memory.MemoryCost(fixed=0.0, per_pixel=100_000.0, device="cpu", precision="fp32")
    monkeypatch.setattr(memory, "measure_cost", lambda *a, **k: cost)
    lr = torch.rand(1, 3, 30, 34)
    whole_estimate = memory.plan_image(model, cost, 30, 34, budget=None, out_scale=2.9).estimate
    notes: list[str] = []
    up = ArbitraryUpscaler(model, scale=2.9, tile_overlap=6, max_memory=whole_estimate // 2, note=notes.append)
    sr, _ = up(lr, name="x.png")
    assert len(notes) == 1 and "x.png (34x30)" in notes[0] and "rendering in" in notes[0]
    with torch.no_grad():
        torch.testing.assert_close(sr, model(lr, size=(87, 99)).clamp(0, 1), atol=2e-5, rtol=1e-5)
    with pytest.raises(memory.MemoryPlanError, match="tiles of 12 px, not more than twice --tile-overlap 6"):
        ArbitraryUpscaler(model, scale=2.9, tile_overlap=6, max_memory=18_400_000)(lr)  # 12 px fit, 13 do not
    with pytest.raises(memory.MemoryPlanError, match="--tile 30"):  # a forced tile that does not fit
        ArbitraryUpscaler(model, scale=2.9, tile=30, tile_overlap=6, max_memory=whole_estimate // 4)(lr)


def test_sr_upscale_tiles_arbitrary_scale_models_when_asked_or_when_the_budget_is_small(tmp_path, capsys):
    weights = _tiny_weights(tmp_path)
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    rc = upscale_main(["--model", "esc-lte", "--scale", "2.5", str(tmp_path / "in.png"), "-o", str(tmp_path / "t"),
                       "--weights", str(weights), "--tile", "24", "--tile-overlap", "8", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "t" / "in_x2.5.png").size == (130, 100)
    rc = upscale_main(["--model", "esc-lte", "--scale", "2.5", str(tmp_path / "in.png"), "-o", str(tmp_path / "u"),
                       "--weights", str(weights), "--tile", "33", "--tile-overlap", "32", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--tile 33 must exceed twice --tile-overlap 32" in err and not (tmp_path / "u").exists()
    rc = upscale_main(["--model", "esc-lte", "--scale", "2.5", str(tmp_path / "in.png"), "-o", str(tmp_path / "a"),
                       "--weights", str(weights), "--max-memory", "1K", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "in.png" in err and "budget is 1.0 KiB" in err and "Traceback" not in err
