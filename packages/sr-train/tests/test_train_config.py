"""Config resolution: presets (checked against the papers' numbers), --config files, --set overrides."""

from __future__ import annotations

import pytest

from sr_train.config import (
    ConfigError,
    find_preset,
    list_presets,
    load_preset,
    parse_set,
    resolve_config,
)


def test_set_values_are_yaml_typed():
    assert parse_set("optim.adamw.lr=2e-4") == {"optim": {"adamw": {"lr": 2e-4}}}
    assert parse_set("schedule.milestones=[100, 2e3]") == {"schedule": {"milestones": [100, 2000.0]}}
    assert parse_set("val.max_images=null") == {"val": {"max_images": None}}
    assert parse_set("optim.muon.enabled=true") == {"optim": {"muon": {"enabled": True}}}
    assert parse_set("data.dataset=div2k") == {"data": {"dataset": "div2k"}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set("optim.adamw.lr")


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"optim\.adamw\.lrr"):
        resolve_config("esc-light", sets=["optim.adamw.lrr=1"])
    with pytest.raises(ConfigError, match=r"'trian'"):
        resolve_config("esc-light", sets=["trian.iters=1"])
    with pytest.raises(ConfigError, match="section"):
        resolve_config("esc-light", sets=["train=3"])
    with pytest.raises(ConfigError, match=r"train\.iters"):
        resolve_config("esc-light", sets=["train.iters=-5"])
    with pytest.raises(ConfigError, match=r"train\.precision"):
        resolve_config("esc-light", sets=["train.precision=fp8"])


