"""The ESC family (ESC, ESC-light, ESC-XL, ESC-FP, ESC-Real, ESC-RIB), weight-compatible with the
official checkpoints of dslisleedh/ESC and (ESC-RIB) dslisleedh/SST.

Facts (see the ESC/SST spec): one dense ``pdim x pdim x 13 x 13`` kernel ``plk_filter`` shared by the
whole network and D4-averaged on every forward; each Block runs LN -> ConvFFN(ratio 2) with **no**
residual, one window-attention layer with a relative position bias, then ``conv_blocks`` residual
branches ``ConvAttn(ConvFFN(LN?(x)))``, LN -> conv3x3 and a block residual. The ESC evaluation pads
the whole LR image to a multiple of the window before the forward: that is inference behaviour,
exposed as ``model.pad_multiple`` / ``model.pad_mode`` for the inference helper (sr-eval).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sr_layers.conv_attn import ConvAttn, DecomposedConvAttn, d4_average
from sr_layers.conv_ffn import ConvFFN
from sr_layers.layer_norm import LayerNorm2d
from sr_layers.upsamplers import Upsampler, bicubic_skip, pixel_shuffle_with_nearest
from sr_layers.window_attention import RIBWindowAttention, RPBWindowAttention
from sr_models.families._config import config_dict, resolve_config
from sr_models.registry import register_model

VARIANTS = ("esc", "fp", "real", "rib")


@dataclass(frozen=True)
class ESCConfig:
    """Resolved ESC-family configuration.

    ``variant``: "esc" (ESC, light, XL), "fp" (decomposed ConvAttn, bicubic skip), "real" (ESC-Real
    head, x4 only) or "rib" (ESC with SST's RIB attention). ``attn_backend``: "auto" | "math" | "sdpa" |
    "flex" for the RPB attention, "auto" | "math" | "sdpa" | "fa3" for RIB. ``attn_precision`` (RIB
    only): "bf16" (official) or "fp32".
    """

    variant: str = "esc"
    dim: int = 64
    pdim: int = 16
    kernel_size: int = 13
    n_blocks: int = 5
    conv_blocks: int = 5
    window_size: int = 32
    num_heads: int = 4
    exp_ratio: float = 1.25
    proj_ratio: float = 2.0
    use_ln: bool = False
    attn_backend: str = "auto"
    rib_rank: int = 16
    rib_hidden_dim: int = 32
    rib_n_freqs: int = 10
    gate_type: str = "DWC"
    attn_precision: str = "bf16"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("dim", "pdim", "kernel_size", "n_blocks", "window_size", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.pdim > self.dim:
            raise ValueError(f"pdim ({self.pdim}) must not exceed dim ({self.dim})")


class ESCBlock(nn.Module):
    """One ESC block. Keys: ln_proj, proj, ln_attn, attn, lns.j (if LN), pconvs.j, convffns.j,
    ln_out, conv_out. forward(x (B, C, H, W), *kernels) -> (B, C, H, W)."""

    def __init__(self, cfg: ESCConfig) -> None:
        super().__init__()
        c = cfg.dim
        self.ln_proj = LayerNorm2d(c)
        self.proj = ConvFFN(c, cfg.proj_ratio)
        self.ln_attn = LayerNorm2d(c)
        self.attn: nn.Module
        if cfg.variant == "rib":
            self.attn = RIBWindowAttention(
                c, cfg.window_size, cfg.num_heads, rank=cfg.rib_rank, hidden_dim=cfg.rib_hidden_dim,
                n_freqs=cfg.rib_n_freqs, gate=cfg.gate_type, shift=False,
                precision=cfg.attn_precision, backend=cfg.attn_backend,
            )
        else:
            self.attn = RPBWindowAttention(c, cfg.window_size, cfg.num_heads, backend=cfg.attn_backend)
        use_ln = cfg.use_ln or cfg.variant in ("fp", "real")
        self.lns = nn.ModuleList([LayerNorm2d(c) if use_ln else nn.Identity() for _ in range(cfg.conv_blocks)])
        conv_attn = DecomposedConvAttn if cfg.variant == "fp" else ConvAttn
        self.pconvs = nn.ModuleList([conv_attn(c, cfg.pdim) for _ in range(cfg.conv_blocks)])
        self.convffns = nn.ModuleList([ConvFFN(c, cfg.exp_ratio) for _ in range(cfg.conv_blocks)])
        self.ln_out = LayerNorm2d(c)
        self.conv_out = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor, *kernels: torch.Tensor) -> torch.Tensor:
        skip = x
        x = self.proj(self.ln_proj(x))  # no residual around the first ConvFFN (official)
        x = x + self.attn(self.ln_attn(x))
        # without autograd the ConvAttn may overwrite the (temporary) FFN output in place, as the
        # official eval path does: one feature map less of peak memory
        inplace = not torch.is_grad_enabled() and all(isinstance(m, ConvAttn) for m in self.pconvs)
        extra = {"inplace": True} if inplace else {}
        for ln, pconv, ffn in zip(self.lns, self.pconvs, self.convffns, strict=True):
            x = x + pconv(ffn(ln(x)), *kernels, **extra)
        return self.conv_out(self.ln_out(x)) + skip


class _ESCBase(nn.Module):
    config: dict[str, Any]

    def __init__(self, cfg: ESCConfig, scale: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.upscaling_factor = scale
        self.config = {**config_dict(cfg), "scale": scale}
        # inference-helper contract: the official evaluation pads the LR image to the window.
        self.pad_multiple = cfg.window_size
        self.pad_mode = "reflect"
        self.min_input_size = 1

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input of shape (B, 3, H, W), got {tuple(x.shape)}")


class ESC(_ESCBase):
    """ESC / ESC-light / ESC-XL. Keys: plk_filter, proj, blocks.i, last, to_img.

    forward(x (B, 3, h, w) float in [0, 1]) -> (B, 3, h s, w s):
    ``PS(to_img(last(blocks(proj x)) + proj x) + repeat(x, s^2))``.
    """

    def __init__(self, cfg: ESCConfig, scale: int) -> None:
        super().__init__(cfg, scale)
        p = cfg.pdim
        self.plk_filter = nn.Parameter(torch.empty(p, p, cfg.kernel_size, cfg.kernel_size))
        nn.init.orthogonal_(self.plk_filter)
        self.proj = nn.Conv2d(3, cfg.dim, 3, padding=1)
        self.blocks = nn.ModuleList([ESCBlock(cfg) for _ in range(cfg.n_blocks)])
        self.last = nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1)
        self.to_img = nn.Conv2d(cfg.dim, 3 * scale * scale, 3, padding=1)

    # contract of sr_models.arbitrary_scale (another upsampler on this body): the features before
    # the upsampler, their width, and the modules of the own upsampler that it removes
    upsampler_modules = ("to_img",)

    @property
    def feature_dim(self) -> int:
        return self.cfg.dim

    def body_features(self, x: torch.Tensor) -> torch.Tensor:
        """The body: (B, 3, h, w) -> (B, dim, h, w), ``last(blocks(proj x)) + proj x``."""
        feat = self.proj(x)
        skip = feat
        lk = d4_average(self.plk_filter)
        for block in self.blocks:
            feat = block(feat, lk)
        return self.last(feat) + skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        feat = self.body_features(x)
        return pixel_shuffle_with_nearest(self.to_img(feat), x, self.upscaling_factor)


class ESCFP(_ESCBase):
    """ESC-FP. Keys: lk_channel, lk_spatial, proj, blocks.i, ln_last, last, to_img.

    No shared dense kernel and no D4 averaging; decomposed ConvAttn; LN before every ConvAttn stage and
    before ``last``; image skip is PyTorch bicubic. (B, 3, h, w) -> (B, 3, h s, w s).
    """

    def __init__(self, cfg: ESCConfig, scale: int) -> None:
        super().__init__(cfg, scale)
        p = cfg.pdim
        self.lk_channel = nn.Parameter(torch.randn(p, p, 1, 1))
        self.lk_spatial = nn.Parameter(torch.empty(p, 1, cfg.kernel_size, cfg.kernel_size))
        nn.init.orthogonal_(self.lk_spatial)
        self.proj = nn.Conv2d(3, cfg.dim, 3, padding=1)
        self.blocks = nn.ModuleList([ESCBlock(cfg) for _ in range(cfg.n_blocks)])
        self.ln_last = LayerNorm2d(cfg.dim)
        self.last = nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1)
        self.to_img = nn.Conv2d(cfg.dim, 3 * scale * scale, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        feat = self.proj(x)
        skip = feat
        for block in self.blocks:
            feat = block(feat, self.lk_channel, self.lk_spatial)
        feat = self.last(self.ln_last(feat)) + skip
        s = self.upscaling_factor
        return F.pixel_shuffle(self.to_img(feat), s) + bicubic_skip(x, s)


class ESCReal(_ESCBase):
    """ESC-Real (x4 only). Keys: plk_filter, proj, blocks.i, last, to_img.{1,4,6,8}, skip.{0,1,3}.

    ``feat = last(blocks(f)) + f + skip(x)``; head: Up2, conv, LReLU(0.2), Up2, conv, LReLU, conv,
    LReLU, conv -> 3. No image-level residual. (B, 3, h, w) -> (B, 3, 4h, 4w).
    """

    def __init__(self, cfg: ESCConfig, scale: int) -> None:
        super().__init__(cfg, scale)
        if scale != 4:
            raise ValueError(f"ESC-Real supports scale 4 only, got {scale}")
        c, p = cfg.dim, cfg.pdim
        self.plk_filter = nn.Parameter(torch.empty(p, p, cfg.kernel_size, cfg.kernel_size))
        nn.init.orthogonal_(self.plk_filter)
        self.proj = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList([ESCBlock(cfg) for _ in range(cfg.n_blocks)])
        self.last = nn.Conv2d(c, c, 3, padding=1)
        self.to_img = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c, c, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c, c, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, c, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 3, 3, padding=1),
        )
        self.skip = nn.Sequential(
            nn.Conv2d(3, 2 * c, 1),
            nn.Conv2d(2 * c, 2 * c, 7, padding=3, groups=2 * c, padding_mode="reflect"),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, c, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        feat = self.proj(x)
        skip = feat
        lk = d4_average(self.plk_filter)
        for block in self.blocks:
            feat = block(feat, lk)
        feat = self.last(feat) + skip + self.skip(x)
        return self.to_img(feat)


class ESCRIB(_ESCBase):
    """ESC-RIB (SST repo). Keys: plk_filter, proj, blocks.i (RIB attention), last.{0,1}, upsampler.up_conv.

    ``feat = last(blocks(f)) + f``; ``PS(up_conv(feat) + repeat(x))``. (B, 3, h, w) -> (B, 3, hs, ws).
    """

    def __init__(self, cfg: ESCConfig, scale: int) -> None:
        super().__init__(cfg, scale)
        c, p = cfg.dim, cfg.pdim
        self.plk_filter = nn.Parameter(torch.empty(p, p, cfg.kernel_size, cfg.kernel_size))
        nn.init.orthogonal_(self.plk_filter)
        self.proj = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList([ESCBlock(cfg) for _ in range(cfg.n_blocks)])
        self.last = nn.Sequential(LayerNorm2d(c), nn.Conv2d(c, c, 3, padding=1))
        self.upsampler = Upsampler(c, scale, "pixelshuffle_direct")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        feat = self.proj(x)
        skip = feat
        lk = d4_average(self.plk_filter)
        for block in self.blocks:
            feat = block(feat, lk)
        feat = self.last(feat) + skip
        return self.upsampler(feat, x)


PRESETS: dict[str, dict[str, Any]] = {
    "esc": {"variant": "esc"},
    "esc-light": {"variant": "esc", "n_blocks": 3},
    "esc-xl": {"variant": "esc", "dim": 192, "pdim": 48, "n_blocks": 8, "window_size": 48,
               "num_heads": 12, "use_ln": True},
    "esc-fp": {"variant": "fp", "dim": 48, "num_heads": 3, "proj_ratio": 1.5, "use_ln": True},
    "esc-real": {"variant": "real", "n_blocks": 10, "exp_ratio": 2.0, "use_ln": True},
    "esc-rib": {"variant": "rib", "window_size": 64, "proj_ratio": 4.0},
}
_CLASSES: dict[str, type[_ESCBase]] = {"esc": ESC, "fp": ESCFP, "real": ESCReal, "rib": ESCRIB}


def build_esc(name: str, scale: int, **overrides: Any) -> nn.Module:
    """Build the ESC-family model ``name`` (a key of PRESETS) at ``scale`` with config overrides."""
    cfg = resolve_config(ESCConfig, PRESETS[name], overrides, model=name)
    return _CLASSES[cfg.variant](cfg, scale)


def _register(name: str, description: str, scales: tuple[int, ...] = (2, 3, 4)) -> None:
    def builder(scale: int, **overrides: Any) -> nn.Module:
        return build_esc(name, scale, **overrides)

    builder.__doc__ = description
    register_model(name, scales=scales, description=description)(builder)


_register("esc", "ESC (dim 64, 5 blocks, window 32, RPB attention)")
_register("esc-light", "ESC-light (dim 64, 3 blocks, window 32)")
_register("esc-xl", "ESC-XL (dim 192, pdim 48, 8 blocks, window 48, LN before ConvAttn)")
_register("esc-fp", "ESC-FP (dim 48, decomposed ConvAttn, bicubic image skip)")
_register("esc-real", "ESC-Real (real-world x4: 10 blocks, nearest+conv head)", scales=(4,))
_register("esc-rib", "ESC-RIB (ESC with SST's RIB attention, window 64)")
