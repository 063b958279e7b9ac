"""The SST family (SST, SST+, SST-L, SST-L+, SST-XL+, SST-light, SST-light+), weight-compatible with
the official checkpoints of dslisleedh/SST.

Facts (see the ESC/SST spec): ``feat = proj(x); feat = feat + body(feat)`` where body is
``n_blocks`` SSTBs, a LayerNorm and a 3x3 conv; an SSTB is ``x + conv3x3(STL_5(...STL_0(x)))``; every
STL is pre-norm RIB window attention with the CLA (DWC) gate plus a pre-norm ConvFFN. Layer l of every
block uses the l-th window size of a cycle (e.g. 16, 32, 64, 16, 32, 64); windows are never shifted
in released configs. There is no model-level padding (``pad_multiple = 1``).

Precision: the official attention core always runs in **bfloat16** (q, k, v and the RIB factors are
cast after scaling, the fused kernel runs with scale 1 and its output is cast back), even for fp32
models. That is the default here (``attn_precision="bf16"``); ``attn_precision="fp32"`` keeps the
model's dtype throughout (outputs move by about 1e-3 against the official numerics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sr_layers.conv_ffn import ConvFFN
from sr_layers.layer_norm import LayerNorm2d
from sr_layers.rib import cyclic_shift_enabled
from sr_layers.upsamplers import Upsampler
from sr_layers.window_attention import RIBWindowAttention
from sr_models.families._config import config_dict, resolve_config
from sr_models.registry import register_model

CYCLE_BASE = (16, 32, 64, 16, 32, 64)
CYCLE_PLUS = (16, 32, 48, 32, 48, 96)
CYCLE_LIGHT = (8, 16, 32, 16, 32, 64)


@dataclass(frozen=True)
class SSTConfig:
    """Resolved SST configuration. Per-layer tuples (``window_sizes``, ``num_heads``, ``ranks``) have
    one entry per STL of a block. ``upsampler``: "pixelshuffle" (m = ``intermediate_dim``) or
    "pixelshuffle_direct". ``attn_precision``: "bf16" (official) or "fp32". ``attn_backend``:
    "auto" | "math" | "sdpa" | "fa3"."""

    dim: int = 180
    window_sizes: tuple[int, ...] = CYCLE_BASE
    num_heads: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    ranks: tuple[int, ...] = (18, 18, 18, 34, 34, 34)
    n_blocks: int = 6
    exp_ratio: float = 1.25
    rib_hidden_dim: int = 32
    rib_n_freqs: int = 10
    gate_type: str = "DWC"
    upsampler: str = "pixelshuffle"
    intermediate_dim: int = 64
    attn_precision: str = "bf16"
    attn_backend: str = "auto"

    def __post_init__(self) -> None:
        n = len(self.window_sizes)
        if n == 0 or len(self.num_heads) != n or len(self.ranks) != n:
            raise ValueError(
                "window_sizes, num_heads and ranks must be non-empty and of equal length, got "
                f"{len(self.window_sizes)}, {len(self.num_heads)}, {len(self.ranks)}"
            )
        for h in self.num_heads:
            if self.dim % h:
                raise ValueError(f"dim ({self.dim}) must be divisible by every num_heads entry, got {h}")
        if self.n_blocks <= 0:
            raise ValueError(f"n_blocks must be positive, got {self.n_blocks}")


class STL(nn.Module):
    """One SST layer: ``x + attn(norm_attn(x))`` then ``x + ffn(norm_ffn(x))``. (B,C,H,W) -> same."""

    def __init__(self, cfg: SSTConfig, layer: int, shift: bool) -> None:
        super().__init__()
        c = cfg.dim
        self.norm_attn = LayerNorm2d(c, order="transpose")
        self.attn = RIBWindowAttention(
            c, cfg.window_sizes[layer], cfg.num_heads[layer], rank=cfg.ranks[layer],
            hidden_dim=cfg.rib_hidden_dim, n_freqs=cfg.rib_n_freqs, gate=cfg.gate_type, shift=shift,
            precision=cfg.attn_precision, backend=cfg.attn_backend,
        )
        self.norm_ffn = LayerNorm2d(c, order="transpose")
        self.ffn = ConvFFN(c, cfg.exp_ratio, out_name="agg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x))
        return x + self.ffn(self.norm_ffn(x))


class SSTB(nn.Sequential):
    """A residual group: ``x + conv3x3(STL_{L-1}(... STL_0(x)))``; keys ``{l}.*`` then ``{L}`` (conv)."""

    def __init__(self, cfg: SSTConfig) -> None:
        use_shift = cyclic_shift_enabled(cfg.window_sizes)
        layers: list[nn.Module] = [
            STL(cfg, i, shift=use_shift and i % 2 == 1) for i in range(len(cfg.window_sizes))
        ]
        layers.append(nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class SST(nn.Module):
    """SST. Keys: proj, body.{b}.{l}.*, body.{b}.{L}, body.{n} (LN), body.{n+1} (conv), upsampler.*.

    forward(x (B, 3, h, w) float in [0, 1]) -> (B, 3, h s, w s). Any batch size and input size.
    """

    def __init__(self, cfg: SSTConfig, scale: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.upscaling_factor = scale
        self.config = {**config_dict(cfg), "scale": scale}
        self.pad_multiple = 1
        self.pad_mode = "reflect"
        self.min_input_size = 1
        c = cfg.dim
        self.proj = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(
            *[SSTB(cfg) for _ in range(cfg.n_blocks)], LayerNorm2d(c, order="transpose"), nn.Conv2d(c, c, 3, padding=1)
        )
        self.upsampler = Upsampler(c, scale, cfg.upsampler, intermediate_dim=cfg.intermediate_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # official init_weight: 1x1 convs trunc_normal_(std=0.02), whose cut is at the absolute values
        # +-2, i.e. 100 std, so it never triggers: a plain normal(0, 0.02) is the same distribution and
        # much faster to draw. Every conv bias zero; 3x3 convs keep the PyTorch default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.weight.shape[-1] == 1:
                    nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # contract of sr_models.arbitrary_scale (another upsampler on this body)
    upsampler_modules = ("upsampler",)

    @property
    def feature_dim(self) -> int:
        return self.cfg.dim

    def body_features(self, x: torch.Tensor) -> torch.Tensor:
        """The body: (B, 3, h, w) -> (B, dim, h, w), ``proj x + body(proj x)``."""
        feat = self.proj(x)
        return feat + self.body(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input of shape (B, 3, H, W), got {tuple(x.shape)}")
        return self.upsampler(self.body_features(x), x)


_BASE = {"dim": 180, "num_heads": (6,) * 6, "ranks": (18, 18, 18, 34, 34, 34), "n_blocks": 6,
         "exp_ratio": 1.25, "upsampler": "pixelshuffle", "intermediate_dim": 64}
_LARGE = {"dim": 192, "num_heads": (6,) * 6, "ranks": (16, 16, 16, 32, 32, 32), "n_blocks": 8,
          "exp_ratio": 2.0, "upsampler": "pixelshuffle", "intermediate_dim": 96}
_XL = {"dim": 224, "num_heads": (7,) * 6, "ranks": (16, 16, 16, 32, 32, 32), "n_blocks": 10,
       "exp_ratio": 2.0, "upsampler": "pixelshuffle", "intermediate_dim": 96}
_LIGHT = {"dim": 48, "num_heads": (3,) * 6, "ranks": (16, 16, 16, 24, 24, 24), "n_blocks": 5,
          "exp_ratio": 1.5, "upsampler": "pixelshuffle_direct"}

PRESETS: dict[str, dict[str, Any]] = {
    "sst": {**_BASE, "window_sizes": CYCLE_BASE},
    "sst-plus": {**_BASE, "window_sizes": CYCLE_PLUS},
    "sst-l": {**_LARGE, "window_sizes": CYCLE_BASE},
    "sst-l-plus": {**_LARGE, "window_sizes": CYCLE_PLUS},
    "sst-xl-plus": {**_XL, "window_sizes": CYCLE_PLUS},
    "sst-light": {**_LIGHT, "window_sizes": CYCLE_LIGHT},
    "sst-light-plus": {**_LIGHT, "window_sizes": CYCLE_PLUS},
}


def build_sst(name: str, scale: int, **overrides: Any) -> SST:
    """Build the SST-family model ``name`` (a key of PRESETS) at ``scale`` with config overrides."""
    return SST(resolve_config(SSTConfig, PRESETS[name], overrides, model=name), scale)


def _register(name: str, description: str) -> None:
    def builder(scale: int, **overrides: Any) -> nn.Module:
        return build_sst(name, scale, **overrides)

    builder.__doc__ = description
    register_model(name, description=description)(builder)


_register("sst", "SST (dim 180, 6x6 layers, windows 16/32/64 cycle, RIB + CLA)")
_register("sst-plus", "SST+ (SST with windows 16/32/48/32/48/96)")
_register("sst-l", "SST-L (dim 192, 8 blocks, FFN x2, upsampler m=96)")
_register("sst-l-plus", "SST-L+ (SST-L with windows 16/32/48/32/48/96)")
_register("sst-xl-plus", "SST-XL+ (dim 224, 10 blocks, 7 heads, windows up to 96)")
_register("sst-light", "SST-light (dim 48, 5 blocks, windows 8/16/32/16/32/64, direct pixel-shuffle)")
_register("sst-light-plus", "SST-light+ (SST-light with windows 16/32/48/32/48/96)")
