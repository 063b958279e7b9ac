"""FGCA (fine-grained context-aware attention) and the SSCAN block (Kim et al., "Crafting Query-Aware
Selective Attention for Single Image Super-Resolution").

Only a summary of the paper is available to us (abstract, TL;DR, figure captions); the official code
is not public. What the paper states: FGCA selects, for every query window, the top-k key windows by
query-key similarity and attends only to their tokens; windows have a fixed size, so the
token-to-token cost is linear in the image size, and the attention runs with FlashAttention; the SSCAN
block holds two FGCA blocks (Figure 3). Everything else below is **our reading**, each a constructor
argument (and a field of ``sr_models``' SSCAN config):

* selection score: mean-pooled window queries against mean-pooled window keys, summed over heads
  (``shared_heads=True``, BiFormer's region routing, the mechanism the paper compares with), without
  forcing the own window in (``include_self=False``); ``k = min(topk, number of windows)`` so small
  images work; see :func:`sr_kernels.window_topk_select`;
* attention: scaled dot product with D^-1/2, no position bias (FlashAttention takes none); instead a
  depthwise ``lce_kernel`` x ``lce_kernel`` conv of V is added to the attention output (BiFormer's local
  context enhancement, ``lce_kernel=0`` disables it);
* windows: square, non-overlapping, the feature map reflect-padded bottom/right to a multiple of the
  window (a no-op inside SSCAN, which pads the whole image once); ``shift=True`` rolls the map by half a
  window first (no mask, as SST does), and an SSCAN block alternates unshifted / shifted FGCA blocks
  (Swin's pairing, which is why we read Figure 3's two FGCA blocks as a pair);
* an FGCA block is pre-norm: ``x + FGCA(LN(x))``, ``x + FFN(LN(x))`` with the channel LayerNorm of the
  lineage (SwinIR/HAT's token LayerNorm, eps 1e-6 as ESC/SST) and the ConvFFN used by ESC/SST
  (1x1 -> GELU -> depthwise 3x3 with a residual -> 1x1; ``ffn="mlp"`` gives SwinIR's plain MLP);
* an SSCAN block is a residual group: its FGCA blocks, a 3x3 conv, plus the block input (SwinIR's RSTB).

All modules take and return (B, C, H, W) feature maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import sr_kernels
from sr_layers.conv_ffn import ConvFFN
from sr_layers.layer_norm import LayerNorm2d
from sr_layers.windows import pad_to_window

FFN_KINDS = ("convffn", "mlp")
ATTN_IMPLS = ("sdpa", "math")


class FGCA(nn.Module):
    """Query-aware top-k window attention. Parameters: ``to_qkv`` (1x1 dim -> 3 dim), ``lce`` (depthwise
    conv on V, absent when ``lce_kernel=0``), ``to_out`` (1x1).

    forward(x (B, dim, H, W)) -> (B, dim, H, W), any H, W >= 1. Set ``keep_selection = True`` to keep the
    last forward's window ids in ``last_selection`` ((B, 1 or heads, nW, k) int64, windows numbered
    row-major on the padded, shifted grid), e.g. to draw the paper's Figure 2.
    """

    def __init__(
        self,
        dim: int,
        window: int,
        heads: int,
        topk: int,
        *,
        shift: bool = False,
        shared_heads: bool = True,
        include_self: bool = False,
        lce_kernel: int = 5,
        qkv_bias: bool = True,
        impl: str = "sdpa",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if window < 1 or topk < 1:
            raise ValueError(f"window and topk must be positive, got window={window}, topk={topk}")
        if lce_kernel < 0 or (lce_kernel and lce_kernel % 2 == 0):
            raise ValueError(f"lce_kernel must be 0 (off) or odd, got {lce_kernel}")
        if impl not in ATTN_IMPLS:
            raise ValueError(f"impl must be one of {ATTN_IMPLS}, got {impl!r}")
        self.dim, self.window, self.heads, self.topk = dim, window, heads, topk
        self.shift, self.shared_heads, self.include_self, self.impl = shift, shared_heads, include_self, impl
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias)
        self.lce = nn.Conv2d(dim, dim, lce_kernel, padding=lce_kernel // 2, groups=dim) if lce_kernel else None
        self.to_out = nn.Conv2d(dim, dim, 1)
        self.keep_selection = False
        self.last_selection: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        h, w = x.shape[-2:]
        ws = self.window
        xp = pad_to_window(x, ws)
        s = ws // 2 if self.shift else 0
        if s:
            xp = torch.roll(xp, shifts=(-s, -s), dims=(2, 3))
        nh, nw = xp.shape[-2] // ws, xp.shape[-1] // ws
        qkv = self.to_qkv(xp)
        q, k, v = rearrange(
            qkv, "b (three heads c) (nh wh) (nw ww) -> three b heads (nh nw) (wh ww) c",
            three=3, heads=self.heads, wh=ws, ww=ws,
        )
        ids = sr_kernels.window_topk_select(
            q, k, min(self.topk, nh * nw), shared_heads=self.shared_heads, include_self=self.include_self
        )
        if self.keep_selection:
            self.last_selection = ids.detach()
        out = sr_kernels.window_topk_attention(q, k, v, ids, impl=self.impl, check_ids=False)
        out = rearrange(out, "b heads (nh nw) (wh ww) c -> b (heads c) (nh wh) (nw ww)", nh=nh, nw=nw, wh=ws, ww=ws)
        if self.lce is not None:
            out = out + self.lce(qkv[:, 2 * self.dim :])
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(2, 3))
        return self.to_out(out[:, :, :h, :w])

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window={self.window}, heads={self.heads}, topk={self.topk}, shift={self.shift}, "
            f"shared_heads={self.shared_heads}, include_self={self.include_self}, impl={self.impl}"
        )


class PointwiseMLP(nn.Module):
    """SwinIR's MLP on a feature map: 1x1 ``fc1`` (dim -> int(dim*ratio)), GELU, 1x1 ``fc2``.
    (B, dim, H, W) -> (B, dim, H, W)."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        if hidden <= 0:
            raise ValueError(f"MLP hidden width int({dim}*{ratio}) must be positive")
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def make_ffn(kind: str, dim: int, ratio: float) -> nn.Module:
    """``"convffn"``: :class:`sr_layers.conv_ffn.ConvFFN` (depthwise 3x3); ``"mlp"``: :class:`PointwiseMLP`."""
    if kind == "convffn":
        return ConvFFN(dim, ratio)
    if kind == "mlp":
        return PointwiseMLP(dim, ratio)
    raise ValueError(f"ffn must be one of {FFN_KINDS}, got {kind!r}")


