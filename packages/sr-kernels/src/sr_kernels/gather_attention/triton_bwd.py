"""Triton backward kernels for gather attention (imported lazily, on first use).

Choice: a recompute-based backward with fp32 atomics for dK/dV (the FlashAttention / DeepSeek sparse-MLA
pattern), not a transposed (reverse-CSR) formulation. Reasons:

* The forward saves only out and the per-row logsumexp (B,H,N fp32): memory stays O(N*D + N), no N x K
  probabilities are stored. The backward recomputes s (one K gather) and p = exp(s - lse).
* dQ is a per-query reduction, computed in the same program with no atomics. dK/dV are scattered with
  ``tl.atomic_add(..., sem="relaxed")`` into fp32 buffers (cast to the input dtype afterwards). Atomics
  are exact for duplicate indices and need no preprocessing; a transposed formulation needs an argsort
  of the N*K index list per call (and per head for per-head lists) plus stored P and dS (2 x N x K fp32),
  and still has to split hub tokens with very high in-degree. With K and D small and the K/V rows of one
  (batch, head) resident in L2, relaxed fp32 reductions are the simpler and, we expect, faster option.
* Consequence: **dK and dV are not bit-reproducible** on CUDA (the order of floating-point additions
  varies between runs; differences are at fp32 rounding level). dQ and dbias are deterministic. The
  interpreter runs programs sequentially, so CPU results are deterministic.

Kernel (one program = BM queries of one (batch, head), chunks of BK slots):
  delta_i = dO_i . out_i - dlse_i (precomputed); s = scale q . k_j + bias; p = exp(s - lse);
  dp = dO . v_j; ds = p (dp - delta); dq += ds k_j; dK[j] += scale ds q; dV[j] += p dO; ds optionally
  stored for the bias gradient. The scatter kernel is the adjoint of the gather used by the two halves
  (gather_scores: dK[j] += scale g q; gather_values: dV[j] += p dO).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import attention_configs, bias_view, index_strides, row_align, strides4, tile_sizes
from ._triton_common import gathered_row_offsets


@triton.autotune(
    configs=[triton.Config({"BM": bm, "BK": bk}, num_warps=w) for bm, bk, w in attention_configs(backward=True)],
    key=["KS", "D", "HAS_BIAS", "STORE_DS"],
    reset_to_zero=["DK", "DV"],
)
@triton.jit
def _attn_bwd_kernel(
    Q, K, V, IDX, BIAS, DO, LSE, DELTA, DQ, DK, DV, DS,
    s_qb, s_qh, s_qn, s_qd,
    s_kb, s_kh, s_km, s_kd,
    s_vb, s_vh, s_vm, s_vd,
    s_ib, s_ih, s_in, s_ik,
    s_bb, s_bh, s_bn, s_bk,
    s_ob, s_oh, s_on, s_od,
    s_gb, s_gh, s_gm, s_gd,
    H, N, KS, scale,
    HAS_BIAS: tl.constexpr, STORE_DS: tl.constexpr,
    D: tl.constexpr, DP: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
    KV_ALIGN: tl.constexpr, G_ALIGN: tl.constexpr,
):
    # s_o*: strides of DO and DQ (both contiguous (B,H,N,D)); s_g*: strides of DK/DV (fp32 (B,H,M,D)).
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM).to(tl.int64)
    row_ok = rows < N
    offs_d = tl.arange(0, DP)
    d_ok = offs_d < D
    qd_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_qn + offs_d[None, :] * s_qd,
                mask=qd_mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * s_ob + h * s_oh + rows[:, None] * s_on + offs_d[None, :] * s_od,
                 mask=qd_mask, other=0.0).to(tl.float32)
    row_lin = pid_bh.to(tl.int64) * N + rows
    lse = tl.load(LSE + row_lin, mask=row_ok, other=float("-inf"))
    delta = tl.load(DELTA + row_lin, mask=row_ok, other=0.0)
    row_live = lse > float("-inf")
    lse = tl.where(row_live, lse, 0.0)

    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    dk_base = DK + b * s_gb + h * s_gh
    dv_base = DV + b * s_gb + h * s_gh
    i_base = IDX + b * s_ib + h * s_ih + rows[:, None] * s_in
    x_base = BIAS + b * s_bb + h * s_bh + rows[:, None] * s_bn
    ds_base = DS + row_lin[:, None] * KS
    dq = tl.zeros([BM, DP], tl.float32)
    for k0 in range(0, KS, BK):
        offs_k = k0 + tl.arange(0, BK)
        tile_ok = row_ok[:, None] & (offs_k[None, :] < KS)
        idx = tl.load(i_base + offs_k[None, :] * s_ik, mask=tile_ok, other=-1).to(tl.int64)
        valid = (idx >= 0) & row_live[:, None]
        tok = tl.where(valid, idx, 0)
        gmask = valid[:, :, None] & d_ok[None, None, :]
        kt = tl.load(k_base + gathered_row_offsets(tok, s_km, KV_ALIGN) + offs_d[None, None, :] * s_kd,
                     mask=gmask, other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * kt, axis=2) * scale
        if HAS_BIAS:
            s += tl.load(x_base + offs_k[None, :] * s_bk, mask=valid, other=0.0).to(tl.float32)
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        vt = tl.load(v_base + gathered_row_offsets(tok, s_vm, KV_ALIGN) + offs_d[None, None, :] * s_vd,
                     mask=gmask, other=0.0).to(tl.float32)
        dp = tl.sum(do[:, None, :] * vt, axis=2)
        ds = p * (dp - delta[:, None])
        dq += tl.sum(ds[:, :, None] * kt, axis=1)
        g_off = gathered_row_offsets(tok, s_gm, G_ALIGN) + offs_d[None, None, :] * s_gd
        tl.atomic_add(dk_base + g_off, (ds * scale)[:, :, None] * q[:, None, :], mask=gmask, sem="relaxed")
        tl.atomic_add(dv_base + g_off, p[:, :, None] * do[:, None, :], mask=gmask, sem="relaxed")
        if STORE_DS:
            tl.store(ds_base + offs_k[None, :], ds, mask=tile_ok)
    tl.store(DQ + b * s_ob + h * s_oh + rows[:, None] * s_on + offs_d[None, :] * s_od,
             (dq * scale).to(DQ.dtype.element_ty), mask=qd_mask)


@triton.jit
def _scatter_kernel(
    G, A, IDX, DB,
    s_gb, s_gh, s_gn, s_gk,
    s_ab, s_ah, s_an, s_ad,
    s_ib, s_ih, s_in, s_ik,
    s_db, s_dh, s_dm, s_dd,
    H, N, KS, scale,
    D: tl.constexpr, DP: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, G_ALIGN: tl.constexpr,
):
    """DB[index[i, c], :] += scale * G[i, c] * A[i, :] (fp32 atomics, empty slots skipped)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM).to(tl.int64)
    row_ok = rows < N
    offs_d = tl.arange(0, DP)
    d_ok = offs_d < D
    a = tl.load(A + b * s_ab + h * s_ah + rows[:, None] * s_an + offs_d[None, :] * s_ad,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32) * scale
    db_base = DB + b * s_db + h * s_dh
    i_base = IDX + b * s_ib + h * s_ih + rows[:, None] * s_in
    g_base = G + b * s_gb + h * s_gh + rows[:, None] * s_gn
    for k0 in range(0, KS, BK):
        offs_k = k0 + tl.arange(0, BK)
        tile_ok = row_ok[:, None] & (offs_k[None, :] < KS)
        idx = tl.load(i_base + offs_k[None, :] * s_ik, mask=tile_ok, other=-1).to(tl.int64)
        valid = idx >= 0
        tok = tl.where(valid, idx, 0)
        g = tl.load(g_base + offs_k[None, :] * s_gk, mask=valid, other=0.0).to(tl.float32)
        tl.atomic_add(db_base + gathered_row_offsets(tok, s_dm, G_ALIGN) + offs_d[None, None, :] * s_dd,
                      g[:, :, None] * a[:, None, :],
                      mask=valid[:, :, None] & d_ok[None, None, :], sem="relaxed")


