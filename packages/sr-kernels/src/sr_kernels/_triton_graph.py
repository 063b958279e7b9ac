"""Triton kernels for top-k selection and two-hop expansion (imported lazily, on first use).

Both work row by row on packed int64 sort keys (``tl.sort`` ascending):

* selection: key = (~ordered_bits(score + 0.0)) << 32 | slot, empty slots = INT64_MAX, so the sorted row
  is by descending score, ties to the lower slot, empty slots last;
* expansion: candidates are the row's current list (priority = its slot) and, for each of its top-k1
  neighbours u, u's top-k2 list (priority = 0x7FFFFFFF - bits(path weight), i.e. heavier first and after
  every current entry). Sort by token << 31 | priority, keep the first occurrence of each token, then sort
  the survivors by priority << 32 | token.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._dispatch import interpreter_enabled
from .gather_attention._launch import next_pow2

INT64_MAX = 0x7FFFFFFFFFFFFFFF
RANK_SORT_ENV = "SR_KERNELS_RANK_SORT"


def _rank_sort() -> bool:
    """Use the O(K^2) rank-and-scatter path instead of ``tl.sort``.

    ``tl.sort`` runs its bitonic network through a Python-level reduction in the Triton interpreter,
    which is orders of magnitude slower than the rank path there; on a GPU ``tl.sort`` is the fast one.
    Default: rank path in the interpreter only. ``SR_KERNELS_RANK_SORT=0/1`` overrides (tests use it to
    run the ``tl.sort`` path in the interpreter at a tiny size).
    """
    env = os.environ.get(RANK_SORT_ENV, "").strip()
    if env:
        return env not in ("0", "false", "no")
    return interpreter_enabled()


@triton.jit
def _topk_slots_kernel(
    S, IDX, OUT,
    s_sb, s_sh, s_sn, s_sk,
    s_ib, s_ih, s_in, s_ik,
    H, N, KS, KOUT,
    BR: tl.constexpr, KP: tl.constexpr, RANK_SORT: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_r.to(tl.int64) * BR + tl.arange(0, BR).to(tl.int64)
    row_ok = rows < N
    cols = tl.arange(0, KP)
    m = row_ok[:, None] & (cols[None, :] < KS)
    s = tl.load(S + b * s_sb + h * s_sh + rows[:, None] * s_sn + cols[None, :] * s_sk,
                mask=m, other=float("-inf")).to(tl.float32)
    idx = tl.load(IDX + b * s_ib + h * s_ih + rows[:, None] * s_in + cols[None, :] * s_ik, mask=m, other=-1)
    live = (idx >= 0) & (s > float("-inf"))
    bits = (s + 0.0).to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = ((~ordered).to(tl.int64) << 32) | cols[None, :].to(tl.int64)
    key = tl.where(live, key, tl.full([BR, KP], 0x7FFFFFFFFFFFFFFF, tl.int64))
    out_row = OUT + (pid_bh.to(tl.int64) * N + rows[:, None]) * KOUT
    if RANK_SORT:
        # Interpreter path: rank of each live key among its row (keys are unique), scattered.
        rank = tl.sum((key[:, None, :] < key[:, :, None]).to(tl.int32), axis=2)
        tl.store(out_row + rank, cols[None, :].to(tl.int64),
                 mask=row_ok[:, None] & live & (rank < KOUT))
    else:
        key = tl.sort(key, dim=1)
        slot = tl.where(key == 0x7FFFFFFFFFFFFFFF, -1, key & 0xFFFFFFFF)
        tl.store(out_row + cols[None, :], slot,
                 mask=row_ok[:, None] & (cols[None, :] < KOUT) & (cols[None, :] < KS))


def topk_slots(scores: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted slot positions (B,H,N,k) int64 of the k best live slots per row, -1 past the live ones."""
    bsz, heads, n, ks = scores.shape
    out = torch.full((bsz, heads, n, k), -1, dtype=torch.int64, device=scores.device)
    if scores.numel() == 0:
        return out
    kp = max(2, next_pow2(ks))
    rank_sort = _rank_sort()
    br = max(1, min(64, (65536 // (kp * kp)) if rank_sort else (2048 // kp)))
    si = index.stride()
    grid = (triton.cdiv(n, br), bsz * heads)
    _topk_slots_kernel[grid](
        scores, index, out,
        *scores.stride(), si[0], 0 if index.shape[1] == 1 else si[1], si[2], si[3],
        heads, n, ks, k,
        BR=br, KP=kp, RANK_SORT=rank_sort, num_warps=4,
    )
    return out


@triton.jit
def _expand_kernel(
    IDX, TOK, W, OUT, CNT,
    s_ib, s_ih, s_in, s_ik,
    HI, N, KS, KT, K1, K2, KOUT,
    BR: tl.constexpr, LP: tl.constexpr, RANK_SORT: tl.constexpr,
):
    # TOK, W: contiguous (B, Hi, N, KT) sorted top lists (token ids, weights fp32) of every row.
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // HI
    h = pid_bh % HI
    rows = pid_r.to(tl.int64) * BR + tl.arange(0, BR).to(tl.int64)
    row_ok = rows < N
    cols = tl.arange(0, LP)
    is_cur = cols < KS
    hop = tl.maximum(cols - KS, 0)
    a = hop // K2
    c2 = hop % K2
    is_hop = (cols >= KS) & (cols - KS < K1 * K2)

    cur = tl.load(IDX + b * s_ib + h * s_ih + rows[:, None] * s_in + cols[None, :] * s_ik,
                  mask=row_ok[:, None] & is_cur[None, :], other=-1).to(tl.int64)
    slab = pid_bh * N * KT
    hm = row_ok[:, None] & is_hop[None, :]
    u = tl.load(TOK + slab + rows[:, None] * KT + a[None, :], mask=hm, other=-1)
    u_ok = u >= 0
    w1 = tl.load(W + slab + rows[:, None] * KT + a[None, :], mask=hm & u_ok, other=0.0)
    u_safe = tl.where(u_ok, u, 0)
    v = tl.load(TOK + slab + u_safe * KT + c2[None, :], mask=hm & u_ok, other=-1)
    w2 = tl.load(W + slab + u_safe * KT + c2[None, :], mask=hm & u_ok, other=0.0)
    w2 = tl.where(v >= 0, w2, 0.0)
    w = tl.maximum(w1 * w2, 0.0) + 0.0
    prio_hop = (0x7FFFFFFF - w.to(tl.int32, bitcast=True)).to(tl.int64)
    tok = tl.where(is_cur[None, :], cur, v)
    prio = tl.where(is_cur[None, :], cols[None, :].to(tl.int64), prio_hop)
    big = tl.full([BR, LP], 0x7FFFFFFFFFFFFFFF, tl.int64)
    valid = tok >= 0
    key = tl.where(valid, (tok << 31) | prio, big)
    out_row = OUT + (pid_bh * N + rows[:, None]) * KOUT
    if RANK_SORT:
        # Interpreter path, O(LP^2) per row: an entry survives when no entry of the same token has a
        # smaller key (equal keys: the lower column wins); its output column is the rank of its
        # (priority, token) key among the survivors.
        better = (key[:, None, :] < key[:, :, None]) | (
            (key[:, None, :] == key[:, :, None]) & (cols[None, None, :] < cols[None, :, None]))
        same = (tok[:, None, :] == tok[:, :, None]) & valid[:, None, :]
        keep = valid & (tl.sum((same & better).to(tl.int32), axis=2) == 0)
        key2 = tl.where(keep, (prio << 32) | tok, big)
        pos = tl.sum((key2[:, None, :] < key2[:, :, None]).to(tl.int32), axis=2)
        tl.store(out_row + pos, tok, mask=row_ok[:, None] & keep & (pos < KOUT))
    else:
        key = tl.sort(key, dim=1)
        tok_a = key >> 31
        prev_cols = tl.maximum(cols - 1, 0)[None, :] + tl.zeros([BR, LP], tl.int32)
        prev = tl.gather(tok_a, prev_cols, 1)
        keep = ((cols[None, :] == 0) | (tok_a != prev)) & (key != big)
        key2 = tl.where(keep, ((key & 0x7FFFFFFF) << 32) | tok_a, big)
        key2 = tl.sort(key2, dim=1)
        out = tl.where(key2 == big, -1, key2 & 0xFFFFFFFF)
        tl.store(out_row + cols[None, :], out, mask=row_ok[:, None] & (cols[None, :] < KOUT))
    cnt = tl.minimum(tl.sum(keep.to(tl.int64), axis=1), KOUT)
    tl.store(CNT + pid_bh * N + rows, cnt, mask=row_ok)


def expand(
    index: torch.Tensor, top_tok: torch.Tensor, top_w: torch.Tensor, k1: int, k2: int, k_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """index_out (B,Hi,N,k_out) int64 (-1 padded) and count (B,Hi,N) int64.

    ``top_tok``/``top_w``: (B,Hi,N,KT) sorted top lists of every row (token ids, -1 empty; weights),
    KT >= max(k1, k2) (wider lists are fine: only the first k1 / k2 columns are read).
    """
    bsz, hi, n, ks = index.shape
    kt = top_tok.shape[-1]
    out = torch.full((bsz, hi, n, k_out), -1, dtype=torch.int64, device=index.device)
    cnt = torch.zeros((bsz, hi, n), dtype=torch.int64, device=index.device)
    if index.numel() == 0:
        return out, cnt
    lp = max(2, next_pow2(ks + k1 * k2))
    rank_sort = _rank_sort()
    br = max(1, min(64, (65536 // (lp * lp)) if rank_sort else (2048 // lp)))
    grid = (triton.cdiv(n, br), bsz * hi)
    _expand_kernel[grid](
        index, top_tok.contiguous().long(), top_w.contiguous().float(), out, cnt,
        *index.stride(),
        hi, n, ks, kt, k1, k2, k_out,
        BR=br, LP=lp, RANK_SORT=rank_sort, num_warps=4,
    )
    return out, cnt
