"""Issue 17, cases 4 and 6: Ctrl-C / SIGTERM checkpoint the current iteration, resume continues
exactly, every iteration is logged once; `--out FILE` and allocator failures are one line.

A signal is delivered from inside the tiny model's forward at a chosen call, i.e. in the middle of
an iteration, the way a user's Ctrl-C lands.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from sr_train.checkpoint import list_checkpoints, load_checkpoint_file
from sr_train.cli import _recipe_note, main
from sr_train.testing import TinySR, register_tiny_model

COMMON = ["--set", "data.patch_size=8", "--set", "data.batch_size=2", "--set", "val.max_images=1",
          "--set", "val.center_crop=8", "--set", "log.progress=false", "--set", "log.every=1",
          "--set", "schedule.warmup_iters=5", "--set", "val.every=4",
          # the pre-flight memory check runs probe forwards of its own; the signals count the loop's
          "--set", "train.memory_check=false"]


@pytest.fixture(scope="module", autouse=True)
def _small_data(tmp_path_factory):
    """Small image folders instead of the embedded sample set (whose LR making dominates short runs)."""
    import numpy as np

    from sr_data import write_image

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for k in range(3):
        write_image(root / "train" / f"{k}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    write_image(root / "val" / "v.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    COMMON.extend(["--dataset", "folder", "--data-root", str(root / "train"), "--set", "val.dataset=folder",
                   "--set", f"val.root={root / 'val'}"])
    yield
    del COMMON[-6:]


def _run(args, capsys):
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def tiny():
    return register_tiny_model()


@pytest.fixture()
def signal_at(monkeypatch):
    """``signal_at(n, sig, training=True)``: send ``sig`` to this process during the n-th forward."""
    real = TinySR.forward
    plan = {}

    def forward(self, x):
        if plan and self.training == plan["training"]:
            plan["calls"] += 1
            if plan["calls"] in plan["at"]:
                os.kill(os.getpid(), plan["sig"])
        return real(self, x)

    monkeypatch.setattr(TinySR, "forward", forward)

    def arm(at, sig=signal.SIGINT, training=True):
        plan.update(at=set(at) if isinstance(at, (list, tuple, set)) else {at}, sig=sig, training=training, calls=0)

    def disarm():
        plan.clear()

    arm.disarm = disarm
    return arm


def _iters(run, kind="train"):
    return [r["iter"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_interrupt_checkpoints_the_current_iteration_and_resume_is_exact(tmp_path, capsys, tiny, signal_at):
    """Case 4: Ctrl-C used to lose the iterations since the last periodic checkpoint."""
    sig = signal.SIGINT
    args = ["--model", tiny, "--iters", "12", *COMMON, "--set", "log.tensorboard=false"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert _run([*args, "--out", str(straight)], capsys)[0] == 0
    signal_at(7, sig)
    rc, _, err = _run([*args, "--out", str(cut)], capsys)
    assert rc == 130
    lines = err.strip().splitlines()
    assert lines[-1] == (
        f"sr-train: stopped by {signal.Signals(sig).name} after iteration 7 of 12: saved "
        f"{cut / 'checkpoints' / 'iter_00000007.pt'} (model, EMA, optimizer, schedule, RNG states and data position "
        f"at iteration 7) and {cut / 'weights' / (tiny + '_x2.safetensors')}; continue with --resume auto"
    )
    assert [i for i, _ in list_checkpoints(cut)] == [7]
    assert load_checkpoint_file(cut / "checkpoints" / "iter_00000007.pt")["iteration"] == 7
    signal_at.disarm()
    rc, out, err = _run([*args, "--out", str(cut), "--resume", "auto"], capsys)
    assert rc == 0, err
    assert "resuming from" in out and "at iteration 7" in out
    a = load_checkpoint_file(list_checkpoints(straight)[-1][1])
    b = load_checkpoint_file(list_checkpoints(cut)[-1][1])
    for key in ("model", "ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name}"
    assert _iters(cut) == _iters(straight) == list(range(1, 13))  # each iteration logged once
    assert _iters(cut, "val") == _iters(straight, "val")


def test_sigterm_while_validating_stops_at_once(tmp_path, capsys, tiny, signal_at):
    # during the validation at iteration 8: the one at 4 makes calls 1-2 (EMA and live weights)
    signal_at(3, signal.SIGTERM, training=False)
    out = tmp_path / "run"
    rc, _, err = _run(["--model", tiny, "--iters", "12", *COMMON, "--set", "log.tensorboard=false",
                       "--set", "checkpoint.export_safetensors=false", "--out", str(out)], capsys)
    assert rc == 130
    assert "stopped by SIGTERM after iteration 8 of 12: saved" in err and "iter_00000008.pt" in err
    assert [i for i, _ in list_checkpoints(out)] == [8]
    assert _iters(out, "val") == [4]  # the interrupted validation wrote nothing


def test_double_signal_in_one_iteration(tmp_path, capsys, tiny, monkeypatch):
    real = TinySR.forward
    calls = {"n": 0}

    def forward(self, x):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 8:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # impatient user: stop now
        return real(self, x)

    monkeypatch.setattr(TinySR, "forward", forward)
    out = tmp_path / "run"
    rc, _, err = _run(["--model", tiny, "--iters", "12", *COMMON, "--set", "log.tensorboard=false",
                       "--set", "checkpoint.every=5", "--out", str(out)], capsys)
    assert rc == 130
    ckpt = out / "checkpoints" / "iter_00000005.pt"
    assert err.strip().splitlines()[-1] == (
        f"sr-train: error: interrupted; nothing saved since {ckpt} (iteration 5); continue from it with --resume auto")
    assert [i for i, _ in list_checkpoints(out)] == [5]


def test_interrupt_before_the_first_iteration_and_resume_auto_says_fresh(tmp_path, capsys, tiny, monkeypatch):
    """Case 4: the message promised a resume although nothing was saved; --resume auto then
    started from 0 without a word."""
    real = TinySR.forward
    calls = {"n": 0}

    def forward(self, x):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 1:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
        return real(self, x)

    monkeypatch.setattr(TinySR, "forward", forward)
    out = tmp_path / "run"
    args = ["--model", tiny, "--iters", "3", *COMMON, "--set", "log.tensorboard=false", "--out", str(out)]
    rc, _, err = _run(args, capsys)
    assert rc == 130
    assert "no checkpoint was written, so a rerun starts from iteration 0" in err and "--resume auto" not in err
    monkeypatch.setattr(TinySR, "forward", real)
    rc, out_text, err = _run([*args, "--resume", "auto"], capsys)
    assert rc == 0, err
    assert "--resume auto: no checkpoint in" in out_text and "starting from iteration 0" in out_text


def test_resume_truncates_logs_back_to_the_checkpoint(tmp_path, capsys, tiny):
    """Case 4: after a crash past the last checkpoint, metrics.jsonl and TensorBoard recorded the
    iterations after it twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["--model", tiny, "--iters", "12", *COMMON, "--set", "log.tensorboard=true", "--set", "checkpoint.every=6",
            "--set", "checkpoint.keep_last=5", "--out", str(out)]
    assert _run(args, capsys)[0] == 0
    (out / "checkpoints" / "iter_00000012.pt").unlink()  # the process died before its last checkpoint
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"iter": 13, "kind": "tr')  # and in the middle of a log line
    rc, stdout, err = _run([*args, "--resume", "auto"], capsys)
    assert rc == 0, err
    assert "dropped 9 record(s) after iteration 6" in stdout  # train 7..12, val 8 and 12, the broken line
    assert _iters(out) == list(range(1, 13))
    assert _iters(out, "val") == [4, 8, 12]
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, 13))


