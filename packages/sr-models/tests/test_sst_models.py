"""SST family: exact parameter counts and state_dict layouts, forward on odd sizes and batches, a
functional float64 reference of the official forward (full-precision attention), bf16 behaviour."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sr_models import create_model, list_models

DATA = Path(__file__).parent / "data"
PAPER_NAMES = {
    "sst": "SST", "sst-plus": "SST+", "sst-l": "SST-L", "sst-l-plus": "SST-L+", "sst-xl-plus": "SST-XL+",
    "sst-light": "SST-light", "sst-light-plus": "SST-light+",
}
TABLES = {"sst": ("sd_SST_x2.tsv", 2), "sst-l": ("sd_SSTL_x2.tsv", 2), "sst-light": ("sd_SSTlight_x4.tsv", 4)}


def _data_file(name: str) -> Path:
    local = DATA / name
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[3].parent / "shared" / "specs" / "state_dicts" / name


def _read_table(name: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in _data_file(name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape, _ = line.split("\t")
            rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


PARAM_COUNTS = json.loads(_data_file("param_counts.json").read_text())


@pytest.mark.parametrize("name", sorted(PAPER_NAMES))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_param_counts_match_official(name, scale):
    model = create_model(name, scale=scale)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[f"{PAPER_NAMES[name]} x{scale}"]


@pytest.mark.parametrize("name", sorted(TABLES))
def test_state_dict_keys_and_shapes_match_official_tables(name):
    table, scale = TABLES[name]
    sd = create_model(name, scale=scale).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == _read_table(table)


def test_configs_windows_and_attributes():
    assert set(PAPER_NAMES) <= set(list_models())
    m = create_model("sst-plus", scale=2, n_blocks=1)
    assert [layer.attn.window for layer in list(m.body[0])[:6]] == [16, 32, 48, 32, 48, 96]
    assert not any(layer.attn.shift for layer in list(m.body[0])[:6])
    assert m.pad_multiple == 1
    cfg = json.loads(json.dumps(create_model("sst-light", scale=4).config))
    assert cfg["window_sizes"] == [8, 16, 32, 16, 32, 64] and cfg["attn_precision"] == "bf16"
    with pytest.raises(ValueError, match="equal length"):
        create_model("sst", scale=2, window_sizes=[8, 8])
    with pytest.raises(ValueError, match="nonsense"):
        create_model("sst", scale=2, nonsense=True)


def test_init_matches_official_rules():
    m = create_model("sst-light", scale=2)
    conv1 = m.body[0][0].attn.to_qkv
    assert conv1.weight.std().item() < 0.03  # trunc_normal(0.02) on every 1x1 conv
    assert torch.count_nonzero(m.proj.bias) == 0 and torch.count_nonzero(m.body[0][6].bias) == 0
    assert torch.count_nonzero(m.body[0][0].attn.hidden_b) == 0


@torch.no_grad()
def test_sst_light_forward_lr_37x53():
    model = create_model("sst-light", scale=4).eval()
    y = model(torch.rand(1, 3, 37, 53))
    assert y.shape == (1, 3, 148, 212)
    assert torch.isfinite(y).all()


@torch.no_grad()
def test_batch3_equals_per_sample_and_odd_sizes():
    torch.manual_seed(0)
    model = create_model("sst-light", scale=3, n_blocks=1, window_sizes=[4, 8], num_heads=[3, 3],
                         ranks=[16, 24]).eval()
    x = torch.rand(3, 3, 11, 17)
    y = model(x)
    assert y.shape == (3, 3, 33, 51)
    for b in range(3):
        torch.testing.assert_close(model(x[b:b + 1]), y[b:b + 1], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["sst", "sst-l", "sst-xl-plus"])
@torch.no_grad()
def test_large_variants_run(name):
    # real widths, heads and upsampler; one block and small windows keep the CPU test small
    model = create_model(name, scale=4, n_blocks=1, window_sizes=[4, 8, 4, 8, 4, 8]).eval()
    y = model(torch.rand(1, 3, 9, 10))
    assert y.shape == (1, 3, 36, 40)
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------------------------------------
# Functional float64 reference of the official SST forward (attention in full precision).
# ---------------------------------------------------------------------------------------------


def _ln(x, sd, key):
    x = x.transpose(1, -1)
    return F.layer_norm(x, (x.shape[-1],), sd[f"{key}.weight"], sd[f"{key}.bias"], 1e-6).transpose(1, -1)


def _conv(x, sd, key, **kw):
    w = sd[f"{key}.weight"]
    return F.conv2d(x, w, sd[f"{key}.bias"], padding=w.shape[-1] // 2, **kw)


def _features(w, n_freqs):
    rows = []
    for n in range(w * w):
        xc = 2 * ((n % w) + 0.5) / w - 1
        yc = 2 * ((n // w) + 0.5) / w - 1
        row = [xc, yc]
        for i in range(n_freqs):
            f = 2.0**i
            row += [math.sin(f * xc), math.sin(f * yc), math.cos(f * xc), math.cos(f * yc)]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def _rib_attn(x, sd, key, w, heads, n_freqs):
    b, c, hh, ww = x.shape
    gate = torch.sigmoid(_conv(_conv(x, sd, f"{key}.gate.0", groups=c), sd, f"{key}.gate.1"))
    ph, pw = (w - hh % w) % w, (w - ww % w) % w
    qkv = _conv(F.pad(x, (0, pw, 0, ph), mode="reflect"), sd, f"{key}.to_qkv")
    hidden = torch.relu(_features(w, n_freqs) @ sd[f"{key}.to_hidden"] + sd[f"{key}.hidden_b"])
    to_q, to_k = sd[f"{key}.to_q"], sd[f"{key}.to_k"]
    r = to_q.shape[-1]
    d = c // heads
    out = torch.zeros(b, c, hh + ph, ww + pw, dtype=x.dtype)
    for bi in range(b):
        for wy in range(0, hh + ph, w):
            for wx in range(0, ww + pw, w):
                tile = qkv[bi, :, wy:wy + w, wx:wx + w].reshape(3, heads, d, w * w)
                for h in range(heads):
                    q, k, v = tile[0, h].T, tile[1, h].T, tile[2, h].T
                    pos = (hidden @ to_q[h]) @ (hidden @ to_k[h]).T
                    p = torch.softmax(q @ k.T / math.sqrt(d) + pos / math.sqrt(r), dim=-1)
                    out[bi, h * d:(h + 1) * d, wy:wy + w, wx:wx + w] = (p @ v).T.reshape(d, w, w)
    return _conv(out[:, :, :hh, :ww] * gate, sd, f"{key}.to_out")


def _reference_sst(sd, x, cfg, scale):
    feat = _conv(x, sd, "proj")
    body = feat
    n_layers = len(cfg["window_sizes"])
    for bi in range(cfg["n_blocks"]):
        y = body
        for li in range(n_layers):
            key = f"body.{bi}.{li}"
            y = y + _rib_attn(_ln(y, sd, f"{key}.norm_attn"), sd, f"{key}.attn", cfg["window_sizes"][li],
                              cfg["num_heads"][li], cfg["rib_n_freqs"])
            z = _ln(y, sd, f"{key}.norm_ffn")
            h = F.gelu(_conv(z, sd, f"{key}.ffn.proj"))
            h = h + F.gelu(_conv(h, sd, f"{key}.ffn.dwc", groups=h.shape[1]))
            y = y + _conv(h, sd, f"{key}.ffn.agg")
        body = body + _conv(y, sd, f"body.{bi}.{n_layers}")
    n = cfg["n_blocks"]
    feat = feat + _conv(_ln(body, sd, f"body.{n}"), sd, f"body.{n + 1}")
    if cfg["upsampler"] == "pixelshuffle_direct":
        up = _conv(feat, sd, "upsampler.up_conv") + torch.repeat_interleave(x, scale * scale, dim=1)
        return F.pixel_shuffle(up, scale)
    y = F.leaky_relu(_conv(feat, sd, "upsampler.feature_conv"), 0.1)
    y = _conv(F.pixel_shuffle(_conv(y, sd, "upsampler.up_conv"), scale), sd, "upsampler.final_conv")
    return y + F.interpolate(x, scale_factor=scale, mode="nearest")


@pytest.mark.parametrize("name", ["sst", "sst-light"])
@torch.no_grad()
def test_sst_fp32_attention_matches_functional_reference(name):
    torch.manual_seed(1)
    model = create_model(name, scale=2, dim=12, n_blocks=2, window_sizes=[4, 8], num_heads=[2, 3], ranks=[4, 6],
                         rib_n_freqs=3, intermediate_dim=8, attn_precision="fp32", attn_backend="math")
    model = model.double().eval()
    for prm in model.parameters():
        prm.add_(torch.randn_like(prm) * 0.05)
    x = torch.rand(2, 3, 7, 10, dtype=torch.float64)
    ref = _reference_sst(model.state_dict(), x, model.config, 2)
    # the RIB factors are computed in float32 by design (official), hence the 1e-6 tolerance
    torch.testing.assert_close(model(x), ref, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_bf16_core_is_the_default_and_stays_close_to_fp32():
    torch.manual_seed(2)
    kw = {"n_blocks": 1, "window_sizes": [4, 8], "num_heads": [3, 3], "ranks": [16, 24], "attn_backend": "math"}
    bf = create_model("sst-light", scale=2, **kw).eval()
    fp = create_model("sst-light", scale=2, attn_precision="fp32", **kw).eval()
    fp.load_state_dict(bf.state_dict())
    x = torch.rand(1, 3, 12, 12)
    a, b = bf(x), fp(x)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    assert not torch.equal(a, b)


@torch.no_grad()
def test_cpu_math_and_sdpa_paths_agree_on_a_model():
    torch.manual_seed(3)
    kw = {"n_blocks": 1, "window_sizes": [4, 8], "num_heads": [3, 3], "ranks": [16, 24]}
    a = create_model("sst-light", scale=2, attn_backend="math", **kw).eval()
    b = create_model("sst-light", scale=2, attn_backend="sdpa", **kw).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 9, 14)
    torch.testing.assert_close(a(x), b(x), atol=1e-2, rtol=1e-2)


@torch.no_grad()
def test_bf16_autocast_has_no_nan():
    model = create_model("sst-light", scale=2, n_blocks=1, window_sizes=[4, 8], num_heads=[3, 3],
                         ranks=[16, 24]).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.rand(1, 3, 10, 13))
    assert y.shape == (1, 3, 20, 26) and torch.isfinite(y.float()).all()


def test_backward_reaches_rib_parameters():
    model = create_model("sst-light", scale=2, n_blocks=1, window_sizes=[4, 8], num_heads=[3, 3],
                         ranks=[16, 24]).train()
    model(torch.rand(2, 3, 8, 8)).mean().backward()
    attn = model.body[0][0].attn
    for p in (attn.to_hidden, attn.to_q, attn.to_k, attn.gate[0].weight):
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0


@pytest.mark.gpu
def test_cuda_sst_paths_agree_and_compile():
    model = create_model("sst-light", scale=4).cuda().eval()
    ref = create_model("sst-light", scale=4, attn_backend="math").cuda().eval()
    ref.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 64, 80, device="cuda")
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, ref(x), atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(torch.compile(model)(x), out, atol=1e-2, rtol=1e-2)
