"""Triton backward of the fused IEA layer (imported lazily, on first use).

Recompute from lse (FlashAttention style): nothing of size (B,H,N,K) is saved by the forward pass. With
P_c = exp(s_c - lse), m_c = 1 for the slots the output used (all live slots, or the kept ones with
``av_on_selected``), g_c the gradient reaching the kept log-probability of slot c (0 elsewhere) and

    delta = dO . out - dlse + sum_c g_c          (kept logp_j = s_{slot_j} - lse)
    ds_c  = P_c (m_c dO . v_c - delta) + g_c     (= d loss / d logit_c = the bias and prior gradients)
    dq    = scale sum_c ds_c k_c,  dk_c += scale ds_c q,  dv_c += m_c P_c dO.

``_iea_bwd_kernel`` (one program = BM query rows, chunks of BK slots, D in two unpadded pieces) computes
ds and dq per query without atomics and, by default, scatters dk / dv with relaxed fp32 atomics (not
bit-reproducible on CUDA: the order of the additions varies).

Deterministic option (``deterministic=True``, or ``torch.use_deterministic_algorithms(True)``): the
per-query kernel stores ds and m P (two (B,H,N,K) fp32 tensors) instead of scattering, the host builds the
transposed list once per call (a stable sort of the B*Hi*N*K slot entries by token, ``searchsorted`` for
the row pointers), and ``_iea_dkdv_csr_kernel`` (one program = BJ keys) sums, for each key, its incoming
(query, slot) entries in a fixed order: dk_j = scale sum ds q_i, dv_j = sum m P dO_i, written once, no
atomics, bit-reproducible. Cost over the atomic path: the sort (B*Hi*N*K int64 keys), 2 (B,H,N,K) fp32
writes and reads, and a second gather of q / dO rows (N*K*2D elements, like one forward gather); one key
with a huge in-degree makes its program long (no splitting of hub keys). GPU timings of both are missing
(no GPU so far).

The host scatters the incoming kept-logp gradient and the kept-slot mask into (B,H,N,K+1) tensors (the
extra column takes the dead entries) read by the kernel: backward-only, next to the (B,H,N,K) ds the bias
and prior gradients need anyway.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..gather_attention._launch import index_strides, row_align, strides4
from ..gather_attention._triton_common import gathered_row_offsets
from . import _launch as L


@triton.jit
def _scatter_piece(dk_base, dv_base, goff, dss, pm, valid, use, row_ok, q_rows, do_rows, s_qd, s_od, s_gd,
                   OFF: tl.constexpr, W: tl.constexpr, WSUB: tl.constexpr, D: tl.constexpr):
    """dK[tok, OFF:OFF+W] += dss q and dV[tok, ...] += pm dO (relaxed fp32 atomics), WSUB lanes at a time."""
    for d0 in tl.static_range(0, W, WSUB):
        offs = OFF + d0 + tl.arange(0, WSUB)
        d_ok = offs < D
        m = row_ok[:, None] & d_ok[None, :]
        qs = tl.load(q_rows + offs[None, :] * s_qd, mask=m, other=0.0).to(tl.float32)
        dos = tl.load(do_rows + offs[None, :] * s_od, mask=m, other=0.0).to(tl.float32)
        g = goff + offs[None, None, :] * s_gd
        tl.atomic_add(dk_base + g, dss[:, :, None] * qs[:, None, :], mask=valid[:, :, None] & d_ok[None, None, :],
                      sem="relaxed")
        tl.atomic_add(dv_base + g, pm[:, :, None] * dos[:, None, :], mask=use[:, :, None] & d_ok[None, None, :],
                      sem="relaxed")


@triton.autotune(
    configs=[triton.Config({"BM": bm, "BK": bk}, num_warps=w) for bm, bk, w in L.backward_configs()],
    key=["KS", "D", "HAS_BIAS", "HAS_PRIOR", "HAS_GEXT", "AV_SELECTED", "ATOMIC", "STORE_DS"],
    reset_to_zero=["DK", "DV"],
)
@triton.jit
def _iea_bwd_kernel(
    Q, K, V, IDX, BIAS, PRIOR, DO, LSE, DELTA, GEXT, SEL, DQ, DK, DV, DS, PM,
    s_qb, s_qh, s_qn, s_qd,
    s_kb, s_kh, s_km, s_kd,
    s_vb, s_vh, s_vm, s_vd,
    s_ib, s_ih, s_in, s_ik,
    s_bb, s_bh, s_bn, s_bk,
    s_pb, s_ph, s_pn, s_pk,
    s_ob, s_oh, s_on, s_od,
    s_gb, s_gh, s_gm, s_gd,
    s_x,
    H, N, KS, scale,
    HAS_BIAS: tl.constexpr, HAS_PRIOR: tl.constexpr, HAS_GEXT: tl.constexpr, AV_SELECTED: tl.constexpr,
    ATOMIC: tl.constexpr, STORE_DS: tl.constexpr,
    D: tl.constexpr, WA: tl.constexpr, WB: tl.constexpr, KV_ALIGN: tl.constexpr, G_ALIGN: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr,
):
    # s_o*: strides of DO and DQ; s_g*: of the fp32 DK / DV buffers; s_x: row stride of GEXT / SEL
    # ((B,H,N,K+1) contiguous); DS / PM are contiguous (B,H,N,K).
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM).to(tl.int64)
    row_ok = rows < N
    offs_a = tl.arange(0, WA)
    q_rows = Q + b * s_qb + h * s_qh + rows[:, None] * s_qn
    o_rows = rows[:, None] * s_on + b * s_ob + h * s_oh
    qa = tl.load(q_rows + offs_a[None, :] * s_qd, mask=row_ok[:, None], other=0.0).to(tl.float32)
    doa = tl.load(DO + o_rows + offs_a[None, :] * s_od, mask=row_ok[:, None], other=0.0).to(tl.float32)
    dqa = tl.zeros([BM, WA], tl.float32)
    if WB > 0:
        offs_b = WA + tl.arange(0, WB)
        b_ok = row_ok[:, None] & (offs_b[None, :] < D)
        qb = tl.load(q_rows + offs_b[None, :] * s_qd, mask=b_ok, other=0.0).to(tl.float32)
        dob = tl.load(DO + o_rows + offs_b[None, :] * s_od, mask=b_ok, other=0.0).to(tl.float32)
        dqb = tl.zeros([BM, WB], tl.float32)
    row_lin = bh * N + rows
    lse = tl.load(LSE + row_lin, mask=row_ok, other=float("-inf"))
    delta = tl.load(DELTA + row_lin, mask=row_ok, other=0.0)
    row_live = lse > float("-inf")
    lse = tl.where(row_live, lse, 0.0)

    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    i_rows = IDX + b * s_ib + h * s_ih + rows[:, None] * s_in
    dk_base = DK + b * s_gb + h * s_gh
    dv_base = DV + b * s_gb + h * s_gh
    for k0 in range(0, KS, BK):
        offs_k = k0 + tl.arange(0, BK)
        tile_ok = row_ok[:, None] & (offs_k[None, :] < KS)
        idx = tl.load(i_rows + offs_k[None, :] * s_ik, mask=tile_ok, other=-1).to(tl.int64)
        valid = (idx >= 0) & row_live[:, None]
        tok = tl.where(valid, idx, 0)
        roff = gathered_row_offsets(tok, s_km, KV_ALIGN)
        voff = gathered_row_offsets(tok, s_vm, KV_ALIGN)
        ka = tl.load(k_base + roff + offs_a[None, None, :] * s_kd, mask=valid[:, :, None], other=0.0).to(tl.float32)
        s = tl.sum(qa[:, None, :] * ka, axis=2)
        if WB > 0:
            kmask_b = valid[:, :, None] & (offs_b[None, None, :] < D)
            kb = tl.load(k_base + roff + offs_b[None, None, :] * s_kd, mask=kmask_b, other=0.0).to(tl.float32)
            s += tl.sum(qb[:, None, :] * kb, axis=2)
        s = s * scale
        if HAS_BIAS:
            s += tl.load(BIAS + b * s_bb + h * s_bh + rows[:, None] * s_bn + offs_k[None, :] * s_bk,
                         mask=valid, other=0.0).to(tl.float32)
        if HAS_PRIOR:
            s += tl.load(PRIOR + b * s_pb + h * s_ph + rows[:, None] * s_pn + offs_k[None, :] * s_pk,
                         mask=valid, other=0.0).to(tl.float32)
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        x_off = row_lin[:, None] * s_x + offs_k[None, :]
        if AV_SELECTED:
            use = valid & (tl.load(SEL + x_off, mask=valid, other=0) != 0)
        else:
            use = valid
        va = tl.load(v_base + voff + offs_a[None, None, :] * s_vd, mask=use[:, :, None], other=0.0).to(tl.float32)
        dp = tl.sum(doa[:, None, :] * va, axis=2)
        if WB > 0:
            vb = tl.load(v_base + voff + offs_b[None, None, :] * s_vd,
                         mask=use[:, :, None] & (offs_b[None, None, :] < D), other=0.0).to(tl.float32)
            dp += tl.sum(dob[:, None, :] * vb, axis=2)
        ds = p * (tl.where(use, dp, 0.0) - delta[:, None])
        if HAS_GEXT:
            ds += tl.load(GEXT + x_off, mask=valid, other=0.0)
        ds = tl.where(valid, ds, 0.0)
        pm = tl.where(use, p, 0.0)
        dqa += tl.sum(ds[:, :, None] * ka, axis=1)
        if WB > 0:
            dqb += tl.sum(ds[:, :, None] * kb, axis=1)
        if ATOMIC:
            # dk / dv scattered 8 lanes at a time (q / dO sub-rows re-read, L1 hits): the (BM, BK, 8)
            # products are all that is live, not (BM, BK, WA) ones (which spill at D = 40)
            goff = gathered_row_offsets(tok, s_gm, G_ALIGN)
            dss = ds * scale
            _scatter_piece(dk_base, dv_base, goff, dss, pm, valid, use, row_ok, q_rows, DO + o_rows, s_qd, s_od, s_gd,
                           0, WA, WA if WA < 8 else 8, D)
            if WB > 0:
                _scatter_piece(dk_base, dv_base, goff, dss, pm, valid, use, row_ok, q_rows, DO + o_rows, s_qd, s_od, s_gd,
                               WA, WB, WB if WB < 8 else 8, D)
        else:
            tl.store(PM + row_lin[:, None] * KS + offs_k[None, :], pm, mask=tile_ok)
        if STORE_DS:
            tl.store(DS + row_lin[:, None] * KS + offs_k[None, :], ds, mask=tile_ok)
    tl.store(DQ + o_rows + offs_a[None, :] * s_od, (dqa * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])
    if WB > 0:
        tl.store(DQ + o_rows + offs_b[None, :] * s_od, (dqb * scale).to(DQ.dtype.element_ty), mask=b_ok)


@triton.jit
def _iea_dkdv_csr_kernel(
    Q, DO, DS, PM, ENT, PTR, DK, DV,
    s_qb, s_qh, s_qn, s_qd,
    s_ob, s_oh, s_on, s_od,
    s_eb, s_eh, s_tb, s_th,
    H, N, M, KS, scale,
    D: tl.constexpr, WA: tl.constexpr, WB: tl.constexpr, BJ: tl.constexpr, BE: tl.constexpr,
):
    """dk_j = scale sum ds q_i, dv_j = sum pm dO_i over the entries of key j (ENT: flat row*K + slot
    positions sorted by token, PTR: per-key offsets); DK / DV contiguous (B,H,M,D) in the input dtype."""
    pid_j = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    keys = pid_j.to(tl.int64) * BJ + tl.arange(0, BJ).to(tl.int64)
    key_ok = keys < M
    p_base = PTR + b * s_tb + h * s_th
    start = tl.load(p_base + keys, mask=key_ok, other=0)
    cnt = tl.where(key_ok, tl.load(p_base + keys + 1, mask=key_ok, other=0) - start, 0)
    max_cnt = tl.max(cnt, axis=0)
    e_base = ENT + b * s_eb + h * s_eh
    q_base = Q + b * s_qb + h * s_qh
    o_base = DO + b * s_ob + h * s_oh
    x_base = bh * N * KS
    offs_a = tl.arange(0, WA)
    dka = tl.zeros([BJ, WA], tl.float32)
    dva = tl.zeros([BJ, WA], tl.float32)
    if WB > 0:
        offs_b = WA + tl.arange(0, WB)
        dkb = tl.zeros([BJ, WB], tl.float32)
        dvb = tl.zeros([BJ, WB], tl.float32)
    for e0 in range(0, max_cnt, BE):
        offs_e = e0 + tl.arange(0, BE)
        em = offs_e[None, :] < cnt[:, None]
        flat = tl.load(e_base + start[:, None] + offs_e[None, :], mask=em, other=0).to(tl.int64)
        row = flat // KS
        dsv = tl.load(DS + x_base + flat, mask=em, other=0.0)
        pmv = tl.load(PM + x_base + flat, mask=em, other=0.0)
        q_off = q_base + row[:, :, None] * s_qn
        o_off = o_base + row[:, :, None] * s_on
        qa = tl.load(q_off + offs_a[None, None, :] * s_qd, mask=em[:, :, None], other=0.0).to(tl.float32)
        doa = tl.load(o_off + offs_a[None, None, :] * s_od, mask=em[:, :, None], other=0.0).to(tl.float32)
        dka += tl.sum(dsv[:, :, None] * qa, axis=1)
        dva += tl.sum(pmv[:, :, None] * doa, axis=1)
        if WB > 0:
            mb = em[:, :, None] & (offs_b[None, None, :] < D)
            qb = tl.load(q_off + offs_b[None, None, :] * s_qd, mask=mb, other=0.0).to(tl.float32)
            dob = tl.load(o_off + offs_b[None, None, :] * s_od, mask=mb, other=0.0).to(tl.float32)
            dkb += tl.sum(dsv[:, :, None] * qb, axis=1)
            dvb += tl.sum(pmv[:, :, None] * dob, axis=1)
    g_rows = (bh * M + keys[:, None]) * D
    tl.store(DK + g_rows + offs_a[None, :], (dka * scale).to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(DV + g_rows + offs_a[None, :], dva.to(DV.dtype.element_ty), mask=key_ok[:, None])
    if WB > 0:
        mo = key_ok[:, None] & (offs_b[None, :] < D)
        tl.store(DK + g_rows + offs_b[None, :], (dkb * scale).to(DK.dtype.element_ty), mask=mo)
        tl.store(DV + g_rows + offs_b[None, :], dvb.to(DV.dtype.element_ty), mask=mo)


def transposed_list(index: torch.Tensor, num_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(entries (Bi, Hi, N*K) int64, ptr (Bi, Hi, M+1) int64) of a (Bi,Hi,N,K) list: the flat slot
    positions row*K + c sorted by token (stable: ascending position within a token), and the offsets of
    each token's run; empty slots sort last (token M) and are never read."""
    bi, hi, n, kk = index.shape
    key = torch.where(index >= 0, index.long(), num_keys).reshape(bi * hi, n * kk)
    sorted_key, order = torch.sort(key, dim=1, stable=True)
    grid = torch.arange(num_keys + 1, device=index.device).expand(bi * hi, num_keys + 1).contiguous()
    ptr = torch.searchsorted(sorted_key, grid)
    return order.view(bi, hi, n * kk), ptr.view(bi, hi, num_keys + 1)


