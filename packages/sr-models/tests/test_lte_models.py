"""Arbitrary-scale models: esc-lte and the upsampler="lte" option (shapes at float scales and target
sizes, the bilinear skip, the body shared with ESC, checkpoint round trips, bad options)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sr_models
from sr_layers.lte import cell_for_size, make_coord
from sr_models import create_model, load_checkpoint, save_safetensors

TINY = {"dim": 16, "pdim": 8, "n_blocks": 1, "conv_blocks": 1, "window_size": 8, "num_heads": 2,
        "lte_hidden_dim": 8, "lte_mlp_hidden": [8], "attn_backend": "math"}


def _tiny(name: str = "esc-lte", **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **{**TINY, **kw}).eval()


def test_esc_lte_is_registered_with_the_paper_widths():
    assert "esc-lte" in sr_models.list_models()
    model = create_model("esc-lte")
    assert model.upsampler.hidden_dim == 256 and model.upsampler.coef.in_channels == 64
    widths = [m.out_features for m in model.upsampler.imnet.layers if isinstance(m, torch.nn.Linear)]
    assert widths == [256, 256, 256, 3]
    assert model.arbitrary_scale and model.scale == 4 and model.pad_multiple == 1


@pytest.mark.parametrize(("scale", "expected"), [(1.0, (9, 11)), (2, (18, 22)), (3.7, (33, 41)), (12.5, (112, 138))])
def test_float_scales_give_rounded_sizes(scale, expected):
    model = _tiny()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 9, 11), scale=scale)
    assert out.shape == (1, 3, *expected)  # round(9 * 3.7) = 33, round(11 * 3.7) = 41
    assert torch.isfinite(out).all()


def test_target_size_and_default_scale():
    model = _tiny(scale=3)
    x = torch.rand(2, 3, 7, 5)
    with torch.no_grad():
        assert model(x, size=(20, 9)).shape == (2, 3, 20, 9)  # anisotropic
        assert model(x).shape == (2, 3, 21, 15)  # the model's default scale
    with pytest.raises(ValueError, match="scale"):
        model(x, scale=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        model(x, scale=2.0, size=(14, 10))


def test_the_skip_is_bilinear_interpolation_of_the_input():
    model = _tiny()
    last = model.upsampler.imnet.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        x = torch.rand(1, 3, 6, 7)
        out = model(x, scale=2.6)
    expected = F.interpolate(x, size=out.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_render_equals_query_at_the_pixel_centres():
    model = _tiny(lte_query_chunk=13)
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        out = model(x, scale=2.5)
        hw = out.shape[-2:]
        coord = make_coord(tuple(hw))[None]
        values = model.query(x, coord, cell_for_size(tuple(hw), coord.shape[1])[None])
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), values, atol=1e-5, rtol=0)


def test_the_body_is_esc_without_its_upsampler():
    torch.manual_seed(0)
    esc = create_model("esc", **{k: v for k, v in TINY.items() if not k.startswith("lte_")}).eval()
    lte = _tiny()
    body_sd = {k: v for k, v in esc.state_dict().items() if not k.startswith("to_img")}
    assert set(lte.encoder.state_dict()) == set(body_sd)
    lte.encoder.load_state_dict(body_sd, strict=True)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(lte.encoder.body_features(x), esc.body_features(x))
        # ESC's own output still goes through body_features
        assert esc(x).shape == (1, 3, 32, 32)


def test_generic_option_round_trips_through_safetensors_and_plain_state_dicts(tmp_path):
    model = _tiny("esc-light", upsampler="lte")
    assert model.config["upsampler"] == "lte" and model.model_name == "esc-light"
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        ref = model(x, scale=1.7)
    path = save_safetensors(model, tmp_path / "m.safetensors")
    back = load_checkpoint(path, scale=2)  # any default scale: the weights serve every scale
    with torch.no_grad():
        torch.testing.assert_close(back(x, scale=1.7), ref)
    native = _tiny()
    torch.save(native.state_dict(), tmp_path / "plain.pth")
    loaded = load_checkpoint(tmp_path / "plain.pth", **TINY)
    assert loaded.model_name == "esc-lte"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, scale=3.3), native(x, scale=3.3))


def test_the_option_works_on_an_sst_body():
    torch.manual_seed(0)
    sst = create_model("sst-light", n_blocks=1, window_sizes=[4, 8], num_heads=[3, 3], ranks=[16, 24],
                       attn_backend="math").eval()
    torch.manual_seed(0)
    lte = create_model("sst-light", upsampler="lte", n_blocks=1, window_sizes=[4, 8], num_heads=[3, 3],
                       ranks=[16, 24], attn_backend="math", lte_hidden_dim=8, lte_mlp_hidden=[8]).eval()
    assert not any(k.startswith("encoder.upsampler") for k in lte.state_dict())
    body_sd = {k: v for k, v in sst.state_dict().items() if not k.startswith("upsampler.")}
    lte.encoder.load_state_dict(body_sd, strict=True)
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(lte.encoder.body_features(x), sst.body_features(x))
        assert lte(x, scale=1.5).shape == (1, 3, 14, 10)  # round(13.5) = 14 (half to even), round(10.5) = 10


IET_TINY = {"embed_dim": 12, "num_heads": 2, "ffn_hidden": 8, "depths": [2, 2, 2], "dlsg_local": 3, "dlsg_samples": 3,
            "k_schedule": [18, 12, 16, 12, 12, 8], "expand_ks": [8, 8], "expand_k1": [4, 3], "expand_k2": [3, 2],
            "num_feat": 8}
SSCAN_TINY = {"embed_dim": 8, "num_heads": 2, "n_blocks": 2, "depth": 2, "window_size": 4, "topk": 2, "num_feat": 8}


@pytest.mark.parametrize(("name", "cfg", "hw"), [("iet", IET_TINY, (12, 10)), ("sscan-light", SSCAN_TINY, (9, 7))])
def test_body_features_are_what_the_upsampler_receives(name, cfg, hw):
    """IET / SSCAN: body_features(x) equals the input of the model's own upsampler in forward (SSCAN's
    padded to its window there, so compared on the input's h x w), and the LTE option builds on it."""
    torch.manual_seed(0)
    model = create_model(name, 2, **cfg).eval()
    seen = {}
    model.upsampler.register_forward_pre_hook(lambda _m, args: seen.setdefault("feat", args[0]))
    x = torch.rand(1, 3, *hw)
    with torch.no_grad():
        model(x)
        feat = model.body_features(x)
    torch.testing.assert_close(feat, seen["feat"][:, :, : hw[0], : hw[1]])
    lte = create_model(name, 2, upsampler="lte", lte_hidden_dim=8, lte_mlp_hidden=[8], **cfg).eval()
    with torch.no_grad():
        assert lte(x, scale=2.5).shape == (1, 3, round(hw[0] * 2.5), round(hw[1] * 2.5))


