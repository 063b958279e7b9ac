"""LR schedule (BasicSR warm-up + multistep, the short-run warning and rescaling), the EMA and its
decay warm-up, and the CPU thread choice."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sr_train import cpu_threads
from sr_train.config import resolve_config
from sr_train.cpu_threads import (
    auto_threads,
    busy_cores_between,
    busy_cores_now,
    cpu_jiffies,
    resolve_threads,
)
from sr_train.ema import ModelEMA, ema_decay_at
from sr_train.schedule import WarmupMultiStepLR, effective_schedule, lr_factor, schedule_warning


def test_lr_factor_warmup_and_milestones():
    kw = {"warmup_iters": 20000, "milestones": [250000, 400000, 450000, 475000, 490000], "gamma": 0.5}
    assert lr_factor(1, **kw) == pytest.approx(1 / 20000)
    assert lr_factor(10000, **kw) == pytest.approx(0.5)
    assert lr_factor(20000, **kw) == 1.0
    assert lr_factor(250000, **kw) == 1.0  # halved AFTER the milestone
    assert lr_factor(250001, **kw) == 0.5
    assert lr_factor(400001, **kw) == 0.25
    assert lr_factor(500000, **kw) == 0.5**5
    assert lr_factor(7, warmup_iters=0, milestones=[], gamma=0.5) == 1.0


def test_short_runs_truncate_rather_than_rescale():
    """--iters 20 of a 20k-warm-up recipe stays deep in the warm-up (no silent rescaling)."""
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = WarmupMultiStepLR(opt, warmup_iters=20000, milestones=[250000], gamma=0.5)
    sched.set_iteration(20)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 20 / 20000)


def test_scheduler_scales_every_group_and_restores():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 2e-4}], lr=1.0)
    sched = WarmupMultiStepLR(opt, warmup_iters=10, milestones=[20], gamma=0.5)
    sched.set_iteration(25)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 1e-4])
    opt2 = torch.optim.SGD([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 2e-4}], lr=1.0)
    s2 = WarmupMultiStepLR(opt2, warmup_iters=10, milestones=[20], gamma=0.5)
    s2.load_state_dict(sched.state_dict())
    assert s2.iteration == 25 and [g["lr"] for g in opt2.param_groups] == pytest.approx([5e-4, 1e-4])


def test_ema_formula_params_only_and_buffers_copied():
    m = nn.BatchNorm1d(3)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = ModelEMA(m, decay=0.9)
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with torch.no_grad():
        m.weight.fill_(2.0)
        m.running_mean.fill_(5.0)
    ema.update(m)
    torch.testing.assert_close(ema.module.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 2.0))
    torch.testing.assert_close(ema.module.running_mean, torch.full((3,), 5.0))
    ema.update(m)
    torch.testing.assert_close(ema.module.weight, torch.full((3,), 0.9 * 1.1 + 0.1 * 2.0))
    with pytest.raises(ValueError):
        ModelEMA(m, decay=1.0)


def test_ema_decay_warmup_follows_the_num_updates_rule():
    assert ema_decay_at(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999, True) == pytest.approx(0.91)
    assert ema_decay_at(8990, 0.999, True) == pytest.approx(8991 / 9000)
    assert ema_decay_at(9000, 0.999, True) == 0.999
    assert ema_decay_at(0, 0.999, False) == 0.999
    # the case: with 0.999 and no warm-up, 500 updates keep 0.999**500 = 61% of the start
    assert 0.999**500 == pytest.approx(0.606, abs=1e-3)


def test_ema_with_warmup_matches_a_reference_loop_and_counts_updates():
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    ema = ModelEMA(m, decay=0.99, warmup=True)
    ref = {k: v.detach().clone() for k, v in m.named_parameters()}
    for t in range(30):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        d = min(0.99, (1 + t) / (10 + t))
        for k, p in m.named_parameters():
            ref[k] = d * ref[k] + (1 - d) * p.detach()
        assert ema.current_decay() == pytest.approx(d)
        ema.update(m)
    assert ema.updates == 30
    for k, e in ema.module.named_parameters():
        torch.testing.assert_close(e, ref[k])


def test_schedule_warning_only_for_a_shortened_unscaled_run():
    esc = resolve_config("esc-light", cli={"train": {"iters": 20}})["schedule"]
    assert esc["reference_iters"] == 500000  # the recipe's length, not --iters
    line = schedule_warning(esc, 20)
    assert line is not None and "\n" not in line
    for part in ("train.iters=20", "warm-up (20000 iterations)", "first lr milestone (250000)", "500000-iteration",
                 "--set schedule.rescale=true"):
        assert part in line, (part, line)
    assert schedule_warning(esc, 500000) is None  # the full recipe
    assert schedule_warning(esc, 300000) is None  # past the warm-up and the first milestone
    assert "warm-up" not in (schedule_warning(esc, 20001) or "")  # only the milestone is left
    assert schedule_warning({**esc, "rescale": True}, 20) is None
    quick = resolve_config("esc-light", preset="quick", cli={"train": {"iters": 2000}})["schedule"]
    assert quick["reference_iters"] == 20 and schedule_warning(quick, 2000) is None  # the 2000-iteration run


def test_rescale_scales_warmup_and_milestones_to_the_run():
    esc = resolve_config("esc-light", cli={"train": {"iters": 5000}}, sets=["schedule.rescale=true"])
    warmup, milestones = effective_schedule(esc["schedule"], 5000)
    assert warmup == 200 and milestones == [2500, 4000, 4500, 4750, 4900]
    # lr at the end of the short run equals the full recipe's lr at its end
    kw = {"warmup_iters": warmup, "milestones": milestones, "gamma": 0.5}
    assert lr_factor(5000, **kw) == lr_factor(500000, warmup_iters=20000, milestones=esc["schedule"]["milestones"],
                                              gamma=0.5)
    tiny = effective_schedule({**esc["schedule"]}, 5)
    assert tiny[0] == 0 and len(tiny[1]) == 5 and min(tiny[1]) >= 1  # every milestone kept, none at 0
    assert effective_schedule({**esc["schedule"], "rescale": False}, 5000) == (20000, esc["schedule"]["milestones"])


def test_the_warning_is_printed_once_at_the_start(tmp_path, capsys):
    from sr_train.cli import main
    from sr_train.testing import register_tiny_model

    name = register_tiny_model()
    args = ["--model", name, "--iters", "2", "--set", "schedule.reference_iters=100", "--set", "schedule.warmup_iters=10",
            "--set", "data.patch_size=8", "--set", "data.batch_size=2", "--set", "log.progress=false",
            "--set", "log.tensorboard=false", "--set", "val.dataset=null"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("warning: train.iters=2 is below the warm-up (10 iterations)")
    assert sum("warning:" in x for x in out) == 1
    assert main([*args, "--out", str(tmp_path / "b"), "--set", "schedule.rescale=true"]) == 0
    out = capsys.readouterr().out
    assert "warning:" not in out and "schedule rescaled to 2 of 100 iterations: warm-up 0, milestones []" in out


def test_auto_threads_leave_busy_cores_alone():
    assert auto_threads(2, 0.1) == 2  # idle 2-core machine
    assert auto_threads(2, 0.6) == 1
    assert auto_threads(2, 8.0) == 1  # never below 1
    assert auto_threads(16, 2.2, workers=4) == 10
    assert auto_threads(16, 0.0, local_processes=8) == 2  # torchrun on one node
    assert resolve_threads(3, workers=0) == (3, "train.threads")
    assert resolve_threads("auto", workers=0, resumed=1)[0] == 1  # a resumed run keeps its count


_STAT = """cpu  {u} 10 {s} {i} {w} 0 5 0 0 0
cpu0 1 2 3 4 5 6 7 8 0 0
intr 12345
"""


def test_cpu_jiffies_reads_the_aggregate_line():
    # busy = user + nice + system + irq + softirq + steal; idle and iowait are not busy
    assert cpu_jiffies(_STAT.format(u=100, s=50, i=1000, w=40)) == (165, 1205)
    with pytest.raises(ValueError, match="cpu"):
        cpu_jiffies("intr 1\n")


@given(busy=st.integers(0, 10_000), idle=st.integers(0, 10_000), cores=st.integers(1, 64))
def test_busy_cores_between_is_the_busy_share_of_the_cores(busy, idle, cores):
    got = busy_cores_between((7, 11), (7 + busy, 11 + busy + idle), cores)
    assert 0.0 <= got <= cores
    if busy + idle:
        assert got == pytest.approx(cores * busy / (busy + idle))
    else:
        assert got == 0.0


def test_busy_cores_now_measures_between_two_readings(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(_STAT.format(u=100, s=0, i=100, w=0))  # busy 115 of 215

    def advance(_seconds):  # during the wait, 1 of 2 cores worked: +100 busy, +100 idle jiffies
        stat.write_text(_STAT.format(u=200, s=0, i=200, w=0))

    monkeypatch.setattr(cpu_threads.time, "sleep", advance)
    assert busy_cores_now(2, stat_path=str(stat)) == pytest.approx(1.0)
    assert busy_cores_now(2, stat_path=str(tmp_path / "missing")) is None


def test_auto_threads_ignore_a_load_average_left_by_a_finished_run(monkeypatch):
    # the 1-minute load average still counts a run that ended seconds ago; the measured busy cores do not
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(cpu_threads.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(cpu_threads, "busy_cores_now", lambda cores: 0.0)
    assert resolve_threads("auto", workers=0) == (2, "2 cores, 0.0 busy now")
    monkeypatch.setattr(cpu_threads, "busy_cores_now", lambda cores: None)  # no /proc/stat
    assert resolve_threads("auto", workers=0) == (1, "2 cores, load average 1.0")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_busy_cores_now_sees_a_spinning_process():
    spin = subprocess.Popen([sys.executable, "-c", "print('go', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert spin.stdout.readline().strip() == "go"
        assert busy_cores_now(cpu_threads.usable_cores(), seconds=0.5) >= 0.5
    finally:
        spin.kill()
        spin.wait()
