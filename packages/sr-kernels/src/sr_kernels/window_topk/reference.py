"""Readable references for query-aware top-k window attention (SSCAN's FGCA): the test oracles.

Nothing here is meant to be fast. The public ops in :mod:`sr_kernels.window_topk.op` are checked
against these functions:

* :func:`pooled_scores_reference` - the window-level score map, straight from the definition;
* :func:`window_topk_select_reference` - top-k by Python sorting, row by row (brute force);
* :func:`dense_masked_attention_reference` - token-level dense attention over all key tokens with the
  unselected windows masked out (``-inf``) and a repeated window counted ``c`` times (``+log c``);
* :func:`gathered_attention_explicit` - the same attention computed the way BiFormer's bi-level
  routing attention (BRA) computes it: gather the selected key windows into a
  (query windows, k * window tokens) block and materialise the logits and the softmax. It is the
  ``impl="math"`` path of :func:`sr_kernels.window_topk_attention` and the baseline of the memory
  benchmark (``benchmarks/bench_fgca_vs_bra_memory.py``).

Layout: windowed tensors are (B, H, nW, T, D): batch, heads, windows, tokens per window (row-major
inside the window), channels per head. Window ids index the nW axis.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def pooled_scores_reference(q: Tensor, k: Tensor, shared_heads: bool) -> Tensor:
    """Window-level scores ``s[i, j] = mean_t q[i, t] . mean_t k[j, t]`` in float64.

    q: (B, H, nQ, T, D); k: (B, H, nK, Tk, D). With ``shared_heads`` the dot product runs over all
    H*D channels (one score map per image, BiFormer's routing); otherwise per head. Returns
    (B, 1 or H, nQ, nK) float64.
    """
    qp = q.double().mean(dim=3)  # (B, H, nQ, D)
    kp = k.double().mean(dim=3)
    per_head = torch.einsum("bhid,bhjd->bhij", qp, kp)
    return per_head.sum(dim=1, keepdim=True) if shared_heads else per_head


def window_topk_select_reference(
    q: Tensor, k: Tensor, topk: int, *, shared_heads: bool = True, include_self: bool = False
) -> Tensor:
    """Brute-force top-k window ids, sorted by descending pooled score, ties to the lower id.

    ``include_self`` puts the query window's own id first (then the best others); it needs
    nQ == nK. Returns int64 (B, 1 or H, nQ, topk).
    """
    scores = pooled_scores_reference(q, k, shared_heads)
    b, hs, nq, nk = scores.shape
    out = torch.empty((b, hs, nq, topk), dtype=torch.int64)
    for bi in range(b):
        for hi in range(hs):
            for i in range(nq):
                row = scores[bi, hi, i].tolist()
                order = sorted(range(nk), key=lambda j, row=row: (-row[j], j))
                if include_self:
                    order = [i] + [j for j in order if j != i]
                out[bi, hi, i] = torch.tensor(order[:topk])
    return out.to(q.device)


def window_token_counts(ids: Tensor, num_key_windows: int) -> Tensor:
    """How many times each key window is listed for each query window.

    ids: integer (B, Hi, nQ, k). Returns float (B, Hi, nQ, nK) counts (0 for unselected windows).
    """
    counts = torch.zeros((*ids.shape[:3], num_key_windows), dtype=torch.float64, device=ids.device)
    return counts.scatter_add_(-1, ids.long(), torch.ones(ids.shape, dtype=torch.float64, device=ids.device))


def dense_masked_attention_reference(q: Tensor, k: Tensor, v: Tensor, ids: Tensor, scale: float | None = None) -> Tensor:
    """Token-level dense attention over ALL key tokens, restricted to the listed windows.

    q: (B, H, nQ, T, D); k, v: (B, H, nK, Tk, D); ids: integer (B, Hi, nQ, k), Hi in {1, H}. Every query
    token of window i attends to the Tk tokens of each window in ``ids[..., i, :]``; a window listed c
    times gets the additive bias log(c) (c copies of each of its keys), an unlisted one -inf. Computed
    in float64 with an explicit (B, H, nQ*T, nK*Tk) logits matrix: small sizes only. Returns
    (B, H, nQ, T, D) in q's dtype.
    """
    b, h, nq, t, d = q.shape
    nk, tk = k.shape[2], k.shape[3]
    scale = d**-0.5 if scale is None else scale
    qt = q.double().reshape(b, h, nq * t, d)
    kt = k.double().reshape(b, h, nk * tk, d)
    vt = v.double().reshape(b, h, nk * tk, v.shape[-1])
    logits = scale * qt @ kt.transpose(-2, -1)  # (B, H, nQ*T, nK*Tk)
    counts = window_token_counts(ids, nk).expand(b, h, nq, nk)
    bias = torch.log(counts)  # -inf where a window is not listed
    bias = bias.repeat_interleave(t, dim=2).repeat_interleave(tk, dim=3)
    attn = torch.softmax(logits + bias, dim=-1)
    out = attn @ vt
    return out.reshape(b, h, nq, t, v.shape[-1]).to(q.dtype)


def gather_windows_reference(x: Tensor, ids: Tensor) -> Tensor:
    """The listed windows of ``x``, concatenated per query window, by explicit indexing.

    x: (B, H, nK, T, D); ids: integer (B, Hi, nQ, k). Returns (B, H, nQ, k*T, D).
    """
    b, h, _, t, d = x.shape
    nq, kk = ids.shape[2], ids.shape[3]
    idx = ids.long().expand(b, h, nq, kk)
    out = x.new_empty((b, h, nq, kk, t, d))
    for bi in range(b):
        for hi in range(h):
            out[bi, hi] = x[bi, hi, idx[bi, hi]]
    return out.reshape(b, h, nq, kk * t, d)


def gathered_attention_explicit(
    q: Tensor, k_sel: Tensor, v_sel: Tensor, scale: float
) -> Tensor:
    """softmax(scale q k_sel^T) v_sel with the logits materialised (BRA's way).

    q: (B, H, nQ, T, D); k_sel, v_sel: (B, H, nQ, K, D) with K = k * Tk gathered keys per query
    window. Holds a (B, H, nQ, T, K) logits tensor and its softmax (the memory BRA pays, and what
    FlashAttention avoids). Computes in q's dtype (float32 accumulation is the matmul's). Returns
    (B, H, nQ, T, D).
    """
    logits = (q * scale) @ k_sel.transpose(-2, -1)
    return torch.softmax(logits, dim=-1) @ v_sel

