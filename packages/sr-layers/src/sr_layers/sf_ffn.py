"""Similarity-Fused Feed-Forward Network (SF-FFN), IET paper section 3.3 / Fig. 5.

The paper describes SF-FFN as: take each token's most similar neighbour from IEA's refined
candidate list, replace every token by that neighbour to get ``x_sim``, and fuse ``x`` with
``x_sim`` through "a head-wise MLP and a depthwise convolution", a small extra cost on top of the
FFN. The official code is not released, so the exact layout is our reading of that description:

    h     = GELU(fc1(x))                                  hidden width F, split into H head groups
    h_sim = h at each token's top-1 neighbour, per head   (group j gathered with head j's top-1)
    f     = HeadwiseLinear_j([h_j, h_sim_j]) -> F/H       one (2F/H x F/H) weight per head
    f     = f + GELU(DWConv_k(f))                         PFT's ConvFFN local branch, on the image
    y     = fc2(f)

i.e. PFT's ConvFFN with the similar-token fusion in front of its depthwise branch. The hidden
width F is a model-level choice (the paper does not state it); IET / IET-light pick it so that
their parameter counts land on the paper's (see ``sr_models.families.iet``).

The top-1 neighbour per head comes from IEA: the first entry of the layer's sorted selection that
is not the token itself (self would make ``x_sim == x``); when none exists the token uses itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class HeadwiseLinear(nn.Module):
    """Per-head Linear: head j maps its ``in_per_head`` channels to ``out_per_head``.

    Input (B, H, N, in_per_head) -> output (B, H, N, out_per_head); weight (H, in, out), bias (H, out).
    """

    def __init__(self, num_heads: int, in_per_head: int, out_per_head: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_heads, in_per_head, out_per_head))
        self.bias = nn.Parameter(torch.zeros(num_heads, out_per_head))
        bound = in_per_head**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, N, in) -> (B, H, N, out)."""
        return torch.matmul(x, self.weight.unsqueeze(0)) + self.bias[None, :, None, :]


def gather_top1(x: torch.Tensor, top1: torch.Tensor) -> torch.Tensor:
    """Replace every token by its neighbour: ``out[b, h, i] = x[b, h, top1[b, h, i]]``.

    x: (B, H, N, c) float; top1: (B, Hi, N) int64 with Hi in {1, H} and values in [0, N)
    (negative entries mean "no neighbour": the token keeps itself). Returns (B, H, N, c).
    """
    b, h, n, c = x.shape
    if top1.dim() != 3 or top1.shape[0] != b or top1.shape[2] != n or top1.shape[1] not in (1, h):
        raise ValueError(f"top1 must have shape ({b}, 1 or {h}, {n}), got {tuple(top1.shape)}")
    own = torch.arange(n, device=x.device)
    idx = torch.where(top1 >= 0, top1, own).long().expand(b, h, n)
    return torch.gather(x, 2, idx.unsqueeze(-1).expand(b, h, n, c))


class SFFFN(nn.Module):
    """SF-FFN over tokens of an image; see the module docstring for the exact formula.

    dim: channels C; num_heads: H (the attention's heads, whose top-1 lists are used);
    hidden: F, divisible by H; kernel_size: the depthwise conv's k.
    forward(x (B, N, C), size (height, width) with N = height*width, top1 (B, 1 or H, N) int64 or
    None) -> (B, N, C). With ``top1=None`` every token is fused with itself.
    """

    def __init__(self, dim: int, num_heads: int, hidden: int, kernel_size: int = 7) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"SF-FFN hidden width {hidden} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.hidden = hidden
        group = hidden // num_heads
        self.fc1 = nn.Linear(dim, hidden)
        self.fuse = HeadwiseLinear(num_heads, 2 * group, group)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int], top1: torch.Tensor | None) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); see the class docstring."""
        height, width = size
        h = F.gelu(self.fc1(x))
        hh = rearrange(h, "b n (h c) -> b h n c", h=self.num_heads)
        h_sim = hh if top1 is None else gather_top1(hh, top1)
        f = self.fuse(torch.cat([hh, h_sim], dim=-1))
        # token-major (B, N, F) viewed as an image is channels_last, the fast depthwise-conv layout
        f = rearrange(rearrange(f, "b h n c -> b n (h c)"), "b (y x) c -> b c y x", y=height, x=width)
        f = f + F.gelu(self.dwconv(f))
        return self.fc2(rearrange(f, "b c y x -> b (y x) c"))
