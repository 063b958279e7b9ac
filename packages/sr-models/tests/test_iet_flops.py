"""MACs of IET / IET-light: torch's FlopCounterMode (sparse ops counted by their real work, through
the formulas sr_kernels registers) against the analytic count, in both conventions, and against the
paper.

* On tiny configs the counter equals 2 x ``iet_macs(..., "full")`` exactly (a multiply-add is 2
  FLOPs), for both output rules, which pins the analytic formula to what the model really runs.
* The paper-size counts run the full models on ``meta`` tensors (no memory, no arithmetic), so a
  1280-wide output is counted in seconds on a CPU.
* PFT's ``flops()`` convention (the IET paper's tables; see ``iet_macs``) is rebuilt here from the
  counter's per-module counts: the full count, with ``conv_after_body`` at 3 C^2 instead of 9 C^2
  per pixel, the upsampler reduced to its pixel-shuffle convs at the LR size and the
  patch-embedding norm added (C per pixel). It must equal ``iet_macs(..., "pft")`` and land within
  3% of Tables 4-6 at x2, x3 and x4, at a 1280 x 720 output (the size of those tables: their PFT
  rows are PFT's ``flops()`` at 640x360 / 426x240 / 320x180 LR).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import sr_kernels
from sr_models import create_model
from sr_models.families.iet import IETConfig, iet_macs

TINY = {
    "embed_dim": 12,
    "num_heads": 2,
    "ffn_hidden": 8,
    "depths": (2, 2, 2),
    "dlsg_local": 3,
    "dlsg_samples": 3,
    "k_schedule": (18, 12, 16, 12, 12, 8),
    "expand_ks": (8, 8),
    "expand_k1": (4, 3),
    "expand_k2": (3, 2),
}

# Paper Tables 4 and 6 (IET) and Table 5 (IET-light), in MACs (PFT's flops() convention).
PAPER_MACS = {
    ("iet", 2): 5.02e12,
    ("iet", 3): 2.25e12,
    ("iet", 4): 1.26e12,
    ("iet-light", 2): 277.9e9,
    ("iet-light", 3): 123.3e9,
    ("iet-light", 4): 69.5e9,
}


def counted(model: torch.nn.Module, h: int, w: int, device: str = "cpu") -> FlopCounterMode:
    """The FlopCounterMode of one eval forward on a (1, 3, h, w) input."""
    # sr_kernels registers its FLOP formulas on the first op call after torch.utils.flop_counter is
    # imported, and a FlopCounterMode copies the registry when it is created: call one op first.
    one = torch.zeros(1, 1, 1, 1)
    sr_kernels.gather_values(one, one, one.long())
    model = model.eval().to(device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, h, w, device=device))
    return counter


def module_macs(counter: FlopCounterMode, name: str) -> int:
    """MACs the counter attributed to module ``IET.<name>``."""
    return sum(counter.get_flop_counts()[f"IET.{name}"].values()) // 2


def pft_convention_from_counts(counter: FlopCounterMode, cfg: IETConfig, scale: int, h: int, w: int) -> int:
    """PFT's ``flops()`` convention rebuilt from the measured full count (module docstring)."""
    total = counter.get_total_flops() // 2
    total -= module_macs(counter, "conv_after_body") * 2 // 3  # 9 C^2 -> 3 C^2 per pixel
    total += h * w * cfg.embed_dim  # the patch-embedding LayerNorm, C per pixel
    up = module_macs(counter, "upsampler")
    if cfg.upsampler == "pixelshuffledirect":
        kept = module_macs(counter, "upsampler.upsample.0") // (scale * scale)  # C * 3 * 9, no s^2
    else:
        ratios = [9] if scale == 3 else [4] * (scale.bit_length() - 1)
        kept, px = 0, 1
        for j, r in enumerate(ratios):  # stage j runs at px times the LR size; PFT counts it at the LR size
            kept += module_macs(counter, f"upsampler.upsample.{2 * j}") // px
            px *= r
    return total - up + kept


@pytest.mark.parametrize("name", ["iet", "iet-light"])
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("av_on_selected", [True, False])
def test_counter_equals_analytic_macs_on_a_tiny_config(name: str, scale: int, av_on_selected: bool) -> None:
    model = create_model(name, scale, **TINY, av_on_selected=av_on_selected)
    h, w = 7, 9
    counter = counted(model, h, w)
    cfg = IETConfig(**model.config)
    macs = iet_macs(cfg, scale, h, w)
    assert counter.get_total_flops() == 2 * macs["total"]
    assert macs["attention"] == h * w * cfg.embed_dim * (sum(cfg.k_schedule) + sum(cfg.schedule().av_widths()))
    assert pft_convention_from_counts(counter, cfg, scale, h, w) == iet_macs(cfg, scale, h, w, "pft")["total"]


def test_output_rule_changes_the_count() -> None:
    """The paper's rule aggregates k_s < K slots in every sparsifying layer: fewer AV MACs."""
    a = iet_macs(IETConfig(**TINY), 2, 7, 9)
    b = iet_macs(IETConfig(**TINY, av_on_selected=False), 2, 7, 9)
    slots = sum(IETConfig(**TINY).k_schedule) - sum(IETConfig(**TINY).schedule().av_widths())
    assert slots > 0 and b["attention"] - a["attention"] == 7 * 9 * 12 * slots


@pytest.mark.parametrize(("name", "scale"), sorted(PAPER_MACS))
def test_paper_macs_at_1280x720_under_pfts_convention(name: str, scale: int) -> None:
    with torch.device("meta"):
        model = create_model(name, scale)
    h, w = 720 // scale, 1280 // scale
    counter = counted(model, h, w, device="meta")
    cfg = IETConfig(**model.config)
    assert counter.get_total_flops() == 2 * model.macs(h, w, "full")
    pft = pft_convention_from_counts(counter, cfg, scale, h, w)
    assert pft == model.macs(h, w, "pft")
    assert abs(pft / PAPER_MACS[name, scale] - 1) < 0.03, (name, scale, pft)


def test_unknown_convention_is_an_error() -> None:
    with pytest.raises(ValueError, match="convention"):
        iet_macs(IETConfig(**TINY), 2, 7, 9, "fvcore")
