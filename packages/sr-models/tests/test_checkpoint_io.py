"""load_checkpoint / save_safetensors: BasicSR files (params_ema preferred, module. prefixes), plain
state_dicts, our safetensors with metadata, inference of name and scale, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from sr_models import CheckpointError, create_model, load_checkpoint, save_safetensors
from sr_models.checkpoint import extract_state_dict, infer_name_and_scale

SMALL_ESC = {"n_blocks": 1, "conv_blocks": 1}


def _perturbed(sd, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: v + torch.randn(v.shape, generator=g) * 0.01 for k, v in sd.items()}


def test_basicsr_file_prefers_params_ema_and_strips_module_prefix(tmp_path):
    model = create_model("esc-light", scale=2)
    params = _perturbed(model.state_dict(), 0)
    ema = _perturbed(model.state_dict(), 1)
    path = tmp_path / "ESC_light_X2.pth"
    torch.save({"params": {f"module.{k}": v for k, v in params.items()},
                "params_ema": {f"module.{k}": v for k, v in ema.items()}}, path)
    loaded = load_checkpoint(path)
    assert loaded.model_name == "esc-light" and loaded.scale == 2
    assert not loaded.training
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, ema[k])


def test_basicsr_file_with_params_only_and_plain_state_dict(tmp_path):
    model = create_model("esc-fp", scale=3)
    sd = _perturbed(model.state_dict(), 2)
    torch.save({"params": sd}, tmp_path / "a.pth")
    torch.save(sd, tmp_path / "b.pth")
    for name in ("a.pth", "b.pth"):
        loaded = load_checkpoint(tmp_path / name)
        assert loaded.model_name == "esc-fp" and loaded.scale == 3
        torch.testing.assert_close(loaded.state_dict()["lk_spatial"], sd["lk_spatial"])


@pytest.mark.parametrize(
    ("name", "scale"),
    [("esc", 4), ("esc-light", 3), ("esc-xl", 2), ("esc-real", 4), ("esc-rib", 3), ("sst-xl-plus", 4)],
)
def test_name_and_scale_are_inferred_from_shapes(name, scale):
    sd = create_model(name, scale=scale).state_dict()
    assert infer_name_and_scale(sd) == (name, scale)


def test_sst_base_and_plus_share_shapes_and_the_file_name_decides():
    sd = create_model("sst-light", scale=2).state_dict()
    with pytest.warns(UserWarning, match="sst-light-plus"):
        assert infer_name_and_scale(sd) == ("sst-light", 2)
    assert infer_name_and_scale(sd, hint="SSTlight_Plus_DFLIP_X2.pth") == ("sst-light-plus", 2)
    sd_l = create_model("sst-l", scale=4).state_dict()
    assert infer_name_and_scale(sd_l, hint="SST-L+_x4.pth") == ("sst-l-plus", 4)


def test_safetensors_round_trip_keeps_name_scale_config_and_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("sst-light", scale=2, n_blocks=1, window_sizes=[4, 8], num_heads=[3, 3],
                         ranks=[16, 24], attn_backend="math").eval()
    path = save_safetensors(model, tmp_path / "m.safetensors", extra_metadata={"note": "test"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["model_name"] == "sst-light" and meta["scale"] == "2" and meta["note"] == "test"
    assert json.loads(meta["config"])["window_sizes"] == [4, 8]
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_save_requires_a_registry_model(tmp_path):
    with pytest.raises(ValueError, match="model_name"):
        save_safetensors(torch.nn.Conv2d(3, 3, 1), tmp_path / "x.safetensors")


def test_corrupt_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"broken\.pth"):
        load_checkpoint(path)
    truncated = tmp_path / "trunc.safetensors"
    save_safetensors(create_model("esc-light", scale=2, **SMALL_ESC), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"trunc\.safetensors"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_foreign_state_dict_is_rejected_with_keys_listed(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(CheckpointError, match="cannot infer the model"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: plk_filter \(16, 16, 13, 13\)"):
        load_checkpoint(path, name="esc", scale=2)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) in the checkpoint: conv1.weight"):
        load_checkpoint(path, name="esc", scale=2)
    torch.save({"params": {"a": "not a tensor"}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="not tensors"):
        load_checkpoint(tmp_path / "odd.pth")


def test_shape_mismatch_lists_keys_and_shapes(tmp_path):
    path = tmp_path / "light.pth"
    torch.save(create_model("esc-light", scale=2).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: blocks\.3"):
        load_checkpoint(path, name="esc")  # ESC has 5 blocks
    with pytest.raises(CheckpointError, match=r"shape mismatch\(es\): proj.weight: checkpoint \(64, 3, 3, 3\) vs model \(48, 3, 3, 3\)"):
        load_checkpoint(path, name="esc-light", dim=48, num_heads=3)
    with pytest.raises(CheckpointError, match="unknown model"):
        load_checkpoint(path, name="no-such-model")


def test_wrong_scale_is_an_error_unless_transfer_is_asked(tmp_path):
    model = create_model("esc-light", scale=2, **SMALL_ESC)
    path = save_safetensors(model, tmp_path / "x2.safetensors")
    with pytest.raises(CheckpointError, match="x2 checkpoint but scale=4"):
        load_checkpoint(path, scale=4)
    moved = load_checkpoint(path, scale=4, allow_scale_transfer=True)
    assert moved.scale == 4 and moved.to_img.weight.shape == (48, 64, 3, 3)
    # everything but the sub-pixel conv is copied unchanged
    torch.testing.assert_close(moved.plk_filter, model.plk_filter)
    # bilinear 2 -> 4 keeps the corner sub-pixels of every colour plane
    w2 = model.to_img.weight.detach().view(3, 2, 2, -1)
    w4 = moved.to_img.weight.detach().view(3, 4, 4, -1)
    torch.testing.assert_close(w4[:, 0, 0], w2[:, 0, 0])
    torch.testing.assert_close(w4[:, 3, 3], w2[:, 1, 1])


def test_sst_scale_transfer_uses_intermediate_groups(tmp_path):
    model = create_model("sst", scale=2, n_blocks=1)
    path = tmp_path / "SST_X2.pth"
    torch.save({"params_ema": model.state_dict()}, path)
    moved = load_checkpoint(path, name="sst", scale=3, allow_scale_transfer=True, n_blocks=1)
    assert moved.upsampler.up_conv.weight.shape == (64 * 9, 64, 3, 3)


def test_extract_state_dict_variants():
    t = torch.zeros(1)
    assert extract_state_dict({"state_dict": {"module._orig_mod.a": t}}) == {"a": t}
    with pytest.raises(CheckpointError, match="no state_dict"):
        extract_state_dict([1, 2, 3])
