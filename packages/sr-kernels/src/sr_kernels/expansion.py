"""Two-hop expansion of index lists (IET Eq. 5-8): current list + neighbours of the best neighbours.

For row i of the list ``index`` (tokens of the same N-token set, so values are < N) with weights
``probs`` (e.g. the attention probabilities of the slots):

1. T(i) = the live slots of row i sorted by descending prob (ties to the lower slot), as
   :func:`sr_kernels.topk_select` orders them; a slot is live when index >= 0 and prob > -inf.
2. The candidates are row i's current tokens, in slot order, and for every u among the first k1 of
   T(i), the first k2 tokens v of T(u), with path weight w = max(p(i,u) * p(u,v), 0) computed in fp32.
3. De-duplication keeps one entry per token: a current occurrence beats any two-hop one (the first
   current occurrence wins), otherwise the heaviest path wins.
4. Output order: the current entries first, in their order; then the new tokens by descending path
   weight, ties to the lower token id. Truncated to k_out, padded with -1.
   count = number of valid entries in the output (<= k_out).

The reference (readable, vectorised torch) and the Triton kernel use the same packed-integer ordering,
so their outputs are identical. Probabilities are compared in fp32 (fp64 inputs are rounded to fp32).
"""

from __future__ import annotations

import torch

from . import _checks
from ._dispatch import resolve_backend
from .selection import topk_select, topk_select_reference

INT64_MAX = 0x7FFFFFFFFFFFFFFF


def _top_lists(
    index: torch.Tensor, probs: torch.Tensor, kt: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        values, tok = topk_select(probs.detach(), index, kt, backend="triton", check_index=False)
    else:
        values, tok, _ = topk_select_reference(probs.detach(), index, kt)
    return tok.long(), values.float()


def expand_two_hop_reference(
    index: torch.Tensor, probs: torch.Tensor, k1: int, k2: int, k_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(index_out (B,Hi,N,k_out) int64, count (B,Hi,N) int64) by plain torch ops (the oracle)."""
    b, hi, n, kk = index.shape
    tok, w = _top_lists(index, probs, max(k1, k2), "torch")
    u, w1 = tok[..., :k1], w[..., :k1]
    bi = torch.arange(b, device=index.device)[:, None, None, None]
    hh = torch.arange(hi, device=index.device)[None, :, None, None]
    u_safe = u.clamp_min(0)
    v = tok[..., :k2][bi, hh, u_safe]  # (B,Hi,N,k1,k2): u's own top-k2 tokens
    w2 = w[..., :k2][bi, hh, u_safe]
    hop_ok = (u >= 0)[..., None] & (v >= 0)
    path = torch.where(hop_ok, w1[..., None] * w2, 0.0).clamp_min(0.0) + 0.0

    # Priority (smaller = better): current slot c -> c; two-hop -> 0x7FFFFFFF - bits(path weight).
    hop_prio = 0x7FFFFFFF - path.view(torch.int32).long()
    cand = torch.cat([index.long(), v.masked_fill(~hop_ok, -1).flatten(-2)], dim=-1)
    cur_prio = torch.arange(kk, device=index.device).expand(b, hi, n, kk)
    prio = torch.cat([cur_prio, hop_prio.flatten(-2)], dim=-1)

    # Best occurrence of each token: sort by (token, priority), keep the first of each token.
    key = torch.where(cand >= 0, (cand << 31) | prio, INT64_MAX).sort(dim=-1).values
    tok_sorted = key >> 31
    first = torch.ones_like(key, dtype=torch.bool)
    first[..., 1:] = tok_sorted[..., 1:] != tok_sorted[..., :-1]
    keep = first & (key != INT64_MAX)
    # Survivors by (priority, token).
    key2 = torch.where(keep, ((key & 0x7FFFFFFF) << 32) | tok_sorted, INT64_MAX).sort(dim=-1).values
    out = torch.where(key2 == INT64_MAX, -1, key2 & 0xFFFFFFFF)
    width = out.shape[-1]
    if width >= k_out:
        out = out[..., :k_out]
    else:
        out = torch.cat([out, out.new_full((b, hi, n, k_out - width), -1)], dim=-1)
    count = keep.sum(-1).clamp_max(k_out)
    return out, count


def expand_two_hop(
    index: torch.Tensor,
    probs: torch.Tensor,
    k1: int,
    k2: int,
    k_out: int,
    *,
    backend: str | None = None,
    check_index: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """De-duplicated union of each row's list with the top-k2 lists of its top-k1 neighbours.

    Args:
        index: integer (B, Hi, N, K): token ids in [0, N) of the same N tokens, -1 for empty slots.
        probs: float (B, Hi, N, K) slot weights (attention probabilities); not differentiated.
            For a shared list (Hi = 1) with per-head probabilities, reduce over heads first.
        k1: number of best neighbours u explored per row; k2: number of u's best neighbours taken.
        k_out: output width.

    Returns:
        index_out (B, Hi, N, k_out) in index's dtype: current entries first (their order), then new
        two-hop tokens by descending path weight p(i,u) p(u,v) (ties to the lower token), -1 padded;
        count (B, Hi, N) int64: the number of valid entries of each output row.
    """
    index = _checks.check_tensor("index", index)
    probs = _checks.check_float("probs", probs, 4)
    if index.dim() != 4:
        raise ValueError(f"index must have 4 dimensions (B, Hi, N, K), got shape {tuple(index.shape)}")
    b, hi, n, _ = index.shape
    if probs.shape != index.shape:
        raise ValueError(f"probs has shape {tuple(probs.shape)}; expected the shape of index {tuple(index.shape)}")
    _checks.check_same_device(("index", index), ("probs", probs))
    _checks.check_index(
        "index", index, batch=b, heads=hi, rows=n, num_keys=n, check_values=check_index, keys_name="index rows"
    )
    k1 = _checks.check_positive_int("k1", k1)
    k2 = _checks.check_positive_int("k2", k2)
    k_out = _checks.check_positive_int("k_out", k_out)
    be = resolve_backend(backend, index.device)
    if be == "triton":
        from ._triton_graph import expand

        tok, w = _top_lists(index, probs, max(k1, k2), "triton")
        out, count = expand(index, tok, w, k1, k2, k_out)
    else:
        out, count = expand_two_hop_reference(index, probs, k1, k2, k_out)
    return out.to(index.dtype), count
