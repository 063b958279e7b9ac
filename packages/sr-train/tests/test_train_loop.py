"""End-to-end runs on the embedded sample data (CPU): learning, checkpoints, exact resume, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sr_models
from sr_train.checkpoint import list_checkpoints, load_checkpoint_file
from sr_train.cli import main
from sr_train.config import resolve_config
from sr_train.testing import register_tiny_model
from sr_train.trainer import build_datasets, build_model, seed_everything

FAST = ["--set", "val.max_images=1", "--set", "val.center_crop=16", "--set", "log.progress=false",
        "--set", "log.tensorboard=false"]


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def _fixed_batch_loss(cfg: dict, state: dict | None) -> float:
    """L1 of the model (initial weights when ``state`` is None) on 4 fixed training patches, eval mode."""
    seed_everything(cfg["train"]["seed"])
    model = build_model(cfg)
    if state is not None:
        model.load_state_dict(state)
    ds, _ = build_datasets(cfg)
    ds.set_epoch(0)
    items = [ds[i] for i in (0, 151, 302, 453)]
    lr = torch.stack([it["lr"] for it in items])
    hr = torch.stack([it["hr"] for it in items])
    model.eval()
    with torch.no_grad():
        return F.l1_loss(model(lr), hr).item()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_exact_resume_20_straight_equals_10_plus_10(tmp_path, capsys, accumulate):
    """20 iterations straight and 10 + --resume auto + 10 give bitwise the same weights, EMA (with its
    decay warm-up, the default: a resume that restarted the warm-up would differ) and optimizer, also
    with gradient accumulation."""
    tiny = register_tiny_model()
    common = ["--model", tiny, "--set", "data.patch_size=12", "--set", "data.batch_size=4",
              "--set", f"train.accumulate={accumulate}", "--set", "train.threads=1",
              "--set", "optim.muon.enabled=true", "--set", "schedule.warmup_iters=15", "--set", "schedule.milestones=[17]",
              "--set", "val.every=4", *FAST]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run([*common, "--iters", "20", "--out", str(a)], capsys)[0] == 0
    assert _run([*common, "--iters", "10", "--out", str(b)], capsys)[0] == 0
    assert [i for i, _ in list_checkpoints(b)] == [10]
    rc, out, _ = _run([*common, "--iters", "20", "--out", str(b), "--resume", "auto"], capsys)
    assert rc == 0 and "resuming" in out
    sa = load_checkpoint_file(list_checkpoints(a)[-1][1])
    sb = load_checkpoint_file(list_checkpoints(b)[-1][1])
    assert sa["iteration"] == sb["iteration"] == 20
    assert sa["ema_updates"] == sb["ema_updates"] == 20 and sa["threads"] == sb["threads"] == 1
    for key in ("model", "ema"):
        for name, t in sa[key].items():
            assert torch.equal(t, sb[key][name]), f"{key}.{name}"
    for pid, st in sa["optimizer"]["state"].items():
        for k, v in st.items():
            other = sb["optimizer"]["state"][pid][k]
            assert torch.equal(v, other) if torch.is_tensor(v) else v == other
    assert torch.equal(sa["rng"][0]["torch"], sb["rng"][0]["torch"])
    # the second half did train (so the equality above is not that of an untouched model)
    s10 = load_checkpoint_file(b / "checkpoints" / "iter_00000010.pt")
    assert not torch.equal(sa["model"]["head.weight"], s10["model"]["head.weight"])
    assert (b / "config.yaml").is_file() and (b / "config_resume_00000010.yaml").is_file()
    lines = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in lines} == {"train", "val"}


def _learning_run(model: str, tmp_path: Path, capsys, extra: list[str]) -> None:
    out_dir = tmp_path / model
    args = ["--model", model, "--iters", "20", "--out", str(out_dir),
            "--set", "schedule.warmup_iters=0", "--set", "checkpoint.every=10", "--set", "log.every=5",
            *FAST, "--set", "log.tensorboard=true", *extra]
    rc, out, err = _run(args, capsys)
    assert rc == 0, err
    assert "parameter groups:" in out and "run directory" in out
    ckpts = list_checkpoints(out_dir)
    assert [i for i, _ in ckpts] == [10, 20]
    state = load_checkpoint_file(ckpts[-1][1])
    cfg = resolve_config(model, sets=[a for a in extra if "=" in a])
    before = _fixed_batch_loss(cfg, None)
    after = _fixed_batch_loss(cfg, state["model"])
    assert after < before, (before, after)
    # run directory contents: resolved config, JSONL + TensorBoard logs, safetensors export
    assert (out_dir / "config.yaml").read_text().startswith("preset:")
    recs = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in recs if r["kind"] == "train"] == [5, 10, 15, 20]
    assert any(r["kind"] == "val" and r["psnr"] > 0 for r in recs)
    assert list((out_dir / "tb").glob("events.out.tfevents.*"))
    weights = out_dir / "weights" / f"{model}_x2.safetensors"
    loaded = sr_models.load_checkpoint(weights)
    assert loaded.model_name == model and loaded.scale == 2
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, state["ema"][name]), name


@pytest.mark.slow
def test_esc_light_learns_on_sample_data(tmp_path, capsys):
    """The esc preset (AdamW 5e-4) without its 20k warm-up, batch 1 of 16x16 LR patches."""
    _learning_run("esc-light", tmp_path, capsys, ["--set", "data.patch_size=16", "--set", "data.batch_size=1"])


@pytest.mark.slow
def test_iet_light_learns_on_sample_data(tmp_path, capsys):
    """The iet-light preset (Muon 3e-3 / AdamW 5e-4) without its warm-up, batch 2 of 8x8 LR patches."""
    _learning_run("iet-light", tmp_path, capsys, ["--set", "data.patch_size=8", "--set", "data.batch_size=2"])


def _tiny_weights(tmp_path: Path, capsys, name: str, *extra: str) -> dict[str, torch.Tensor]:
    tiny = register_tiny_model()
    out = tmp_path / name
    args = ["--model", tiny, "--iters", "6", "--out", str(out), "--set", "data.patch_size=10",
            "--set", "model.overrides.dropout=0", "--set", "optim.muon.enabled=true", "--set", "optim.adamw.lr=2e-3",
            "--set", "optim.grad_clip=0.5", "--set", "train.threads=1", "--set", "val.dataset=null",
            "--set", "log.every=1", *FAST, *extra]
    rc, _out, err = _run(args, capsys)
    assert rc == 0, err
    return load_checkpoint_file(list_checkpoints(out)[-1][1])


def test_accumulating_2_micro_batches_equals_one_batch_of_twice_the_size(tmp_path, capsys):
    """accumulate=2 with micro-batches of 3 trains like accumulate=1 with batches of 6 (same samples;
    the tiny model has no batch-dependent layer once its dropout is off), Muon + AdamW + clipping."""
    one = _tiny_weights(tmp_path, capsys, "one", "--set", "data.batch_size=6")
    two = _tiny_weights(tmp_path, capsys, "two", "--set", "data.batch_size=6", "--set", "train.accumulate=2")
    start = _tiny_weights(tmp_path, capsys, "short", "--set", "data.batch_size=6", "--iters", "1")
    for k, t in one["model"].items():
        torch.testing.assert_close(two["model"][k], t, rtol=1e-5, atol=1e-6, msg=k)
    # Adam's moments and Muon's momentum see the gradient's scale (the weights alone would not:
    # both updates are nearly scale-invariant), and the logged loss is the batch mean
    for pid, st in one["optimizer"]["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                torch.testing.assert_close(two["optimizer"]["state"][pid][key], v, rtol=1e-4, atol=1e-9)
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / n / "metrics.jsonl").read_text().splitlines())]
              for n in ("one", "two")]
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    # the comparison is not that of untouched weights
    assert any(not torch.allclose(start["model"][k], t) for k, t in one["model"].items())
    # a different split of the data is not the same run (the check can fail)
    half = _tiny_weights(tmp_path, capsys, "half", "--set", "data.batch_size=3")
    assert any(not torch.allclose(half["model"][k], t, rtol=1e-5, atol=1e-6) for k, t in one["model"].items())


def test_accumulate_must_divide_the_batch(capsys, tmp_path):
    tiny = register_tiny_model()
    rc, _out, err = _run(["--model", tiny, "--set", "data.batch_size=6", "--set", "train.accumulate=4",
                          "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and "train.accumulate" in err and not (tmp_path / "x").exists()


def test_validation_reports_ema_and_live_weights_and_exports_say_which(tmp_path, capsys):
    from safetensors import safe_open

    tiny = register_tiny_model()
    common = ["--model", tiny, "--iters", "4", "--set", "data.patch_size=8", "--set", "data.batch_size=2",
              "--set", "val.every=2", "--set", "train.threads=1", *FAST]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rc, out, err = _run([*common, "--out", str(tmp_path / "ema")], capsys)
        assert torch.get_num_threads() == 2  # the run used train.threads=1 and gave the count back
    finally:
        torch.set_num_threads(before)
    assert rc == 0, err
    lines = [x for x in out.splitlines() if x.startswith("[iter")]
    assert len(lines) == 2 and all("EMA weights PSNR" in x and "live weights PSNR" in x for x in lines)
    assert "(EMA weights); live weights PSNR" in out
    recs = [json.loads(x) for x in (tmp_path / "ema" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if r["kind"] == "val"]
    assert len(vals) == 2 and all(r["psnr_raw"] > 0 and r["psnr"] > 0 for r in vals)
    with safe_open(str(tmp_path / "ema" / "weights" / f"{tiny}_x2.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["sr_train_weights"] == "ema" and meta["sr_train_ema_decay"] == "0.999"
    assert meta["sr_train_ema_warmup"] == "true" and meta["sr_train_ema_updates"] == "4"

    rc, out, err = _run([*common, "--out", str(tmp_path / "raw"), "--set", "train.ema_decay=0"], capsys)
    assert rc == 0, err
    assert "live weights PSNR" in out and "EMA" not in out.split("validation")[-1]
    with safe_open(str(tmp_path / "raw" / "weights" / f"{tiny}_x2.safetensors"), "pt") as f:
        assert f.metadata()["sr_train_weights"] == "raw"
