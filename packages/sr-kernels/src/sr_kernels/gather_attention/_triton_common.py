"""Triton helpers shared by the gather-attention kernels (imported lazily, with the kernels)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gathered_row_offsets(tok, stride, ALIGN: tl.constexpr):
    """Element offsets (BM, BK, 1) of the gathered rows ``tok`` (int64) with row stride ``stride``.

    ``ALIGN`` (a power of two, computed on the host from the stride) tells the compiler every offset is
    a multiple of it, so the D-contiguous row loads can be vectorised (e.g. 16-B loads of bf16 rows
    with D = 40). The product is int64: no overflow for M * D >= 2^31.
    """
    off = tok[:, :, None] * stride
    if ALIGN > 1:
        off = tl.multiple_of(off, [ALIGN, ALIGN, ALIGN])
    return off
