"""The pre-flight memory check: the decision with fake budgets, the measurement, and the command."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

import sr_train.memory as memory
from sr_train.cli import main
from sr_train.memory import GIB, StepMemory, measure_step_memory, memory_message, plan_memory
from sr_train.testing import register_tiny_model

MIB = 1024**2
QUIET = ["--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "val.max_images=1",
         "--set", "val.center_crop=8"]


def test_a_step_that_fits_is_accepted():
    step = StepMemory(fixed_bytes=1 * GIB, per_sample_bytes=0.5 * GIB)
    plan = plan_memory(step, batch_size=16, world_size=1, accumulate=1, free_bytes=20 * GIB)
    assert plan.fits and plan.micro_batch == 16 and plan.estimate_bytes == 9 * GIB


def test_too_big_names_the_smallest_accumulation_and_the_largest_batch():
    # esc-light's recipe on a 24 GB CPU, roughly: 64 samples of ~0.6 GiB
    step = StepMemory(fixed_bytes=0.5 * GIB, per_sample_bytes=0.6 * GIB)
    plan = plan_memory(step, batch_size=64, world_size=1, accumulate=1, free_bytes=20 * GIB)
    assert not plan.fits and plan.micro_batch == 64
    budget = 0.9 * 20 * GIB
    # accumulate 4 -> micro-batch 16 -> 10.1 GiB fits; accumulate 2 -> 32 -> 19.7 GiB does not
    assert plan.accumulate_fix == 4
    assert step.at(64 // 4) <= budget < step.at(64 // 2)
    # largest batch at accumulate 1: floor((18 - 0.5) / 0.6) = 29
    assert plan.batch_fix == 29 and step.at(29) <= budget < step.at(30)


def test_accumulation_must_divide_the_per_process_batch_and_batch_fix_respects_world_and_accumulate():
    step = StepMemory(fixed_bytes=0.0, per_sample_bytes=1.0 * GIB)
    # 2 processes x batch 12 each, free 5 GiB (budget 4.5): micro-batch must be <= 4 -> accumulate 3 (12 / 3 = 4)
    plan = plan_memory(step, batch_size=24, world_size=2, accumulate=1, free_bytes=5 * GIB)
    assert plan.accumulate_fix == 3
    plan = plan_memory(step, batch_size=24, world_size=2, accumulate=2, free_bytes=5 * GIB)
    assert plan.micro_batch == 6 and plan.accumulate_fix == 3
    assert plan.batch_fix == 4 * 2 * 2  # micro-batch 4 on 2 processes in 2 micro-steps


def test_when_not_even_one_sample_fits_only_a_smaller_job_is_offered():
    step = StepMemory(fixed_bytes=3 * GIB, per_sample_bytes=2 * GIB)
    plan = plan_memory(step, batch_size=8, world_size=1, accumulate=1, free_bytes=4 * GIB)
    assert not plan.fits and plan.accumulate_fix is None and plan.batch_fix is None
    msg = memory_message(plan, model="sst-l", scale=2, batch_size=8, patch=64, accumulate=1, device="cpu")
    assert "--preset quick" in msg and "data.patch_size" in msg and "accumulate" not in msg


@given(fixed=st.floats(0, 8), per=st.floats(0.01, 4), batch=st.sampled_from([1, 2, 4, 8, 16, 32, 64, 60]),
       free=st.floats(0.5, 64), world=st.sampled_from([1, 2, 4]), acc=st.sampled_from([1, 2]))
@example(fixed=0.01, per=0.01, batch=64, free=0.5, world=1, acc=1)  # the budget exactly at micro-batch 44
def test_the_offered_fixes_fit_and_are_the_extreme_ones(fixed, per, batch, free, world, acc):
    if batch % (world * acc):
        return
    step = StepMemory(fixed * GIB, per * GIB)
    plan = plan_memory(step, batch_size=batch, world_size=world, accumulate=acc, free_bytes=free * GIB)
    per_rank = batch // world
    assert plan.fits == (step.at(per_rank // acc) <= plan.budget_bytes)
    if plan.fits:
        return
    if plan.accumulate_fix is not None:
        k = plan.accumulate_fix
        assert per_rank % k == 0 and step.at(per_rank // k) <= plan.budget_bytes
        assert all(per_rank % j or step.at(per_rank // j) > plan.budget_bytes for j in range(acc, k))
    if plan.batch_fix is not None:
        micro = plan.batch_fix // (world * acc)
        assert plan.batch_fix % (world * acc) == 0
        assert step.at(micro) <= plan.budget_bytes < step.at(micro + 1)


def test_message_is_one_line_with_model_batch_patch_estimate_free_and_fixes():
    step = StepMemory(fixed_bytes=0.5 * GIB, per_sample_bytes=0.6 * GIB)
    plan = plan_memory(step, batch_size=64, world_size=1, accumulate=1, free_bytes=20 * GIB)
    msg = memory_message(plan, model="esc-light", scale=2, batch_size=64, patch=64, accumulate=1, device="cpu")
    assert "\n" not in msg
    for part in ("esc-light x2", "batch 64 x 64x64", "38.9 GiB", "20.0 GiB is free on cpu",
                 "--set train.accumulate=4", "--set data.batch_size=29", "--preset quick"):
        assert part in msg, (part, msg)


class _WideNet(nn.Module):
    """conv 3 -> C, GELU, conv C -> 3 s^2, pixel shuffle: a known activation size per sample."""

    def __init__(self, channels: int = 192, scale: int = 2) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, channels, 3, padding=1)
        self.b = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.scale = scale
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.b(self.drop(F.gelu(self.a(x)))), self.scale)


@pytest.mark.skipif(not memory._CpuPeak.available(), reason="needs Linux /proc to read the peak RSS")
def test_measurement_scales_with_the_batch_and_leaves_no_trace():
    torch.manual_seed(0)
    net = _WideNet()
    patch = 64
    map_mib = 192 * patch * patch * 4 / MIB  # one (C, p, p) float32 map per sample: 3 MiB
    rng_before = torch.get_rng_state()
    step = measure_step_memory(net, device=torch.device("cpu"), patch=patch, scale=2, micro_batch=8,
                               loss_fn=F.l1_loss)
    assert step is not None and step.measured_at == (1, 2)
    # conv output, GELU output, dropout mask and output are kept per sample: at least 3 maps
    assert 3 * map_mib * MIB <= step.per_sample_bytes / memory.MARGIN <= 12 * map_mib * MIB, step
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(p.grad is None for p in net.parameters()) and net.training


def test_optimizer_state_is_counted_once():
    from sr_train.optim import build_optimizer

    net = _WideNet(channels=8)
    cfg = {"muon": {"enabled": True, "lr": 1e-3, "momentum": 0.95, "nesterov": True, "ns_steps": 5,
                    "weight_decay": 0.0, "lr_adjust": "original", "exclude": []},
           "adamw": {"lr": 1e-3, "betas": [0.9, 0.9], "eps": 1e-8, "weight_decay": 0.0}}
    opt = build_optimizer(net, cfg)
    conv_w = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight")) * 4
    biases = sum(p.numel() for n, p in net.named_parameters() if n.endswith("bias")) * 4
    assert memory.optimizer_state_bytes(opt) == conv_w + 2 * biases  # Muon 1 buffer, AdamW 2
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert memory.optimizer_state_bytes(opt) == 0  # allocated now (also after a resume)


def _fail_line(capsys) -> str:
    _out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sr-train: error: not enough memory"), err
    return lines[0]


def test_the_command_stops_before_writing_anything(capsys, tmp_path, monkeypatch):
    name = register_tiny_model()
    monkeypatch.setattr(memory, "free_memory", lambda device: 1.5 * MIB)
    out = tmp_path / "never"
    rc = main(["--model", name, "--iters", "2", "--out", str(out), "--set", "data.patch_size=48",
               "--set", "data.batch_size=64", *QUIET])
    line = _fail_line(capsys)
    assert rc != 0 and not out.exists()
    assert "sr-train-tiny x2 at batch 64 x 48x48" in line and "GiB is free on cpu" in line


@pytest.mark.slow
def test_esc_light_recipe_on_a_small_machine_stops_within_seconds(capsys, tmp_path, monkeypatch):
    """The issue's command (esc-light's own recipe: batch 64 of 64x64) with 8 GiB free: one line,
    non-zero exit, no run directory, measured at batches 1 and 2 of the real model in seconds."""
    monkeypatch.setattr(memory, "free_memory", lambda device: 8.0 * GIB)
    out = tmp_path / "esc"
    t0 = time.perf_counter()
    rc = main(["--model", "esc-light", "--iters", "20", "--out", str(out), *QUIET])
    elapsed = time.perf_counter() - t0
    line = _fail_line(capsys)
    assert rc != 0 and not out.exists()
    assert "esc-light x2 at batch 64 x 64x64" in line and "8.0 GiB is free" in line
    assert "--set train.accumulate=" in line and "--set data.batch_size=" in line
    assert elapsed < 120, elapsed  # seconds on an idle 2-core CPU; generous for a loaded one
