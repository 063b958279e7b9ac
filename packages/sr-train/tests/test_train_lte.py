"""ESC+LTE training: the esc-lte preset is the paper's recipe, the quick preset layers over it, and a
tiny continuous-scale run learns (L1 on sampled coordinates), also with gradient accumulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sr_models
from sr_data.arbitrary_scale import make_coord as data_make_coord
from sr_layers.lte import make_coord as layer_make_coord
from sr_train.checkpoint import list_checkpoints, load_checkpoint_file
from sr_train.cli import main
from sr_train.config import resolve_config
from sr_train.errors import ConfigError
from sr_train.trainer import build_datasets, build_model, seed_everything

TINY = ("model.overrides={dim: 16, pdim: 8, n_blocks: 1, conv_blocks: 1, window_size: 8, num_heads: 2, "
        "lte_hidden_dim: 8, lte_mlp_hidden: [16], attn_backend: math}")


def test_esc_lte_preset_is_the_papers_recipe():
    c = resolve_config("esc-lte")
    assert c["preset"] == "esc-lte" and c["model"]["scale"] == 4
    assert (c["data"]["batch_size"], c["data"]["patch_size"]) == (32, 64)
    assert c["data"]["continuous"] == {"enabled": True, "scale_min": 1.0, "scale_max": 4.0, "sample_q": 2304}
    assert c["data"]["options"] == {"repeat": 20}
    # 800 DIV2K images x 20 repeats / 32 per batch = 500 iterations per epoch; 1000 epochs:
    assert c["train"]["iters"] == 800 * 20 // 32 * 1000 == 500000
    assert c["schedule"]["milestones"] == [e * 500 for e in (500, 800, 900, 950)]
    assert c["schedule"]["warmup_iters"] == 0 and c["schedule"]["gamma"] == 0.5
    assert not c["optim"]["muon"]["enabled"]
    assert c["optim"]["adamw"] == {"lr": 2e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    assert c["train"]["loss"] == "l1" and c["train"]["ema_decay"] is None
    assert c["recipe"]["dataset"] == "div2k"


def test_quick_layers_over_it_and_sample_q_is_checked():
    c = resolve_config("esc-lte", preset="quick")
    assert c["data"]["continuous"]["enabled"] and c["data"]["continuous"]["sample_q"] == 144
    assert c["optim"]["adamw"]["betas"] == [0.9, 0.999]
    with pytest.raises(ConfigError, match="sample_q"):
        resolve_config("esc-lte", sets=["data.patch_size=16"])  # 2304 > 16^2
    with pytest.raises(ConfigError, match="scale_min"):
        resolve_config("esc-lte", sets=["data.continuous.scale_min=0.5"])


def test_the_datasets_coordinates_are_the_layers():
    np.testing.assert_allclose(data_make_coord(5, 7), layer_make_coord((5, 7)).numpy(), atol=1e-7)


def _fixed_batch_loss(cfg: dict, state: dict | None) -> float:
    seed_everything(0)
    model = build_model(cfg)
    if state is not None:
        model.load_state_dict(state)
    ds, _ = build_datasets(cfg)
    ds.set_epoch(0)
    items = [ds[i] for i in (0, 7, 14, 21)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("lr", "coord", "cell", "gt")}
    model.eval()
    with torch.no_grad():
        return F.l1_loss(model(batch["lr"], coord=batch["coord"], cell=batch["cell"]), batch["gt"]).item()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_tiny_esc_lte_learns_on_sampled_coordinates(tmp_path, capsys, accumulate):
    out = tmp_path / "run"
    sets = [TINY, "data.patch_size=8", "data.batch_size=4", "data.continuous.sample_q=64", "optim.adamw.lr=2e-3",
            f"train.accumulate={accumulate}", "train.threads=1", "val.max_images=1", "val.center_crop=8",
            "log.progress=false", "log.tensorboard=false", "log.every=5"]
    args = ["--model", "esc-lte", "--iters", "15", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    state = load_checkpoint_file(list_checkpoints(out)[-1][1])
    cfg = resolve_config("esc-lte", sets=sets)
    before, after = _fixed_batch_loss(cfg, None), _fixed_batch_loss(cfg, state["model"])
    assert after < 0.8 * before, (before, after)
    model = sr_models.load_checkpoint(out / "weights" / "esc-lte_x4.safetensors")
    with torch.no_grad():
        assert model(torch.rand(1, 3, 6, 5), scale=2.5).shape == (1, 3, 15, 12)
