"""sr-upscale, sr-eval and sr-eval profile, run in-process on tiny registered models."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sr_eval import cli, upscale_cli
from sr_eval.paper_results import PAPER_RESULTS, normalize_name, paper_rows

TINY = "eval-test-tiny"


class TinySR(nn.Module):
    """Nearest upsampling plus a small zero-initialised 3x3 conv (so it equals nearest upsampling)."""

    def __init__(self, scale: int, width: int = 4) -> None:
        super().__init__()
        self.scale, self.pad_multiple, self.min_input_size = scale, 4, 6
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        self.config = {"width": width}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return up + F.interpolate(self.tail(torch.relu(self.head(x))), scale_factor=self.scale, mode="nearest")


@pytest.fixture(autouse=True, scope="module")
def _tiny_model_registered():
    """Register the tiny model for this module only (other packages' tests iterate the registry)."""
    from sr_models import list_models, register_model
    from sr_models.registry import _REGISTRY

    list_models()  # load the real families first
    if TINY not in _REGISTRY:
        register_model(TINY, scales=(2, 3), description="sr-eval test model")(
            lambda scale, width=4: TinySR(scale, width)
        )
    yield
    _REGISTRY.pop(TINY, None)


def _main_rc(main, argv):
    """Exit status of a command, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs = {}
    for i, (h, w) in enumerate(sizes):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ext = ["png", "jpg", "webp"][i % 3]
        path = folder / f"img{i}.{ext}"
        Image.fromarray(arr).save(path, **({"lossless": True} if ext == "webp" else {}))
        imgs[path.stem] = np.asarray(Image.open(path).convert("RGB"))
    return imgs


def test_upscale_folder_with_a_corrupt_file(tmp_path, capsys):
    src = tmp_path / "in"
    imgs = _write_images(src, [(10, 12), (9, 7), (12, 12)])
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    (src / "tiny.png").write_bytes(b"")
    Image.fromarray(np.zeros((4, 20, 3), np.uint8)).save(src / "small.png")  # below min_input_size 6
    out = tmp_path / "out"
    rc = upscale_cli.main([str(src), "-o", str(out), "--model", TINY, "--scale", "2",
                           "--allow-random-weights", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "3 not written" in err and "broken.png" in err and "tiny.png" in err and "small.png" in err
    assert "minimum side of 6" in err
    assert "Traceback" not in err
    for stem, arr in imgs.items():
        got = np.asarray(Image.open(out / f"{stem}_x2.png"))  # default suffix _x<scale>
        np.testing.assert_array_equal(got, arr.repeat(2, 0).repeat(2, 1))  # the model is nearest x2


def test_upscale_single_file_tiled_to_named_output(tmp_path):
    imgs = _write_images(tmp_path, [(20, 30)])
    dst = tmp_path / "result.png"
    rc = upscale_cli.main([str(tmp_path / "img0.png"), "-o", str(dst), "--model", TINY, "--scale", "3",
                           "--allow-random-weights", "--tile", "8", "--tile-overlap", "2", "--device", "cpu"])
    assert rc == 0
    np.testing.assert_array_equal(np.asarray(Image.open(dst)), imgs["img0"].repeat(3, 0).repeat(3, 1))


def test_upscale_refuses_random_weights(tmp_path, capsys):
    _write_images(tmp_path, [(8, 8)])
    rc = upscale_cli.main([str(tmp_path), "-o", str(tmp_path / "o"), "--model", TINY, "--scale", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--weights is required" in err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "no-such-model", "--allow-random-weights"], "--model 'no-such-model': unknown model"),
        (["--model", TINY, "--scale", "2", "--weights", "missing.pth"], "--weights missing.pth: file not found"),
        (["--model", TINY, "--scale", "2", "--allow-random-weights", "--tile-overlap", "-1"], "--tile-overlap"),
        (["--model", TINY, "--scale", "2", "--allow-random-weights", "--tile", "0"], "argument --tile"),
        (["--model", TINY, "--scale", "2", "--allow-random-weights", "--max-memory", "lots"], "--max-memory"),
    ],
)
def test_upscale_bad_arguments_one_line(tmp_path, capsys, args, match):
    _write_images(tmp_path / "in", [(8, 8)])
    rc = _main_rc(upscale_cli.main, [str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1, err
    assert match in err
    assert "Traceback" not in err


def test_upscale_missing_input(tmp_path, capsys):
    rc = upscale_cli.main([str(tmp_path / "nope.png"), "-o", str(tmp_path / "o"), "--model", TINY,
                           "--allow-random-weights"])
    err = capsys.readouterr().err
    assert rc == 1 and "no such file or folder" in err and err.count("\n") == 1


def test_weights_round_trip_and_mismatch(tmp_path, capsys):
    from sr_models import create_model

    _write_images(tmp_path / "in", [(8, 8)])
    good = create_model(TINY, scale=2)
    torch.save({"params_ema": good.state_dict()}, tmp_path / "good.pth")
    rc = upscale_cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "o1"), "--model", TINY, "--scale", "2",
                           "--weights", str(tmp_path / "good.pth"), "--device", "cpu"])
    first = capsys.readouterr().err
    assert rc == 0, first
    wrong = create_model(TINY, scale=2, width=7)
    torch.save({"params_ema": wrong.state_dict()}, tmp_path / "wrong.pth")
    rc = upscale_cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "o2"), "--model", TINY, "--scale", "2",
                           "--weights", str(tmp_path / "wrong.pth"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "wrong.pth" in err and "match" in err and err.count("\n") == 1


def test_sr_eval_on_sample_set_writes_reports(tmp_path, capsys):
    out = tmp_path / "res"
    rc = cli.main(["--model", TINY, "--scale", "2", "--allow-random-weights", "--datasets", "sample",
                   "--out", str(out), "--device", "cpu", "--batch-size", "2", "--compare-paper"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "Sample" in cap.out or "sample" in cap.out
    run = out / f"{TINY}_x2"  # each run writes into its own folder
    data = json.loads((run / f"{TINY}_x2.json").read_text())
    res = data["results"][0]
    assert res["dataset"] == "sample" and res["num_images"] == len(res["per_image"]) >= 1
    # the dataset score is the mean of the per-image values
    assert res["psnr"] == pytest.approx(np.mean([r["psnr"] for r in res["per_image"]]))
    assert data["protocol"]["crop_border"] == 2 and data["protocol"]["y_channel"] is True
    rows = list(csv.DictReader((run / f"{TINY}_x2.csv").open()))
    assert rows[0]["dataset"] == "sample" and float(rows[0]["psnr"]) == pytest.approx(res["psnr"], abs=1e-5)
    md = (run / f"{TINY}_x2.md").read_text()
    assert "| Method | Scale | sample |" in md and f"{res['psnr']:.2f}/{res['ssim']:.4f}" in md
    assert "no published figures" in cap.err


def test_sr_eval_missing_dataset_folder(tmp_path, capsys):
    rc = cli.main(["--model", TINY, "--scale", "2", "--allow-random-weights", "--datasets", "set5",
                   "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "dataset 'set5'" in err and "nowhere" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_perceptual_without_pyiqa_is_one_line(tmp_path, capsys):
    pytest.importorskip("sr_data")
    try:
        import pyiqa  # noqa: F401

        pytest.skip("pyiqa is installed")
    except ImportError:
        pass
    rc = cli.main(["--model", TINY, "--scale", "2", "--allow-random-weights", "--datasets", "sample",
                   "--perceptual", "lpips", "--out", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "pip install 'sr-eval[perceptual]'" in err


def test_profile_on_cpu(tmp_path, capsys):
    out = tmp_path / "p.json"
    rc = cli.main(["profile", "--model", TINY, "--scale", "2", "--output-size", "64x48", "--device", "cpu",
                   "--json", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    res = json.loads(out.read_text())
    assert res == json.loads(cap.out)
    width = 4
    assert res["params"] == (3 * 9 * width + width) + (width * 9 * 3 + 3)
    # LR 32x24 (already a multiple of pad_multiple 4); two 3x3 convs: 2 FLOPs per MAC
    lr_pixels = 32 * 24
    assert res["flops"] == 2 * lr_pixels * (3 * 9 * width + width * 9 * 3)
    assert res["flops_method"] == "meta"
    assert res["latency_ms"] is None and res["peak_memory_mb"] is None
    assert res["input_size"] == "32x24" and res["output_size"] == "64x48"
    assert res["macs_pft_flops"] is None  # the tiny family defines no PFT-convention formula
    assert "not defined" in res["macs_pft_flops_definition"]


def test_profile_reports_both_conventions_for_iet_light(capsys):
    from sr_models import create_model

    rc = cli.main(["profile", "--model", "iet-light", "--scale", "4", "--output-size", "1280x720", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    res = json.loads(cap.out)
    with torch.device("meta"):
        model = create_model("iet-light", 4)
    assert res["flops_method"] == "meta" and res["input_size"] == "320x180"
    assert res["macs"] == model.macs(180, 320, "full")  # the counter equals the analytic full count
    assert res["macs_pft_flops"] == model.macs(180, 320, "pft")
    assert res["macs_pft_flops"] < res["macs"]  # conv_after_body at 3 C^2, upsampler reduced
    assert abs(res["macs_pft_flops"] / 69.5e9 - 1) < 0.03  # IET paper, Table 5, x4
    assert res["macs_pft_flops_definition"].startswith("PFT's flops() convention")


def test_profile_bad_size(capsys):
    rc = cli.main(["profile", "--model", TINY, "--scale", "2", "--output-size", "big", "--device", "cpu"])
    assert rc == 2 and "WIDTHxHEIGHT" in capsys.readouterr().err


def test_paper_results_lookup():
    rows = paper_rows("esc", 4)
    assert {r.training for r in rows} == {"DIV2K", "DFLIP"}
    div2k = next(r for r in rows if r.training == "DIV2K")
    assert div2k.results["urban100"] == (27.07, 0.8144)  # ESC paper, Table 2
    assert paper_rows("sst-l-plus", 2)[0].model == "SST-L+"
    assert normalize_name("ESC-lt") == normalize_name("esc-light")
    assert all(len(r.results) in (5, 7) for r in PAPER_RESULTS)
    assert paper_rows("esc", 8) == []


def test_evaluate_dataset_batches_and_aligns_hr():
    """Batched evaluation equals per-image numpy metrics; an HR larger than SR is cropped top-left."""
    from sr_eval import evaluate_dataset, psnr_numpy, ssim_numpy

    g = torch.Generator().manual_seed(0)
    model = TinySR(2).eval()
    items = []
    for i, (h, w) in enumerate([(16, 16), (16, 16), (12, 20), (16, 16)]):
        lr = torch.rand(3, h, w, generator=g)
        hr = torch.rand(3, 2 * h + 1, 2 * w + 3, generator=g)  # one extra row, three extra columns
        items.append({"lr": lr, "hr": hr, "name": f"im{i}"})
    res = evaluate_dataset(model, items, name="toy", crop_border=2, max_batch=2)
    assert [r["name"] for r in res.per_image] == ["im0", "im1", "im2", "im3"]
    for item, row in zip(items, res.per_image, strict=True):
        sr = F.interpolate(item["lr"][None], scale_factor=2, mode="nearest")[0]
        hr = item["hr"][:, : sr.shape[1], : sr.shape[2]]
        sr_np, hr_np = sr.permute(1, 2, 0).numpy(), hr.permute(1, 2, 0).numpy()
        assert row["psnr"] == pytest.approx(psnr_numpy(sr_np, hr_np, crop_border=2), abs=1e-6)
        assert row["ssim"] == pytest.approx(ssim_numpy(sr_np, hr_np, crop_border=2), abs=1e-6)
    assert res.psnr == pytest.approx(np.mean([r["psnr"] for r in res.per_image]))
    with pytest.raises(ValueError, match="smaller than SR"):
        evaluate_dataset(model, [{"lr": torch.rand(3, 8, 8), "hr": torch.rand(3, 15, 16), "name": "bad"}],
                         name="toy", crop_border=0)


def test_perceptual_metrics_go_through_pyiqa(monkeypatch, tmp_path):
    """pyiqa is called lazily with the metric name; here a stand-in module records the calls."""
    import sys
    import types

    from sr_eval.perceptual import perceptual_metrics

    calls = []

    def create_metric(name, device=None, as_loss=False):
        calls.append(name)
        if name == "nope":
            raise ValueError("unknown metric")
        return lambda sr, hr: (sr - hr).abs().mean(dim=(1, 2, 3))

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    fns = perceptual_metrics(["lpips"])
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert fns["lpips"](a, b).tolist() == [1.0, 1.0] and calls == ["lpips"]
    with pytest.raises(ValueError, match="pyiqa metric 'nope'"):
        perceptual_metrics(["nope"])
