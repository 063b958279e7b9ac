"""RIB: the rank-r positional term of SST's window attention, and the CLA gate.

RIB maps every absolute in-window position to a feature vector (Fourier features of cell-centred
coordinates), a shared ReLU MLP layer and per-head low-rank projections; attention logits gain
``P_q[h, i] . P_k[h, j] / sqrt(r)``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def rib_fourier_features(window: int, n_freqs: int = 10) -> torch.Tensor:
    """Fourier features of the cell-centred coordinates of a ``window x window`` window.

    Token n = row * window + col has ``x = 2 (col + 0.5) / w - 1`` and ``y = 2 (row + 0.5) / w - 1``.
    Features: ``[x, y]`` then, for each band i = 0..n_freqs-1 with f = 2**i (no factor pi),
    ``[sin(f x), sin(f y), cos(f x), cos(f y)]``. Returns float32 (w*w, 2 + 4 n_freqs).
    """
    if window <= 0 or n_freqs < 0:
        raise ValueError(f"need window > 0 and n_freqs >= 0, got window={window}, n_freqs={n_freqs}")
    return _fourier_features_cpu(window, n_freqs).clone()


@functools.lru_cache(maxsize=32)
def _fourier_features_cpu(window: int, n_freqs: int) -> torch.Tensor:
    with torch.device("cpu"):
        return _compute_fourier_features(window, n_freqs)


def _compute_fourier_features(window: int, n_freqs: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    base = torch.stack([cols, rows], dim=-1).reshape(-1, 2).float()
    base = 2.0 * (base + 0.5) / window - 1.0
    feats = [base]
    for i in range(n_freqs):
        f = 2**i
        feats += [torch.sin(base * f), torch.cos(base * f)]
    return torch.cat(feats, dim=-1)


def rib_factors(
    features: torch.Tensor,
    to_hidden: torch.Tensor,
    hidden_b: torch.Tensor,
    to_q: torch.Tensor,
    to_k: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The positional factors ``P_q, P_k`` (heads, N, r), float32.

    ``hidden = ReLU(features @ to_hidden + hidden_b)`` with features (N, n_in), to_hidden (n_in, hid),
    hidden_b (1, hid); then ``P_q[h] = hidden @ to_q[h]`` (to_q: (heads, hid, r)), likewise P_k.
    Computed in float32 (autocast disabled), as the official code does.
    """
    # autocast has no "meta" device type; FLOP counting on meta tensors uses the CPU rules.
    device_type = "cpu" if features.device.type == "meta" else features.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        hidden = torch.relu(features.float() @ to_hidden.float() + hidden_b.float())
        pos_q = torch.einsum("nd,hdr->hnr", hidden, to_q.float())
        pos_k = torch.einsum("nd,hdr->hnr", hidden, to_k.float())
    return pos_q, pos_k


def conv_gate(dim: int, kind: str = "DWC") -> nn.Sequential:
    """The CLA gate (official ``gate_type``): ``DWC`` = sigmoid(Conv1x1(DWConv3x3(x))) (keys .0, .1),
    ``Linear`` = sigmoid(Conv1x1(x)) (key .0). Input/output (B, dim, H, W)."""
    if kind == "DWC":
        return nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.Conv2d(dim, dim, 1), nn.Sigmoid())
    if kind == "Linear":
        return nn.Sequential(nn.Conv2d(dim, dim, 1), nn.Sigmoid())
    raise ValueError(f"gate kind must be 'DWC' or 'Linear', got {kind!r}")


def cyclic_shift_enabled(window_sizes: list[int] | tuple[int, ...]) -> bool:
    """SST's rule: shifted windows (odd layers) are used only when all window sizes of a block are
    equal. False for every released config (the cycle of window sizes mixes across windows)."""
    return all(w == window_sizes[0] for w in window_sizes)
