"""Triton forward kernels for gather attention and its two halves (imported lazily, on first use).

Kernel A, fused attention forward (one program = BM queries of one (batch, head)):
  load q once (fp32, scale folded in); loop over the K slots in chunks of BK: load the index tile,
  gather the K rows as (BM, BK, WA) and (BM, BK, WB) register tiles (D = WA + WB, two power-of-two
  pieces, e.g. 40 = 32 + 8: no padding to 64), s = sum_d q k, add the bias, -inf at empty slots,
  online softmax update (running max m, sum l, fp32 accumulator rescaled by alpha), gather the V rows
  and accumulate sum_c p v. Only (BM, BK, W) tiles ever exist: no N x K x D gathered tensor and no
  N x K score matrix are written. Stores out = acc / l and lse = m + log l (-inf for empty rows).

Kernel "sddmm" (gather_scores, and dp = dO . v[index] in the values backward):
  out[i, c] = scale * a_i . b[index[i, c]] (+ bias) with -inf (or 0) at empty slots.
Kernel "spmm" (gather_values, and dq = scale sum_c g_ic k_j in the scores backward):
  out[i] = scale * sum_c p_ic b[index[i, c]], empty slots skipped.

Tile sizes: the fused attention kernels are autotuned on CUDA over a small (BM, BK, num_warps) space
keyed on (K, D) (``_launch.attention_configs``; ``SR_KERNELS_AUTOTUNE=0`` keeps the first, heuristic
config); the interpreter uses one config. Row offsets carry a ``tl.multiple_of`` hint derived from the
row stride so gathered D-contiguous rows can be loaded with vector loads.

All offsets are int64: batch/head/row ids and gathered token ids are cast to int64 before they are
multiplied by strides, so M * D above 2^31 is fine. The index head stride is 0 when one list is shared
by all heads (Hi = 1): the list is never expanded in memory. Loads upcast to fp32 (bf16 inputs too).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import attention_configs, bias_view, d_pieces, index_strides, row_align, strides4, tile_sizes
from ._triton_common import gathered_row_offsets

LOG2E = math.log2(math.e)


@triton.autotune(
    configs=[triton.Config({"BM": bm, "BK": bk}, num_warps=w) for bm, bk, w in attention_configs(backward=False)],
    key=["KS", "D", "HAS_BIAS"],
)
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, IDX, BIAS, OUT, LSE,
    s_qb, s_qh, s_qn, s_qd,
    s_kb, s_kh, s_km, s_kd,
    s_vb, s_vh, s_vm, s_vd,
    s_ib, s_ih, s_in, s_ik,
    s_bb, s_bh, s_bn, s_bk,
    s_ob, s_oh, s_on, s_od,
    H, N, KS, qk_scale_log2,
    HAS_BIAS: tl.constexpr, D: tl.constexpr, WA: tl.constexpr, WB: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr, KV_ALIGN: tl.constexpr,
):
    # D = WA + WB lanes in two power-of-two pieces (40 = 32 + 8, 18 = 16 + 2; see iea_attention._launch):
    # no register or instruction spent on padding lanes up to the next power of two.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM).to(tl.int64)
    row_ok = rows < N
    q_rows = Q + b * s_qb + h * s_qh + rows[:, None] * s_qn
    offs_a = tl.arange(0, WA)
    qa = tl.load(q_rows + offs_a[None, :] * s_qd, mask=row_ok[:, None], other=0.0).to(tl.float32) * qk_scale_log2
    acc_a = tl.zeros([BM, WA], tl.float32)
    if WB > 0:
        offs_b = WA + tl.arange(0, WB)
        b_ok = offs_b < D
        qb = tl.load(q_rows + offs_b[None, :] * s_qd, mask=row_ok[:, None] & b_ok[None, :],
                     other=0.0).to(tl.float32) * qk_scale_log2
        acc_b = tl.zeros([BM, WB], tl.float32)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    i_base = IDX + b * s_ib + h * s_ih + rows[:, None] * s_in
    b_base = BIAS + b * s_bb + h * s_bh + rows[:, None] * s_bn

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    for k0 in range(0, KS, BK):
        offs_k = k0 + tl.arange(0, BK)
        tile_ok = row_ok[:, None] & (offs_k[None, :] < KS)
        idx = tl.load(i_base + offs_k[None, :] * s_ik, mask=tile_ok, other=-1).to(tl.int64)
        valid = idx >= 0
        tok = tl.where(valid, idx, 0)
        koff = k_base + gathered_row_offsets(tok, s_km, KV_ALIGN)
        kt = tl.load(koff + offs_a[None, None, :] * s_kd, mask=valid[:, :, None], other=0.0).to(tl.float32)
        s = tl.sum(qa[:, None, :] * kt, axis=2)
        if WB > 0:
            kt = tl.load(koff + offs_b[None, None, :] * s_kd, mask=valid[:, :, None] & b_ok[None, None, :],
                         other=0.0).to(tl.float32)
            s += tl.sum(qb[:, None, :] * kt, axis=2)
        if HAS_BIAS:
            bias = tl.load(b_base + offs_k[None, :] * s_bk, mask=valid, other=0.0).to(tl.float32)
            s += bias * 1.4426950408889634
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        voff = v_base + gathered_row_offsets(tok, s_vm, KV_ALIGN)
        vt = tl.load(voff + offs_a[None, None, :] * s_vd, mask=valid[:, :, None], other=0.0).to(tl.float32)
        acc_a = acc_a * alpha[:, None] + tl.sum(p[:, :, None] * vt, axis=1)
        if WB > 0:
            vt = tl.load(voff + offs_b[None, None, :] * s_vd, mask=valid[:, :, None] & b_ok[None, None, :],
                         other=0.0).to(tl.float32)
            acc_b = acc_b * alpha[:, None] + tl.sum(p[:, :, None] * vt, axis=1)
        m_i = m_new

    empty = l_i == 0.0
    inv_l = 1.0 / tl.where(empty, 1.0, l_i)
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    o_rows = OUT + b * s_ob + h * s_oh + rows[:, None] * s_on
    tl.store(o_rows + offs_a[None, :] * s_od, (acc_a * inv_l[:, None]).to(OUT.dtype.element_ty), mask=row_ok[:, None])
    if WB > 0:
        tl.store(o_rows + offs_b[None, :] * s_od, (acc_b * inv_l[:, None]).to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & b_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * N + rows, lse, mask=row_ok)


@triton.jit
def _sddmm_kernel(
    A, B, IDX, BIAS, OUT,
    s_ab, s_ah, s_an, s_ad,
    s_bb, s_bh, s_bm, s_bd,
    s_ib, s_ih, s_in, s_ik,
    s_xb, s_xh, s_xn, s_xk,
    s_ob, s_oh, s_on, s_ok,
    H, N, KS, scale,
    HAS_BIAS: tl.constexpr, EMPTY_NEG_INF: tl.constexpr,
    D: tl.constexpr, DP: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, KV_ALIGN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM).to(tl.int64)
    row_ok = rows < N
    offs_d = tl.arange(0, DP)
    d_ok = offs_d < D
    a = tl.load(A + b * s_ab + h * s_ah + rows[:, None] * s_an + offs_d[None, :] * s_ad,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    b_base = B + b * s_bb + h * s_bh
    i_base = IDX + b * s_ib + h * s_ih + rows[:, None] * s_in
    x_base = BIAS + b * s_xb + h * s_xh + rows[:, None] * s_xn
    o_base = OUT + b * s_ob + h * s_oh + rows[:, None] * s_on
    for k0 in range(0, KS, BK):
        offs_k = k0 + tl.arange(0, BK)
        tile_ok = row_ok[:, None] & (offs_k[None, :] < KS)
        idx = tl.load(i_base + offs_k[None, :] * s_ik, mask=tile_ok, other=-1).to(tl.int64)
        valid = idx >= 0
        tok = tl.where(valid, idx, 0)
        bt = tl.load(b_base + gathered_row_offsets(tok, s_bm, KV_ALIGN) + offs_d[None, None, :] * s_bd,
                     mask=valid[:, :, None] & d_ok[None, None, :], other=0.0).to(tl.float32)
        s = tl.sum(a[:, None, :] * bt, axis=2) * scale
        if HAS_BIAS:
            s += tl.load(x_base + offs_k[None, :] * s_xk, mask=valid, other=0.0).to(tl.float32)
        if EMPTY_NEG_INF:
            s = tl.where(valid, s, float("-inf"))
        else:
            s = tl.where(valid, s, 0.0)
        tl.store(o_base + offs_k[None, :] * s_ok, s.to(OUT.dtype.element_ty), mask=tile_ok)


@triton.jit
def _spmm_kernel(
    P, B, IDX, OUT,
    s_pb, s_ph, s_pn, s_pk,
    s_bb, s_bh, s_bm, s_bd,
    s_ib, s_ih, s_in, s_ik,
    s_ob, s_oh, s_on, s_od,
    H, N, KS, scale,
    D: tl.constexpr, WA: tl.constexpr, WB: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
    KV_ALIGN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM).to(tl.int64)
    row_ok = rows < N
    offs_a = tl.arange(0, WA)
    acc_a = tl.zeros([BM, WA], tl.float32)
    if WB > 0:
        offs_b = WA + tl.arange(0, WB)
        b_ok = offs_b < D
        acc_b = tl.zeros([BM, WB], tl.float32)
    b_base = B + b * s_bb + h * s_bh
    i_base = IDX + b * s_ib + h * s_ih + rows[:, None] * s_in
    p_base = P + b * s_pb + h * s_ph + rows[:, None] * s_pn
    for k0 in range(0, KS, BK):
        offs_k = k0 + tl.arange(0, BK)
        tile_ok = row_ok[:, None] & (offs_k[None, :] < KS)
        idx = tl.load(i_base + offs_k[None, :] * s_ik, mask=tile_ok, other=-1).to(tl.int64)
        valid = idx >= 0
        tok = tl.where(valid, idx, 0)
        p = tl.load(p_base + offs_k[None, :] * s_pk, mask=valid, other=0.0).to(tl.float32)
        p = tl.where(valid, p, 0.0)
        roff = b_base + gathered_row_offsets(tok, s_bm, KV_ALIGN)
        bt = tl.load(roff + offs_a[None, None, :] * s_bd, mask=valid[:, :, None], other=0.0).to(tl.float32)
        acc_a += tl.sum(p[:, :, None] * bt, axis=1)
        if WB > 0:
            bt = tl.load(roff + offs_b[None, None, :] * s_bd, mask=valid[:, :, None] & b_ok[None, None, :],
                         other=0.0).to(tl.float32)
            acc_b += tl.sum(p[:, :, None] * bt, axis=1)
    o_rows = OUT + b * s_ob + h * s_oh + rows[:, None] * s_on
    tl.store(o_rows + offs_a[None, :] * s_od, (acc_a * scale).to(OUT.dtype.element_ty), mask=row_ok[:, None])
    if WB > 0:
        tl.store(o_rows + offs_b[None, :] * s_od, (acc_b * scale).to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & b_ok[None, :])


def attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor,
    bias: torch.Tensor | None, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out (B,H,N,D) in q's dtype and lse (B,H,N) float32."""
    bsz, heads, n, d = q.shape
    ks = index.shape[-1]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(bsz, heads, n, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        lse.fill_(float("-inf"))
        return out, lse
    wa, wb = d_pieces(d)
    bias_b = bias_view(bias, (bsz, heads, n, ks))

    def grid(meta):
        return (triton.cdiv(n, meta["BM"]), bsz * heads)

    _attn_fwd_kernel[grid](
        q, k, v, index, bias_b if bias_b is not None else q, out, lse,
        *strides4(q), *strides4(k), *strides4(v), *index_strides(index), *strides4(bias_b), *strides4(out),
        heads, n, ks, scale * LOG2E,
        HAS_BIAS=bias is not None, D=d, WA=wa, WB=wb, KV_ALIGN=row_align(k, v),
    )
    return out, lse


def sddmm(
    a: torch.Tensor, b: torch.Tensor, index: torch.Tensor, scale: float,
    bias: torch.Tensor | None, *, empty_neg_inf: bool, out_dtype: torch.dtype,
) -> torch.Tensor:
    """out[..., i, c] = scale * a_i . b[index_ic] (+ bias); -inf (or 0) at empty slots. (B,H,N,K)."""
    bsz, heads, n, d = a.shape
    ks = index.shape[-1]
    out = torch.empty(bsz, heads, n, ks, dtype=out_dtype, device=a.device)
    if out.numel() == 0:
        return out
    dp, bm, bk, warps = tile_sizes(d, ks)
    bias_b = bias_view(bias, (bsz, heads, n, ks))
    grid = (triton.cdiv(n, bm), bsz * heads)
    _sddmm_kernel[grid](
        a, b, index, bias_b if bias_b is not None else a, out,
        *strides4(a), *strides4(b), *index_strides(index), *strides4(bias_b), *strides4(out),
        heads, n, ks, scale,
        HAS_BIAS=bias is not None, EMPTY_NEG_INF=empty_neg_inf, D=d, DP=dp, BM=bm, BK=bk,
        KV_ALIGN=row_align(b), num_warps=warps,
    )
    return out


def spmm(
    p: torch.Tensor, b: torch.Tensor, index: torch.Tensor, scale: float, *, out_dtype: torch.dtype
) -> torch.Tensor:
    """out[..., i, :] = scale * sum_c p_ic b[index_ic] -> (B,H,N,D)."""
    bsz, heads, n, ks = p.shape
    d = b.shape[-1]
    out = torch.empty(bsz, heads, n, d, dtype=out_dtype, device=b.device)
    if out.numel() == 0:
        return out
    _, bm, bk, warps = tile_sizes(d, ks)
    wa, wb = d_pieces(d)
    grid = (triton.cdiv(n, bm), bsz * heads)
    _spmm_kernel[grid](
        p, b, index, out,
        *strides4(p), *strides4(b), *index_strides(index), *strides4(out),
        heads, n, ks, scale,
        D=d, WA=wa, WB=wb, BM=bm, BK=bk, KV_ALIGN=row_align(b), num_warps=warps,
    )
    return out
