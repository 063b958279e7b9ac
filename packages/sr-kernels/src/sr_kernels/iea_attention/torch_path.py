"""The torch backend of ``iea_attention`` (CPU, float64, and lists wider than the fused Triton kernels).

It runs the same steps as the unfused composition IEAttention used (and as fast, on the same
``gather_attention.torch_fast`` primitives): logits by ``scores_forward`` (dense-then-gather or the lean
gather, picked from the shapes), logsumexp, top-k by a stable sort, AV by ``values_forward`` over all K
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
from ..selection import _gather_selected, topk_slots_reference

Tensor = torch.Tensor


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
    slots = topk_slots_reference(logp, index, keep)
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
    if on_selected:
        dp_kept, dv = torch_fast.values_backward(do, kept_logp.to(ct).exp(), vc, kept_index)
        mdp = p.new_zeros(b, h, n, ks + 1).scatter_add_(3, slot_or_k, dp_kept.masked_fill(dead, 0.0))[..., :ks]
    else:
        mdp, dv = torch_fast.values_backward(do, p, vc, index)
    ds = mdp.sub_(delta[..., None]) if not on_selected else mdp - delta[..., None]
    ds = ds.mul_(p)
    if grad_kept is not None:
        g = grad_kept.to(ct).masked_fill(dead, 0.0)
        ds = ds.add_(p.new_zeros(b, h, n, ks + 1).scatter_add_(3, slot_or_k, g)[..., :ks])
        # kept logp_j = s_{slot_j} - lse: -sum_j g_j reaches lse, i.e. -P_c sum_j g_j every slot
        ds = ds.sub_(p * g.sum(-1, keepdim=True))
    dq, dk = torch_fast.scores_backward(ds, q, k, index, scale)
    return dq, dk, dv.to(v.dtype), ds