def _bh_strides(t: torch.Tensor) -> tuple[int, int]:
    return (0 if t.shape[0] == 1 else t.stride(0), 0 if t.shape[1] == 1 else t.stride(1))


def iea_bwd(
    grad_out: torch.Tensor, grad_lse: torch.Tensor | None, grad_kept: torch.Tensor | None,
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor,
    bias: torch.Tensor | None, prior: torch.Tensor | None,
    out: torch.Tensor, lse: torch.Tensor, kept_slot: torch.Tensor,
    scale: float, on_selected: bool, need_ds: bool, deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv (input dtypes) and ds (B,H,N,K) fp32 (an empty tensor unless ``need_ds``)."""
    bsz, heads, n, d = q.shape
    m = k.shape[2]
    ks = index.shape[-1]
    dev = q.device
    do = grad_out.contiguous()
    delta = (do.float() * out.float()).sum(-1)
    if grad_lse is not None:
        delta = delta - grad_lse.float()
    dead = kept_slot < 0
    slot_or_k = kept_slot.masked_fill(dead, ks)
    gext = None
    if grad_kept is not None:
        g = grad_kept.float().masked_fill(dead, 0.0)
        delta = delta + g.sum(-1)
        gext = torch.zeros(bsz, heads, n, ks + 1, dtype=torch.float32, device=dev).scatter_add_(3, slot_or_k, g)
    sel = None
    if on_selected:
        sel = torch.zeros(bsz, heads, n, ks + 1, dtype=torch.int8, device=dev).scatter_(3, slot_or_k, 1)
    delta = delta.contiguous()
    wa, wb = L.d_pieces(d)
    dq = torch.empty(bsz, heads, n, d, dtype=q.dtype, device=dev)
    store_ds = need_ds or deterministic
    ds = torch.zeros(bsz, heads, n, ks, dtype=torch.float32, device=dev) if store_ds else delta.new_empty(0)
    if deterministic:
        pm = torch.zeros(bsz, heads, n, ks, dtype=torch.float32, device=dev)
        dk_acc = dv_acc = torch.zeros(1, dtype=torch.float32, device=dev)
        acc_strides = (0, 0, 0, 0)
    else:
        pm = delta.new_zeros(1)
        dk_acc = torch.zeros(bsz, heads, m, d, dtype=torch.float32, device=dev)
        dv_acc = torch.zeros(bsz, heads, m, d, dtype=torch.float32, device=dev)
        acc_strides = strides4(dk_acc)
    full = (bsz, heads, n, ks)
    bias_b = None if bias is None else bias.expand(*full)
    prior_b = None if prior is None else prior.expand(*full)
    dummy = delta.new_zeros(1)
    if n > 0:

        def grid(meta):
            return (triton.cdiv(n, meta["BM"]), bsz * heads)

        _iea_bwd_kernel[grid](
            q, k, v, index, bias_b if bias_b is not None else q, prior_b if prior_b is not None else q,
            do, lse.contiguous(), delta, gext if gext is not None else dummy, sel if sel is not None else dummy,
            dq, dk_acc, dv_acc, ds if store_ds else dummy, pm,
            *strides4(q), *strides4(k), *strides4(v), *index_strides(index), *strides4(bias_b), *strides4(prior_b),
            *strides4(do), *acc_strides, ks + 1,
            heads, n, ks, scale,
            HAS_BIAS=bias is not None, HAS_PRIOR=prior is not None, HAS_GEXT=gext is not None,
            AV_SELECTED=on_selected, ATOMIC=not deterministic, STORE_DS=store_ds,
            D=d, WA=wa, WB=wb, KV_ALIGN=row_align(k, v), G_ALIGN=row_align(dk_acc) if not deterministic else 1,
        )
    if not deterministic:
        return dq, dk_acc.to(k.dtype), dv_acc.to(v.dtype), ds
    dk = torch.empty(bsz, heads, m, d, dtype=k.dtype, device=dev)
    dv = torch.empty(bsz, heads, m, d, dtype=v.dtype, device=dev)
    if m > 0:
        # a list broadcast over the batch (stride 0, as IET's DLSG list) is transposed once
        src = index[:1] if index.shape[0] > 1 and index.stride(0) == 0 else index
        ent, ptr = transposed_list(src, m)
        bj, be, warps = L.csr_config()
        _iea_dkdv_csr_kernel[(triton.cdiv(m, bj), bsz * heads)](
            q, do, ds, pm, ent, ptr, dk, dv,
            *strides4(q), *strides4(do), *_bh_strides(ent), *_bh_strides(ptr),
            heads, n, m, ks, scale,
            D=d, WA=wa, WB=wb, BJ=bj, BE=be, num_warps=warps,
        )
    return dq, dk, dv, (ds if need_ds else ds.new_empty(0))