def test_official_esc_arb_checkpoint_layout_loads(tmp_path):
    """The ESC authors' esc_arb/LIIF training file: {"model": {"name": "lte", "args", "sd"}, "epoch",
    "optimizer"} with the LTE head at the top level (coef, freq, phase, imnet) and ESC under encoder."""
    model = create_model("esc-lte").eval()
    sd = {k.removeprefix("upsampler."): v for k, v in model.state_dict().items()}
    assert {"coef.weight", "phase.weight", "imnet.layers.6.bias", "encoder.plk_filter"} <= set(sd)
    blob = {"model": {"name": "lte", "args": {"hidden_dim": 256}, "sd": sd},
            "optimizer": {"name": "adam", "args": {"lr": 2e-4}, "sd": {}}, "epoch": 1000}
    torch.save(blob, tmp_path / "epoch-last.pth")
    loaded = load_checkpoint(tmp_path / "epoch-last.pth")
    assert loaded.model_name == "esc-lte"
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, scale=2.2), model(x, scale=2.2))


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="body_features"):
        create_model("esc-fp", upsampler="lte")
    with pytest.raises(ValueError, match="upsampler"):
        create_model("esc", upsampler="liif")
    with pytest.raises(ValueError, match="lte_bogus"):
        create_model("esc-lte", lte_bogus=1)
    with pytest.raises(ValueError, match="already has the LTE upsampler"):
        create_model("esc-lte", upsampler="lte")
