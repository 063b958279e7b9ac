"""SSCAN / SSCAN-light presets: our stated recipe (SwinIR/HAT lineage) resolves as written, the x3/x4
fine-tunes start from x2 weights, and the quick preset layers over it."""

from __future__ import annotations

import pytest

from sr_train.config import resolve_config
from sr_train.errors import ConfigError


@pytest.mark.parametrize(("model", "dataset", "batch"), [("sscan", "df2k", 32), ("sscan-light", "div2k", 64)])
def test_default_recipe(model: str, dataset: str, batch: int) -> None:
    c = resolve_config(model)
    assert c["preset"] == model and c["model"]["scale"] == 2
    assert (c["data"]["batch_size"], c["data"]["patch_size"]) == (batch, 64)
    assert not c["optim"]["muon"]["enabled"]
    assert c["optim"]["adamw"]["lr"] == 2e-4 and c["optim"]["adamw"]["betas"] == [0.9, 0.99]
    sched = {k: c["schedule"][k] for k in ("warmup_iters", "milestones", "gamma")}
    assert sched == {"warmup_iters": 0, "milestones": [250000, 400000, 450000, 475000], "gamma": 0.5}
    assert c["train"]["iters"] == 500000 and c["train"]["loss"] == "l1" and c["train"]["ema_decay"] == 0.999
    assert c["recipe"]["dataset"] == dataset


@pytest.mark.parametrize(("model", "lr"), [("sscan", 1e-4), ("sscan-light", 2e-4)])
@pytest.mark.parametrize("scale", [3, 4])
def test_finetunes_start_from_x2(model: str, lr: float, scale: int) -> None:
    c = resolve_config(model, preset=f"finetune-x{scale}", sets=["model.init_from=x2.safetensors"])
    assert c["preset"] == f"{model}-finetune-x{scale}" and c["model"]["scale"] == scale
    assert c["model"]["require_init"] and c["optim"]["adamw"]["lr"] == lr
    assert c["train"]["iters"] == 250000 and c["schedule"]["milestones"] == [125000, 200000, 225000, 240000]
    assert c["data"]["patch_size"] == 64  # the x2 preset's patch is kept
    with pytest.raises(ConfigError):
        resolve_config("iet", preset=f"{model}-finetune-x{scale}")


def test_quick_layers_over_the_sscan_recipe() -> None:
    c = resolve_config("sscan", preset="quick")
    assert c["preset"] == "quick" and c["train"]["iters"] == 20 and c["data"]["patch_size"] == 12
    assert c["optim"]["adamw"]["betas"] == [0.9, 0.99]  # from sscan.yaml
