"""Window partition helpers for non-overlapping square-window attention (ESC / SST layout).

Layout facts (official ``feat_to_win`` / ``feat_to_qkv``): the channels of a qkv projection are laid
out as ``(3, heads, head_dim)``; window batch index is ``(b * nH + i) * nW + j``; tokens inside a
window are row-major.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def reflect_pad_bottom_right(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Reflect-pad a (B, C, H, W) tensor by ``pad_h`` rows at the bottom and ``pad_w`` columns right.

    Identical to ``F.pad(x, (0, pad_w, 0, pad_h), mode='reflect')`` whenever that call is valid
    (pad < size). Larger pads, which ``F.pad`` rejects, are done by repeated reflection of the
    growing tensor; a side of length 1 is replicated. Returns (B, C, H + pad_h, W + pad_w).
    """
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"pads must be non-negative, got pad_h={pad_h}, pad_w={pad_w}")
    while pad_h > 0 or pad_w > 0:
        h, w = x.shape[-2:]
        step_h = min(pad_h, h - 1)
        step_w = min(pad_w, w - 1)
        if step_h == 0 and pad_h > 0:  # a single row cannot be reflected
            x = F.pad(x, (0, 0, 0, pad_h), mode="replicate")
            pad_h = 0
            continue
        if step_w == 0 and pad_w > 0:
            x = F.pad(x, (0, pad_w, 0, 0), mode="replicate")
            pad_w = 0
            continue
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        pad_h -= step_h
        pad_w -= step_w
    return x


def pad_to_window(x: torch.Tensor, window: int) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) on the bottom/right up to the next multiple of ``window``."""
    h, w = x.shape[-2:]
    return reflect_pad_bottom_right(x, (window - h % window) % window, (window - w % window) % window)


def qkv_to_windows(
    qkv: torch.Tensor, window: int, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a (B, 3*C, H, W) qkv map (H, W multiples of ``window``) into windowed q, k, v.

    Returns three (B*nW, heads, window*window, C // heads) tensors (views where possible).
    """
    t = rearrange(
        qkv, "b (qkv heads c) (h wh) (w ww) -> qkv (b h w) heads (wh ww) c",
        qkv=3, heads=heads, wh=window, ww=window,
    )
    return t[0], t[1], t[2]


def windows_to_feature(x: torch.Tensor, window: int, h_windows: int, w_windows: int) -> torch.Tensor:
    """Inverse of :func:`qkv_to_windows` for one tensor.

    ``x``: (B*nW, heads, window*window, d) -> (B, heads*d, h_windows*window, w_windows*window).
    """
    return rearrange(
        x, "(b h w) heads (wh ww) c -> b (heads c) (h wh) (w ww)",
        h=h_windows, w=w_windows, wh=window, ww=window,
    )
