"""SSCAN and SSCAN-light (Kim, Kim, Jung, Min: "Crafting Query-Aware Selective Attention for Single
Image Super-Resolution"). The official code is not public and we have the paper only as a summary
(abstract, TL;DR, figure captions), so this is a reading, not a reproduction. What is the paper's:
FGCA (top-k key windows per query window by query-key similarity, fixed-size windows, attention by
FlashAttention) and SSCAN blocks holding two FGCA blocks (Figure 3). What is ours (every item a config
field; the layer-level choices are documented in :mod:`sr_layers.fgca`):

* the network around the blocks: SwinIR's classical-SR layout, which the transformer SR models of the
  paper's Figure 1 share: DIV2K mean shift (``img_range`` 1), ``conv_first`` 3x3, ``n_blocks`` SSCAN
  blocks (residual groups), a channel LayerNorm, ``conv_after_body`` 3x3 plus the long skip, then
  SwinIR's "pixelshuffle" upsampler (SSCAN) or "pixelshuffledirect" (SSCAN-light);
* the sizes: SSCAN is sized like SwinIR (180 channels, 6 heads, 24 attention blocks: 12 SSCAN blocks of
  2 FGCA blocks, 16x16 windows, top-4 windows so every query sees 1024 keys), SSCAN-light like
  SwinIR-light (60 channels, 3 heads, 8 SSCAN blocks of 2, 8x8 windows, top-8: 512 keys). The light
  variant is our reading of Figure 1 (PSNR against parameters) and of the stated on-device aim; the
  paper's own parameter counts are not in the summary.

**Padding.** The LR image is reflect-padded on the bottom and right to a multiple of ``window_size``
before the network and the output cropped to ``h*s x w*s`` (as HAT/SwinIR evaluate). The model does it
itself, so any h, w >= 1 works, and exposes the policy to sr-eval as ``pad_multiple = window_size``,
``pad_mode = "reflect"`` (``sr_eval.forward_padded`` then pads identically and the internal pad is a
no-op; tiles start on the window grid). The window selection is global over the (padded) image, so
tiled inference is close to, not equal to, whole-image inference.

**FLOPs.** :func:`sscan_macs` gives the multiply-accumulates of one forward analytically; torch's
FlopCounterMode (2 FLOPs per MAC: SDPA counted by torch, the window selection by sr_kernels' formula)
equals twice it, on real and on meta tensors (``sr-eval profile --model sscan``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from sr_layers.fgca import ATTN_IMPLS, FFN_KINDS, SSCANBlock
from sr_layers.layer_norm import LayerNorm2d
from sr_layers.windows import pad_to_window
from sr_models.families._config import config_dict, resolve_config
from sr_models.families.iet import DIV2K_RGB_MEAN, UPSAMPLERS, IETUpsampler
from sr_models.registry import register_model


@dataclass(frozen=True)
class SSCANConfig:
    """Resolved SSCAN configuration (defaults = ``sscan``; see the module docstring for what is ours).

    ``window_size``: FGCA window side; ``topk``: key windows per query window (clamped to the number of
    windows of the image); ``shift``: alternate half-window shifted FGCA blocks inside an SSCAN block;
    ``shared_heads`` / ``include_self``: the selection rule (:func:`sr_kernels.window_topk_select`);
    ``lce_kernel``: depthwise conv on V added to the attention (0 = off); ``ffn``: "convffn" | "mlp";
    ``attn_impl``: "sdpa" (FlashAttention path) | "math" (explicit logits, for comparison).
    """

    embed_dim: int = 180
    num_heads: int = 6
    n_blocks: int = 12
    depth: int = 2
    window_size: int = 16
    topk: int = 4
    shift: bool = True
    shared_heads: bool = True
    include_self: bool = False
    lce_kernel: int = 5
    ffn: str = "convffn"
    ffn_ratio: float = 2.0
    qkv_bias: bool = True
    upsampler: str = "pixelshuffle"
    num_feat: int = 64
    img_range: float = 1.0
    rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN
    attn_impl: str = "sdpa"

    def __post_init__(self) -> None:
        for f in fields(self):  # lists (e.g. from a JSON config) become tuples
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        for name in ("embed_dim", "num_heads", "n_blocks", "depth", "window_size", "topk", "num_feat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"config field {name} must be a positive int, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.lce_kernel < 0 or (self.lce_kernel and self.lce_kernel % 2 == 0):
            raise ValueError(f"lce_kernel must be 0 (off) or odd, got {self.lce_kernel}")
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        if self.ffn_ratio <= 0:
            raise ValueError(f"ffn_ratio must be positive, got {self.ffn_ratio}")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {self.upsampler!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if len(self.rgb_mean) != 3:
            raise ValueError(f"rgb_mean must have 3 entries, got {self.rgb_mean!r}")


PRESETS: dict[str, dict[str, Any]] = {
    "sscan": {},
    "sscan-light": {
        "embed_dim": 60,
        "num_heads": 3,
        "n_blocks": 8,
        "window_size": 8,
        "topk": 8,
        "upsampler": "pixelshuffledirect",
    },
}


class SSCAN(nn.Module):
    """The SSCAN network. forward(x (B, 3, h, w) float RGB in [0, 1]) -> (B, 3, h s, w s), any B, h, w."""

    pad_mode = "reflect"
    min_input_size = 1

    def __init__(self, cfg: SSCANConfig, scale: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.upscale = scale
        self.pad_multiple = cfg.window_size
        c = cfg.embed_dim
        self.register_buffer("mean", torch.tensor(cfg.rgb_mean).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(
            SSCANBlock(
                c, cfg.depth, shift=cfg.shift, ffn=cfg.ffn, ffn_ratio=cfg.ffn_ratio,
                window=cfg.window_size, heads=cfg.num_heads, topk=cfg.topk, shared_heads=cfg.shared_heads,
                include_self=cfg.include_self, lce_kernel=cfg.lce_kernel, qkv_bias=cfg.qkv_bias,
                impl=cfg.attn_impl,
            )
            for _ in range(cfg.n_blocks)
        )
        self.norm = LayerNorm2d(c)
        self.conv_after_body = nn.Conv2d(c, c, 3, padding=1)
        self.upsampler = IETUpsampler(cfg.upsampler, c, scale, cfg.num_feat)
        for block in self.blocks:
            block.apply(self._init_pointwise)

    @staticmethod
    def _init_pointwise(m: nn.Module) -> None:
        # the 1x1 convs of the FGCA blocks play SwinIR's Linear layers: truncated normal (std 0.02), zero bias
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, f: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) with H, W multiples of the window -> (B, C, H, W): blocks and the final norm."""
        for block in self.blocks:
            f = block(f)
        return self.norm(f)

    # contract of sr_models.arbitrary_scale (another upsampler on this body)
    upsampler_modules = ("upsampler",)

    @property
    def feature_dim(self) -> int:
        return self.cfg.embed_dim

    def body_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> (B, embed_dim, h, w): what :meth:`forward` hands its upsampler (padded to
        the window and normalised as there), cropped back to the input's h x w."""
        h, w = x.shape[-2:]
        x = pad_to_window(x, self.cfg.window_size)
        f = self.conv_first((x - self.mean.to(x.dtype)) * self.cfg.img_range)
        f = self.conv_after_body(self.forward_features(f)) + f
        return f[:, :, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> (B, 3, h s, w s)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"SSCAN expects an input of shape (B, 3, h, w), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        x = pad_to_window(x, self.cfg.window_size)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.cfg.img_range
        f = self.conv_first(x)
        f = self.conv_after_body(self.forward_features(f)) + f
        out = self.upsampler(f) / self.cfg.img_range + mean
        s = self.upscale
        return out[:, :, : h * s, : w * s]


def build_sscan(name: str, scale: int, **overrides: Any) -> SSCAN:
    """Resolve the ``name`` preset with ``overrides`` and build the network for ``scale``."""
    cfg = resolve_config(SSCANConfig, PRESETS[name], overrides, model=name)
    model = SSCAN(cfg, scale)
    model.config = config_dict(cfg)
    return model


@register_model(
    "sscan", scales=(2, 3, 4),
    description="SSCAN (our reading): 12 SSCAN blocks x 2 FGCA blocks, 180 channels, 6 heads, 16x16 windows, top-4",
)
def _sscan(scale: int, **overrides: Any) -> SSCAN:
    return build_sscan("sscan", scale, **overrides)


@register_model(
    "sscan-light", scales=(2, 3, 4),
    description="SSCAN-light (our reading): 8 SSCAN blocks x 2 FGCA blocks, 60 channels, 3 heads, 8x8 windows, top-8",
)
def _sscan_light(scale: int, **overrides: Any) -> SSCAN:
    return build_sscan("sscan-light", scale, **overrides)


def _conv_macs(cin: int, cout: int, k: int, pixels: int, groups: int = 1) -> int:
    return pixels * cout * (cin // groups) * k * k


def sscan_macs(cfg: SSCANConfig, scale: int, height: int, width: int) -> dict[str, int]:
    """Multiply-accumulates of one forward pass on a ``height x width`` LR input, by part.

    Counted on the window-padded size the network runs at. Attention: QK^T and PV over the
    ``k * window^2`` gathered keys of every query (``k = min(topk, windows)``), ``2 N k w^2 C``; the
    selection: one pooled dot product per pair of windows and channel, ``nW^2 C`` (summed over heads
    or per head, the same count). Norms, activations, softmax, means, sorting and gathers are not
    counted (FlopCounterMode does not count them either). Returns a dict with "total" and the parts.
    """
    ws = cfg.window_size
    hp, wp = math.ceil(height / ws) * ws, math.ceil(width / ws) * ws
    n = hp * wp
    n_windows = n // (ws * ws)
    kk = min(cfg.topk, n_windows)
    c = cfg.embed_dim
    layers = cfg.n_blocks * cfg.depth
    hidden = int(c * cfg.ffn_ratio)
    parts: dict[str, int] = {"conv_first": _conv_macs(3, c, 3, n)}
    parts["linear"] = layers * n * (3 * c * c + c * c + 2 * c * hidden)
    dw = _conv_macs(hidden, hidden, 3, n, groups=hidden) if cfg.ffn == "convffn" else 0
    if cfg.lce_kernel:
        dw += _conv_macs(c, c, cfg.lce_kernel, n, groups=c)
    parts["dwconv"] = layers * dw
    parts["attention"] = layers * 2 * n * kk * ws * ws * c
    parts["selection"] = layers * n_windows * n_windows * c
    parts["block_convs"] = (cfg.n_blocks + 1) * _conv_macs(c, c, 3, n)
    if cfg.upsampler == "pixelshuffledirect":
        parts["upsampler"] = _conv_macs(c, 3 * scale * scale, 3, n)
    else:
        f = cfg.num_feat
        up = _conv_macs(c, f, 3, n) + _conv_macs(f, 3, 3, n * scale * scale)
        if scale == 3:
            up += _conv_macs(f, 9 * f, 3, n)
        else:
            px = n
            for _ in range(int(math.log2(scale))):
                up += _conv_macs(f, 4 * f, 3, px)
                px *= 4
        parts["upsampler"] = up
    parts["total"] = sum(parts.values())
    return parts


__all__ = ["PRESETS", "SSCAN", "SSCANConfig", "build_sscan", "sscan_macs"]