class FGCABlock(nn.Module):
    """``x + FGCA(LN(x))`` then ``x + FFN(LN(x))``. Keys: ``norm1``, ``attn``, ``norm2``, ``ffn``.
    ``attn_kwargs`` go to :class:`FGCA`. (B, dim, H, W) -> (B, dim, H, W)."""

    def __init__(self, dim: int, ffn: str = "convffn", ffn_ratio: float = 2.0, **attn_kwargs) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = FGCA(dim, **attn_kwargs)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = make_ffn(ffn, dim, ffn_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class SSCANBlock(nn.Module):
    """A residual group of ``depth`` FGCA blocks (Figure 3: two), alternating unshifted / shifted
    windows when ``shift``, then a 3x3 ``conv``, plus the input. Keys: ``blocks.i``, ``conv``.
    ``block_kwargs`` go to every :class:`FGCABlock`. (B, dim, H, W) -> (B, dim, H, W)."""

    def __init__(self, dim: int, depth: int = 2, *, shift: bool = True, **block_kwargs) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be positive, got {depth}")
        self.blocks = nn.ModuleList(
            FGCABlock(dim, shift=shift and i % 2 == 1, **block_kwargs) for i in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = x
        for block in self.blocks:
            x = block(x)
        return self.conv(x) + res
