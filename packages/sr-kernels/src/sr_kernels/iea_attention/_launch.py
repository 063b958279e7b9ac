"""Tile choices of the fused IEA kernels (no Triton import here: the AOT checks and the tests read them).

Head dim without padding
------------------------
The gather-attention kernels pad D to the next power of two (``DP``): D = 40 runs 64-lane tiles (37.5% of
the lanes idle), D = 18 runs 32 lanes (44% idle). Masked lanes move no bytes, but they hold registers and
issue instructions, which is what limits the tile size of a register-bound gather kernel (the D = 40
forward tile of ``_attn_fwd_kernel`` needs 255 registers on sm_90a). The IEA kernels split D into two
power-of-two pieces instead, ``D = WA + WB`` with ``WA`` the largest power of two <= D and ``WB`` the
next power of two >= D - WA: 40 = 32 + 8, 18 = 16 + 2, 64 = 64 + 0, 48 = 32 + 16 are exact (no idle
lane); any other D wastes less than half of the second piece (30 = 16 + 16 with 2 idle lanes).
The tensor-core (tile-union) path needs dot operands of at least 16 along D, so it uses
``WA = max(16, ...)`` and a second piece of ``max(16, next_pow2(D - WA))`` (40 -> 32 + 16 with 8 idle
lanes in the small dot only; the loads are masked, so no extra bytes).
"""

from __future__ import annotations

import os

from .._dispatch import interpreter_enabled
from ..gather_attention._launch import AUTOTUNE_ENV, next_pow2
from ..gather_attention._launch import d_pieces as _gather_d_pieces

#: Largest K the fused (whole row in registers) Triton forward handles; wider lists run the torch path.
#: 512 covers every IET / IET-light schedule (K <= 288); a 1024-wide row sort compiles slowly and needs
#: one row per program.
MAX_FUSED_SLOTS = 512
#: Tile-union path: queries per tile (the M of the tensor-core dots) and the largest union it takes.
UNION_QUERIES = 16
UNION_MAX = 512
#: union columns per tensor-core block (one (16, UNION_CHUNK) logit block is live at a time)
UNION_CHUNK = 64
#: A fused-forward tile holds at most this many gathered fp32 values per thread (register budget).
ROW_TILE_VALUES_PER_THREAD = 64


def d_pieces(d: int) -> tuple[int, int]:
    """(WA, WB) with WA the largest power of two <= d and WB = next_pow2(d - WA) (0 when d is a power of 2)."""
    if d < 1:
        raise ValueError(f"head dim must be positive, got {d}")
    return _gather_d_pieces(d)


def dot_pieces(d: int) -> tuple[int, int]:
    """(DA, DB) for ``tl.dot`` along D: both 0 or >= 16, DA + DB >= d (the tile-union kernel)."""
    wa = max(16, 1 << (d.bit_length() - 1))
    if wa >= d:
        return wa, 0
    return wa, max(16, next_pow2(d - wa))


def slot_pad(num_slots: int) -> int:
    """KP: the power-of-two row width (>= 16, <= MAX_FUSED_SLOTS) of the fused forward."""
    return max(16, next_pow2(num_slots))


def autotune_enabled() -> bool:
    return os.environ.get(AUTOTUNE_ENV, "1").strip() not in ("0", "false", "no")


# (BM rows, WS lanes of D per gathered sub-tile, num_warps) of the fused forward (the per-query path).
_ROW_SPACE = [(2, 16, 4), (4, 8, 4), (1, 16, 4), (4, 16, 8), (4, 8, 2)]


def row_configs() -> list[tuple[int, int, int]]:
    """Every (BM, WS, num_warps) the fused forward may be autotuned over (before pruning by K)."""
    if interpreter_enabled():
        return [(16, 16, 1)]
    return _ROW_SPACE if autotune_enabled() else _ROW_SPACE[:1]


def row_config_fits(bm: int, ws: int, warps: int, kp: int) -> bool:
    """A (BM, KP, WS) gathered sub-tile within the register budget, 1 to 4 row slots per thread (more
    spill at fp32 / int64: (4, 8, 4) at KP = 256, ptxas sm_90a)."""
    threads = 32 * warps
    return bm * kp * ws <= ROW_TILE_VALUES_PER_THREAD * threads and threads <= bm * kp <= 4 * threads


def prune_row_configs(configs: list[tuple[int, int, int]], kp: int) -> list[tuple[int, int, int]]:
    """The configs the launcher can pick at row width KP (never empty: the smallest tile survives)."""
    if interpreter_enabled():
        return configs
    kept = [c for c in configs if row_config_fits(*c, kp)]
    if not kept:
        kept = [min(configs, key=lambda c: (c[0] * c[1] * kp / c[2], c[2]))]
    return kept


def backward_configs() -> list[tuple[int, int, int]]:
    """(BM, BK, num_warps) of the IEA backward (per query rows, chunks of BK slots)."""
    if interpreter_enabled():
        return [(32, 16, 1)]
    space = [(8, 16, 4), (4, 16, 2), (16, 8, 4), (4, 32, 4), (16, 16, 8), (2, 32, 2)]
    return space if autotune_enabled() else space[:1]


def csr_config() -> tuple[int, int, int]:
    """(BJ keys, BE entries per chunk, num_warps) of the deterministic dK/dV pass."""
    if interpreter_enabled():
        return (16, 16, 1)
    return (4, 32, 4)


def union_warps() -> int:
    return 1 if interpreter_enabled() else 8