def attention_bwd(
    grad_out: torch.Tensor, grad_lse: torch.Tensor | None,
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, bias: torch.Tensor | None,
    out: torch.Tensor, lse: torch.Tensor, scale: float, need_ds: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv (input dtypes) and ds (B,H,N,K) fp32 (an empty tensor unless ``need_ds``)."""
    bsz, heads, n, d = q.shape
    m = k.shape[2]
    ks = index.shape[-1]
    do = grad_out.contiguous()
    delta = (do.float() * out.float()).sum(-1)
    if grad_lse is not None:
        delta = delta - grad_lse.float()
    delta = delta.contiguous()
    dq = torch.empty(bsz, heads, n, d, dtype=q.dtype, device=q.device)
    dk = torch.zeros(bsz, heads, m, d, dtype=torch.float32, device=q.device)
    dv = torch.zeros(bsz, heads, m, d, dtype=torch.float32, device=q.device)
    ds = torch.zeros(bsz, heads, n, ks, dtype=torch.float32, device=q.device) if need_ds else dk.new_empty(0)
    if n > 0 and d > 0:
        dp = tile_sizes(d, ks)[0]
        bias_b = bias_view(bias, (bsz, heads, n, ks))

        def grid(meta):
            return (triton.cdiv(n, meta["BM"]), bsz * heads)

        _attn_bwd_kernel[grid](
            q, k, v, index, bias_b if bias_b is not None else q, do, lse.contiguous(), delta, dq, dk, dv,
            ds if need_ds else dk,
            *strides4(q), *strides4(k), *strides4(v), *index_strides(index), *strides4(bias_b),
            *strides4(do), *strides4(dk),
            heads, n, ks, scale,
            HAS_BIAS=bias is not None, STORE_DS=need_ds, D=d, DP=dp,
            KV_ALIGN=row_align(k, v), G_ALIGN=row_align(dk),
        )
    return dq, dk.to(k.dtype), dv.to(v.dtype), ds


def scatter_rows(
    g: torch.Tensor, a: torch.Tensor, index: torch.Tensor, num_keys: int, scale: float, out_dtype: torch.dtype
) -> torch.Tensor:
    """(B,H,M,D): out[index[i,c]] += scale * g[i,c] * a[i] for g (B,H,N,K), a (B,H,N,D)."""
    bsz, heads, n, d = a.shape
    ks = index.shape[-1]
    acc = torch.zeros(bsz, heads, num_keys, d, dtype=torch.float32, device=a.device)
    if n > 0 and d > 0 and num_keys > 0:
        dp, bm, bk, warps = tile_sizes(d, ks)
        grid = (triton.cdiv(n, bm), bsz * heads)
        _scatter_kernel[grid](
            g, a, index, acc,
            *strides4(g), *strides4(a), *index_strides(index), *strides4(acc),
            heads, n, ks, scale,
            D=d, DP=dp, BM=bm, BK=bk, G_ALIGN=row_align(acc), num_warps=warps,
        )
    return acc.to(out_dtype)
