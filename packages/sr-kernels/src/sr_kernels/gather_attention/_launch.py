"""Launch helpers shared by the gather-attention Triton wrappers (no Triton import here)."""

from __future__ import annotations

import os

import torch

from .._dispatch import interpreter_enabled


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def strides4(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    if t is None:
        return (0, 0, 0, 0)
    s = t.stride()
    return (s[0], s[1], s[2], s[3])


def index_strides(index: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides of a (B,Hi,N,K) index list; the head stride is 0 when Hi == 1 (shared across heads)."""
    sb, sh, sn, sk = index.stride()
    return (sb, 0 if index.shape[1] == 1 else sh, sn, sk)


def row_align(*tensors: torch.Tensor) -> int:
    """Largest power of two (<= 16) dividing the row stride (dim 2) of every (B,H,M,D) tensor given.

    Used as a ``tl.multiple_of`` hint on gathered row offsets; 1 when a row is not D-contiguous.
    """
    align = 16
    for t in tensors:
        if t.stride(3) != 1 and t.shape[3] > 1:
            return 1
        s = t.stride(2)
        if s == 0:
            return 1
        align = min(align, s & -s)
    return align


def bias_view(bias: torch.Tensor | None, shape: tuple[int, int, int, int]) -> torch.Tensor | None:
    """A broadcast view of ``bias`` (stride 0 on broadcast dims, no copy)."""
    return None if bias is None else bias.expand(*shape)


AUTOTUNE_ENV = "SR_KERNELS_AUTOTUNE"


def attention_configs(backward: bool) -> list[tuple[int, int, int]]:
    """(BM, BK, num_warps) candidates for the fused attention kernels.

    Interpreter: one config (BM 32, BK 16: several slot chunks per row even at test sizes). GPU: a small
    autotuning space keyed on (K, D), every tile at most 256 x DP fp32 values (<= 16K for D <= 64); the
    forward keeps BM * BK = 16 * num_warps slot rows per program: (16, 16, 4) and (8, 32, 4) spill at
    D = 40, and (8, 16, 4) with fp32 inputs and an int64 index (ptxas for sm_80 / sm_90a, see
    ``sr_kernels._aot`` and BENCHMARKS.md);
    ``SR_KERNELS_AUTOTUNE=0`` keeps only the first (heuristic) config.
    """
    if interpreter_enabled():
        return [(32, 16, 1)]
    if backward:
        space = [(8, 16, 4), (4, 16, 2), (16, 8, 4), (4, 32, 4), (16, 16, 8), (2, 32, 2)]
    else:
        space = [(4, 16, 4), (2, 16, 2), (8, 8, 4), (2, 32, 4), (16, 8, 8), (8, 16, 8), (1, 64, 4)]
    if os.environ.get(AUTOTUNE_ENV, "1").strip() in ("0", "false", "no"):
        return space[:1]
    return space


def d_pieces(head_dim: int) -> tuple[int, int]:
    """(WA, WB): D split into two power-of-two pieces (see ``sr_kernels.iea_attention._launch.d_pieces``)."""
    wa = 1 << (head_dim.bit_length() - 1)
    rest = head_dim - wa
    return wa, (next_pow2(rest) if rest else 0)


def tile_sizes(head_dim: int, num_slots: int) -> tuple[int, int, int, int]:
    """(DP, BM, BK, num_warps): padded head dim, query rows per program, slots per chunk, warps.

    On a GPU the (BM, BK, DP) gathered tile is kept at <= 8K fp32 values per 4 warps (register budget);
    in the interpreter bigger tiles mean fewer (sequential) programs, hence faster tests.
    """
    dp = max(16, next_pow2(head_dim))
    bk = min(next_pow2(num_slots), 32 if dp <= 32 else 16)
    bk = max(bk, 2)
    if interpreter_enabled():
        return dp, 32, max(bk, min(next_pow2(num_slots), 32)), 1
    bm = max(2, min(32, 8192 // (bk * dp)))
    return dp, bm, bk, 4
