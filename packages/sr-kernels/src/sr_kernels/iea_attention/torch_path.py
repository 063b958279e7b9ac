"""The torch backend of ``iea_attention`` (CPU, float64, and lists wider than the fused Triton kernels).

It runs the same steps as the unfused composition IEAttention used (and as fast, on the same
``gather_attention.torch_fast`` primitives): logits by ``scores_forward`` (dense-then-gather or the lean
gather, picked from the shapes), logsumexp, top-k (``torch.topk`` on packed unique keys), AV by ``values_forward`` over all K
slots or over the kept ones. Unlike the Triton path it keeps P (B,H,N,K) for its backward (CPU memory is
not the constraint there; saving it skips a recomputation, as autograd of the composition does).

Backward: dp and dv from ``values_backward`` (over the kept list with ``av_on_selected``, scattered back
to slot positions), ds = P (m dp - delta) + g, dq and dk from ``scores_backward``; see
:mod:`.triton_bwd` for the formulas.
"""

from __future__ import annotations

import torch

from ..gather_attention import torch_fast
from ..gather_attention.reference import compute_dtype
from ..selection import _gather_selected

Tensor = torch.Tensor


INT64_MAX = torch.iinfo(torch.int64).max


def topk_slots_packed(logp: Tensor, index: Tensor, keep: int) -> Tensor:
    """Slots (B,H,N,keep) int64 of the ``keep`` best live slots, sorted best-first, ties to the lower slot,
    -1 past the live ones: ``torch.topk`` over the packed int64 keys of the Triton kernel
    (``~ordered_bits(logp) << 32 | slot``: unique, so the result is exact and deterministic). Same
    result as ``selection.topk_slots_reference`` (a full stable sort), 5-15% faster on CPU."""
    b, h, n, kk = logp.shape
    live = (index >= 0) & (logp > float("-inf"))
    bits = (logp.float() + 0.0).view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = ((~ordered).long() << 32) | torch.arange(kk, device=logp.device)
    key = key.masked_fill_(~live, INT64_MAX)
    top = torch.topk(key, min(keep, kk), dim=-1, largest=False, sorted=True).values
    slots = torch.where(top == INT64_MAX, -1, top & 0xFFFFFFFF)
    if keep > kk:
        slots = torch.cat([slots, slots.new_full((b, h, n, keep - kk), -1)], dim=-1)
    return slots


def combined_bias(bias: Tensor | None, prior: Tensor | None) -> Tensor | None:
    if bias is None:
        return prior
    if prior is None:
        return bias
    return bias + prior


def forward(
    q: Tensor, k: Tensor, v: Tensor, index: Tensor, bias: Tensor | None, prior: Tensor | None,
    scale: float, keep: int, on_selected: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out, lse, kept_index, kept_logp, kept_slot, P (B,H,N,K)) in the compute dtype (out in q's)."""
    s = torch_fast.scores_forward(q, k, index, scale, combined_bias(bias, prior))
    lse = torch.logsumexp(s, dim=-1)  # -inf for a row without a live slot
    logp = s - lse.masked_fill(torch.isinf(lse), 0.0)[..., None]
    del s
    slots = topk_slots_packed(logp, index, keep)
    kept_logp, kept_index = _gather_selected(logp, index, slots)
    p = logp.exp_()
    del logp
    if on_selected:
        out = torch_fast.values_forward(kept_logp.exp(), v.to(p.dtype), kept_index)
    else:
        out = torch_fast.values_forward(p, v.to(p.dtype), index)
    return out.to(q.dtype), lse, kept_index, kept_logp, slots, p


def backward(
    grad_out: Tensor, grad_lse: Tensor | None, grad_kept: Tensor | None,
    q: Tensor, k: Tensor, v: Tensor, index: Tensor, bias: Tensor | None, prior: Tensor | None,
    out: Tensor, kept_index: Tensor, kept_logp: Tensor, kept_slot: Tensor, p: Tensor,
    scale: float, on_selected: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dq, dk, dv (input dtypes) and ds (B,H,N,K) in the compute dtype."""
    ct = compute_dtype(q, k, v, bias, prior)
    p = p.to(ct)
    do = grad_out.to(ct)
    delta = (do * out.to(ct)).sum(-1)
    if grad_lse is not None:
        delta = delta - grad_lse.to(ct)
    dead = kept_slot < 0
    b, h, n, ks = p.shape
    slot_or_k = kept_slot.masked_fill(dead, ks)
    vc = v.to(ct)
    g = None if grad_kept is None else grad_kept.to(ct).masked_fill(dead, 0.0)
    if g is not None:
        delta = delta + g.sum(-1)  # kept logp_j = s_{slot_j} - lse: -sum_j g_j reaches lse
    # ds = P (m dp - delta) + G, with what reaches the kept slots scattered once: P dp (AV over the kept
    # list) and g (the kept log-probabilities' gradient)
    if on_selected:
        kept_p = kept_logp.to(ct).exp()
        dp_kept, dv = torch_fast.values_backward(do, kept_p, vc, kept_index)
        src = dp_kept.mul_(kept_p)
        if g is not None:
            src = src.add_(g)
        ds = p * delta[..., None].neg_()
        ds = ds.add_(p.new_zeros(b, h, n, ks + 1).scatter_add_(3, slot_or_k, src.masked_fill_(dead, 0.0))[..., :ks])
    else:
        dp, dv = torch_fast.values_backward(do, p, vc, index)
        ds = dp.sub_(delta[..., None]).mul_(p)
        if g is not None:
            ds = ds.add_(p.new_zeros(b, h, n, ks + 1).scatter_add_(3, slot_or_k, g)[..., :ks])
    dq, dk = torch_fast.scores_backward(ds, q, k, index, scale)
    return dq, dk, dv.to(v.dtype), ds
