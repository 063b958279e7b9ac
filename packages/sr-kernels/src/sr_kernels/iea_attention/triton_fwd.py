"""Triton forward kernels of the fused IEA layer (imported lazily, on first use).

Both kernels write only out (B,H,N,D), lse (B,H,N) and the kept (index, logp, slot) (B,H,N,keep): the
(B,H,N,K) logits, probabilities and the selection keys live in registers. No atomics.

Per-query gather path (``_iea_fwd_row_kernel``; one program = BM query rows of one (batch, head)):

1. load the row's whole index list (BM, KP) (KP = next power of two >= K, <= 1024);
2. logits for all K slots at once: loop over D in sub-tiles of WS lanes (two power-of-two pieces
   WA + WB = D, see ``_launch``: no padding of D = 40 to 64 or of D = 18 to 32); each sub-tile gathers
   (BM, KP, WS) key values, so only the (BM, KP) logits and one sub-tile are ever live;
3. + bias + prior, -inf at empty slots; exact softmax over the row (no online rescaling: the row is in
   registers): lse, logp = s - lse, P = p / l;
4. selection: packed int64 keys ``~ordered_bits(logp) << 32 | slot`` (ties to the lower slot, dead
   slots last), ``tl.sort`` along the row (the interpreter uses an O(KP^2) rank instead: its sort is a
   slow Python-level network); the first ``keep`` sorted keys are the kept slots, their logp is decoded
   from the key bits (exact), their token re-read from the index row; the keep-th key is the threshold
   of the kept set;
5. AV: the same D sub-tile loop gathers V rows, masked to the kept slots with ``av_on_selected`` (masked
   lanes move no bytes, so that AV reads only keep rows), and stores each D sub-tile of out directly.

Tile-union tensor-core path (``_iea_fwd_union_kernel``; one program = one tile of 16 neighbouring queries
of a :class:`sr_kernels.iea_attention.union.TileUnion` plan, iea.md 3.8.1): the union of the tile's
candidate rows (<= 512 tokens) is loaded once; ``S = Q_tile @ K_union^T`` and ``out = P_union @ V_union``
are ``tl.dot`` products (tensor cores for fp16/bf16; IEEE fp32 dots for fp32 inputs); the plan's
per-slot union positions gather the logits into slot order (``tl.gather``) and its per-(query, union
position) slot map scatters P back for the AV dot. Softmax and selection are the same code as above, so
both paths return identical selections. Tiles the plan marks ineligible (union too wide, or a token
listed twice in one row) run the per-query kernel over an explicit row list.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_graph import _rank_sort
from ..gather_attention._launch import index_strides, row_align, strides4
from ..gather_attention._triton_common import gathered_row_offsets
from . import _launch as L

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
INT64_MAX = 0x7FFFFFFFFFFFFFFF


def _prune(configs, named_args, **kwargs):
    kp = kwargs.get("KP", named_args.get("KP"))
    pairs = {(c.kwargs["BM"], c.kwargs["WS"], c.num_warps): c for c in configs}
    return [pairs[t] for t in L.prune_row_configs(list(pairs), int(kp))]


@triton.jit
def _piece_dot(acc, q_rows, k_base, roff, valid, row_ok, s_qd, s_kd,
               OFF: tl.constexpr, W: tl.constexpr, WSUB: tl.constexpr, D: tl.constexpr):
    """acc (BM, KP) += sum over lanes [OFF, OFF+W) of q (BM, .) * gathered k (BM, KP, .), WSUB at a time."""
    for d0 in tl.static_range(0, W, WSUB):
        offs_d = OFF + d0 + tl.arange(0, WSUB)
        d_ok = offs_d < D
        qd = tl.load(q_rows + offs_d[None, :] * s_qd, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        kt = tl.load(k_base + roff + offs_d[None, None, :] * s_kd,
                     mask=valid[:, :, None] & d_ok[None, None, :], other=0.0).to(tl.float32)
        acc += tl.sum(qd[:, None, :] * kt, axis=2)
    return acc


@triton.jit
def _piece_av(w, v_base, roff, use, o_rows, row_ok, s_vd, s_od,
              OFF: tl.constexpr, W: tl.constexpr, WSUB: tl.constexpr, D: tl.constexpr):
    """out[:, OFF:OFF+W] = sum_c w (BM, KP) * gathered v (BM, KP, .), stored WSUB lanes at a time."""
    for d0 in tl.static_range(0, W, WSUB):
        offs_d = OFF + d0 + tl.arange(0, WSUB)
        d_ok = offs_d < D
        vt = tl.load(v_base + roff + offs_d[None, None, :] * s_vd,
                     mask=use[:, :, None] & d_ok[None, None, :], other=0.0).to(tl.float32)
        o = tl.sum(w[:, :, None] * vt, axis=1)
        tl.store(o_rows + offs_d[None, :] * s_od, o.to(o_rows.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _softmax_select(s, valid, rows, row_ok, cols, i_rows, s_ik, bh, N, KS, KEEP,
                    LSE, KIDX, KLOGP, KSLOT, KP: tl.constexpr, RANK_SORT: tl.constexpr):
    """Row softmax of the logits s (BM, KP) (natural log domain, -inf = excluded) and the top-KEEP
    selection; stores lse and the kept (index, logp, slot). Returns (P, live, kept) (BM, KP)."""
    s = tl.where(valid, s, float("-inf"))
    live = valid & (s > float("-inf"))
    m = tl.max(s, axis=1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp2((s - m_safe[:, None]) * 1.4426950408889634)
    p = tl.where(live, p, 0.0)
    l_sum = tl.sum(p, axis=1)
    empty = l_sum == 0.0
    l_safe = tl.where(empty, 1.0, l_sum)
    lse = m_safe + tl.log2(l_safe) * 0.6931471805599453
    logp = tl.where(live, s - lse[:, None], float("-inf"))
    tl.store(LSE + bh * N + rows, tl.where(empty, float("-inf"), lse), mask=row_ok)

    bits = (logp + 0.0).to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = ((~ordered).to(tl.int64) << 32) | cols[None, :].to(tl.int64)
    key = tl.where(live, key, 0x7FFFFFFFFFFFFFFF)
    k_rows = (bh * N + rows[:, None]) * KEEP
    if RANK_SORT:
        # interpreter: rank of every live key in its row (keys are unique), scattered to its column
        rank = tl.sum((key[:, None, :] < key[:, :, None]).to(tl.int32), axis=2)
        kept = live & (rank < KEEP)
        smask = row_ok[:, None] & kept
        idx_v = tl.load(i_rows + cols[None, :] * s_ik, mask=smask, other=-1)
        tl.store(KIDX + k_rows + rank, idx_v.to(KIDX.dtype.element_ty), mask=smask)
        tl.store(KLOGP + k_rows + rank, logp, mask=smask)
        tl.store(KSLOT + k_rows + rank, cols[None, :].to(tl.int64), mask=smask)
    else:
        sk = tl.sort(key, dim=1)
        dead = sk == 0x7FFFFFFFFFFFFFFF
        slot = tl.where(dead, -1, sk & 0xFFFFFFFF)
        hi = ~((sk >> 32).to(tl.int32))
        val = (hi ^ ((hi >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
        val = tl.where(dead, float("-inf"), val)
        smask = row_ok[:, None] & (cols[None, :] < KEEP)
        idx_v = tl.load(i_rows + tl.where(dead, 0, slot) * s_ik, mask=smask & ~dead, other=-1)
        tl.store(KIDX + k_rows + cols[None, :], idx_v.to(KIDX.dtype.element_ty), mask=smask)
        tl.store(KLOGP + k_rows + cols[None, :], val, mask=smask)
        tl.store(KSLOT + k_rows + cols[None, :], slot, mask=smask)
        thr = tl.min(tl.where(cols[None, :] == KEEP - 1, sk, 0x7FFFFFFFFFFFFFFF), axis=1)
        kept = live & (key <= thr[:, None])
    pn = p / l_safe[:, None]
    return pn, live, kept


@triton.autotune(
    configs=[triton.Config({"BM": bm, "WS": ws}, num_warps=w) for bm, ws, w in L.row_configs()],
    key=["KP", "D", "HAS_BIAS", "HAS_PRIOR", "AV_SELECTED", "HAS_ROWS"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _iea_fwd_row_kernel(
    Q, K, V, IDX, BIAS, PRIOR, ROWS, OUT, LSE, KIDX, KLOGP, KSLOT,
    s_qb, s_qh, s_qn, s_qd,
    s_kb, s_kh, s_km, s_kd,
    s_vb, s_vh, s_vm, s_vd,
    s_ib, s_ih, s_in, s_ik,
    s_bb, s_bh, s_bn, s_bk,
    s_pb, s_ph, s_pn, s_pk,
    s_ob, s_oh, s_on, s_od,
    s_rb, s_rh, NROWS,
    H, N, KS, KEEP, scale,
    HAS_BIAS: tl.constexpr, HAS_PRIOR: tl.constexpr, HAS_ROWS: tl.constexpr, AV_SELECTED: tl.constexpr,
    RANK_SORT: tl.constexpr, D: tl.constexpr, WA: tl.constexpr, WB: tl.constexpr, KP: tl.constexpr,
    KV_ALIGN: tl.constexpr, BM: tl.constexpr, WS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    if HAS_ROWS:  # an explicit row list (the rows of the tiles the tile-union kernel does not take)
        r_offs = pid_m.to(tl.int64) * BM + tl.arange(0, BM).to(tl.int64)
        r = tl.load(ROWS + b * s_rb + h * s_rh + r_offs, mask=r_offs < NROWS, other=-1).to(tl.int64)
        row_ok = r >= 0
        rows = tl.where(row_ok, r, 0)
    else:
        rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM).to(tl.int64)
        row_ok = rows < N
    cols = tl.arange(0, KP)
    i_rows = IDX + b * s_ib + h * s_ih + rows[:, None] * s_in
    idx = tl.load(i_rows + cols[None, :] * s_ik, mask=row_ok[:, None] & (cols[None, :] < KS), other=-1).to(tl.int64)
    valid = idx >= 0
    tok = tl.where(valid, idx, 0)

    q_rows = Q + b * s_qb + h * s_qh + rows[:, None] * s_qn
    k_base = K + b * s_kb + h * s_kh
    roff = gathered_row_offsets(tok, s_km, KV_ALIGN)
    s = tl.zeros([BM, KP], tl.float32)
    s = _piece_dot(s, q_rows, k_base, roff, valid, row_ok, s_qd, s_kd, 0, WA, WS if WS < WA else WA, D)
    if WB > 0:
        s = _piece_dot(s, q_rows, k_base, roff, valid, row_ok, s_qd, s_kd, WA, WB, WS if WS < WB else WB, D)
    s = s * scale
    if HAS_BIAS:
        s += tl.load(BIAS + b * s_bb + h * s_bh + rows[:, None] * s_bn + cols[None, :] * s_bk,
                     mask=valid, other=0.0).to(tl.float32)
    if HAS_PRIOR:
        s += tl.load(PRIOR + b * s_pb + h * s_ph + rows[:, None] * s_pn + cols[None, :] * s_pk,
                     mask=valid, other=0.0).to(tl.float32)

    pn, live, kept = _softmax_select(s, valid, rows, row_ok, cols, i_rows, s_ik, bh, N, KS, KEEP,
                                     LSE, KIDX, KLOGP, KSLOT, KP, RANK_SORT)
    if AV_SELECTED:
        use = kept
    else:
        use = live
    w = tl.where(use, pn, 0.0)
    v_base = V + b * s_vb + h * s_vh
    voff = gathered_row_offsets(tok, s_vm, KV_ALIGN)
    o_rows = OUT + b * s_ob + h * s_oh + rows[:, None] * s_on
    _piece_av(w, v_base, voff, use, o_rows, row_ok, s_vd, s_od, 0, WA, WS if WS < WA else WA, D)
    if WB > 0:
        _piece_av(w, v_base, voff, use, o_rows, row_ok, s_vd, s_od, WA, WB, WS if WS < WB else WB, D)


@triton.jit
def _iea_fwd_union_kernel(
    Q, K, V, IDX, BIAS, PRIOR, TLIST, TROWS, TTOK, TUPOS, TSLOT, OUT, LSE, KIDX, KLOGP, KSLOT,
    s_qb, s_qh, s_qn, s_qd,
    s_kb, s_kh, s_km, s_kd,
    s_vb, s_vh, s_vm, s_vd,
    s_ib, s_ih, s_in, s_ik,
    s_bb, s_bh, s_bn, s_bk,
    s_pb, s_ph, s_pn, s_pk,
    s_ob, s_oh, s_on, s_od,
    s_lb, s_lh, NT,
    s_tb, s_th, s_ub, s_uh, s_xb, s_xh, s_yb, s_yh,
    H, N, KS, KEEP, scale,
    HAS_BIAS: tl.constexpr, HAS_PRIOR: tl.constexpr, AV_SELECTED: tl.constexpr, RANK_SORT: tl.constexpr,
    D: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, KP: tl.constexpr, UP: tl.constexpr,
    UB: tl.constexpr, BQ: tl.constexpr, PREC: tl.constexpr,
):
    # TLIST (Bp,Hp,NT): eligible tile ids (-1 padded); TROWS (Bp,Hp,T,BQ) query rows; TTOK (Bp,Hp,T,UP)
    # union tokens; TUPOS (Bp,Hp,N,K) union position of every slot; TSLOT (Bp,Hp,T,BQ,UP) slot of every
    # (query, union position) or -1. Plan strides are 0 on broadcast (size-1) dims. The union is walked
    # in chunks of UB columns (one (BQ, UB) logit block live at a time, gathered into slot order).
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    # the tile id, loaded as a block (one lane per query / per union column): no scalar masks
    qi = tl.arange(0, BQ)
    uc = tl.arange(0, UB)
    t_q = tl.load(TLIST + b * s_lb + h * s_lh + pid_t + qi * 0).to(tl.int64)
    t_u = tl.load(TLIST + b * s_lb + h * s_lh + pid_t + uc * 0).to(tl.int64)
    t_q_ok = t_q >= 0
    t_u_ok = t_u >= 0
    t_qs = tl.where(t_q_ok, t_q, 0)
    t_us = tl.where(t_u_ok, t_u, 0)
    r = tl.load(TROWS + b * s_tb + h * s_th + t_qs * BQ + qi, mask=t_q_ok, other=-1)
    row_ok = r >= 0
    rows = tl.where(row_ok, r, 0).to(tl.int64)

    q_rows = Q + b * s_qb + h * s_qh + rows[:, None] * s_qn
    offs_a = tl.arange(0, DA)
    qa = tl.load(q_rows + offs_a[None, :] * s_qd, mask=row_ok[:, None] & (offs_a[None, :] < D), other=0.0)
    if DB > 0:
        offs_b = DA + tl.arange(0, DB)
        qb = tl.load(q_rows + offs_b[None, :] * s_qd, mask=row_ok[:, None] & (offs_b[None, :] < D), other=0.0)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    u_base = TTOK + b * s_ub + h * s_uh + t_us * UP

    cols = tl.arange(0, KP)
    upos = tl.load(TUPOS + b * s_xb + h * s_xh + rows[:, None] * KS + cols[None, :],
                   mask=row_ok[:, None] & (cols[None, :] < KS), other=-1).to(tl.int32)
    valid = upos >= 0
    s = tl.zeros([BQ, KP], tl.float32)
    for j in range(0, UP, UB):
        utok = tl.load(u_base + j + uc, mask=t_u_ok, other=-1).to(tl.int64)
        u_ok = utok >= 0
        utok = tl.where(u_ok, utok, 0)
        kt = tl.load(k_base + utok[None, :] * s_km + offs_a[:, None] * s_kd,
                     mask=u_ok[None, :] & (offs_a[:, None] < D), other=0.0)
        s_j = tl.dot(qa, kt, input_precision=PREC)
        if DB > 0:
            kt = tl.load(k_base + utok[None, :] * s_km + offs_b[:, None] * s_kd,
                         mask=u_ok[None, :] & (offs_b[:, None] < D), other=0.0)
            s_j = tl.dot(qb, kt, s_j, input_precision=PREC)
        rel = upos - j
        inj = valid & (rel >= 0) & (rel < UB)
        s += tl.where(inj, tl.gather(s_j, tl.where(inj, rel, 0), 1), 0.0)
    s = s * scale
    if HAS_BIAS:
        s += tl.load(BIAS + b * s_bb + h * s_bh + rows[:, None] * s_bn + cols[None, :] * s_bk,
                     mask=valid, other=0.0).to(tl.float32)
    if HAS_PRIOR:
        s += tl.load(PRIOR + b * s_pb + h * s_ph + rows[:, None] * s_pn + cols[None, :] * s_pk,
                     mask=valid, other=0.0).to(tl.float32)
    i_rows = IDX + b * s_ib + h * s_ih + rows[:, None] * s_in
    pn, live, kept = _softmax_select(s, valid, rows, row_ok, cols, i_rows, s_ik, bh, N, KS, KEEP,
                                     LSE, KIDX, KLOGP, KSLOT, KP, RANK_SORT)
    if AV_SELECTED:
        use = kept
    else:
        use = live
    w = tl.where(use, pn, 0.0)
    acc_a = tl.zeros([BQ, DA], tl.float32)
    if DB > 0:
        acc_b = tl.zeros([BQ, DB], tl.float32)
    m_base = TSLOT + b * s_yb + h * s_yh + (t_qs[:, None] * BQ + qi[:, None]) * UP
    for j in range(0, UP, UB):
        utok = tl.load(u_base + j + uc, mask=t_u_ok, other=-1).to(tl.int64)
        u_ok = utok >= 0
        utok = tl.where(u_ok, utok, 0)
        smap = tl.load(m_base + j + uc[None, :], mask=row_ok[:, None], other=-1).to(tl.int32)
        member = smap >= 0
        w_j = tl.where(member, tl.gather(w, tl.where(member, smap, 0), 1), 0.0)
        vt = tl.load(v_base + utok[:, None] * s_vm + offs_a[None, :] * s_vd,
                     mask=u_ok[:, None] & (offs_a[None, :] < D), other=0.0)
        acc_a = tl.dot(w_j.to(vt.dtype), vt, acc_a, input_precision=PREC)
        if DB > 0:
            vt = tl.load(v_base + utok[:, None] * s_vm + offs_b[None, :] * s_vd,
                         mask=u_ok[:, None] & (offs_b[None, :] < D), other=0.0)
            acc_b = tl.dot(w_j.to(vt.dtype), vt, acc_b, input_precision=PREC)
    o_rows = OUT + b * s_ob + h * s_oh + rows[:, None] * s_on
    tl.store(o_rows + offs_a[None, :] * s_od, acc_a.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (offs_a[None, :] < D))
    if DB > 0:
        tl.store(o_rows + offs_b[None, :] * s_od, acc_b.to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_b[None, :] < D))


def _plan_strides(t: torch.Tensor) -> tuple[int, int]:
    """(batch, head) strides of a plan tensor, 0 on size-1 (broadcast) dims."""
    return (0 if t.shape[0] == 1 else t.stride(0), 0 if t.shape[1] == 1 else t.stride(1))


def iea_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor,
    bias: torch.Tensor | None, prior: torch.Tensor | None, scale: float, keep: int, on_selected: bool,
    plan: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out (B,H,N,D) q.dtype, lse (B,H,N) fp32, kept_index (B,H,N,keep) index.dtype, kept_logp fp32,
    kept_slot int64). ``plan``: [] or the tensors of a TileUnion (tile_list, tile_rows, tokens, upos,
    slot_map, rest_rows)."""
    bsz, heads, n, d = q.shape
    ks = index.shape[-1]
    kp = L.slot_pad(ks)
    rank_sort = _rank_sort()
    out = torch.empty(bsz, heads, n, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(bsz, heads, n, dtype=torch.float32, device=q.device)
    shape_k = (bsz, heads, n, keep)
    prefill = rank_sort or keep > kp
    if prefill:
        kidx = torch.full(shape_k, -1, dtype=index.dtype, device=q.device)
        klogp = torch.full(shape_k, float("-inf"), dtype=torch.float32, device=q.device)
        kslot = torch.full(shape_k, -1, dtype=torch.int64, device=q.device)
    else:
        kidx = torch.empty(shape_k, dtype=index.dtype, device=q.device)
        klogp = torch.empty(shape_k, dtype=torch.float32, device=q.device)
        kslot = torch.empty(shape_k, dtype=torch.int64, device=q.device)
    if out.numel() == 0:
        lse.fill_(float("-inf"))
        return out, lse, kidx, klogp, kslot
    wa, wb = L.d_pieces(d)
    full = (bsz, heads, n, ks)
    bias_b = None if bias is None else bias.expand(*full)
    prior_b = None if prior is None else prior.expand(*full)
    common = (
        *strides4(q), *strides4(k), *strides4(v), *index_strides(index), *strides4(bias_b), *strides4(prior_b),
        *strides4(out),
    )
    outs = (out, lse, kidx, klogp, kslot)

    def row_launch(rows: torch.Tensor | None) -> None:
        nrows = n if rows is None else rows.shape[-1]
        if nrows == 0:
            return

        def grid(meta):
            return (triton.cdiv(nrows, meta["BM"]), bsz * heads)

        rs = (0, 0) if rows is None else _plan_strides(rows)
        _iea_fwd_row_kernel[grid](
            q, k, v, index, bias_b if bias_b is not None else q, prior_b if prior_b is not None else q,
            rows if rows is not None else index, *outs,
            *common, *rs, nrows,
            heads, n, ks, keep, scale,
            HAS_BIAS=bias is not None, HAS_PRIOR=prior is not None, HAS_ROWS=rows is not None,
            AV_SELECTED=on_selected, RANK_SORT=rank_sort, D=d, WA=wa, WB=wb, KP=kp,
            KV_ALIGN=row_align(k, v),
        )

    if not plan:
        row_launch(None)
        return outs
    tile_list, tile_rows, tokens, upos, slot_map, rest_rows = plan
    da, db = L.dot_pieces(d)
    nt = tile_list.shape[-1]
    if nt > 0:
        _iea_fwd_union_kernel[(nt, bsz * heads)](
            q, k, v, index, bias_b if bias_b is not None else q, prior_b if prior_b is not None else q,
            tile_list, tile_rows, tokens, upos, slot_map, *outs,
            *common, *_plan_strides(tile_list), nt,
            *_plan_strides(tile_rows), *_plan_strides(tokens), *_plan_strides(upos), *_plan_strides(slot_map),
            heads, n, ks, keep, scale,
            HAS_BIAS=bias is not None, HAS_PRIOR=prior is not None, AV_SELECTED=on_selected,
            RANK_SORT=rank_sort, D=d, DA=da, DB=db, KP=kp, UP=tokens.shape[-1], UB=min(L.UNION_CHUNK, tokens.shape[-1]),
            BQ=tile_rows.shape[-1],
            PREC="ieee" if q.dtype == torch.float32 else "tf32", num_warps=L.union_warps(),
        )
    row_launch(rest_rows)
    return outs
