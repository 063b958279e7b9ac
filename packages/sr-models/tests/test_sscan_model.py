"""SSCAN / SSCAN-light networks: registry and scales, batch equals per-sample, odd sizes and the stated
padding policy, config round trip, FLOPs (counter == 2 x analytic MACs, also on meta tensors) and
checkpoints (tiny configs on CPU; full size only on meta tensors)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import sr_kernels
from sr_layers.windows import reflect_pad_bottom_right
from sr_models import create_model, list_models, load_checkpoint, save_safetensors
from sr_models.families.sscan import SSCANConfig, sscan_macs

# every mechanism, a few channels: 2 SSCAN blocks x 2 FGCA blocks (shifted second), LCE, ConvFFN
TINY = {"embed_dim": 8, "num_heads": 2, "n_blocks": 2, "depth": 2, "window_size": 4, "topk": 2, "num_feat": 8}


def test_registered_for_x2_x3_x4() -> None:
    assert {"sscan", "sscan-light"} <= set(list_models())
    for name in ("sscan", "sscan-light"):
        for scale in (2, 3, 4):
            with torch.device("meta"):
                model = create_model(name, scale)
            assert model.scale == scale and model.model_name == name
            assert model.pad_multiple == model.cfg.window_size and model.pad_mode == "reflect"
        with pytest.raises(ValueError, match="scale"):
            create_model(name, 8)


def test_parameter_counts_are_sized_like_swinir() -> None:
    """Our sizing (module docstring): SSCAN near SwinIR (11.9M at x4), SSCAN-light near SwinIR-light
    (930K at x4); fixed here so that a config change that moves them is noticed."""
    with torch.device("meta"):
        full, light = create_model("sscan", 4), create_model("sscan-light", 4)
    assert sum(p.numel() for p in full.parameters()) == 10_666_479
    assert sum(p.numel() for p in light.parameters()) == 835_428


@pytest.mark.parametrize(("name", "scale"), [("sscan", 2), ("sscan", 3), ("sscan-light", 4), ("sscan-light", 3)])
def test_batch_of_three_equals_each_sample_alone(name: str, scale: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, scale, **TINY).eval()
    x = torch.rand(3, 3, 9, 11)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    assert batched.shape == (3, 3, 9 * scale, 11 * scale)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 7), (5, 3), (13, 9), (8, 8)])
def test_odd_sizes_follow_the_stated_padding_policy(h: int, w: int) -> None:
    """Reflect padding bottom/right to the window, crop after: the same as padding by hand (torch's
    reflect pad where it accepts the size, sr_layers' repeated reflection - tested against it - else)."""
    torch.manual_seed(0)
    model = create_model("sscan-light", 2, **TINY).eval()
    x = torch.rand(1, 3, h, w)
    m = model.pad_multiple
    ph, pw = (-h) % m, (-w) % m
    if ph < h and pw < w:
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect")
    else:
        xp = reflect_pad_bottom_right(x, ph, pw)
    with torch.no_grad():
        y = model(x)
        padded = model(xp)
    assert y.shape == (1, 3, 2 * h, 2 * w)
    torch.testing.assert_close(y, padded[..., : 2 * h, : 2 * w])
    assert torch.isfinite(y).all()


def test_training_step_gives_finite_gradients_everywhere() -> None:
    torch.manual_seed(0)
    model = create_model("sscan", 2, **TINY).train()
    out = model(torch.rand(2, 3, 7, 6))
    F.l1_loss(out, torch.rand_like(out)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_config_is_json_and_round_trips() -> None:
    model = create_model("sscan-light", 3, **TINY)
    cfg = json.loads(json.dumps(model.config))
    assert cfg["upsampler"] == "pixelshuffledirect" and cfg["window_size"] == 4 and cfg["depth"] == 2
    again = create_model("sscan-light", 3, **cfg)
    assert again.config == model.config and SSCANConfig(**cfg) == model.cfg


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"no_such_field": 1}, "no_such_field"),
        ({"embed_dim": 10, "num_heads": 3}, "divisible"),
        ({"topk": 0}, "topk"),
        ({"window_size": 2.5}, "window_size"),
        ({"ffn": "glu"}, "ffn"),
        ({"upsampler": "nearest"}, "upsampler"),
        ({"attn_impl": "flash"}, "attn_impl"),
        ({"lce_kernel": 2}, "lce_kernel"),
    ],
)
def test_bad_overrides(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("sscan", 2, **{**TINY, **overrides})


def _count(model: torch.nn.Module, h: int, w: int, device: str = "cpu") -> int:
    sr_kernels.flops.register_flop_formulas()  # FlopCounterMode copies the registry when created
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, h, w, device=device))
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["sscan", "sscan-light"])
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("overrides", [{}, {"ffn": "mlp", "lce_kernel": 0, "shared_heads": False}])
def test_counter_equals_analytic_macs(name: str, scale: int, overrides: dict) -> None:
    model = create_model(name, scale, **TINY, **overrides).eval()
    macs = sscan_macs(model.cfg, scale, 7, 10)
    assert _count(model, 7, 10) == 2 * macs["total"]
    assert macs["attention"] > 0 and macs["selection"] > 0


@pytest.mark.parametrize("name", ["sscan", "sscan-light"])
def test_full_size_flops_on_meta_tensors(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, 4)
    h, w = 720 // 4, 1280 // 4
    assert _count(model.eval(), h, w, device="meta") == 2 * sscan_macs(model.cfg, 4, h, w)["total"]


def test_safetensors_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("sscan", 3, **TINY).eval()
    path = tmp_path / "sscan_x3.safetensors"
    save_safetensors(model, path)
    again = load_checkpoint(path).eval()
    assert again.model_name == "sscan" and again.scale == 3 and again.config == model.config
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