def test_out_naming_an_existing_file_is_one_line(tmp_path, capsys, tiny):
    """Case 6: `--out EXISTING_FILE` printed a FileExistsError traceback."""
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    rc, _, err = _run(["--model", tiny, "--iters", "2", *COMMON, "--out", str(f)], capsys)
    assert rc == 2 and err.count("\n") == 1 and "--out" in err and "not a directory" in err
    assert f.read_text() == "mine"


@pytest.mark.parametrize("exc", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
def test_allocator_failure_is_one_line(tmp_path, capsys, tiny, monkeypatch, exc):
    """Case 6: an allocator failure under `ulimit -v` printed a full traceback."""
    def forward(self, x):
        raise exc

    monkeypatch.setattr(TinySR, "forward", forward)
    rc, _, err = _run(["--model", tiny, "--iters", "2", *COMMON, "--out", str(tmp_path / "r")], capsys)
    assert rc == 1 and err.count("\n") == 1 and err.startswith("sr-train: error: out of memory"), err
    assert "Traceback" not in err


def test_unexpected_error_is_one_line(tmp_path, capsys, tiny, monkeypatch):
    def forward(self, x):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(TinySR, "forward", forward)
    rc, _, err = _run(["--model", tiny, "--iters", "2", *COMMON, "--out", str(tmp_path / "r")], capsys)
    assert rc == 1 and err.count("\n") == 1 and "ZeroDivisionError: boom" in err and "SR_TRAIN_DEBUG" in err


def test_recipe_note_fills_the_placeholders(tmp_path):
    """Case 7: the end-of-run hint printed a literal `<model>` placeholder."""
    from sr_train.config import resolve_config

    cfg = resolve_config("esc-light", preset="esc", cli={"out": str(tmp_path / "runs" / "e")})
    note = _recipe_note(cfg)
    assert "<model>" not in note and "<this run>" not in note
    assert f"{tmp_path / 'runs' / 'e'}/weights/esc-light_x2.safetensors" in note
    quick = _recipe_note(resolve_config("esc-light", preset="quick"))  # the hint is about the full recipe's run
    assert "init_from=runs/esc-light_x2_esc/weights/esc-light_x2.safetensors" in quick


def test_bf16_on_cpu_warns(tmp_path, capsys, tiny):
    """Case 7: `--precision bf16` on the CPU (about 18x slower there) ran without a word."""
    rc, _, err = _run(["--model", tiny, "--iters", "1", *COMMON, "--set", "log.tensorboard=false",
                       "--set", "train.device=cpu", "--precision", "bf16", "--out", str(tmp_path / "r")], capsys)
    assert rc == 0 and "--precision bf16 on the CPU is usually much slower than fp32" in err


def test_list_models_into_a_closed_pipe_is_quiet():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "sr_train", "--list-models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line, like `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "BrokenPipe" not in err and "Exception ignored" not in err
