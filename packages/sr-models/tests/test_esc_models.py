"""ESC family: exact parameter counts and state_dict layouts of the official checkpoints, forward
on odd sizes and batches, a functional float64 reference of the official forward, autocast, compile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sr_models import create_model, list_models

DATA = Path(__file__).parent / "data"
PAPER_NAMES = {"esc": "ESC", "esc-light": "ESC-light", "esc-fp": "ESC-FP", "esc-xl": "ESC-XL", "esc-rib": "ESC-RIB"}
TABLES = {
    "esc": "sd_ESC_x4.tsv", "esc-fp": "sd_ESCFP_x4.tsv", "esc-real": "sd_ESCReal_x4.tsv",
    "esc-xl": "sd_ESCXL_x4.tsv", "esc-rib": "sd_ESCRIB_x4.tsv",
}


def _data_file(name: str) -> Path:
    """tests/data holds copies of the spec tables; fall back to <repo parent>/shared/specs/state_dicts."""
    local = DATA / name
    if local.is_file():
        return local
    repo_root = Path(__file__).resolve().parents[3]
    return repo_root.parent / "shared" / "specs" / "state_dicts" / name


def read_table(name: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in _data_file(name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, _ = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


PARAM_COUNTS = json.loads(_data_file("param_counts.json").read_text())


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_NAMES))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_param_counts_match_official(name, scale):
    model = create_model(name, scale=scale)
    assert n_params(model) == PARAM_COUNTS[f"{PAPER_NAMES[name]} x{scale}"]


def test_esc_real_param_count_and_scale_restriction():
    assert n_params(create_model("esc-real", scale=4)) == PARAM_COUNTS["ESC-Real x4"]
    with pytest.raises(ValueError, match="scale"):
        create_model("esc-real", scale=2)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_state_dict_keys_and_shapes_match_official_tables(name):
    sd = create_model(name, scale=4).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == read_table(TABLES[name])


def test_registry_names_and_attributes():
    names = set(list_models())
    assert {"esc", "esc-light", "esc-fp", "esc-xl", "esc-real", "esc-rib"} <= names
    m = create_model("esc-light", scale=3)
    assert m.model_name == "esc-light" and m.scale == 3
    assert m.pad_multiple == 32 and m.pad_mode == "reflect"
    assert create_model("esc-rib", scale=2).pad_multiple == 64
    assert create_model("esc-xl", scale=2, n_blocks=1).pad_multiple == 48
    cfg = json.loads(json.dumps(m.config))
    assert cfg["n_blocks"] == 3 and cfg["window_size"] == 32 and cfg["scale"] == 3
    with pytest.raises(ValueError, match="bogus_field"):
        create_model("esc", scale=2, bogus_field=1)
    with pytest.raises(ValueError, match="variant"):
        create_model("esc", scale=2, variant="nope")


@torch.no_grad()
def test_esc_light_forward_lr_37x53_batch3():
    model = create_model("esc-light", scale=2).eval()
    y = model(torch.rand(3, 3, 37, 53))
    assert y.shape == (3, 3, 74, 106)
    assert torch.isfinite(y).all()


@torch.no_grad()
def test_batched_forward_equals_per_sample_forward():
    torch.manual_seed(0)
    model = create_model("esc", scale=3, n_blocks=1, conv_blocks=2, window_size=8).eval()
    for blk in model.blocks:  # the dynamic-kernel generators start at zero; make them matter
        for pc in blk.pconvs:
            torch.nn.init.normal_(pc.plk.dwc_proj[3].weight, std=0.1)
    x = torch.rand(3, 3, 13, 19)
    y = model(x)
    for b in range(3):
        torch.testing.assert_close(model(x[b:b + 1]), y[b:b + 1], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "scale", "overrides"),
    [
        ("esc", 4, {"n_blocks": 1, "window_size": 16}),
        ("esc-fp", 3, {"n_blocks": 1, "window_size": 16}),
        ("esc-xl", 2, {"n_blocks": 1, "conv_blocks": 1, "window_size": 16}),
        ("esc-real", 4, {"n_blocks": 1, "window_size": 16}),
        ("esc-rib", 2, {"n_blocks": 1, "window_size": 16}),
    ],
)
@torch.no_grad()
def test_every_variant_runs_on_odd_sizes(name, scale, overrides):
    # real widths and layer types; fewer blocks and a smaller window keep the CPU test small
    model = create_model(name, scale=scale, **overrides).eval()
    y = model(torch.rand(2, 3, 9, 13))
    assert y.shape == (2, 3, 9 * scale, 13 * scale)
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------------------------------------
# A functional float64 reference of the official ESC / ESC-FP forward, written from the spec.
# ---------------------------------------------------------------------------------------------


def _ln(x, sd, key):
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, (x.shape[-1],), sd[f"{key}.weight"], sd[f"{key}.bias"], 1e-6)
    return x.permute(0, 3, 1, 2)


def _conv(x, sd, key, **kw):
    w = sd[f"{key}.weight"]
    return F.conv2d(x, w, sd[f"{key}.bias"], padding=w.shape[-1] // 2, **kw)


def _ffn(x, sd, key):
    h = F.gelu(_conv(x, sd, f"{key}.proj"))
    h = F.gelu(_conv(h, sd, f"{key}.dwc", groups=h.shape[1])) + h
    return _conv(h, sd, f"{key}.aggr")


def _attn(x, sd, key, window, heads):
    b, c, hh, ww = x.shape
    ph, pw = (window - hh % window) % window, (window - ww % window) % window
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect")
    qkv = _conv(xp, sd, f"{key}.to_qkv")
    table = sd[f"{key}.relative_position_bias"]
    d = c // heads
    out = torch.zeros(b, c, hh + ph, ww + pw, dtype=x.dtype)
    span = 2 * window - 1
    n = window * window
    idx = torch.empty(n, n, dtype=torch.long)
    for i in range(n):
        for j in range(n):
            idx[i, j] = (j // window - i // window + window - 1) * span + (j % window - i % window + window - 1)
    for bi in range(b):
        for wy in range(0, hh + ph, window):
            for wx in range(0, ww + pw, window):
                tile = qkv[bi, :, wy:wy + window, wx:wx + window].reshape(3, heads, d, n)
                for h in range(heads):
                    q, k, v = tile[0, h].T, tile[1, h].T, tile[2, h].T
                    p = torch.softmax(q @ k.T / d**0.5 + table[h][idx], dim=-1)
                    out[bi, h * d:(h + 1) * d, wy:wy + window, wx:wx + window] = (p @ v).T.reshape(d, window, window)
    return _conv(out[:, :, :hh, :ww], sd, f"{key}.to_out")


def _geo(k):
    r = torch.rot90(k, -1, [2, 3])
    return (k + k.flip([3]) + k.flip([2]) + k.flip([2, 3]) + r + r.flip([3]) + r.flip([2]) + r.flip([2, 3])) / 8


def _reference_esc(sd, x, cfg, scale, fp=False):
    p = cfg["pdim"]
    feat = _conv(x, sd, "proj")
    skip = feat
    lk = None if fp else _geo(sd["plk_filter"])
    for bi in range(cfg["n_blocks"]):
        key = f"blocks.{bi}"
        s = feat
        y = _ffn(_ln(feat, sd, f"{key}.ln_proj"), sd, f"{key}.proj")
        y = y + _attn(_ln(y, sd, f"{key}.ln_attn"), sd, f"{key}.attn", cfg["window_size"], cfg["num_heads"])
        for j in range(cfg["conv_blocks"]):
            z = _ln(y, sd, f"{key}.lns.{j}") if f"{key}.lns.{j}.weight" in sd else y
            z = _ffn(z, sd, f"{key}.convffns.{j}")
            ck = f"{key}.pconvs.{j}.plk"
            z1 = z[:, :p]
            outs = []
            for b in range(z.shape[0]):  # one sample at a time, as the official eval path
                zb = z1[b:b + 1]
                if fp:
                    g = F.gelu(_conv(zb.mean((2, 3), keepdim=True), sd, f"{ck}.proj.1"))
                    dyn = _conv(g, sd, f"{ck}.proj.3").reshape(p, 1, 3, 3)
                    kern = sd["lk_spatial"].clone()
                    kern[:, :, 5:8, 5:8] += dyn
                    outs.append(F.conv2d(F.conv2d(zb, sd["lk_channel"]), kern, padding=6, groups=p))
                else:
                    g = F.gelu(_conv(zb.mean((2, 3), keepdim=True), sd, f"{ck}.dwc_proj.1"))
                    dyn = _conv(g, sd, f"{ck}.dwc_proj.3").reshape(p, 1, 3, 3)
                    outs.append(F.conv2d(zb, lk, padding=6) + F.conv2d(zb, dyn, padding=1, groups=p))
            z = torch.cat([torch.cat(outs, 0), z[:, p:]], 1)
            y = y + _conv(z, sd, f"{key}.pconvs.{j}.aggr")
        feat = _conv(_ln(y, sd, f"{key}.ln_out"), sd, f"{key}.conv_out") + s
    if fp:
        feat = _conv(_ln(feat, sd, "ln_last"), sd, "last") + skip
        return F.pixel_shuffle(_conv(feat, sd, "to_img"), scale) + F.interpolate(x, scale_factor=scale, mode="bicubic")
    feat = _conv(feat, sd, "last") + skip
    out = _conv(feat, sd, "to_img") + torch.repeat_interleave(x, scale * scale, dim=1)
    return F.pixel_shuffle(out, scale)


@pytest.mark.parametrize(("name", "fp"), [("esc", False), ("esc-fp", True), ("esc-xl", False)])
@torch.no_grad()
def test_esc_matches_functional_reference(name, fp):
    torch.manual_seed(1)
    overrides = {"dim": 24, "pdim": 8, "n_blocks": 2, "conv_blocks": 2, "window_size": 4, "num_heads": 3,
                 "attn_backend": "math"}
    model = create_model(name, scale=2, **overrides).double().eval()
    for prm in model.parameters():
        prm.add_(torch.randn_like(prm) * 0.05)  # leave no zero-initialised piece trivial
    sd = model.state_dict()
    x = torch.rand(2, 3, 7, 10, dtype=torch.float64)
    ref = _reference_esc(sd, x, model.config, 2, fp=fp)
    torch.testing.assert_close(model(x), ref)


@torch.no_grad()
def test_bf16_autocast_has_no_nan():
    model = create_model("esc-light", scale=2, n_blocks=1).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.rand(1, 3, 17, 21))
    assert y.shape == (1, 3, 34, 42)
    assert torch.isfinite(y.float()).all()


def test_training_step_produces_gradients_everywhere():
    model = create_model("esc-light", scale=2, n_blocks=1, conv_blocks=1).train()
    y = model(torch.rand(2, 3, 12, 12))
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.slow
def test_torch_compile_small_model():
    torch.manual_seed(2)
    model = create_model("esc-light", scale=2, dim=16, pdim=8, n_blocks=1, conv_blocks=1, window_size=4,
                         num_heads=2, attn_backend="math").eval()
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="aot_eager")(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_cuda_inductor_compile_and_flex_path():
    model = create_model("esc-light", scale=2).cuda().eval()
    x = torch.rand(2, 3, 64, 96, device="cuda")
    with torch.no_grad():
        ref = create_model("esc-light", scale=2, attn_backend="math").cuda().eval()
        ref.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)
        out = torch.compile(model)(x)
    torch.testing.assert_close(out, ref(x), atol=1e-3, rtol=1e-3)