def test_layer_order_and_free_form_sections(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  iters: 1000\ndata:\n  batch_size: 8\nmodel:\n  overrides: {train_dilation: 1}\n")
    cfg = resolve_config("iet", config_file=user, cli={"train": {"iters": 50}},
                         sets=["data.batch_size=4", "model.overrides.eval_dilation=2"])
    assert cfg["train"]["iters"] == 50  # command line over file
    assert cfg["data"]["batch_size"] == 4  # --set over everything
    assert cfg["model"]["overrides"] == {"train_dilation": 1, "eval_dilation": 2}
    assert cfg["data"]["patch_size"] == 50  # from the preset
    assert cfg["train"]["iters"] == 50 and isinstance(cfg["train"]["iters"], int)
    assert resolve_config("iet", sets=["train.iters=5e3"])["train"]["iters"] == 5000
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  itters: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.itters"):
        resolve_config("iet", config_file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("iet", config_file=tmp_path / "missing.yaml")


def test_preset_lookup():
    assert find_preset("iet", None) == "iet-stage1"
    assert find_preset("iet", "stage2") == "iet-stage2"
    assert find_preset("iet", "finetune-x4") == "iet-finetune-x4"
    assert find_preset("iet-light", "finetune-x4") == "iet-light-finetune-x4"
    assert find_preset("iet-light", None) == "iet-light"
    assert find_preset("esc-light", None) == "esc"
    assert find_preset("sst-l", "finetune-x3") == "sst-finetune-x3"
    assert find_preset("sst-l-plus", None) == "sst-plus"
    with pytest.raises(ConfigError, match="unknown preset 'stage3'"):
        find_preset("iet", "stage3")
    with pytest.raises(ConfigError, match="not 'esc'"):
        find_preset("esc", "iet-stage1")


def test_iet_presets_follow_supplementary_f():
    s1 = resolve_config("iet", preset="stage1")
    assert (s1["data"]["patch_size"], s1["data"]["batch_size"], s1["model"]["overrides"]["train_dilation"]) == (50, 60, 2)
    assert s1["optim"]["muon"]["enabled"] and s1["optim"]["muon"]["lr"] == 1e-3
    assert s1["optim"]["adamw"]["lr"] == 2e-4 and s1["optim"]["adamw"]["betas"] == [0.9, 0.99]
    assert s1["schedule"]["milestones"] == [250000] and s1["schedule"]["gamma"] == 0.5
    assert s1["train"]["iters"] == 300000 and s1["train"]["loss"] == "l1" and s1["model"]["scale"] == 2
    assert s1["schedule"]["warmup_iters"] > 0
    s2 = resolve_config("iet", preset="stage2", sets=["model.init_from=x.safetensors"])
    assert (s2["data"]["patch_size"], s2["data"]["batch_size"], s2["model"]["overrides"]["train_dilation"]) == (75, 30, 3)
    assert (s2["optim"]["muon"]["lr"], s2["optim"]["adamw"]["lr"]) == (1.5e-4, 3e-5)
    assert s2["schedule"]["milestones"] == [100000, 150000, 170000, 190000, 200000]
    assert s2["train"]["iters"] == 250000 and s2["schedule"]["warmup_iters"] > 0
    with pytest.raises(ConfigError, match="init_from"):
        resolve_config("iet", preset="stage2")
    x4 = resolve_config("iet", preset="finetune-x4", sets=["model.init_from=x2.safetensors"])
    assert x4["model"]["scale"] == 4 and x4["model"]["init_from"] == "x2.safetensors"
    light = resolve_config("iet-light")
    assert (light["data"]["patch_size"], light["model"]["overrides"]["train_dilation"], light["train"]["iters"]) == (75, 3, 400000)
    assert (light["optim"]["muon"]["lr"], light["optim"]["adamw"]["lr"]) == (3e-3, 5e-4)
    assert light["schedule"]["milestones"] == [200000, 300000, 350000, 375000, 390000]
    assert light["recipe"]["dataset"] == "div2k"
    ft = resolve_config("iet-light", preset="finetune-x3", sets=["model.init_from=a"])
    assert ft["train"]["iters"] == 100000 and ft["model"]["scale"] == 3


def test_esc_and_sst_presets_follow_the_official_options():
    for model, batch, patch in (("esc", 64, 64), ("esc-light", 64, 64), ("sst", 32, 64), ("sst-l", 32, 64),
                                ("sst-plus", 32, 96), ("sst-light", 64, 64), ("sst-light-plus", 64, 96)):
        c = resolve_config(model)
        assert (c["data"]["batch_size"], c["data"]["patch_size"]) == (batch, patch), model
        assert not c["optim"]["muon"]["enabled"]
        assert c["optim"]["adamw"]["lr"] == 5e-4 and c["optim"]["adamw"]["betas"] == [0.9, 0.9]
        assert c["optim"]["adamw"]["weight_decay"] == 0
        assert c["schedule"] == {"warmup_iters": 20000, "milestones": [250000, 400000, 450000, 475000, 490000], "gamma": 0.5,
                                 "rescale": False, "reference_iters": 500000}
        assert c["train"]["iters"] == 500000 and c["train"]["ema_decay"] == 0.999 and c["train"]["loss"] == "l1"
    esc4 = resolve_config("esc-light", preset="finetune-x4", sets=["model.init_from=a"])
    assert esc4["model"]["scale"] == 4 and esc4["train"]["iters"] == 500000 and esc4["optim"]["adamw"]["lr"] == 5e-4
    sst4 = resolve_config("sst-plus", preset="finetune-x4", sets=["model.init_from=a"])
    assert sst4["model"]["scale"] == 4 and sst4["data"]["patch_size"] == 96  # variant's patch kept
    assert sst4["optim"]["adamw"]["lr"] == 2.5e-4 and sst4["train"]["iters"] == 250000
    assert sst4["schedule"]["milestones"] == [125000, 200000, 225000, 237500, 245000]


def test_every_preset_resolves_for_every_model_it_names():
    for name in list_presets():
        for model in load_preset(name).get("applies_to") or []:
            cfg = resolve_config(model, preset=name, sets=["model.init_from=w.safetensors"])
            assert cfg["preset"] == name and cfg["model"]["name"] == model
