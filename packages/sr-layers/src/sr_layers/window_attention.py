"""Window self-attention layers of ESC (relative position bias) and SST (RIB + CLA gate)."""

from __future__ import annotations

import math

import torch
from torch import nn

from sr_layers.attention_backends import (
    BIAS_BACKENDS,
    RIB_BACKENDS,
    RIB_PRECISIONS,
    biased_attention,
    concat_bias_attention,
    rpb_score_mod,
)
from sr_layers.rib import conv_gate, rib_factors, rib_fourier_features
from sr_layers.windows import pad_to_window, qkv_to_windows, windows_to_feature


class RPBWindowAttention(nn.Module):
    """ESC's window attention with a relative position bias table.

    Keys: ``relative_position_bias`` (heads, (2w-1)^2), ``to_qkv`` (1x1 dim->3dim), ``to_out``.
    The input is reflect-padded (bottom/right) to a multiple of ``window``; logits are
    ``q.k / sqrt(d) + table[h, idx(i, j)]`` with the key-minus-query index; the output is cropped back
    before ``to_out``. ``backend``: see :func:`sr_layers.attention_backends.biased_attention`.

    Input and output: (B, dim, H, W), any B, H, W.
    """

    def __init__(self, dim: int, window: int, heads: int, backend: str = "auto") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if backend not in BIAS_BACKENDS:
            raise ValueError(f"backend must be one of {BIAS_BACKENDS}, got {backend!r}")
        self.dim, self.window, self.heads, self.backend = dim, window, heads, backend
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.to_out = nn.Conv2d(dim, dim, 1)
        self.relative_position_bias = nn.Parameter(torch.randn(heads, (2 * window - 1) ** 2) * 0.001)
        self._score_mod: tuple[int, object] | None = None

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_score_mod"] = None  # closures do not pickle; rebuilt on demand
        return state

    def _flex_score_mod(self):  # type: ignore[no-untyped-def]
        # one closure per layer (rebuilt only if the parameter object is replaced), so that the
        # compiled FlexAttention kernel is reused across calls
        table = self.relative_position_bias
        if self._score_mod is None or self._score_mod[0] != id(table):
            self._score_mod = (id(table), rpb_score_mod(table, self.window))
        return self._score_mod[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        h, w = x.shape[-2:]
        xp = pad_to_window(x, self.window)
        hp, wp = xp.shape[-2:]
        qkv = self.to_qkv(xp)
        q, k, v = qkv_to_windows(qkv, self.window, self.heads)
        out = biased_attention(
            q, k, v, self.relative_position_bias, self.window, backend=self.backend,
            score_mod=self._flex_score_mod() if self.backend in ("auto", "flex") and q.is_cuda else None,
        )
        out = windows_to_feature(out, self.window, hp // self.window, wp // self.window)
        return self.to_out(out.to(qkv.dtype)[:, :, :h, :w])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window={self.window}, heads={self.heads}, backend={self.backend}"


class RIBWindowAttention(nn.Module):
    """SST's window attention with RIB (``attn_type='RIB'``) and an optional CLA gate.

    Keys, in the official order: ``to_hidden`` (2+4L, hid), ``hidden_b`` (1, hid), ``to_q`` and
    ``to_k`` (heads, hid, rank), ``to_qkv``, ``to_out``, ``gate.{0,1}``. The Fourier features are a
    non-persistent buffer ``rib_coords`` rebuilt from the window size.

    forward: gate g = CLA(x) on the unpadded input; reflect-pad to the window; optional cyclic shift
    (-w/2, -w/2) when ``shift``; windowed attention with logits ``q.k/sqrt(d) + P_q.P_k/sqrt(r)`` via the
    concatenation recipe in ``precision`` ("bf16" = official, "fp32" = full precision); unshift, crop,
    ``to_out(out * g)``. Input and output: (B, dim, H, W).
    """

    def __init__(
        self,
        dim: int,
        window: int,
        heads: int,
        rank: int | None = None,
        hidden_dim: int = 32,
        n_freqs: int = 10,
        gate: str | None = "DWC",
        shift: bool = False,
        precision: str = "bf16",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if precision not in RIB_PRECISIONS:
            raise ValueError(f"precision must be one of {RIB_PRECISIONS}, got {precision!r}")
        if backend not in RIB_BACKENDS:
            raise ValueError(f"backend must be one of {RIB_BACKENDS}, got {backend!r}")
        head_dim = dim // heads
        self.dim, self.window, self.heads = dim, window, heads
        self.rank = 256 - head_dim if rank is None else rank
        self.shift, self.precision, self.backend = shift, precision, backend
        self.register_buffer("rib_coords", rib_fourier_features(window, n_freqs), persistent=False)
        n_in = 2 + 4 * n_freqs
        self.to_hidden = nn.Parameter(torch.empty(n_in, hidden_dim))
        self.hidden_b = nn.Parameter(torch.zeros(1, hidden_dim))
        self.to_q = nn.Parameter(torch.empty(heads, hidden_dim, self.rank))
        self.to_k = nn.Parameter(torch.empty(heads, hidden_dim, self.rank))
        for p in (self.to_hidden, self.to_q, self.to_k):
            nn.init.normal_(p, mean=0.0, std=0.05)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.to_out = nn.Conv2d(dim, dim, 1)
        self.gate = conv_gate(dim, gate) if gate is not None else None

    def positional_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_q, P_k), each float32 (heads, w*w, rank)."""
        return rib_factors(self.rib_coords, self.to_hidden, self.hidden_b, self.to_q, self.to_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        g = self.gate(x) if self.gate is not None else None
        h, w = x.shape[-2:]
        xp = pad_to_window(x, self.window)
        s = self.window // 2
        if self.shift:
            xp = torch.roll(xp, shifts=(-s, -s), dims=(2, 3))
        hp, wp = xp.shape[-2:]
        qkv = self.to_qkv(xp)
        q, k, v = qkv_to_windows(qkv, self.window, self.heads)
        pos_q, pos_k = self.positional_factors()
        out = concat_bias_attention(q, k, v, pos_q, pos_k, precision=self.precision, backend=self.backend)
        out = windows_to_feature(out, self.window, hp // self.window, wp // self.window)
        if self.shift:
            out = torch.roll(out, shifts=(s, s), dims=(2, 3))
        out = out.to(qkv.dtype)[:, :, :h, :w]
        if g is not None:
            out = out * g
        return self.to_out(out)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window={self.window}, heads={self.heads}, rank={self.rank}, "
            f"shift={self.shift}, precision={self.precision}, backend={self.backend}"
        )


def attention_logits_reference(
    q: torch.Tensor, k: torch.Tensor, pos_q: torch.Tensor, pos_k: torch.Tensor
) -> torch.Tensor:
    """Readable oracle for the RIB logits: q k^T / sqrt(d) + P_q P_k^T / sqrt(r), float64.

    q, k: (B', heads, N, d); pos_q, pos_k: (heads, N, r). Returns (B', heads, N, N).
    """
    d, r = q.shape[-1], pos_q.shape[-1]
    content = q.double() @ k.double().transpose(-2, -1) / math.sqrt(d)
    positional = pos_q.double() @ pos_k.double().transpose(-2, -1) / math.sqrt(r)
    return content + positional
