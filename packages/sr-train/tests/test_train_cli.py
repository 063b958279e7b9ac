"""The sr-train command on bad input: one line on stderr, non-zero exit, nothing overwritten."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest
import torch

from sr_train.checkpoint import list_checkpoints, load_checkpoint_file
from sr_train.cli import main
from sr_train.testing import register_tiny_model

QUIET = ["--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "val.max_images=1",
         "--set", "val.center_crop=8", "--set", "data.patch_size=8", "--set", "data.batch_size=2"]


def _fails(args, capsys, code=2, match=None):
    rc = main(args)
    _out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == code, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("sr-train: error: "), err
    if match:
        assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-iteration run of the tiny model whose files the bad-input cases must leave alone."""
    name = register_tiny_model()
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["--model", name, "--iters", "2", "--out", str(out), *QUIET]) == 0
    return name, out


def test_unknown_model_and_preset(capsys, tmp_path):
    _fails(["--model", "no-such-net", "--out", str(tmp_path / "x")], capsys, match="unknown model 'no-such-net'")
    _fails(["--model", "esc-light", "--preset", "stage9", "--out", str(tmp_path / "x")], capsys,
           match="unknown preset 'stage9'")
    _fails(["--model", "esc-light", "--set", "optim.adamw.lrate=1"], capsys, match="optim.adamw.lrate")
    _fails(["--model", "esc-light", "--preset", "iet-stage1"], capsys, match="not 'esc-light'")
    assert not (tmp_path / "x").exists()


def test_missing_root_and_unusable_dataset(capsys, tmp_path, tiny_run):
    name, _ = tiny_run
    out = tmp_path / "out"
    _fails(["--model", name, "--dataset", "folder", "--data-root", str(tmp_path / "missing"), "--out", str(out), *QUIET],
           capsys, match="does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    (empty / "broken.png").write_bytes(b"\x89PNG not really")
    _fails(["--model", name, "--dataset", "folder", "--data-root", str(empty), "--out", str(out), *QUIET], capsys)
    assert not out.exists()


def test_resume_from_another_model_or_scale(capsys, tmp_path, tiny_run):
    name, run = tiny_run
    ckpt = str(list_checkpoints(run)[-1][1])
    _fails(["--model", name, "--scale", "3", "--resume", ckpt, "--out", str(tmp_path / "o"), *QUIET], capsys,
           match="x2, not 'sr-train-tiny' x3")
    _fails(["--model", "esc-light", "--resume", ckpt, "--out", str(tmp_path / "o"), *QUIET], capsys,
           match="not 'esc-light' x2")
    _fails(["--model", name, "--resume", str(tmp_path / "none.pt"), *QUIET], capsys, match="no such checkpoint")
    assert not (tmp_path / "o").exists()


def test_existing_run_is_not_overwritten(capsys, tiny_run):
    name, run = tiny_run
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _fails(["--model", name, "--iters", "2", "--out", str(run), *QUIET], capsys, match="--resume auto")
    _fails(["--model", name, "--iters", "2", "--out", str(run), "--resume", "auto", *QUIET], capsys,
           match="raise --iters")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_full_disk_on_checkpoint_write(capsys, tmp_path, monkeypatch, tiny_run):
    name, _ = tiny_run
    out = tmp_path / "disk"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:  # the second checkpoint hits a full disk half-way through
            with open(f, "wb") as fh:
                fh.write(b"half a checkpo")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    line = _fails(["--model", name, "--iters", "4", "--out", str(out), "--set", "checkpoint.every=2",
                   "--set", "checkpoint.export_safetensors=false", *QUIET], capsys, code=1,
                  match="No space left on device")
    assert "intact" in line
    monkeypatch.setattr(torch, "save", real_save)
    assert [i for i, _ in list_checkpoints(out)] == [2]
    assert load_checkpoint_file(list_checkpoints(out)[0][1])["iteration"] == 2
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "sr_train", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--preset" in res.stdout and "--resume" in res.stdout


def test_bf16_run_print_config_and_listings(capsys, tmp_path, tiny_run):
    name, _ = tiny_run
    out = tmp_path / "bf16"
    assert main(["--model", name, "--iters", "2", "--precision", "bf16", "--out", str(out), *QUIET]) == 0
    assert "precision: bf16" in (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["--model", "iet", "--preset", "stage1", "--set", "optim.muon.lr=5e-4", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "lr: 0.0005" in text and "preset: iet-stage1" in text
    assert main(["--list-presets"]) == 0
    assert "iet-stage2" in capsys.readouterr().out


def test_diverging_loss_stops_with_one_line(capsys, tmp_path, tiny_run):
    name, _ = tiny_run
    _fails(["--model", name, "--iters", "4", "--out", str(tmp_path / "nan"), "--set", "optim.adamw.lr=1e30",
            "--set", "log.every=1", *QUIET], capsys, match="the loss became")
