"""Checkpoint I/O: atomic writes, keep-last-N, RNG state, resume lookup, weight transfer across scales."""

from __future__ import annotations

import errno
import random

import numpy as np
import pytest
import torch

from sr_layers.upsamplers import interpolate_subpixel_conv
from sr_train.checkpoint import (
    atomic_write,
    capture_rng_state,
    check_compatible,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint_file,
    restore_rng_state,
    save_checkpoint,
)
from sr_train.errors import CheckpointWriteError, ResumeError
from sr_train.testing import TinySR
from sr_train.transfer import load_init_weights


def _state(i: int) -> dict:
    return {"format": "sr-train", "model": {"w": torch.full((3,), float(i))}, "iteration": i,
            "model_name": "m", "scale": 2}


def test_keep_last_n_and_listing(tmp_path):
    for i in (5, 10, 15, 20):
        save_checkpoint(tmp_path, i, _state(i), keep_last=2)
    assert [i for i, _ in list_checkpoints(tmp_path)] == [15, 20]
    assert load_checkpoint_file(list_checkpoints(tmp_path)[-1][1])["model"]["w"][0] == 20
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_full_disk_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 5, _state(5), keep_last=1)
    before = (tmp_path / "checkpoints" / "iter_00000005.pt").read_bytes()

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        save_checkpoint(tmp_path, 10, _state(10), keep_last=1)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["iter_00000005.pt"]  # no partial file, nothing pruned
    assert (tmp_path / "checkpoints" / "iter_00000005.pt").read_bytes() == before


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"one"))

    def broken(tmp):
        open(tmp, "wb").write(b"tw")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"one" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    torch.manual_seed(1)
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_resume_lookup_and_errors(tmp_path):
    assert find_resume_checkpoint("auto", tmp_path) is None
    save_checkpoint(tmp_path, 3, _state(3), keep_last=5)
    save_checkpoint(tmp_path, 7, _state(7), keep_last=5)
    assert find_resume_checkpoint("auto", tmp_path).name == "iter_00000007.pt"
    assert find_resume_checkpoint(str(tmp_path), tmp_path / "other").name == "iter_00000007.pt"
    with pytest.raises(ResumeError, match="no such checkpoint"):
        find_resume_checkpoint(str(tmp_path / "nope.pt"), tmp_path)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeError, match="cannot be read"):
        load_checkpoint_file(bad)
    torch.save({"params": {}}, tmp_path / "basicsr.pth")
    with pytest.raises(ResumeError, match="not an sr-train"):
        load_checkpoint_file(tmp_path / "basicsr.pth")
    st = load_checkpoint_file(tmp_path / "checkpoints" / "iter_00000003.pt")
    check_compatible(st, model="m", scale=2, path="p")
    with pytest.raises(ResumeError, match="x3"):
        check_compatible(st, model="m", scale=3, path="p")
    with pytest.raises(ResumeError, match="'other'"):
        check_compatible(st, model="other", scale=2, path="p")


def test_init_from_x2_to_x4_resamples_the_subpixel_head(tmp_path):
    torch.manual_seed(0)
    x2 = TinySR(2)
    torch.save({"format": "sr-train", "model": x2.state_dict(), "ema": x2.state_dict(), "scale": 2},
               tmp_path / "x2.pt")
    x4 = TinySR(4)
    report = load_init_weights(x4, tmp_path / "x2.pt", scale=4)
    assert sorted(report["interpolated"]) == ["to_img.bias", "to_img.weight"]
    assert not report["skipped"] and not report["missing"] and not report["unexpected"]
    w, b = interpolate_subpixel_conv(x2.to_img.weight.detach(), x2.to_img.bias.detach(), 3, 4)
    torch.testing.assert_close(x4.to_img.weight.detach(), w)
    torch.testing.assert_close(x4.to_img.bias.detach(), b)
    assert torch.equal(x4.head.weight, x2.head.weight)
