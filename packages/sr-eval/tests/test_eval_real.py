"""``sr-eval --real`` (no-reference scores on LR-only folders) with a stand-in pyiqa, the metric file
errors, and ``sr-upscale`` on a saved (randomly initialised) ESC-Real."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import sr_models
from sr_eval import cli, upscale_cli, upscale_tensor
from sr_eval.loading import EvalError
from sr_eval.no_reference import no_reference_metrics, parse_weights


@pytest.fixture(scope="module")
def esc_real_weights(tmp_path_factory):
    """A randomly initialised ESC-Real x4 saved as the trainer exports it (sr_models.save_safetensors)."""
    torch.manual_seed(0)
    model = sr_models.create_model("esc-real", scale=4).eval()
    path = tmp_path_factory.mktemp("w") / "esc-real_x4.safetensors"
    sr_models.save_safetensors(model, path)
    return path, model


def _lr_folder(tmp_path, n: int = 2):
    folder = tmp_path / "RealSRSet"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12 + 4 * i, 16, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


class _FakeMetric(torch.nn.Module):
    """Stands in for a pyiqa metric: the mean intensity of each image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))


@pytest.fixture
def fake_pyiqa(monkeypatch):
    calls: list[dict] = []
    mod = types.ModuleType("pyiqa")

    def create_metric(name, device=None, as_loss=False, pretrained_model_path=None):
        calls.append({"name": name, "path": pretrained_model_path, "as_loss": as_loss})
        return _FakeMetric()

    mod.create_metric = create_metric  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyiqa", mod)
    return calls


def test_sr_upscale_runs_unchanged_on_esc_real_weights(esc_real_weights, tmp_path):
    path, model = esc_real_weights
    src = _lr_folder(tmp_path, n=1)
    out = tmp_path / "out"
    assert upscale_cli.main([str(src), "-o", str(out), "--weights", str(path), "--device", "cpu"]) == 0
    result = np.asarray(Image.open(out / "img0_x4.png"))
    assert result.shape == (48, 64, 3)
    lr = torch.from_numpy(np.array(Image.open(src / "img0.png"))).permute(2, 0, 1)[None].float() / 255
    want = (upscale_tensor(model, lr).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(result.astype(np.float64) - want).max() <= 1  # the saved weights are the model's


def test_real_mode_scores_every_image(esc_real_weights, tmp_path, fake_pyiqa, capsys):
    path, _ = esc_real_weights
    niqe_file = tmp_path / "niqe_modelparameters.mat"
    niqe_file.write_bytes(b"stand-in")
    rc = cli.main(["--real", "--data-root", str(_lr_folder(tmp_path)), "--weights", str(path), "--device", "cpu",
                   "--nr-weights", f"niqe={niqe_file}", "--out", str(tmp_path / "res"), "--save-images",
                   "--no-progress"])
    assert rc == 0
    assert fake_pyiqa == [{"name": "niqe", "path": str(niqe_file), "as_loss": False}]
    run = tmp_path / "res" / "esc-real_x4_real"
    summary = json.loads((run / "esc-real_x4_real.json").read_text())
    assert [r["image"] for r in summary["images"]] == ["img0.png", "img1.png"]
    sr0 = np.asarray(Image.open(run / "images" / "img0_x4.png")).astype(np.float64) / 255
    assert abs(summary["images"][0]["niqe"] - sr0.mean()) < 2e-3  # the metric saw the SR output
    assert summary["metrics"]["niqe"]["lower_better"] is True
    captured = capsys.readouterr()
    assert "| **mean** |" in captured.out
    assert "not writable" not in captured.err  # the LR image is copied, not wrapped read-only


def test_missing_metric_file_is_one_line_naming_file_and_option(esc_real_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    folder = _lr_folder(tmp_path)
    rc = cli.main(["--real", "--data-root", str(folder), "--weights", str(esc_real_weights[0]), "--device", "cpu",
                   "--out", str(tmp_path / "res")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and not (tmp_path / "res").exists()
    assert "niqe_modelparameters.mat" in err[0] and "--nr-weights" in err[0] and "hub/pyiqa" in err[0]
    with pytest.raises(EvalError, match=r"--nr-weights musiq=/nope\.pth: file not found"):
        no_reference_metrics(["musiq"], weights={"musiq": "/nope.pth"})


def test_no_reference_errors(tmp_path, monkeypatch):
    with pytest.raises(EvalError, match="unknown 'brisque2'"):
        no_reference_metrics(["brisque2"])
    with pytest.raises(EvalError, match="NAME=PATH"):
        parse_weights("niqe")
    with pytest.raises(EvalError, match="not among --nr-metrics"):
        no_reference_metrics(["niqe"], weights={"musiq": "x"})
    f = tmp_path / "niqe.mat"
    f.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # pyiqa not installed
    with pytest.raises(EvalError, match="pip install 'sr-eval\\[perceptual\\]'"):
        no_reference_metrics(["niqe"], weights={"niqe": str(f)})
    with pytest.raises(EvalError, match="no images"):
        from sr_eval.real import list_real_images

        (tmp_path / "empty").mkdir()
        list_real_images(tmp_path / "empty")
